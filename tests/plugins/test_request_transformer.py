"""request-transformer: headers, query arguments and JSON body keys removed, renamed,
replaced, added and appended in Kong's order, templates read from the request as sent,
reserved headers refused (the body on the wire: tests/e2e/test_transformer_e2e.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_query_values_carry_the_clients_bytes_and_add_no_argument() -> None:
    """A query value rendered from a template is percent-encoded whole from the bytes the
    client sent: a Latin-1 form's %E9 stays %E9 (it once became U+FFFD's %EF%BF%BD), a
    path variable's %26 gives a value with '&' (it once went out as %2526), and a header's
    '&' or '=' can't add an argument."""
    pipe = transformer({"add": {"query": {"q2": "${query.q}", "who": "{id}", "h": "${header.x-a}",
                                          "mix": "é-{id}-${header.x-a}"}},
                        "append": {"query": {"lit": "a+b é"}}})
    ctx = make_ctx(headers=[(b"X-A", b"caf\xe9&x=1")], query=b"q=%E9t%E9", values=(b"a%26b%20c",))
    run(pipe, ctx)
    assert ctx.query == (b"q=%E9t%E9&q2=%E9t%E9&who=a%26b%20c&h=caf%E9%26x%3D1"
                         b"&mix=%C3%A9-a%26b%20c-caf%E9%26x%3D1&lit=a%2Bb%20%C3%A9")
    assert ctx.query_args["who"] == "a&b c" and "x" not in ctx.query_args


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


def test_json_body_edits() -> None:
    pipe = transformer({"remove": {"body": ["password", "/user/ssn"]}, "rename": {"body": {"/user/mail": "email"}},
                        "replace": {"body": {"/items/*/price": 0}},
                        "add": {"body": {"caller": "${header.x-user}", "/meta/route": "{id}"}},
                        "append": {"body": {"tags": "gw"}}})
    assert pipe.needs_body and pipe.max_body == 1 << 20          # the body is read whole first
    json_ct = [(b"Host", b"api.test"), (b"Content-Type", b"application/json"), (b"X-User", b"ada")]
    ctx = make_ctx(method="POST", headers=json_ct)
    ctx.body = orjson.dumps({"password": "p", "user": {"ssn": 1, "mail": "a@x"}, "items": [{"price": 5}],
                             "tags": "t"})
    run(pipe, ctx)
    assert ctx.body_replaced and orjson.loads(ctx.body) == {
        "user": {"email": "a@x"}, "items": [{"price": 0}], "tags": ["t", "gw"], "caller": "ada",
        "meta": {"route": "1"}}
    # Not JSON (by its type or its bytes), not an object, or empty: passed as it is.
    for headers, body in ((json_ct[:1] + [(b"Content-Type", b"text/plain")], b'{"password": 1}'),
                          (json_ct, b"{not json"), (json_ct, b"[1, 2]"), (json_ct, b"")):
        ctx = make_ctx(method="POST", headers=headers)
        ctx.body = body
        run(pipe, ctx)
        assert not ctx.body_replaced and ctx.body == body
    # Without body edits the body is not read first.
    assert not transformer({"add": {"headers": {"X-A": "1"}}}).needs_body
    small = transformer({"remove": {"body": ["x"]}, "max_body": 100})
    assert small.max_body == 100


def test_bad_body_settings_are_refused() -> None:
    for config, message in (({"remove": {"body": ["/a/~5"]}}, "remove.body: '/a/~5': '~' must be followed"),
                            ({"add": {"body": {"/a/*": 1}}}, "add.body: '/a/*' may not end in '*'"),
                            ({"add": {"body": {"a": "{nope}"}}}, "unknown path variable")):
        with pytest.raises(PipelineError) as err:
            transformer(config)
        assert any(message in e for e in err.value.errors), err.value.errors


