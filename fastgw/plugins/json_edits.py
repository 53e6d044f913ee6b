"""JSON document edits shared by response-transformer (answer bodies) and
request-transformer (request bodies): ``remove``, ``rename``, ``replace`` (only what is
there), ``add`` (only what is not) and ``append`` (to an array), in that order, as Kong's
transformers do.

A key is a top-level key, or, starting with ``/``, a JSON Pointer (RFC 6901: ``/user/email``,
``/items/0/id``; ``~1`` stands for ``/`` and ``~0`` for ``~`` within a name) into nested
objects and arrays, where a ``*`` step stands for every item of an array or every value of
an object (``/items/*/secret``). A path that leads nowhere changes nothing, except that
``add`` and ``append`` create the missing objects on their way. ``rename``'s new name is a
key beside the old one; ``remove`` and ``replace`` may end in ``*`` (every item), ``rename``,
``add`` and ``append`` may not. Values are any JSON; their strings may be settings
templates (rendered per request, and they stay strings whatever the request sends).

Role in the flow: compiled once per route at config load (:class:`JsonEdits`); per request
:meth:`JsonEdits.render` fills the templates and :meth:`JsonEdits.apply` edits a parsed
document in place.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from fastgw.plugins.mock import _compile_json, _render_json

Key = str | tuple[str, ...]     # a top-level key, or a JSON Pointer's steps
Values = tuple[tuple[tuple[Key, Any], ...], ...]   # replace, add and append: (key, value) pairs

_MISSING = object()
_INDEX = re.compile(r"0|[1-9][0-9]{0,17}")   # an array index step (RFC 6901: no leading zeros)
_STEP = re.compile(r"(?:[^~]|~[01])*")


def _target(key: str, where: str, may_end_in_all: bool) -> Key:
    """A top-level key as it is, or a JSON Pointer's steps (ValueError naming ``where``)."""
    if not key.startswith("/"):
        return key
    steps = key[1:].split("/")
    for step in steps:
        if _STEP.fullmatch(step) is None:
            raise ValueError(f"{where}: {key!r}: '~' must be followed by 0 or 1 (RFC 6901)")
    if steps[-1] == "*" and not may_end_in_all:
        raise ValueError(f"{where}: {key!r} may not end in '*' (it names one key to set)")
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


class JsonEdits:
    """One route's edits, compiled. ``where(op)`` names an operation's setting in errors
    (``json.remove``, ``remove.body``); ValueError for a bad key."""

    def __init__(self, edits: dict[str, Any], params: tuple[str, ...], variables: dict[str, str],
                 where: Any) -> None:
        self.remove = tuple(_target(k, where("remove"), True) for k in edits.get("remove", ()))
        renames = edits.get("rename", {}).items()
        for old, new in renames:
            if new.startswith("/"):
                raise ValueError(f"{where('rename')}: {old!r}: the new name {new!r} is a key beside the old "
                                 "one, not a path (it may not start with '/')")
        self.rename = tuple((_target(old, where("rename"), False), new) for old, new in renames)
        # (key, compiled value, whether it needs the request) for replace, add and append
        self._values = tuple(
            tuple((_target(k, where(part), part == "replace"), *_compile_json(v, params, variables))
                  for k, v in edits.get(part, {}).items())
            for part in ("replace", "add", "append"))
        self.dynamic = any(dynamic for part in self._values for _, _, dynamic in part)
        # Only add and append edit a document in place, only along a path, and they come last.
        nested = any(type(k) is not str for part in self._values[1:] for k, _, _ in part)
        self._fresh = _copied if nested else _same
        self.empty = not (self.remove or self.rename or any(self._values))
        # PERF: without request values in them, the values are rendered once.
        self.static: Values | None = None if self.dynamic else self.render(None)

    def render(self, ctx: Any) -> Values:
        """The values for one request (templates read from ``ctx``)."""
        return tuple(tuple((k, _render_json(v, ctx) if dynamic else v) for k, v, dynamic in part)
                     for part in self._values)

    def apply(self, doc: dict[str, Any], values: Values) -> None:
        """Edit ``doc`` in place with ``values`` (from :meth:`render`)."""
        fresh = self._fresh
        replace, add, append = values
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
        for key, value in replace:
            if type(key) is str:
                if key in doc:
                    doc[key] = fresh(value)
                continue
            for holder in _holders(doc, key[:-1], False, []):
                for slot in _slots(holder, key[-1]):
                    holder[slot] = fresh(value)
        for key, value in add:
            for holder in ([doc] if type(key) is str else _holders(doc, key[:-1], True, [])):
                last = key if type(key) is str else key[-1]
                if isinstance(holder, dict) and last not in holder:
                    holder[last] = fresh(value)
        for key, value in append:
            for holder in ([doc] if type(key) is str else _holders(doc, key[:-1], True, [])):
                if isinstance(holder, dict):
                    _append(holder, key if type(key) is str else key[-1], fresh(value))


def is_json(content_type: bytes | str | None) -> bool:
    """A JSON media type (``application/json`` or ``…+json``), parameters aside."""
    if content_type is None:
        return False
    if isinstance(content_type, str):
        content_type = content_type.encode("latin-1")
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")
