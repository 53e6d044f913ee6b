"""request-size-limit: max_body for the server and the Content-Length check."""

from __future__ import annotations

from .util import make_ctx, make_pipeline, run


def test_limit():
    pipe = make_pipeline([{"name": "request-size-limit", "config": {"allowed_payload_size": 100, "size_unit": "bytes"}}])
    assert pipe.max_body == 100
    ctx = make_ctx(method="POST")
    ctx.body_size = 100
    assert run(pipe, ctx) is False
    ctx = make_ctx(method="POST")
    ctx.body_size = 101
    assert run(pipe, ctx) is True and ctx.answer_status == 413


def test_default_is_128_megabytes():
    assert make_pipeline([{"name": "request-size-limit"}]).max_body == 128 * 1024 * 1024