_NAMES = ["X-A", "x-b", "X-C"]
_edit_names = st.lists(st.sampled_from(_NAMES), unique=True, max_size=2)
_edit_pairs = st.dictionaries(st.sampled_from(_NAMES), st.sampled_from(["1", "two", ""]), max_size=2)


@settings(max_examples=200, deadline=None)
@given(remove=_edit_names, replace=_edit_pairs, add=_edit_pairs, append=_edit_pairs,
       headers=st.lists(st.tuples(st.sampled_from([b"X-A", b"x-a", b"X-B", b"x-c", b"Accept"]),
                                  st.sampled_from([b"v", b"w"])), max_size=5))
def test_fixed_header_edits_in_c_match_the_plugin(remove, replace, add, append, headers):
    """Header edits with fixed values run in C (HeaderEditsStep); for any edits and any
    request headers they leave the list the plugin's own on_request leaves."""
    config = {"remove": {"headers": remove}, "replace": {"headers": replace},
              "add": {"headers": add}, "append": {"headers": append}}
    pipe = transformer(config)
    (plugin,) = pipe.plugins
    assert type(plugin.native).__name__ == "HeaderEditsStep"
    c_ctx, py_ctx = make_ctx(headers=list(headers)), make_ctx(headers=list(headers))
    assert run(pipe, c_ctx) is False                  # the chain runs the C step
    assert type(plugin).on_request(plugin, py_ctx) == 0
    assert list(c_ctx.headers) == list(py_ctx.headers)


def test_renames_query_and_body_edits_stay_in_python():
    for config in ({"rename": {"headers": {"X-A": "X-B"}}}, {"add": {"query": {"a": "1"}}},
                   {"add": {"body": {"a": 1}}}):
        assert transformer(config).plugins[0].native is None, config
    # Text beyond Latin-1 runs in C too (as UTF-8).
    pipe = transformer({"add": {"headers": {"X-A": "é€ {id}"}}})
    ctx = make_ctx(values=(b"7",))
    assert type(pipe.plugins[0].native).__name__ == "HeaderEditsStep" and run(pipe, ctx) is False
    assert dict(ctx.headers)[b"X-A"] == "é€ 7".encode()


_TEMPLATES = ["{id}", "t-${header.x-a}", "${header.x-b}/${query.q}", "${consumer.name}:${consumer.groups}",
              "${request_id}", "fixed", "${query.absent}", "é ${header.accept} {id}"]


@settings(max_examples=250, deadline=None)
@given(remove=_edit_names,
       replace=st.dictionaries(st.sampled_from(_NAMES), st.sampled_from(_TEMPLATES), max_size=2),
       add=st.dictionaries(st.sampled_from(_NAMES), st.sampled_from(_TEMPLATES), max_size=2),
       append=st.dictionaries(st.sampled_from(_NAMES), st.sampled_from(_TEMPLATES), max_size=2),
       headers=st.lists(st.tuples(st.sampled_from([b"X-A", b"x-a", b"X-B", b"Accept"]),
                                  st.sampled_from([b"v", b"w\x01x", b"caf\xe9", b""])), max_size=5),
       query=st.sampled_from([b"", b"q=1", b"q=caf%C3%A9", b"q=%E2%82%AC", b"q=a%0Db"]),
       value=st.sampled_from([b"42", b"4%2F2", b"\x07"]),
       consumer=st.sampled_from([None, ("ada", ("g1", "g2")), ("Zoë", ()), ("日本", ("x",))]),
       rid=st.sampled_from(["rid-1", ""]))
