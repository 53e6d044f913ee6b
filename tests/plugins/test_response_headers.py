"""response-headers: set/add/append/remove with templates."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.pipeline import PipelineError

from .util import make_ctx, make_pipeline, run


def test_set_add_append_remove_with_templates():
    pipe = make_pipeline([
        {"name": "key-auth"},
        {"name": "response-headers", "config": {
            "remove": ["Server"], "set": {"X-Order": "{id}", "Cache-Control": "no-store"},
            "add": {"X-Powered-By": "fastgw", "X-Version": "${stage.version}"},
            "append": {"X-Who": "${consumer.name}/${query.q}"}}}],
        [{"name": "alice", "credentials": {"key-auth": ["alice-key-1"]}}], variables={"version": "v2"})
    ctx = make_ctx(headers=[(b"apikey", b"alice-key-1")], query=b"q=%0D%0Ainjected", values=(b"42",))
    assert run(pipe, ctx) is False
    ctx.response_headers = [(b"Server", b"backend"), (b"cache-control", b"max-age=60"), (b"X-Powered-By", b"app")]
    pipe.run_response(ctx)
    assert ctx.response_headers == [
        (b"X-Powered-By", b"app"), (b"X-Order", b"42"), (b"Cache-Control", b"no-store"),
        (b"X-Who", b"alice/injected"), (b"X-Version", b"v2")]


def test_applies_to_gateway_answers():
    pipe = make_pipeline([{"name": "key-auth"}, {"name": "response-headers", "config": {"set": {"X-A": "1"}}}])
    ctx = make_ctx()
    assert run(pipe, ctx) is True
    pipe.run_response(ctx)
    assert (b"X-A", b"1") in ctx.answer_headers


def test_unknown_template_variable_is_a_config_error():
    with pytest.raises(PipelineError) as err:
        make_pipeline([{"name": "response-headers", "config": {"set": {"X-A": "{nope}"}}}])
    assert "unknown path variable {nope}" in err.value.errors[0]
    with pytest.raises(PipelineError):
        make_pipeline([{"name": "response-headers", "config": {"set": {"Bad Name": "x"}}}])


def test_template_bytes_the_client_sent_go_back_as_they_came(monkeypatch):
    """A request header's bytes echoed by a template go back unchanged (byte 0xE9 of a
    Latin-1 client once went back as UTF-8's C3 A9); the template's own text, a decoded
    query argument and a consumer's name are written as UTF-8, in one value too."""
    from fastgw.consumers import Consumer
    from fastgw.plugins.template import Template

    pipe = make_pipeline([{"name": "response-headers", "config": {
        "set": {"X-Echo": "${header.x-name}", "X-Lit": "Café", "X-Id": "{id}",
                "X-Mix": "é ${consumer.name} ${header.x-name} ${query.q}"}}}])
    ctx = make_ctx(headers=[(b"X-Name", b"caf\xe9\x01")], query=b"q=%E2%82%AC", values=(b"caf%C3%A9",))
    ctx.consumer = Consumer("日本", ())
    assert run(pipe, ctx) is False
    ctx.response_headers = []
    monkeypatch.setattr(Template, "render_header", None)     # rendered in C, not by the Python
    pipe.run_response(ctx)
    assert dict(ctx.response_headers) == {
        b"X-Echo": b"caf\xe9", b"X-Lit": "Café".encode(), b"X-Id": b"caf%C3%A9",
        b"X-Mix": "é 日本 ".encode() + b"caf\xe9 " + "€".encode()}


_TEMPLATES = ["{id}", "t-${header.x-a}", "${header.x-b}/${query.q}", "${consumer.name}:${consumer.groups}",
              "${request_id}", "fixed é", "${query.absent}", "日本 ${header.accept} {id}"]


@settings(max_examples=200, deadline=None)
@given(templates=st.lists(st.sampled_from(_TEMPLATES), min_size=1, max_size=3),
       headers=st.lists(st.tuples(st.sampled_from([b"X-A", b"x-a", b"X-B", b"Accept"]),
                                  st.sampled_from([b"v", b"w\x01x", b"caf\xe9", b"\xe6\x97\xa5", b""])), max_size=5),
       query=st.sampled_from([b"", b"q=1", b"q=caf%C3%A9", b"q=%E2%82%AC", b"q=a%0Db", b"q=%FF"]),
       value=st.sampled_from([b"42", b"4%2F2", b"\x07", b"caf\xe9"]),
       consumer=st.sampled_from([None, ("ada", ("g1", "g2")), ("Zoë", ()), ("日本", ("x", "é"))]),
       rid=st.sampled_from(["rid-1", "", "caf\xe9"]))
def test_templates_rendered_in_c_are_the_templates_own_bytes(templates, headers, query, value, consumer, rid):
    """ResponseHeadersStep renders its templates in C (_tpl_render); for any request each
    value is the template's own ``render_header`` (the Python the step falls back on)."""
    from fastgw.consumers import Consumer
    from fastgw.plugins.template import compile_template

    names = [f"X-T{i}" for i in range(len(templates))]
    pipe = make_pipeline([{"name": "response-headers", "config": {"append": dict(zip(names, templates, strict=True))}}])
    ctx = make_ctx(headers=list(headers), query=query, values=(value,))
    ctx.request_id = rid
    if consumer is not None:
        ctx.consumer = Consumer(consumer[0], consumer[1])
    ctx.response_headers = []
    pipe.run_response(ctx)
    expected = [(name.encode(), compile_template(t, ("id",), {}).render_header(ctx)) for name, t in zip(names, templates, strict=True)]
    assert ctx.response_headers == expected


def test_a_query_arguments_bytes_go_back_as_the_client_sent_them():
    """${query.x} is the argument's percent-decoded bytes, whatever their encoding: a
    Latin-1 form's %E9 stays the byte 0xE9 (decoded as UTF-8 text first, it became U+FFFD's
    EF BF BD), a UTF-8 one's %C3%A9 stays C3 A9, '+' is a space, control bytes are dropped."""
    pipe = make_pipeline([{"name": "response-headers", "config": {"set": {"X-Q": "[${query.q}]"}}}])
    for query, want in ((b"q=caf%E9", b"[caf\xe9]"), (b"q=caf%C3%A9", "[café]".encode()),
                        (b"a=1&q=a+b%0D%0A&q=second", b"[a b]"), (b"x=1", b"[]")):
        ctx = make_ctx(query=query)
        assert run(pipe, ctx) is False
        ctx.response_headers = []
        pipe.run_response(ctx)
        assert dict(ctx.response_headers)[b"X-Q"] == want, query
