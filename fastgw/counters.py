"""Rate-limit counters: fixed windows counted per node (shared memory) or per cluster (Redis).

A counter is one name (the limit's scope and the caller, built by the rate-limiting
plugin) in one period (1, 60, 3 600 or 86 400 s); windows are aligned on the wall clock
(a minute window starts at :00), so every worker and every node agree on them.

``hit(items, now, delta)`` adds ``delta`` to each ``(name, period)`` counter of the
window around ``now`` and returns the new counts (a negative ``delta`` takes an add back):

- :class:`NodeCounters` over the node's shared table (``fastgw._core.CounterTable``, in
  the region of ``fastgw.shared``): every worker adds to the same counts, with atomic
  compare-and-swap; None when the table has no room for a counter.
- :class:`LocalCounters`, the same in a dict for one process (tests, no region).
- :class:`RedisCounters`, one ``INCRBY`` (and an ``EXPIRE … NX``) per counter in one round
  trip: the counts of every node sharing the Redis. ``hit`` returns an awaitable; None
  when Redis fails or does not answer in time.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

from fastgw import _core
from fastgw.sparselog import SparseLog

log = logging.getLogger("fastgw.counters")

Items = Sequence[tuple[bytes, int]]


def window_end(now: float, period: int) -> int:
    """The wall-clock second the window holding ``now`` ends."""
    return (int(now) // period + 1) * period


class NodeCounters:
    def __init__(self, table: _core.CounterTable, key: bytes) -> None:
        self.table = table
        self.key = key
        self._full = SparseLog(log)
        self._slots: dict[tuple[bytes, int], tuple[int, int]] = {}   # PERF: hashes of recent counters

    def _hash(self, name: bytes, period: int) -> tuple[int, int]:
        hashed = self._slots.get((name, period))
        if hashed is None:
            if len(self._slots) >= 65536:
                self._slots.clear()
            hashed = self._slots[(name, period)] = _core.table_slot(self.key, name, period)
        return hashed

    def no_room(self) -> None:
        self._full.error("rate-limit counters: no room for a counter (%d slots)", self.table.capacity)

    def hit(self, items: Items, now: float, delta: int = 1) -> list[int] | None:
        out = []
        wall = int(now)
        for name, period in items:
            home, fingerprint = self._hash(name, period)
            count = self.table.hit(home, fingerprint, wall & 0xFFFFFFFF, window_end(now, period) & 0xFFFFFFFF, delta)
            if count < 0:
                self.no_room()
                return None
            out.append(count)
        return out


class LocalCounters:
    def __init__(self) -> None:
        self._counts: dict[tuple[bytes, int], tuple[int, int]] = {}

    def hit(self, items: Items, now: float, delta: int = 1) -> list[int] | None:
        out = []
        for name, period in items:
            end = window_end(now, period)
            stored_end, count = self._counts.get((name, period), (0, 0))
            count = max(0, (count if stored_end == end else 0) + delta)
            self._counts[(name, period)] = (end, count)
            out.append(count)
        if len(self._counts) > 100_000:                 # drop ended windows now and then
            wall = int(now)
            self._counts = {k: v for k, v in self._counts.items() if v[0] > wall}
        return out


class RedisCounters:
    def __init__(self, client: Any, key_prefix: str = "fastgw:") -> None:
        self._client = client
        self._prefix = key_prefix + "rl:"
        self._down = SparseLog(log)

    def hit(self, items: Items, now: float, delta: int = 1) -> Awaitable[list[int] | None]:
        return self._hit(items, now, delta)

    async def _hit(self, items: Items, now: float, delta: int) -> list[int] | None:
        pipe = self._client.pipeline(transaction=False)
        for name, period in items:
            end = window_end(now, period)
            key = f"{self._prefix}{hashlib.blake2b(name, digest_size=16).hexdigest()}:{period}:{end}"
            pipe.incrby(key, delta)
            pipe.expire(key, end - int(now) + 1, nx=True)
        try:
            replies = await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - any failure of the store: the plugin decides
            self._down.error("rate-limit counters: Redis unavailable (%s: %s)", type(exc).__name__, exc)
            return None
        return [max(0, int(n)) for n in replies[0::2]]