def test_templated_header_edits_in_c_match_the_plugin(remove, replace, add, append, headers, query, value,
                                                      consumer, rid):
    """Header edits whose values are templates run in C too (HeaderEditsStep renders them
    first, as the plugin does); for any request the result is the plugin's own: the same
    header list, or, for a value the plugin writes another way (a consumer name that is not
    Latin-1), the plugin's own answer, which the step hands the request to."""
    from fastgw.consumers import Consumer

    config = {"remove": {"headers": remove}, "replace": {"headers": replace},
              "add": {"headers": add}, "append": {"headers": append}}
    pipe = transformer(config)
    (plugin,) = pipe.plugins
    assert type(plugin.native).__name__ == "HeaderEditsStep"
    outcomes = []
    for side in ("c", "python"):
        ctx = make_ctx(headers=list(headers), query=query, values=(value,))
        ctx.request_id = rid
        if consumer is not None:
            ctx.consumer = Consumer(consumer[0], consumer[1])
        try:
            result = plugin.native(ctx) if side == "c" else type(plugin).on_request(plugin, ctx)
            outcomes.append((result, list(ctx.headers)))
        except UnicodeEncodeError as exc:       # (the plugin's way with a name it can't write)
            outcomes.append(("raised", type(exc)))
    assert outcomes[0] == outcomes[1]


def test_templates_render_in_c_without_the_plugins_python(monkeypatch):
    """A templated header edit is rendered in C: the plugin's Python is not called, for
    text beyond Latin-1 too (it is for a consumer a custom plugin set to another type)."""
    from fastgw.consumers import Consumer
    from fastgw.plugins import request_transformer

    calls: list[int] = []
    python = request_transformer.Plugin.on_request
    monkeypatch.setattr(request_transformer.Plugin, "on_request",
                        lambda self, ctx: calls.append(1) or python(self, ctx))
    pipe = transformer({"remove": {"headers": ["X-A"]},
                        "add": {"headers": {"X-Who": "${consumer.name}/{id}/${header.x-a}/${query.q}/${request_id}"}}})
    ctx = make_ctx(headers=[(b"X-A", b"v\x01w")], query=b"q=caf%C3%A9", values=(b"42",))
    ctx.consumer = Consumer("Zoë", ())
    ctx.request_id = "r-9"
    assert run(pipe, ctx) is False and calls == []
    assert dict(ctx.headers)[b"X-Who"] == "Zoë/42/vw/café/r-9".encode() and ctx.get_header("x-a") is None
    ctx = make_ctx(values=(b"1",))
    ctx.consumer = Consumer("日本", ())
    assert run(pipe, ctx) is False and calls == []
    assert dict(ctx.headers)[b"X-Who"] == "日本/1///rid-1".encode()
    ctx = make_ctx(values=(b"1",))
    ctx.consumer = type("CustomConsumer", (Consumer,), {})("ada", ())     # (a custom plugin's)
    assert run(pipe, ctx) is False and calls == [1]
    assert dict(ctx.headers)[b"X-Who"] == b"ada/1///rid-1"


def test_text_goes_out_as_utf_8_and_the_clients_bytes_as_they_came():
    """A template's text (its own, a decoded query argument, a consumer's name) is written
    as UTF-8, as the consumer's identity headers are; a request header's bytes go on as the
    client sent them, in the same value too (a client's ``?q=%E2%82%AC`` got a 500 once,
    and "Zoë ${header.x-a}" once wrote the header's byte 0xE9 as UTF-8)."""
    from fastgw.consumers import Consumer

    pipe = transformer({"add": {"headers": {"X-Q": "${query.q}", "X-A": "${header.x-a}",
                                            "X-Both": "é ${consumer.name} ${header.x-a}", "X-Lit": "Café"}}})
    for native in (True, False):
        ctx = make_ctx(headers=[(b"X-A", b"caf\xe9")], query=b"q=%E2%82%AC")
        ctx.consumer = Consumer("日本", ())
        if native:
            assert run(pipe, ctx) is False
        else:
            assert type(pipe.plugins[0]).on_request(pipe.plugins[0], ctx) == 0
        got = dict(ctx.headers)
        assert got[b"X-Q"] == "€".encode() and got[b"X-A"] == b"caf\xe9" and got[b"X-Lit"] == "Café".encode()
        assert got[b"X-Both"] == "é 日本 ".encode() + b"caf\xe9"
