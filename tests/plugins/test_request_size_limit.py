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


def test_the_check_runs_in_c_and_keeps_the_route_on_the_lazy_path():
    from fastgw._core import BodySizeStep

    pipe = make_pipeline([{"name": "request-size-limit", "config": {"allowed_payload_size": 1, "size_unit": "kilobytes"}},
                          {"name": "request-id"}])
    assert any(isinstance(p.native, BodySizeStep) for p in pipe.plugins) and pipe.chain.native_only
    ctx = make_ctx(method="POST")
    ctx.body_size = 1025
    assert run(pipe, ctx) is True and ctx.answer_status == 413
