"""Replay guard: one-time tokens (hmac-auth signatures) accepted once per node.

The supervisor creates one region (a file in ``/dev/shm``, like the stats region) and
passes its name to every worker (``--replay``); each worker attaches and hands a
:class:`ReplayGuard` to its plugins as ``PluginScope.services["replay"]``. The table lives
in shared memory and is written with atomic compare-and-swap (``fastgw._core.ReplaySet``),
so a signature seen by one worker is refused by all of them, and by the next generation
after a reload (it attaches the same region). Layout::

    header (4096 B)   magic, version, capacity (slots), 32-byte random key
    table             capacity x u64 words (see fastgw/_replay.pxi)

Tokens are hashed with BLAKE2b under the region's random key: 64 bits pick the home slot,
44 more identify the token. A process without a region (a plugin built in a test, or
``fastgw validate``) gets :class:`LocalReplayGuard`, the same contract in a dict.

Many nodes: with a top-level ``redis`` in the config, workers use
:class:`RedisReplayGuard` instead (``SET <prefix>replay:<hash> 1 NX EX <ttl>``, one atomic
command, so a signature is accepted once by all the nodes together); its ``first_use``
returns an awaitable, and a Redis that fails or does not answer in time gives None: the
request is refused (fail closed), never let through unchecked.

Capacity: 2**21 slots by default (16 MB of address space; a page takes memory only once a
token lands in it), enough for about a million live signatures — with the default
300 s clock skew, some 1 500 signed requests a second, sustained. Beyond what a token's
64 slots can hold, :meth:`ReplayGuard.first_use` answers None and the plugin refuses the
request (503): it never lets a signature through unchecked.
"""

from __future__ import annotations

import hashlib
import logging
import math
import mmap
import os
import struct
import time
from collections.abc import Awaitable
from typing import Any

from fastgw import _core
from fastgw.stats import remove_stale_regions

MAGIC = b"FGWRPLY1"
VERSION = 1
HEADER_SIZE = 4096
DEFAULT_CAPACITY = 1 << 21
MAX_TTL = _core.REPLAY_MAX_TTL
_HEADER = struct.Struct("<8sIIQ32s")   # magic, version, reserved, capacity, key
_PREFIX = "fastgw-replay-"

log = logging.getLogger("fastgw.replay")


