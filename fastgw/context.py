"""The per-request context that plugins see; created by the server only for routes with plugins.

``RequestContext`` is compiled (fastgw/_context.pxi: its attributes and helpers are
documented there) and re-exported here with :class:`Consumer`, the authenticated caller
(also compiled).
Headers are kept as the server parsed them: a list of ``(name, value)`` byte pairs in
arrival order (names in their original case). The plain path (no plugins) never builds a
context.
"""

from __future__ import annotations

from fastgw._core import Consumer, RequestContext

__all__ = ["Consumer", "Header", "RequestContext"]

Header = tuple[bytes, bytes]

