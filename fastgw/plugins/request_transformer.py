"""request-transformer: reshape the request's headers, query and JSON body before the
backend sees it.

In Kong's order: ``remove`` (names), ``rename`` (old -> new, values kept), ``replace`` (only
what is there), ``add`` (only what is not there), ``append`` (always), each for
``headers``, ``query`` and ``body``. Values are settings templates (``{id}``, ``${stage.x}``,
``${header.x}``, ``${query.x}``, ``${consumer.name}``, ``${request_id}``) read from the
request as the client sent it, before any change. A query value is percent-encoded
whole (Template.render_query): a request header's or query argument's bytes as they came
(a Latin-1 form's ``%E9`` stays ``%E9``), a path variable's decoded bytes (``/a%26b``
gives ``a%26b``, never a second argument), text as UTF-8; the arguments not named keep
their bytes. The path is the route's ``backend_path``. Framing
and connection headers (``Host``, ``Content-Length``, ``Transfer-Encoding``,
``Connection`` …) are the gateway's and can't be named.

``body`` edits change a request body that is a JSON object (Content-Type ``application/json``
or ``…+json``), with the keys and values of response-transformer's ``json`` (JSON Pointers
into nested objects, ``*`` for every item, any JSON values with templates in strings: see
fastgw/plugins/json_edits.py; ``append`` adds to an array). Other bodies pass as they are.
With body edits the route reads the whole request body before forwarding it (up to
``max_body``, 1 MiB by default: larger ones get 413), and the backend gets the new body with
its own Content-Length.
"""

from __future__ import annotations

import types
from typing import Any
from urllib.parse import quote, unquote_plus

import orjson

from fastgw._core import HeaderEditsStep
from fastgw.plugins.base import CONTINUE, HEADER_NAME, HEADER_VALUE, PluginScope
from fastgw.plugins.base import Plugin as BasePlugin
from fastgw.plugins.json_edits import JsonEdits, is_json
from fastgw.plugins.template import compile_template, param_names

NAME = "request-transformer"
PRIORITY = 801          # after authentication, acl and rate limiting (as Kong)

_HEADER = {"type": "string", "pattern": HEADER_NAME}
_QUERY = {"type": "string", "minLength": 1}
_VALUE = {"type": "string", "pattern": HEADER_VALUE}


def _names(name: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "default": [], "items": name}


def _renames(name: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "default": {}, "propertyNames": name, "additionalProperties": name}


def _pairs(name: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "default": {}, "propertyNames": name, "additionalProperties": _VALUE}


_BODY_KINDS: dict[str, dict[str, Any]] = {
    "remove": {"type": "array", "default": [], "uniqueItems": True, "items": {"type": "string"}},
    "rename": {"type": "object", "default": {}, "additionalProperties": {"type": "string"}},
    "replace": {"type": "object", "default": {}},
    "add": {"type": "object", "default": {}},
    "append": {"type": "object", "default": {}},
}


def _section(op: str, kind: Any, what: str) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "default": {}, "description": what,
            "properties": {"headers": kind(_HEADER), "query": kind(_QUERY), "body": _BODY_KINDS[op]}}


SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "remove": _section("remove", _names, "Names to drop."),
        "rename": _section("rename", _renames, "old name -> new name; the values move."),
        "replace": _section("replace", _pairs, "Values set only where the name is present."),
        "add": _section("add", _pairs, "Values set only where the name is absent."),
        "append": _section("append", _pairs, "Values added, whatever is there."),
        "max_body": {"type": "integer", "minimum": 0, "default": 1 << 20,
                     "description": "With body edits: the largest request body read, in bytes (larger: 413)."},
    },
}

# SECURITY: the gateway frames the request and owns its connection headers; a transformer
# that could set them could smuggle a second request to the backend.
_RESERVED = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
                       "trailer", "upgrade", "proxy-connection", "expect"})


def _split_query(query: bytes) -> list[tuple[str, bytes]]:
    """[(decoded name, raw 'name=value' bytes)] of a raw query string."""
    out = []
    for part in query.split(b"&"):
        if part:
            out.append((unquote_plus(part.split(b"=", 1)[0].decode("latin-1")), part))
    return out


def _pair(name: str, value: bytes) -> bytes:
    """``name=value`` for the query; ``value`` is percent-encoded already (Template.render_query)."""
    return quote(name, safe="").encode("ascii") + b"=" + value


