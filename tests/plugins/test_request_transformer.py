"""request-transformer: headers and query arguments removed, renamed, replaced, added and
appended in Kong's order, templates read from the request as sent, reserved headers refused."""

from __future__ import annotations

from typing import Any

import pytest

from fastgw.pipeline import PipelineError

from .util import make_ctx, make_pipeline, run


def transformer(config: dict[str, Any]) -> Any:
    return make_pipeline([{"name": "request-transformer", "config": config}])


def test_headers_in_order() -> None:
    pipe = transformer({
        "remove": {"headers": ["X-Debug"]},
        "rename": {"headers": {"X-Old": "X-New"}},
        "replace": {"headers": {"X-Tenant": "t-${header.x-tenant}", "X-Absent": "never"}},
        "add": {"headers": {"X-Order": "{id}", "X-Tenant": "not added: present"}},
        "append": {"headers": {"X-Via": "gw"}},
    })
    ctx = make_ctx(headers=[(b"Host", b"api.test"), (b"X-Debug", b"1"), (b"X-Old", b"a"), (b"X-Old", b"b"),
                            (b"X-Tenant", b"acme"), (b"X-Via", b"client")], values=(b"42",))
    assert run(pipe, ctx) is False
    assert ctx.get_header("x-debug") is None and ctx.get_headers("x-old") == []
    assert ctx.get_headers("x-new") == ["a", "b"]
    assert ctx.get_headers("x-tenant") == ["t-acme"] and ctx.get_header("x-absent") is None
    assert ctx.get_header("x-order") == "42"
    assert ctx.get_headers("x-via") == ["client", "gw"]


def test_query_in_order_keeps_untouched_bytes() -> None:
    pipe = transformer({
        "remove": {"query": ["debug"]},
        "rename": {"query": {"q": "search"}},
        "replace": {"query": {"page": "1", "missing": "x"}},
        "add": {"query": {"lang": "en", "page": "not added"}},
        "append": {"query": {"tag": "a b&c=d"}},
    })
    ctx = make_ctx(query=b"q=caf%C3%A9&debug=1&page=7&keep=%2Fraw%2f&page=8&flag")
    assert run(pipe, ctx) is False
    assert ctx.query == b"search=caf%C3%A9&page=1&keep=%2Fraw%2f&flag&lang=en&tag=a%20b%26c%3Dd"
    assert ctx.query_args["search"] == "café" and ctx.query_args["tag"] == "a b&c=d"


def test_templates_read_the_request_as_sent() -> None:
    pipe = transformer({"remove": {"headers": ["X-User"], "query": ["user"]},
                        "add": {"headers": {"X-From": "${header.x-user}/${query.user}"}}})
    ctx = make_ctx(headers=[(b"X-User", b"ada")], query=b"user=grace")
    run(pipe, ctx)
    assert ctx.get_header("x-from") == "ada/grace" and ctx.query == b""


@pytest.mark.parametrize("config", [
    {"add": {"headers": {"Content-Length": "0"}}},
    {"append": {"headers": {"Transfer-Encoding": "chunked"}}},
    {"rename": {"headers": {"X-A": "Host"}}},
    {"remove": {"headers": ["Connection"]}},
    {"add": {"headers": {"bad name": "x"}}},
    {"add": {"headers": {"X-A": "{nope}"}}},
])
def test_reserved_or_bad_settings_are_refused(config: dict[str, Any]) -> None:
    with pytest.raises(PipelineError):
        transformer(config)
