"""response-transformer: edit the top-level keys of JSON answer bodies (as Kong's plugin).

``json.remove`` drops keys, ``json.rename`` renames them (old -> new, when present),
``json.replace`` sets a key's value only when the key is there, ``json.add`` only when it
is not, and ``json.append`` adds a value to the key's array (a missing key becomes a
one-item array, a single value becomes an array holding it and the new one). Edits
apply in that order. Values are any JSON; strings may use the settings templates
(``{id}``, ``${stage.x}``, ``${header.x}``, ``${query.x}``, ``${consumer.name}``,
``${request_id}``) and stay strings whatever the request sends.

Only answers whose Content-Type is JSON (``application/json`` or ``…+json``), whose body
is a JSON object and at most ``max_body`` bytes, are changed; the server holds such an
answer until its body is whole and sends the new one with its own Content-Length
(RequestContext.response_filter). A chunked answer is held while its decoded payload fits
``max_body``; one that outgrows it goes out unchanged, framed in chunks by the gateway. Others pass untouched and unheld. Gateway answers
(mock, a cache hit) are changed the same way; header edits are response-headers' job.
"""

from __future__ import annotations

from typing import Any

import orjson

from fastgw.plugins.base import CONTINUE, PluginScope
from fastgw.plugins.base import Plugin as BasePlugin
from fastgw.plugins.mock import _compile_json, _render_json
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
                "remove": dict(_KEYS, description="Keys removed."),
                "rename": {"type": "object", "default": {}, "additionalProperties": {"type": "string"},
                           "description": "Old key -> new key."},
                "replace": dict(_VALUES, description="Values set for keys that are present."),
                "add": dict(_VALUES, description="Values set for keys that are absent."),
                "append": dict(_VALUES, description="Values appended to the keys' arrays."),
            },
        },
        "max_body": {"type": "integer", "minimum": 0, "default": 1 << 20,
                     "description": "Largest body changed, in bytes (larger ones pass as they are)."},
    },
}


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return False


class _Filter:
    """One route's edits, with their values for one request (RequestContext.response_filter)."""

    __slots__ = ("max_answer", "remove", "rename", "replace", "add", "append")

    def __init__(self, plugin: Plugin, values: tuple[tuple[tuple[str, Any], ...], ...]) -> None:
        self.max_answer = plugin.max_answer
        self.remove = plugin.remove
        self.rename = plugin.rename
        self.replace, self.add, self.append = values

    def start(self, status: int, headers: list[tuple[bytes, bytes]], content_length: int) -> bool:
        return content_length <= self.max_answer and _is_json(headers)

    def rewrite(self, body: bytes) -> bytes:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        if not isinstance(doc, dict):
            return body
        for key in self.remove:
            doc.pop(key, None)
        for old, new in self.rename:
            if old in doc:
                doc[new] = doc.pop(old)
        for key, value in self.replace:
            if key in doc:
                doc[key] = value
        for key, value in self.add:
            if key not in doc:
                doc[key] = value
        for key, value in self.append:
            have = doc.get(key)
            items = [] if key not in doc else list(have) if isinstance(have, list) else [have]
            items.append(value)
            doc[key] = items
        return orjson.dumps(doc)


class Plugin(BasePlugin):
    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        super().__init__(config, scope)
        params = param_names(scope.spec.resource)
        edits = config["json"]
        self.remove = tuple(edits.get("remove", ()))
        self.rename = tuple(edits.get("rename", {}).items())
        self.max_answer = int(config["max_body"])
        # (key, compiled value, whether it needs the request) for replace, add and append
        self._values = tuple(
            tuple((k, *_compile_json(v, params, scope.variables)) for k, v in edits.get(part, {}).items())
            for part in ("replace", "add", "append"))
        self._dynamic = any(dynamic for part in self._values for _, _, dynamic in part)
        # PERF: without request values in them, one filter serves every request.
        self._static = None if self._dynamic else _Filter(self, self._render(None))

    def _render(self, ctx: Any) -> tuple[tuple[tuple[str, Any], ...], ...]:
        return tuple(tuple((k, _render_json(v, ctx) if dynamic else v) for k, v, dynamic in part)
                     for part in self._values)

    def on_request(self, ctx: Any) -> int:
        ctx.response_filter = self._static or _Filter(self, self._render(ctx))
        return CONTINUE
