"""compile_template / Template.render (fastgw._core): backend paths built from route variables,
stage variables and request values, resolved once at config load."""

from __future__ import annotations

import re

import pytest
from fastgw._core import compile_template


def test_static_template_resolves_stage_vars_at_compile() -> None:
    t = compile_template("/${stage.version}/orders", (), {"version": "v2"})
    assert t.is_static
    assert t.render((), b"", None) == b"/v2/orders"


def test_path_variables() -> None:
    t = compile_template("/${stage.v}/orders/{orderId}/{path*}/{path}", ("orderId", "path"), {"v": "v1"})
    assert not t.is_static
    assert t.render((b"12", b"a/b%2Fc"), b"", None) == b"/v1/orders/12/a/b%2Fc/a/b%2Fc"


def test_query_and_header_values_are_one_encoded_segment() -> None:
    t = compile_template("/s/${query.q}/${header.X-Tenant}", (), {})
    headers = [(b"Host", b"h"), (b"x-tenant", b"acme corp/../x")]
    assert t.render((), b"a=1&q=hello%20w+x%2F..&q=second", headers) == b"/s/hello%20w%20x%2F../acme%20corp%2F..%2Fx"
    assert t.render((), b"", []) == b"/s//"
    # SECURITY: a value of "." or ".." cannot become a dot segment
    assert t.render((), b"q=..", [(b"X-Tenant", b".")]) == b"/s//"


@pytest.mark.parametrize(("template", "message"), [
    ("/x/{id}", "unknown variable {id} (known: orderId)"),
    ("/${stage.nope}", "unknown stage variable ${stage.nope}"),
    ("/${consumer.name}", "bad placeholder ${consumer.name}"),
    ("/${query}", "bad placeholder ${query}"),
    ("/a}b", "stray brace"),
    ("/a{b", "stray brace"),
])
def test_errors(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        compile_template(template, ("orderId",), {})
