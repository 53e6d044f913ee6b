"""Settings templates for plugins: compiled once at config load, rendered per request.

A plugin setting may mention request values::

    "X-Order: {orderId}"            path variable of the route
    "${stage.version}"              stage variable (resolved at compile time)
    "${header.x-tenant}"            request header (first value)
    "${query.q}"                    query argument (first value, decoded)
    "${consumer.name}"              the authenticated consumer ('' if none)
    "${consumer.groups}"            its groups, comma separated
    "${request_id}"                 the request id

>>> t = compile_template("v-${stage.v}", (), {"v": "2"})
>>> t.is_static, t.static
(True, 'v-2')

PERF: the text is split into parts once; ``render`` only walks a tuple of
``(kind, argument)`` pairs. SECURITY: rendered request values lose control characters
(CR/LF/NUL …), so a decoded query argument can never split a header line.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from fastgw._core import query_value

_TOKEN = re.compile(r"\$\{([a-z_]+)(?:\.([^}]+))?\}|\{([A-Za-z_][A-Za-z0-9_]*)\*?\}")
_VARS = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\*?\}")
_CONTROL = dict.fromkeys([*range(0, 32), 127])
_CONTROL_BYTES = bytes([*range(0, 32), 127])

# A part's kind (_tpl_render in fastgw/_plugins.pxi renders the same numbers in C).
_LIT, _PARAM, _HEADER, _QUERY, _CONSUMER, _GROUPS, _RID = range(7)


class TemplateError(ValueError):
    """A template names something that does not exist (message says what)."""


def param_names(resource: str) -> tuple[str, ...]:
    """Variable names of a resource template, in order.

    >>> param_names("/orders/{orderId}/items/{rest*}")
    ('orderId', 'rest')
    """
    return tuple(_VARS.findall(resource))


class Template:
    """A compiled template; ``render(ctx) -> str``; ``is_static`` when it has no request value."""

    __slots__ = ("text", "parts", "is_static", "static")

    def __init__(self, text: str, parts: tuple[tuple[int, Any], ...]) -> None:
        self.text = text
        self.parts = parts
        self.is_static = all(kind == _LIT for kind, _ in parts)
        self.static = "".join(arg for _, arg in parts) if self.is_static else ""

    def render(self, ctx: Any) -> str:
        if self.is_static:
            return self.static
        return "".join(arg if kind == _LIT else _value(kind, arg, ctx).translate(_CONTROL)
                       for kind, arg in self.parts)

    def render_url(self, ctx: Any) -> str:
        """As ``render``, for a URL's path and query: path variables go in as routed (their
        percent-encoded form, with no '/' in a ``{var}``), every other request value
        percent-encoded whole, so none can add a segment, a '..', a query or a fragment: a
        request header's or query argument's bytes as the client sent them (as a stage's
        ``backend_path`` does), text (the consumer's name) as UTF-8."""
        if self.is_static:
            return self.static
        return "".join(arg if kind == _LIT else _value(kind, arg, ctx) if kind == _PARAM
                       else quote(_client_bytes(kind, arg, ctx) if kind in (_HEADER, _QUERY) else _value(kind, arg, ctx),
                                  safe="")
                       for kind, arg in self.parts)

    def render_header(self, ctx: Any) -> bytes:
        """The bytes a header value rendered from this template gets. Bytes the client sent
        (a request header, a path variable, a query argument, percent-decoded) go out as
        they came; text (the template's own, a stage variable, the consumer's name and
        groups) as UTF-8, as the gateway writes a consumer's identity headers; the request
        id as a plugin's str is written. Control characters are dropped from request values.
        fastgw/_plugins.pxi's ``_tpl_render`` is the same in C, on ``native_parts``."""
        if self.is_static:
            return self.static.encode("utf-8")
        return b"".join(_header_part(kind, arg, ctx) for kind, arg in self.parts)

    def render_query(self, ctx: Any) -> bytes:
        """A query argument's value rendered from this template, percent-encoded whole, so
        no '&', '=', '+' or '#' of a request value can add an argument or end the query:
        the bytes a request header or query argument (percent-decoded) came with, a path
        variable's percent-decoded bytes, text as UTF-8; control characters dropped from
        request values, as ``render_header`` drops them."""
        if self.is_static:
            return quote(self.static, safe="").encode("ascii")
        return quote(b"".join(_query_part(kind, arg, ctx) for kind, arg in self.parts), safe="").encode("ascii")

    def native_parts(self) -> tuple[tuple[int, Any], ...]:
        """The parts as ``_tpl_render`` takes them: literals as UTF-8, header and query
        argument names as bytes."""
        return tuple((kind, arg.encode("utf-8") if kind in (_LIT, _HEADER, _QUERY) else arg)
                     for kind, arg in self.parts)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def _header_part(kind: int, arg: Any, ctx: Any) -> bytes:
    """A template part's bytes in a header value (see Template.render_header)."""
    if kind == _LIT:
        return arg.encode("utf-8")
    if kind == _PARAM or kind == _HEADER or kind == _QUERY:
        return _client_bytes(kind, arg, ctx).translate(None, _CONTROL_BYTES)
    if kind == _RID:       # as RequestContext writes a plugin's str (_ctx_b): a client's id keeps its bytes
        text = _value(kind, arg, ctx).translate(_CONTROL)
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:
            return text.encode("utf-8")
    return _value(kind, arg, ctx).translate(_CONTROL).encode("utf-8", "replace")


def _query_part(kind: int, arg: Any, ctx: Any) -> bytes:
    """A template part's bytes in a query argument's value (see Template.render_query)."""
    if kind == _PARAM:     # routed in its percent-encoded form; the argument gets the bytes it stands for
        return unquote_to_bytes(_client_bytes(kind, arg, ctx)).translate(None, _CONTROL_BYTES)
    return _header_part(kind, arg, ctx)


def _client_bytes(kind: int, arg: Any, ctx: Any) -> bytes:
    """A path variable's, request header's or query argument's bytes as the client sent
    them (the argument's percent-decoded; get_header reads a header as Latin-1)."""
    if kind == _QUERY:
        return query_value(ctx.query, arg.encode("utf-8"))
    return _value(kind, arg, ctx).encode("latin-1")


def _value(kind: int, arg: Any, ctx: Any) -> str:
    """The request value a template part stands for ('' when absent)."""
    if kind == _PARAM:
        values = ctx.values
        return values[arg].decode("latin-1") if arg < len(values) else ""
    if kind == _HEADER:
        return ctx.get_header(arg) or ""
    if kind == _QUERY:
        return ctx.query_args.get(arg, "")
    if kind == _CONSUMER:
        return ctx.consumer.name if ctx.consumer is not None else ""
    if kind == _GROUPS:
        return ",".join(ctx.consumer.groups) if ctx.consumer is not None else ""
    return ctx.request_id or ""


def compile_template(text: str, params: tuple[str, ...], stage_vars: dict[str, str]) -> Template:
    """Compile ``text``; raises TemplateError for an unknown path/stage variable or source."""
    parts: list[tuple[int, Any]] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        if m.start() > pos:
            parts.append((_LIT, text[pos:m.start()]))
        pos = m.end()
        source, key, var = m.group(1), m.group(2), m.group(3)
        if var is not None:
            if var not in params:
                raise TemplateError(f"unknown path variable {{{var}}} (route has: {', '.join(params) or 'none'})")
            parts.append((_PARAM, params.index(var)))
        elif source == "stage":
            if key is None or key not in stage_vars:
                raise TemplateError(f"unknown stage variable ${{stage.{key}}}")
            parts.append((_LIT, str(stage_vars[key])))
        elif source == "header" and key:
            parts.append((_HEADER, key.lower()))
        elif source == "query" and key:
            parts.append((_QUERY, key))
        elif source == "consumer" and key in ("name", "groups"):
            parts.append((_CONSUMER if key == "name" else _GROUPS, None))
        elif source == "request_id" and key is None:
            parts.append((_RID, None))
        else:
            raise TemplateError(f"unknown template value {m.group(0)!r}")
    if pos < len(text):
        parts.append((_LIT, text[pos:]))
    merged: list[tuple[int, Any]] = []
    for kind, arg in parts:  # join adjacent literals (stage values are literals)
        if kind == _LIT and merged and merged[-1][0] == _LIT:
            merged[-1] = (_LIT, merged[-1][1] + arg)
        else:
            merged.append((kind, arg))
    return Template(text, tuple(merged) or ((_LIT, ""),))
