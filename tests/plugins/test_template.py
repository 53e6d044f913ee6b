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