class ReplayGuard:
    """``first_use(token, ttl)`` over a shared :class:`fastgw._core.ReplaySet`."""

    def __init__(self, table: _core.ReplaySet, key: bytes) -> None:
        self._table = table
        self._key = key
        self._last_full = -10.0

    def first_use(self, token: bytes, ttl: float) -> bool | None:
        """True the first time ``token`` is seen within ``ttl`` seconds, False after that,
        None when there is no room to record it (the caller must refuse the request)."""
        digest = hashlib.blake2b(token, digest_size=16, key=self._key).digest()
        home, fingerprint = struct.unpack("<QQ", digest)
        seconds = min(MAX_TTL, max(1, math.ceil(ttl)))
        verdict = self._table.claim(home, fingerprint, int(time.monotonic()) & 0xFFFFFFFF, seconds)
        if verdict == _core.REPLAY_FULL:
            now = time.monotonic()
            if now - self._last_full >= 10.0:         # one line per 10 s, not one per request
                self._last_full = now
                log.error("replay guard: no room for a signature (%d slots); signed requests are "
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
    """The contract over a Redis that every node shares; ``first_use`` is awaitable."""

    def __init__(self, client: Any, key_prefix: str = "fastgw:") -> None:
        self._client = client
        self._prefix = key_prefix + "replay:"
        self._last_error = -10.0

    def first_use(self, token: bytes, ttl: float) -> Awaitable[bool | None]:
        return self._first_use(token, ttl)

    async def _first_use(self, token: bytes, ttl: float) -> bool | None:
        key = self._prefix + hashlib.blake2b(token, digest_size=16).hexdigest()
        try:
            done = await self._client.set(key, b"1", nx=True, ex=min(MAX_TTL, max(1, math.ceil(ttl))))
        except Exception as exc:  # noqa: BLE001 - any failure of the store: refuse (fail closed)
            now = time.monotonic()
            if now - self._last_error >= 10.0:        # one line per 10 s, not one per request
                self._last_error = now
                log.error("replay guard: Redis unavailable (%s: %s); signed requests are refused",
                          type(exc).__name__, exc)
            return None
        return bool(done)

    async def close(self) -> None:
        await self._client.aclose()


def redis_guard(settings: dict[str, Any]) -> RedisReplayGuard:
    """The guard for a config's ``redis`` section (connects on first use)."""
    import redis.asyncio

    timeout = float(settings.get("timeout", 0.25))
    client = redis.asyncio.Redis.from_url(settings["url"], socket_timeout=timeout, socket_connect_timeout=timeout)
    return RedisReplayGuard(client, settings.get("key_prefix", "fastgw:"))


# Every plugin instance of a process without a region shares this one, so a token used on
# one route is used on all of them (as with the shared region).
LOCAL_GUARD = LocalReplayGuard()


class ReplayRegion:
    """The shared-memory file. Supervisor: ``ReplayRegion.create()``, ``region.name`` to the
    workers, ``region.close()`` at exit (removes the file). Worker: ``attach(name).guard()``."""

    def __init__(self, path: str, fd: int, mm: mmap.mmap, capacity: int, key: bytes, owner: bool) -> None:
        self.path = path
        self._fd = fd
        self._mm = mm
        self.capacity = capacity
        self._key = key
        self.owner = owner
        self._table: _core.ReplaySet | None = None

    @property
    def name(self) -> str:
        return self.path

    @classmethod
    def create(cls, capacity: int = DEFAULT_CAPACITY, directory: str = "/dev/shm") -> ReplayRegion:
        if capacity < _core.REPLAY_WINDOW or capacity & (capacity - 1):
            raise ValueError(f"replay region: capacity must be a power of two >= {_core.REPLAY_WINDOW}")
        if not os.path.isdir(directory):
            directory = "/tmp"
        remove_stale_regions(directory, kind="replay")
        path = os.path.join(directory, f"{_PREFIX}{os.getpid()}-{os.urandom(4).hex()}")
        key = os.urandom(32)
        size = HEADER_SIZE + capacity * 8
        # SECURITY: 0600 and created exclusively (as the stats region): no other local user
        # can read the key, forge used tokens or pre-create the file.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)           # sparse: pages take memory as tokens land in them
            mm = mmap.mmap(fd, size)
            _HEADER.pack_into(mm, 0, MAGIC, VERSION, 0, capacity, key)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        return cls(path, fd, mm, capacity, key, owner=True)

    @classmethod
    def attach(cls, name: str) -> ReplayRegion:
        fd = os.open(name, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise ValueError(f"{name}: not a fastgw replay region")
            mm = mmap.mmap(fd, size)
            magic, version, _, capacity, key = _HEADER.unpack_from(mm, 0)
            if magic != MAGIC or version != VERSION or HEADER_SIZE + capacity * 8 > size:
                mm.close()
                raise ValueError(f"{name}: not a fastgw replay region (or another version)")
        except BaseException:
            os.close(fd)
            raise
        return cls(name, fd, mm, capacity, key, owner=False)

    def guard(self) -> ReplayGuard:
        if self._table is None:
            self._table = _core.ReplaySet(self._mm, HEADER_SIZE, self.capacity)
        return ReplayGuard(self._table, self._key)

    def close(self) -> None:
        """Unmap (when no guard still points into it) and, for the creator, remove the file."""
        if self._fd < 0:
            return
        if self._table is None:
            self._mm.close()
        os.close(self._fd)
        self._fd = -1
        if self.owner:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

