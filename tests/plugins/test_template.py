"""Settings templates: compiled once, rendered per request."""

from __future__ import annotations

import pytest

from fastgw.context import Consumer
from fastgw.plugins.template import TemplateError, compile_template, param_names

from .util import make_ctx


def test_render_all_sources():
    t = compile_template("/${stage.v}/{id}?h=${header.x-t}&q=${query.q}&c=${consumer.name}&r=${request_id}",
                         ("id",), {"v": "v2"})
    assert not t.is_static
    ctx = make_ctx(headers=[(b"X-T", b"tenant")], query=b"q=a%20b", values=(b"7",))
    ctx.consumer = Consumer("alice", ("g",))
    assert t.render(ctx) == "/v2/7?h=tenant&q=a b&c=alice&r=rid-1"


def test_static_and_errors():
    t = compile_template("v-${stage.v}", (), {"v": "2"})
    assert t.is_static and t.render(None) == "v-2"
    with pytest.raises(TemplateError):
        compile_template("{x}", ("id",), {})
    with pytest.raises(TemplateError):
        compile_template("${stage.missing}", (), {})
    with pytest.raises(TemplateError):
        compile_template("${cookie.a}", (), {})
    assert param_names("/a/{x}/b/{rest*}") == ("x", "rest")


def test_render_url_encodes_every_request_value_but_path_variables():
    t = compile_template("/u/{id}/${stage.v}?h=${header.x-t}&q=${query.q}&c=${consumer.name}", ("id",), {"v": "a/b"})
    ctx = make_ctx(headers=[(b"X-T", b"../x?y#z&w=1")], query=b"q=a%20b%2F", values=(b"7%2F8",))
    ctx.consumer = Consumer("al ice", ("g",))
    # the path variable as routed (already encoded), a stage value as configured
    assert t.render_url(ctx) == "/u/7%2F8/a/b?h=..%2Fx%3Fy%23z%26w%3D1&q=a%20b%2F&c=al%20ice"
    assert compile_template("/static?x=1", (), {}).render_url(ctx) == "/static?x=1"


def test_render_url_keeps_the_clients_bytes_and_writes_text_as_utf_8():
    """A request header's byte 0xE9 goes into the URL as %E9 (as backend_path's templates
    write it; it was %C3%A9), a query argument's bytes as they came, a consumer's name as UTF-8."""
    t = compile_template("/u?h=${header.x-t}&q=${query.q}&c=${consumer.name}", (), {})
    ctx = make_ctx(headers=[(b"X-T", b"caf\xe9")], query=b"q=caf%C3%A9")
    ctx.consumer = Consumer("日本", ())
    assert t.render_url(ctx) == "/u?h=caf%E9&q=caf%C3%A9&c=%E6%97%A5%E6%9C%AC"
    latin1 = make_ctx(query=b"q=caf%E9")          # a Latin-1 form: the byte stays (not %EF%BF%BD)
    assert compile_template("/u?q=${query.q}", (), {}).render_url(latin1) == "/u?q=caf%E9"
