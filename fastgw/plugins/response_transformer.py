"""response-transformer: edit the keys of JSON answer bodies (as Kong's plugin).

``json.remove`` drops keys, ``json.rename`` renames them (old -> new, when present),
``json.replace`` sets a key's value only when the key is there, ``json.add`` only when it
is not, and ``json.append`` adds a value to the key's array (a missing key becomes a
one-item array, a single value becomes an array holding it and the new one). Edits
apply in that order. Values are any JSON; strings may use the settings templates
(``{id}``, ``${stage.x}``, ``${header.x}``, ``${query.x}``, ``${consumer.name}``,
``${request_id}``) and stay strings whatever the request sends.

A key is a top-level key, or, starting with ``/``, a JSON Pointer (RFC 6901: ``/user/email``,
``/items/0/id``; ``~1`` stands for ``/`` and ``~0`` for ``~`` within a name) into nested
objects and arrays, where a ``*`` step stands for every item of an array or every value of
an object (``/items/*/secret``). A path that leads nowhere changes nothing, except that
``add`` and ``append`` create the missing objects on their way. ``rename``'s new name is a
key beside the old one; ``remove`` and ``replace`` may end in ``*`` (every item), ``rename``,
``add`` and ``append`` may not.

Only answers whose Content-Type is JSON (``application/json`` or ``…+json``), whose body
is a JSON object and at most ``max_body`` bytes, are changed; the server holds such an
answer until its body is whole and sends the new one with its own Content-Length
(RequestContext.response_filter). A chunked answer is held while its decoded payload fits
``max_body``; one that outgrows it goes out unchanged, framed in chunks by the gateway. Others pass untouched and unheld. Gateway answers
(mock, a cache hit) are changed the same way; header edits are response-headers' job.
"""

from __future__ import annotations

import copy
import re
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


def _target(key: str, where: str, may_end_in_all: bool) -> str | tuple[str, ...]:
    """A top-level key as it is, or a JSON Pointer's steps (ValueError naming ``where``)."""
    if not key.startswith("/"):
        return key
    steps = key[1:].split("/")
    for step in steps:
        if re.fullmatch(r"(?:[^~]|~[01])*", step) is None:
            raise ValueError(f"json.{where}: {key!r}: '~' must be followed by 0 or 1 (RFC 6901)")
    if steps[-1] == "*" and not may_end_in_all:
        raise ValueError(f"json.{where}: {key!r} may not end in '*' (it names one key to set)")
    return tuple(step.replace("~1", "/").replace("~0", "~") for step in steps)


def _child(node: Any, step: str) -> Any:
    if isinstance(node, dict):
        return node.get(step, _MISSING)
    if isinstance(node, list) and _INDEX.fullmatch(step) and int(step) < len(node):
        return node[int(step)]
    return _MISSING


def _holders(node: Any, steps: tuple[str, ...], create: bool, out: list[Any]) -> list[Any]:
    """The objects and arrays ``steps`` lead to from ``node`` (``*``: every item), into ``out``;
    ``create``: a missing step in an object becomes an empty object."""
    if not steps:
        out.append(node)
        return out
    step, rest = steps[0], steps[1:]
    if step == "*":
        for item in (node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()):
            if isinstance(item, (dict, list)):
                _holders(item, rest, create, out)
        return out
    child = _child(node, step)
    if child is _MISSING and create and isinstance(node, dict):
        child = node[step] = {}
    if isinstance(child, (dict, list)):
        _holders(child, rest, create, out)
    return out


def _slots(holder: Any, last: str) -> list[Any]:
    """The keys or indexes ``last`` names in ``holder`` that are there (``*``: all of them)."""
    if isinstance(holder, dict):
        return list(holder) if last == "*" else [last] if last in holder else []
    if isinstance(holder, list):
        if last == "*":
            return list(range(len(holder)))
        return [int(last)] if _INDEX.fullmatch(last) and int(last) < len(holder) else []
    return []


def _append(holder: dict[str, Any], key: str, value: Any) -> None:
    have = holder.get(key)
    items = [] if key not in holder else list(have) if isinstance(have, list) else [have]
    items.append(value)
    holder[key] = items


