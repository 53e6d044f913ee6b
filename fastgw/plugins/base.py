"""The plugin contract: phases, return codes and the pass-through base class.

A plugin module exports ``NAME``, ``PRIORITY`` (higher runs first, as in Kong), ``SCHEMA``
(JSON Schema of its ``config``) and ``Plugin``, a subclass of :class:`Plugin`. One instance
is built per route at config load with its validated settings; per-request work happens
only in the phase methods. A phase never raises to steer the chain: ``on_request`` returns
``CONTINUE`` or ``ANSWERED`` (after ``ctx.answer``/``ctx.error``), or, from a plain ``def``,
an awaitable of either for a request that has to wait (the chain goes on after it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastgw.config.model import RouteSpec
    from fastgw.context import RequestContext

CONTINUE = 0
ANSWERED = 1

# Schema patterns for settings that become header lines: a field name is an RFC 9110 token;
# a value may not break the line (CR, LF) or hold NUL.
HEADER_NAME = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
HEADER_VALUE = "^[^\\r\\n\\x00]*$"


@dataclass
class PluginScope:
    """What a plugin instance may know at build time besides its own settings."""

    spec: RouteSpec
    consumers: Any = None  # fastgw.consumers.ConsumerTable (built once per config)
    variables: dict[str, str] = field(default_factory=dict)
    services: dict[str, Any] = field(default_factory=dict)  # shared parts ("replay": fastgw.replay guard)


class Plugin:
    """Pass-through base: override only the phases the plugin uses (any may be async)."""

    NAME = "base"
    PRIORITY = 0
    # Read by the pipeline at build time, besides the phases (a plugin sets them on itself):
    request_body_limit: int = -1   # bytes: the route's request bodies past this get 413 (-1: none)
    needs_body: bool = False       # the request body is read whole into ctx.body before on_request

    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        self.config = config
        self.scope = scope

    def on_request(self, ctx: RequestContext) -> int:
        return CONTINUE

    def on_response(self, ctx: RequestContext) -> None:
        return None

    def on_log(self, ctx: RequestContext) -> None:
        return None

    def close(self) -> None:
        """Release resources (called when a config is replaced)."""
