"""Replay guard: one-time tokens (hmac-auth signatures) accepted once per node, or once
per cluster.

The node's guard is :class:`ReplayGuard`, over the replay table of the node's shared
region (``fastgw.shared.SharedRegion``, created by the supervisor and attached by every
worker, so a signature seen by one worker is refused by all of them, and by the next
generation after a reload). The table is written with atomic compare-and-swap
(``fastgw._core.ReplaySet``). Tokens are hashed under the region's random key
(``fastgw._core.table_slot``, as the rate-limit counters are): 64 bits pick the home slot,
44 more identify the token. A process without a region
(a plugin built in a test, or ``fastgw validate``) gets :class:`LocalReplayGuard`, the
same contract in a dict.

Many nodes: with a top-level ``redis`` in the config, workers use
:class:`RedisReplayGuard` instead (``SET <prefix>replay:<hash> 1 NX EX <ttl>``, one atomic
command over fastgw.resp's client, so a signature is accepted once by all the nodes
together); its ``first_use`` returns a future, and a Redis that fails or does not answer
in time gives None: the request is refused (fail closed), never let through unchecked.

When the node's table has no room left for a token (its 64 slots are all live),
:meth:`ReplayGuard.first_use` answers None too, and the plugin refuses the request (503).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from fastgw import _core
from fastgw.resp import reply_error, settle
from fastgw.sparselog import SparseLog

MAX_TTL = _core.REPLAY_MAX_TTL

log = logging.getLogger("fastgw.replay")


class ReplayGuard:
    """``first_use(token, ttl)`` over a shared :class:`fastgw._core.ReplaySet`."""

    def __init__(self, table: _core.ReplaySet, key: bytes) -> None:
        self._table = table
        self._key = key
        self._full = SparseLog(log)

    @property
    def table(self) -> _core.ReplaySet:
        return self._table

    @property
    def key(self) -> bytes:
        return self._key

    def first_use(self, token: bytes, ttl: float) -> bool | None:
        """True the first time ``token`` is seen within ``ttl`` seconds, False after that,
        None when there is no room to record it (the caller must refuse the request)."""
        return self.judge(self._table.first_use(self._key, token, ttl))

    def judge(self, verdict: int) -> bool | None:
        """``first_use``'s answer for the table's ``verdict`` (HmacAuthStep claims in C and
        asks this only when the table is full: the log line is written here)."""
        if verdict == _core.REPLAY_FULL:
            self._full.error("replay guard: no room for a signature (%d slots); signed requests are "
                             "refused until older ones expire", self._table.capacity)
            return None
        return verdict == _core.REPLAY_FIRST_USE

    def live_count(self) -> int:
        return int(self._table.live_count(int(time.monotonic()) & 0xFFFFFFFF))


class LocalReplayGuard:
    """The same contract for one process, in a dict (no region: tests, tools)."""

    def __init__(self) -> None:
        self._seen: dict[bytes, float] = {}
        self._purge_at = 0.0

    def first_use(self, token: bytes, ttl: float) -> bool | None:
        now = time.monotonic()
        seen = self._seen
        if now >= self._purge_at:
            self._seen = seen = {t: exp for t, exp in seen.items() if exp > now}
            self._purge_at = now + 1.0
        expires = seen.get(token)
        if expires is not None and expires > now:
            return False
        seen[token] = now + min(MAX_TTL, max(1.0, ttl))
        return True

    def live_count(self) -> int:
        now = time.monotonic()
        return sum(1 for exp in self._seen.values() if exp > now)


class RedisReplayGuard:
    """The contract over a Redis that every node shares (fastgw.resp's client);
    ``first_use`` returns a future."""

    def __init__(self, client: Any, key_prefix: str = "fastgw:") -> None:
        self._client = client
        self._prefix = key_prefix.encode() + b"replay:"
        self._down = SparseLog(log)

    def first_use(self, token: bytes, ttl: float,
                  then: Callable[[bool | None], Any] | None = None) -> asyncio.Future[Any]:
        """A future of True (first use), False (seen) or None (Redis failed or was too slow:
        the caller refuses), or of what ``then`` makes of that (PERF: hmac-auth's verdict,
        with no second future)."""
        key = self._prefix + hashlib.blake2b(token, digest_size=16).hexdigest().encode()
        done = self._client.loop().create_future()
        reply = self._client.call(b"SET", key, b"1", b"NX", b"EX", min(MAX_TTL, max(1, math.ceil(ttl))))
        reply.add_done_callback(lambda r: self._answer(r, done, then))
        return done

    def _answer(self, reply: asyncio.Future[Any], done: asyncio.Future[Any],
                then: Callable[[bool | None], Any] | None) -> None:
        if done.done():             # cancelled: the request went away
            return
        first: bool | None = None
        exc = reply_error(reply)
        if exc is None:
            first = reply.result() is not None          # +OK, or nil when the key was there
        else:  # any failure of the store: refuse (fail closed)
            self._down.error("replay guard: Redis unavailable (%s: %s); signed requests are refused",
                             type(exc).__name__, exc)
        settle(done, first, then)


# Every plugin instance of a process without a region shares this one, so a token used on
# one route is used on all of them (as with the shared region).
LOCAL_GUARD = LocalReplayGuard()