class Plugin(BasePlugin):
    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        super().__init__(config, scope)
        params = param_names(scope.spec.resource)
        variables = scope.variables
        for op in ("remove", "rename", "replace", "add", "append"):
            section = config[op].get("headers", [] if op == "remove" else {})
            names = list(section) + (list(section.values()) if op == "rename" else [])
            for name in names:
                if name.lower() in _RESERVED:
                    raise ValueError(f"{op}.headers: {name} is the gateway's to set")

        def templates(pairs: dict[str, str]) -> tuple[tuple[str, Any], ...]:
            return tuple((name, compile_template(value, params, variables)) for name, value in pairs.items())

        self.remove_h = tuple(config["remove"].get("headers", ()))
        self.remove_q = frozenset(config["remove"].get("query", ()))
        self.rename_h = tuple(config["rename"].get("headers", {}).items())
        self.rename_q = dict(config["rename"].get("query", {}))
        self.replace_h = templates(config["replace"].get("headers", {}))
        self.replace_q = templates(config["replace"].get("query", {}))
        self.add_h = templates(config["add"].get("headers", {}))
        self.add_q = templates(config["add"].get("query", {}))
        self.append_h = templates(config["append"].get("headers", {}))
        self.append_q = templates(config["append"].get("query", {}))
        self.touches_query = any((self.remove_q, self.rename_q, self.replace_q, self.add_q, self.append_q))
        body = {op: config[op]["body"] for op in ("remove", "rename", "replace", "add", "append")
                if config[op].get("body")}
        self.body_edits = JsonEdits(body, params, variables, lambda op: f"{op}.body") if body else None
        if self.body_edits is not None:
            # Read when the route is built: the body is read whole before on_request.
            self.needs_body = True
            self.request_body_limit = int(config["max_body"])
        self.native = self._header_step()

    def _header_step(self) -> HeaderEditsStep | None:
        """PERF: header edits alone (no rename), with fixed values or templates, run in C
        (the same edits as on_request, which gets what the step can't render); None when
        anything needs the Python path."""
        if self.body_edits is not None or self.touches_query or self.rename_h:
            return None
        def pair(name: str, t: Any) -> tuple[bytes, Any]:
            return name.encode("latin-1"), t.render_header(None) if t.is_static else t.native_parts()

        return HeaderEditsStep(
            tuple(n.lower().encode("latin-1") for n in self.remove_h),
            tuple(((n.lower().encode("latin-1"),), pair(n, t)) for n, t in self.replace_h),
            tuple((n.lower().encode("latin-1"), pair(n, t)) for n, t in self.add_h),
            tuple(pair(n, t) for n, t in self.append_h),
            types.MethodType(Plugin.on_request, self))

    def on_request(self, ctx: Any) -> int:
        # Templates read the request as it came: render every value before changing anything.
        replace_h = [(n, t.render_header(ctx)) for n, t in self.replace_h]
        add_h = [(n, t.render_header(ctx)) for n, t in self.add_h]
        append_h = [(n, t.render_header(ctx)) for n, t in self.append_h]
        if self.body_edits is not None:
            self._body(ctx)
        if self.touches_query:
            self._query(ctx)
        for name in self.remove_h:
            ctx.remove_header(name)
        for old, new in self.rename_h:
            values = ctx.get_headers(old)
            if values:
                ctx.remove_header(old)
                for value in values:
                    ctx.add_header(new, value)
        for name, value in replace_h:
            if ctx.get_header(name) is not None:
                ctx.set_header(name, value)
        for name, value in add_h:
            if ctx.get_header(name) is None:
                ctx.add_header(name, value)
        for name, value in append_h:
            ctx.add_header(name, value)
        return CONTINUE

    def _body(self, ctx: Any) -> None:
        edits = self.body_edits
        if not ctx.body or not is_json(ctx.get_header("content-type")):
            return
        try:
            doc = orjson.loads(ctx.body)
        except orjson.JSONDecodeError:
            return                  # not JSON after all: the backend judges it as it is
        if not isinstance(doc, dict):
            return
        edits.apply(doc, edits.static or edits.render(ctx))
        ctx.replace_body(orjson.dumps(doc))

    def _query(self, ctx: Any) -> None:
        replace = [(n, t.render_query(ctx)) for n, t in self.replace_q]
        add = [(n, t.render_query(ctx)) for n, t in self.add_q]
        append = [(n, t.render_query(ctx)) for n, t in self.append_q]
        args = [(n, raw) for n, raw in _split_query(ctx.query or b"") if n not in self.remove_q]
        if self.rename_q:
            renamed = []
            for name, raw in args:
                new = self.rename_q.get(name)
                if new is not None:
                    value = raw.split(b"=", 1)[1] if b"=" in raw else None
                    raw = quote(new, safe="").encode("ascii") + (b"=" + value if value is not None else b"")
                    name = new
                renamed.append((name, raw))
            args = renamed
        for name, value in replace:
            if any(n == name for n, _ in args):
                first = next(i for i, (n, _) in enumerate(args) if n == name)
                args = [a for i, a in enumerate(args) if a[0] != name or i == first]
                args[first] = (name, _pair(name, value))
        present = {n for n, _ in args}
        args += [(n, _pair(n, v)) for n, v in add if n not in present]
        args += [(n, _pair(n, v)) for n, v in append]
        ctx.set_query(b"&".join(raw for _, raw in args))

