"""mock: answer at the gateway with a set response, without calling the backend.

For an API whose backend does not exist yet, or a resource stubbed out: ``status``,
``headers`` and a body, as text (``body``) or as any JSON value (``json``). String values
may use the settings templates (``{id}``, ``${stage.x}``, ``${header.x}``, ``${query.x}``,
``${consumer.name}``, ``${request_id}``), rendered per request. In ``json`` they are
rendered inside JSON strings and escaped by the encoder, so no request value can change
the document's shape; a response with no request value in it is encoded once, at load.
A header value's bytes are ``Template.render_header``'s: a request header's, path
variable's or query argument's bytes as the client sent them, text as UTF-8. The other plugins of the route (authentication, limits, CORS …) run first.
"""

from __future__ import annotations

from typing import Any

import orjson

from fastgw.plugins.base import HEADER_NAME, HEADER_VALUE, PluginScope
from fastgw.plugins.base import Plugin as BasePlugin
from fastgw.plugins.template import Template, compile_template, param_names

NAME = "mock"
PRIORITY = 1          # last in the request phase: every other plugin has had its say

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "status": {"type": "integer", "minimum": 200, "maximum": 599, "default": 200,
                   "description": "Status of the answer."},
        "body": {"type": "string", "description": "Text body (templates allowed)."},
        "json": {"description": "A JSON body: any value; its strings may use templates."},
        "content_type": {"type": "string", "pattern": HEADER_VALUE,
                         "description": "Default: application/json with json, else text/plain; charset=utf-8."},
        "headers": {"type": "object", "default": {}, "propertyNames": {"pattern": HEADER_NAME},
                    "additionalProperties": {"type": "string", "pattern": HEADER_VALUE},
                    "description": "Response headers (values may use templates)."},
    },
}

_DROP = frozenset({"content-length", "transfer-encoding", "connection", "content-type"})


def _compile_json(value: Any, params: tuple[str, ...], variables: dict[str, str]) -> tuple[Any, bool]:
    """(the value with its strings compiled, whether any of them needs the request)."""
    if isinstance(value, str):
        t = compile_template(value, params, variables)
        return (t.static, False) if t.is_static else (t, True)
    if isinstance(value, list):
        items = [_compile_json(v, params, variables) for v in value]
        return [v for v, _ in items], any(d for _, d in items)
    if isinstance(value, dict):
        pairs = {k: _compile_json(v, params, variables) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, any(d for _, d in pairs.values())
    return value, False


def _render_json(value: Any, ctx: Any) -> Any:
    if isinstance(value, Template):
        return value.render(ctx)
    if isinstance(value, list):
        return [_render_json(v, ctx) for v in value]
    if isinstance(value, dict):
        return {k: _render_json(v, ctx) for k, v in value.items()}
    return value


class Plugin(BasePlugin):
    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        super().__init__(config, scope)
        if "body" in config and "json" in config:
            raise ValueError("give body or json, not both")
        params = param_names(scope.spec.resource)
        variables = scope.variables
        self.status = config["status"]
        self.json: Any = None
        self.body: Template | None = None
        self.static: bytes | None = None
        if "json" in config:
            compiled, dynamic = _compile_json(config["json"], params, variables)
            if dynamic:
                self.json = compiled
            else:
                self.static = orjson.dumps(compiled)
            default_type = "application/json"
        else:
            t = compile_template(config.get("body", ""), params, variables)
            if t.is_static:
                self.static = t.static.encode("utf-8")
            else:
                self.body = t
            default_type = "text/plain; charset=utf-8"
        self.content_type = config.get("content_type", default_type)
        for name in config["headers"]:
            if name.lower() in _DROP:
                raise ValueError(f"headers: {name} is set by the gateway (use content_type for Content-Type)")
        self.headers = [(name.encode("latin-1"), compile_template(value, params, variables))
                        for name, value in config["headers"].items()]

    def on_request(self, ctx: Any) -> int:
        if self.static is not None:
            body = self.static
        elif self.json is not None:
            body = orjson.dumps(_render_json(self.json, ctx))
        else:
            assert self.body is not None
            body = self.body.render(ctx).encode("utf-8")
        headers = [(name, t.render_header(ctx)) for name, t in self.headers]
        return ctx.answer(self.status, body, headers, self.content_type)
