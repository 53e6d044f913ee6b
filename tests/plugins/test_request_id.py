"""request-id: kept when valid, replaced when not; traceparent propagated or created."""

from __future__ import annotations

import re

from .util import error_of, hdrs, make_ctx, make_pipeline, run

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_valid_incoming_id_kept_and_echoed():
    pipe = make_pipeline([{"name": "request-id"}])
    ctx = make_ctx(headers=[(b"X-Request-Id", b"abc-123"), (b"traceparent", TP.encode())])
    assert run(pipe, ctx) is False
    assert ctx.request_id == "abc-123"
    h = hdrs(ctx.headers)
    assert h["x-request-id"] == "abc-123" and h["traceparent"] == TP
    assert hdrs(ctx.response_headers_add)["x-request-id"] == "abc-123"


def test_invalid_incoming_replaced():
    pipe = make_pipeline([{"name": "request-id"}])
    for bad in (b"x" * 200, b"a b", b"<script>", b""):
        ctx = make_ctx(headers=[(b"X-Request-Id", bad), (b"traceparent", b"00-zz-01")])
        assert run(pipe, ctx) is False
        assert ctx.request_id == "rid-1"  # the server's id
        assert [v for k, v in ctx.headers if k.lower() == b"x-request-id"] == [b"rid-1"]
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", hdrs(ctx.headers)["traceparent"])


def test_untrusted_incoming_and_id_in_errors():
    pipe = make_pipeline([{"name": "request-id", "config": {"trust_incoming": False}}, {"name": "key-auth"}])
    ctx = make_ctx(headers=[(b"X-Request-Id", b"client-id")])
    assert run(pipe, ctx) is True
    import orjson
    assert orjson.loads(ctx.answer_body)["request_id"] == "rid-1"
    assert error_of(ctx) == "No API key found in request"
    assert hdrs(ctx.response_headers_add)["x-request-id"] == "rid-1"