def _copied(value: Any) -> Any:
    """A setting's value to put in a document where a later edit may change it in place (an
    ``add`` or ``append`` path through it): the settings are shared by every request."""
    return copy.deepcopy(value) if isinstance(value, (dict, list)) else value


def _same(value: Any) -> Any:
    return value


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return False


_MISSING = object()
_INDEX = re.compile(r"0|[1-9][0-9]{0,17}")   # an array index step (RFC 6901: no leading zeros)


class _Filter:
    """One route's edits, with their values for one request (RequestContext.response_filter)."""

    __slots__ = ("max_answer", "remove", "rename", "replace", "add", "append", "fresh")

    def __init__(self, plugin: Plugin, values: tuple[tuple[tuple[str, Any], ...], ...]) -> None:
        self.max_answer = plugin.max_answer
        self.remove = plugin.remove
        self.rename = plugin.rename
        self.replace, self.add, self.append = values
        self.fresh = plugin.fresh

    def start(self, status: int, headers: list[tuple[bytes, bytes]], content_length: int) -> bool:
        return content_length <= self.max_answer and _is_json(headers)

    def rewrite(self, body: bytes) -> bytes:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        if not isinstance(doc, dict):
            return body
        # A key is a str (top level) or a tuple of JSON Pointer steps (see _target).
        fresh = self.fresh
        for key in self.remove:
            if type(key) is str:
                doc.pop(key, None)
                continue
            for holder in _holders(doc, key[:-1], False, []):
                for slot in reversed(_slots(holder, key[-1])):      # list indexes: last first
                    del holder[slot]
        for old, new in self.rename:
            for holder in ([doc] if type(old) is str else _holders(doc, old[:-1], False, [])):
                last = old if type(old) is str else old[-1]
                if isinstance(holder, dict) and last in holder:
                    holder[new] = holder.pop(last)
        for key, value in self.replace:
            if type(key) is str:
                if key in doc:
                    doc[key] = fresh(value)
                continue
            for holder in _holders(doc, key[:-1], False, []):
                for slot in _slots(holder, key[-1]):
                    holder[slot] = fresh(value)
        for key, value in self.add:
            for holder in ([doc] if type(key) is str else _holders(doc, key[:-1], True, [])):
                last = key if type(key) is str else key[-1]
                if isinstance(holder, dict) and last not in holder:
                    holder[last] = fresh(value)
        for key, value in self.append:
            for holder in ([doc] if type(key) is str else _holders(doc, key[:-1], True, [])):
                if isinstance(holder, dict):
                    _append(holder, key if type(key) is str else key[-1], fresh(value))
        return orjson.dumps(doc)


class Plugin(BasePlugin):
    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        super().__init__(config, scope)
        params = param_names(scope.spec.resource)
        edits = config["json"]
        self.remove = tuple(_target(k, "remove", True) for k in edits.get("remove", ()))
        renames = edits.get("rename", {}).items()
        for old, new in renames:
            if new.startswith("/"):
                raise ValueError(f"json.rename: {old!r}: the new name {new!r} is a key beside the old one, "
                                 "not a path (it may not start with '/')")
        self.rename = tuple((_target(old, "rename", False), new) for old, new in renames)
        self.max_answer = int(config["max_body"])
        # (key, compiled value, whether it needs the request) for replace, add and append
        self._values = tuple(
            tuple((_target(k, part, part == "replace"), *_compile_json(v, params, scope.variables))
                  for k, v in edits.get(part, {}).items())
            for part in ("replace", "add", "append"))
        self._dynamic = any(dynamic for part in self._values for _, _, dynamic in part)
        # Only add and append edit a document in place, only along a path, and they come last.
        nested = any(type(k) is not str for part in self._values[1:] for k, _, _ in part)
        self.fresh = _copied if nested else _same
        # PERF: without request values in them, one filter serves every request.
        self._static = None if self._dynamic else _Filter(self, self._render(None))

    def _render(self, ctx: Any) -> tuple[tuple[tuple[str, Any], ...], ...]:
        return tuple(tuple((k, _render_json(v, ctx) if dynamic else v) for k, v, dynamic in part)
                     for part in self._values)

    def on_request(self, ctx: Any) -> int:
        ctx.response_filter = self._static or _Filter(self, self._render(ctx))
        return CONTINUE
