"""mock: a set answer with text or JSON bodies, templates, headers; checked settings."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from fastgw.pipeline import PipelineError

from .util import hdrs, make_ctx, make_pipeline, run


def mock(config: dict[str, Any], **kw: Any) -> Any:
    return make_pipeline([{"name": "mock", "config": config}], **kw)


def test_text_body_with_templates_and_headers() -> None:
    pipe = mock({"status": 201, "body": "order {id} for ${header.x-tenant}",
                 "headers": {"X-Mock": "yes", "Location": "/orders/{id}"}})
    ctx = make_ctx(headers=[(b"X-Tenant", b"acme")], values=(b"42",))
    assert run(pipe, ctx) is True
    assert ctx.answer_status == 201 and ctx.answer_body == b"order 42 for acme"
    h = hdrs(ctx.answer_headers)
    assert h["content-type"] == "text/plain; charset=utf-8" and h["x-mock"] == "yes" and h["location"] == "/orders/42"


def test_json_body_is_encoded_once_when_static_and_escaped_when_not() -> None:
    pipe = mock({"json": {"ok": True, "items": [1, 2.5, None], "v": "${stage.version}"}},
                variables={"version": "v2"})
    ctx = make_ctx()
    run(pipe, ctx)
    assert orjson.loads(ctx.answer_body) == {"ok": True, "items": [1, 2.5, None], "v": "v2"}
    assert hdrs(ctx.answer_headers)["content-type"] == "application/json"
    pipe = mock({"json": {"id": "{id}", "q": ["${query.q}"]}})
    ctx = make_ctx(query=b'q=%22%7D%2C%22admin%22%3Atrue%2C%22x%22%3A%22', values=(b"7",))
    run(pipe, ctx)
    # a request value lands inside its string, whatever quotes it holds
    assert orjson.loads(ctx.answer_body) == {"id": "7", "q": ['"},"admin":true,"x":"']}


def test_settings_are_checked() -> None:
    for config, message in (({"body": "x", "json": {}}, "not both"),
                            ({"headers": {"Content-Length": "5"}}, "set by the gateway"),
                            ({"body": "{nope}"}, "unknown path variable"),
                            ({"status": 99}, "status")):
        with pytest.raises(PipelineError) as err:
            mock(config)
        assert message in str(err.value.errors), config


def test_header_text_is_utf_8_and_the_clients_bytes_go_back_as_they_came() -> None:
    """A mocked header's text beyond Latin-1 (a consumer's name) was written as "??"; a
    request header's byte 0xE9 echoed back stays 0xE9."""
    from fastgw.consumers import Consumer

    pipe = mock({"body": "ok", "headers": {"X-Who": "${consumer.name} ${header.x-name}", "X-Lit": "Café"}})
    ctx = make_ctx(headers=[(b"X-Name", b"caf\xe9")])
    ctx.consumer = Consumer("日本", ())
    assert run(pipe, ctx) is True
    h = dict(ctx.answer_headers)
    assert h[b"X-Who"] == "日本 ".encode() + b"caf\xe9" and h[b"X-Lit"] == "Café".encode()
