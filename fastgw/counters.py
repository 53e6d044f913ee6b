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
- :class:`RedisCounters`, one script call (``EVALSHA``) a request over fastgw.resp's
  pipelined connection: the counts of every node sharing the Redis, checked against the
  limits and stored in one atomic step. ``hit`` returns a future; None when Redis fails or
  does not answer in time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastgw import _core
from fastgw.resp import RespError, reply_error, settle
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


# Counts a request in every window of its caller when it is within every limit (else counts
# nothing), atomically: KEYS one per limit; ARGV delta, then a limit and a TTL per key.
# Returns the counts this request sees (its own included, stored or not).
_TAKE = b"""
local delta = tonumber(ARGV[1])
local out, over = {}, false
for i = 1, #KEYS do
  local n = (tonumber(redis.call('GET', KEYS[i])) or 0) + delta
  if n < 0 then n = 0 end
  out[i] = n
  if n > tonumber(ARGV[2 * i]) then over = true end
end
if not over then
  for i = 1, #KEYS do
    redis.call('SET', KEYS[i], out[i], 'KEEPTTL')
    if redis.call('TTL', KEYS[i]) < 0 then redis.call('EXPIRE', KEYS[i], ARGV[2 * i + 1]) end
  end
end
return out
"""
_TAKE_SHA = hashlib.sha1(_TAKE).hexdigest().encode()
_NO_LIMIT = 1 << 53


class RedisCounters:
    """Counts in the Redis every node shares, one round trip a request (fastgw.resp)."""

    def __init__(self, client: Any, key_prefix: str = "fastgw:") -> None:
        self._client = client
        self._prefix = key_prefix.encode() + b"rl:{"
        self._down = SparseLog(log)
        self._keys: dict[bytes, bytes] = {}    # PERF: a caller's key stem, hashed once

    def hit(self, items: Items, now: float, delta: int = 1, limits: Sequence[int] | None = None,
            then: Callable[[list[int] | None], Any] | None = None) -> asyncio.Future[Any]:
        """Add ``delta`` to each counter; with ``limits`` (one per item), only when every
        count stays within its limit (a refused request is not counted, with no second
        round trip and no window between the add and its take-back). The future's result
        is the counts (None: Redis failed or was too slow), or what ``then`` makes of them
        (PERF: the rate-limiting plugin's verdict, with no second future)."""
        wall = int(now)
        ends = [window_end(now, period) for _name, period in items]
        args: list[bytes | int] = [b"EVALSHA", _TAKE_SHA, len(items)]
        for (name, period), end in zip(items, ends, strict=True):
            stem = self._keys.get(name)
            if stem is None:
                if len(self._keys) >= 65536:
                    self._keys.clear()
                # Hash-tagged: one caller's windows land in one Redis Cluster slot.
                stem = self._keys[name] = self._prefix + hashlib.blake2b(name, digest_size=16).hexdigest().encode() + b"}:"
            args.append(b"%s%d:%d" % (stem, period, end))
        args.append(delta)
        for i, end in enumerate(ends):
            args.append(_NO_LIMIT if limits is None else limits[i])
            args.append(end - wall + 1)
        done = self._client.loop().create_future()
        self._client.call(*args).add_done_callback(lambda reply: self._answer(reply, done, args, then))
        return done

    def _answer(self, reply: asyncio.Future[Any], done: asyncio.Future[Any], args: list[Any],
                then: Callable[[list[int] | None], Any] | None) -> None:
        if done.done():             # cancelled: the request went away
            return
        counts: list[int] | None = None
        exc = reply_error(reply)
        if exc is None:
            counts = [int(n) for n in reply.result()]
        elif isinstance(exc, RespError) and str(exc).startswith("NOSCRIPT"):
            # The script cache was flushed (SCRIPT FLUSH, a restart): EVAL caches it again.
            args = [b"EVAL", _TAKE, *args[2:]]
            self._client.call(*args).add_done_callback(lambda again: self._answer(again, done, args, then))
            return
        else:
            self._down.error("rate-limit counters: Redis unavailable (%s: %s)", type(exc).__name__, exc)
        settle(done, counts, then)

    async def aclose(self) -> None:
        """Close the client (tests; a worker closes its shared client itself)."""
        await self._client.aclose()
