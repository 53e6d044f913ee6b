"""The per-request context that plugins see; created by the server only for routes with plugins.

``RequestContext`` is compiled (fastgw/_context.pxi: its attributes and helpers are
documented there) and re-exported here with :class:`Consumer`, the authenticated caller.
Headers are kept as the server parsed them: a list of ``(name, value)`` byte pairs in
arrival order (names in their original case). The plain path (no plugins) never builds a
context.
"""

from __future__ import annotations

from typing import Any

from fastgw._core import RequestContext

__all__ = ["Consumer", "Header", "RequestContext"]

Header = tuple[bytes, bytes]

_CONTROL = dict.fromkeys([*range(0, 32), 127])


def _clean(value: str) -> bytes:
    return value.translate(_CONTROL).encode("utf-8")


class Consumer:
    """An authenticated caller: ``name`` and ``groups`` (from the config's ``consumers``)."""

    __slots__ = ("name", "groups", "data", "headers")

    def __init__(self, name: str, groups: tuple[str, ...] = (), data: dict[str, Any] | None = None) -> None:
        self.name = name
        self.groups = groups
        self.data = data or {}
        # PERF: the identity headers for the backend are built once per consumer.
        # SECURITY: control characters are dropped (a name may come from a token claim).
        self.headers: tuple[Header, ...] = (
            (b"X-Consumer-Name", _clean(name)),
            (b"X-Consumer-Groups", _clean(",".join(groups))),
        )

    def __repr__(self) -> str:
        return f"Consumer({self.name!r}, groups={self.groups!r})"
