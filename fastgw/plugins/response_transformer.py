"""response-transformer: edit the keys of JSON answer bodies (as Kong's plugin).

``json.remove`` drops keys, ``json.rename`` renames them (old -> new, when present),
``json.replace`` sets a key's value only when the key is there, ``json.add`` only when it
is not, and ``json.append`` adds a value to the key's array (a missing key becomes a
one-item array, a single value becomes an array holding it and the new one). Edits
apply in that order. Values are any JSON; strings may use the settings templates
(``{id}``, ``${stage.x}``, ``${header.x}``, ``${query.x}``, ``${consumer.name}``,
``${request_id}``) and stay strings whatever the request sends.

Keys may be JSON Pointers into nested objects and arrays (``/user/email``,
``/items/*/secret``): see fastgw/plugins/json_edits.py.

Only answers whose Content-Type is JSON (``application/json`` or ``…+json``), whose body
is a JSON object and at most ``max_body`` bytes, are changed; the server holds such an
answer until its body is whole and sends the new one with its own Content-Length
(RequestContext.response_filter). A chunked answer is held while its decoded payload fits
``max_body``; one that outgrows it goes out unchanged, framed in chunks by the gateway.
Others pass untouched and unheld. Gateway answers (mock, a cache hit) are changed the same
way; header edits are response-headers' job.
"""

from __future__ import annotations

from typing import Any

import orjson

from fastgw.plugins.base import CONTINUE, PluginScope
from fastgw.plugins.base import Plugin as BasePlugin
from fastgw.plugins.json_edits import JsonEdits, Values, is_json
from fastgw.plugins.template import param_names

NAME = "response-transformer"
PRIORITY = 800

_KEYS = {"type": "array", "default": [], "uniqueItems": True, "items": {"type": "string"}}
_VALUES = {"type": "object", "default": {}}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "json": {
            "type": "object", "default": {}, "additionalProperties": False,
            "properties": {
                "remove": dict(_KEYS, description="Keys removed (a top-level key, or a JSON Pointer "
                                                  "starting with '/', '*' for every item)."),
                "rename": {"type": "object", "default": {}, "additionalProperties": {"type": "string"},
                           "description": "Old key (or JSON Pointer) -> new key beside it."},
                "replace": dict(_VALUES, description="Values set for keys (or JSON Pointers) that are present."),
                "add": dict(_VALUES, description="Values set for keys (or JSON Pointers) that are absent."),
                "append": dict(_VALUES, description="Values appended to the keys' (or JSON Pointers') arrays."),
            },
        },
        "max_body": {"type": "integer", "minimum": 0, "default": 1 << 20,
                     "description": "Largest body changed, in bytes (larger ones pass as they are)."},
    },
}


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            return is_json(value)
    return False


class _Filter:
    """One route's edits, with their values for one request (RequestContext.response_filter)."""

    __slots__ = ("max_answer", "edits", "values")

    def __init__(self, plugin: Plugin, values: Values) -> None:
        self.max_answer = plugin.max_answer
        self.edits = plugin.edits
        self.values = values

    def start(self, status: int, headers: list[tuple[bytes, bytes]], content_length: int) -> bool:
        return content_length <= self.max_answer and _is_json(headers)

    def rewrite(self, body: bytes) -> bytes:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        if not isinstance(doc, dict):
            return body
        self.edits.apply(doc, self.values)
        return orjson.dumps(doc)


class Plugin(BasePlugin):
    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        super().__init__(config, scope)
        self.edits = JsonEdits(config["json"], param_names(scope.spec.resource), scope.variables,
                               lambda op: f"json.{op}")
        self.max_answer = int(config["max_body"])
        # PERF: without request values in them, one filter serves every request.
        self._static = None if self.edits.dynamic else _Filter(self, self.edits.render(None))

    def on_request(self, ctx: Any) -> int:
        ctx.response_filter = self._static or _Filter(self, self.edits.render(ctx))
        return CONTINUE
