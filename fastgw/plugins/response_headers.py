"""response-headers: add, set, append or remove response headers.

``remove`` drops headers, ``set`` replaces every copy with one value, ``append`` adds a
copy, ``add`` adds only when the response lacks the header. Values are templates
(``{orderId}``, ``${stage.x}``, ``${header.x}``, ``${query.x}``, ``${consumer.name}``,
``${request_id}``) compiled at config load. Applies to backend responses and to the
gateway's own answers (the pipeline makes ``ctx.response_headers`` the answer's headers).
A value's bytes are ``Template.render_header``'s: a request header's, path variable's or
query argument's bytes echoed as the client sent them, text as UTF-8. The per-request work runs in C
(``ResponseHeadersStep`` in fastgw/_plugins.pxi, templates rendered by ``_tpl_render``).
"""

from __future__ import annotations

from typing import Any

from fastgw._core import ResponseHeadersStep
from fastgw.plugins.base import HEADER_NAME, HEADER_VALUE, PluginScope
from fastgw.plugins.base import Plugin as BasePlugin
from fastgw.plugins.template import compile_template, param_names

NAME = "response-headers"
PRIORITY = 800

_VALUES = {
    "type": "object", "default": {},
    "propertyNames": {"pattern": HEADER_NAME},
    "additionalProperties": {"type": "string", "pattern": HEADER_VALUE},
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "remove": {"type": "array", "default": [], "items": {"type": "string", "pattern": HEADER_NAME},
                   "description": "Header names to remove from the response."},
        "set": dict(_VALUES, description="Headers set to this value (every existing copy replaced)."),
        "add": dict(_VALUES, description="Headers added only if the response does not have them."),
        "append": dict(_VALUES, description="Headers appended (existing copies kept)."),
    },
}


class Plugin(BasePlugin):
    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        super().__init__(config, scope)
        params = param_names(scope.spec.resource)
        variables = scope.variables

        def compiled(mapping: dict[str, str]) -> tuple[tuple[bytes, Any], ...]:
            out = []
            for name, value in mapping.items():
                t = compile_template(value, params, variables)
                out.append((name.encode("latin-1"), t.render_header(None) if t.is_static else (t.native_parts(), t)))
            return tuple(out)

        self.set = compiled(config["set"])
        self.add = compiled(config["add"])
        self.append = compiled(config["append"])
        # PERF: one filter pass removes both the `remove` names and the `set` names.
        self.drop = tuple(dict.fromkeys([n.lower().encode("latin-1") for n in config["remove"]]
                                         + [n.lower() for n, _ in self.set]))
        self.add_lc = tuple((n.lower(), n, v) for n, v in self.add)
        self.native = ResponseHeadersStep(self.drop, self.set, self.append, self.add_lc)

    def on_response(self, ctx: Any) -> None:
        self.native.on_response(ctx)
