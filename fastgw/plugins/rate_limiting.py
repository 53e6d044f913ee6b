"""rate-limiting: at most N requests per second / minute / hour / day, per caller.

A caller is the authenticated consumer (``limit_by: consumer``, the default; a request
without one is counted by its client address), the client address (``ip``), or the value
of a request header (``header``, ``header_name``; without it: the client address). Counts
are fixed windows on the wall clock, shared by every route of the service's stage that has
the same limits (``scope: stage``, the default: a plugin set on the service or stage) or
kept per route (``scope: route``); a request over any
limit gets 429 with ``Retry-After`` (seconds until the window that refused it ends) and is
not counted. Every answer says where the caller stands, as the IETF RateLimit headers
(``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset``, for the limit closest
to running out) and Kong's ``X-RateLimit-Limit-Minute`` / ``X-RateLimit-Remaining-Minute``
per period, unless ``hide_client_headers``.

Where it counts (``policy``): ``node`` (default) in the node's shared memory
(``fastgw.counters``), so the limit holds across all workers of the gateway; ``redis`` in
the Redis of the top-level ``redis`` section, so it holds across every node sharing it.
When the counts can't be had (Redis down or slow, the node's table full), the request
goes through with ``fault_tolerant`` (the default, as Kong: a limiter outage is not an
API outage) and is refused with 503 without it.

The rules (who the caller is, the verdict, the headers) run in C (``RateLimitStep``,
fastgw/_ratelimit.pxi); with ``policy: node`` so does the counting, and this module only
fetches the counts of the other stores. With ``policy: redis`` one script call checks and
counts (``RedisCounters``): the step returns a future whose result is the verdict, and the
server goes on from its callback.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable
from typing import Any

from fastgw._core import RateLimitStep
from fastgw.counters import LocalCounters, NodeCounters, RedisCounters
from fastgw.plugins.base import CONTINUE, HEADER_NAME, PluginScope
from fastgw.plugins.base import Plugin as BasePlugin

NAME = "rate-limiting"
PRIORITY = 910          # after authentication (the consumer is known) and acl, as in Kong

PERIODS = (("second", 1), ("minute", 60), ("hour", 3600), ("day", 86400))

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **{name: {"type": "integer", "minimum": 1, "description": f"Requests allowed per {name}."}
           for name, _ in PERIODS},
        "limit_by": {"enum": ["consumer", "ip", "header"], "default": "consumer",
                     "description": "Who a count belongs to: the consumer (else the client address), "
                                    "the client address, or a request header's value (else the client address)."},
        "header_name": {"type": "string", "pattern": HEADER_NAME,
                        "description": "The header of limit_by: header."},
        "scope": {"enum": ["stage", "route"], "default": "stage",
                  "description": "One count for every route of the service's stage, or one per route."},
        "policy": {"enum": ["node", "redis"], "default": "node",
                   "description": "Count per gateway node (shared memory) or across nodes (the top-level redis)."},
        "fault_tolerant": {"type": "boolean", "default": True,
                           "description": "Let requests through when the counts can't be had (else 503)."},
        "hide_client_headers": {"type": "boolean", "default": False,
                                "description": "Leave out the RateLimit-* and X-RateLimit-* headers."},
    },
}

# Counters of a process without the node's region (plugins built by tests and tools).
_LOCAL = LocalCounters()


class Plugin(BasePlugin):
    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        super().__init__(config, scope)
        self.limits = tuple((name, period, config[name]) for name, period in PERIODS if name in config)
        if not self.limits:
            raise ValueError("set at least one limit: second, minute, hour or day")
        self.limit_by = config["limit_by"]
        self.header = config.get("header_name", "").lower()
        if self.limit_by == "header" and not self.header:
            raise ValueError("limit_by 'header' needs header_name")
        spec = scope.spec
        where = spec.key if config["scope"] == "route" else f"{spec.service}/{spec.stage}"
        # Counts belong to one set of limits (as Kong's belong to one plugin): the routes of a
        # stage that inherit the same settings share them, a route with other limits has its own.
        settings = repr((self.limits, self.limit_by, self.header)).encode()
        self.prefix = f"{where}|{hashlib.sha256(settings).hexdigest()[:12]}|".encode()
        services = scope.services
        if config["policy"] == "redis":
            self.store = services.get("redis_counters")
            if self.store is None and services:
                raise ValueError("policy 'redis' needs the top-level redis section")
        else:
            self.store = services.get("counters")
        if self.store is None:
            self.store = _LOCAL
        # The rules (caller, verdict, headers) are RateLimitStep's, in C (fastgw/_ratelimit.pxi).
        # PERF: counting in the node's table, the whole request phase runs there too.
        node = isinstance(self.store, NodeCounters)
        self.rules = RateLimitStep(self.store.table if node else None, self.store.key if node else None,
                                   self.prefix, self.limit_by, self.header, list(self.limits),
                                   config["hide_client_headers"], config["fault_tolerant"])
        self.native: RateLimitStep | None = None
        if node:
            self.rules.on_no_room = self.store.no_room
            self.native = self.rules
        self.periods = tuple(period for _, period, _ in self.limits)
        # Redis judges and counts in one step (a refused request is never added): no take-back.
        self.atomic = isinstance(self.store, RedisCounters)
        self.limit_values = tuple(limit for _, _, limit in self.limits)

    def on_request(self, ctx: Any) -> int | Awaitable[int]:
        if self.native is not None:
            return self.native.on_request(ctx)
        name = self.rules.caller_name(ctx)
        items = [(name, period) for period in self.periods]
        now = time.time()
        if self.atomic:
            # PERF: a future whose result is the verdict; the server goes on from its callback.
            return self.store.hit(items, now, 1, self.limit_values,
                                  lambda counts: self._decide(ctx, items, now, counts)[0])
        counts = self.store.hit(items, now, 1)
        if counts is None or isinstance(counts, list):
            return self._decide(ctx, items, now, counts)[0]
        return self._await_counts(ctx, items, now, counts)

    async def _await_counts(self, ctx: Any, items: list[tuple[bytes, int]], now: float,
                            pending: Awaitable[list[int] | None]) -> int:
        verdict, take_back = self._decide(ctx, items, now, await pending)
        if take_back is not None:
            await take_back
        return verdict

    def _decide(self, ctx: Any, items: list[tuple[bytes, int]], now: float,
                counts: list[int] | None) -> tuple[int, Any]:
        """(CONTINUE or ANSWERED, the store's pending take-back of a refused request's adds)."""
        if counts is None:
            return self.rules.unavailable(ctx), None
        verdict = self.rules.decide(ctx, counts, now)
        if not verdict:
            return CONTINUE, None
        if self.atomic:
            return verdict, None
        # A refused request is not counted: a client that keeps knocking gets in again as
        # soon as the window that refused it ends.
        back = self.store.hit(items, now, -1)
        return verdict, (None if back is None or isinstance(back, list) else back)
