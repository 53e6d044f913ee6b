"""Node-wide state in shared memory: hmac-auth's replay set and the rate-limit counters.

The supervisor creates one region (a file in ``/dev/shm``, like the stats region) for its
whole life and passes its name to every worker (``--shared``); each worker attaches and
hands its plugins the node's guards through ``PluginScope.services`` (``"replay"``,
``"counters"``). Every worker, and every generation after a reload, writes the same
tables with atomic compare-and-swap, so what they hold is true for the node. Layout::

    header (4096 B)   magic, version, replay slots, counter slots, 32-byte random key;
                      at PURGE_OFFSET the last cache purge (see below)
    replay table      replay_slots x u64            (fastgw/_replay.pxi)
    counter table     counter_slots x 2 u64         (fastgw/_counters.pxi)

Sizes: 2**21 replay slots (16 MB of address space: about a million live signatures) and
2**18 counter slots (4 MB: about 130 000 live counters, a counter being one caller in one
period of one limit). A page takes memory only once something lands in it. The random key
makes each node's slots unpredictable (no one can aim many keys at one window offline).

Cache purges (``POST /cache/purge`` on the admin API) reach every worker through the last
purge record: a sequence number and the purge's scope as JSON. Only the supervisor writes
it (a sequence lock: odd while it writes); a worker's :class:`PurgeWatch` compares the
number with the one it saw last, on each cache lookup (one 8-byte read), and acts on the
scope, or on everything when it missed a purge in between.
"""

from __future__ import annotations

import mmap
import os
import struct

import orjson

from fastgw import _core
from fastgw.stats import create_region_file

MAGIC = b"FGWSHRD1"
VERSION = 1
HEADER_SIZE = 4096
REPLAY_SLOTS = 1 << 21
COUNTER_SLOTS = 1 << 18
_HEADER = struct.Struct("<8sIIQQ32s")   # magic, version, reserved, replay slots, counter slots, key
PURGE_OFFSET = 1024                     # the last purge: u64 sequence, u32 length, scope JSON
PURGE_MAX = 2048                        # bytes of scope JSON at most
_PURGE_HEAD = struct.Struct("<QI")
_SEQ = struct.Struct("<Q")
_KIND = "shared"


def _power_of_two(n: int, least: int, what: str) -> None:
    if n < least or n & (n - 1):
        raise ValueError(f"shared region: {what} must be a power of two >= {least} (got {n})")


class SharedRegion:
    """The file. Supervisor: ``SharedRegion.create()``, ``region.name`` to the workers,
    ``region.close()`` at exit (removes the file). Worker: ``SharedRegion.attach(name)``,
    then ``replay_guard()`` and ``counters()``."""

    def __init__(self, path: str, fd: int, mm: mmap.mmap, replay_slots: int, counter_slots: int,
                 key: bytes, owner: bool) -> None:
        self.path = path
        self._fd = fd
        self._mm = mm
        self.replay_slots = replay_slots
        self.counter_slots = counter_slots
        self.key = key
        self.owner = owner
        self._exported = False

    @property
    def name(self) -> str:
        return self.path

    @staticmethod
    def _size(replay_slots: int, counter_slots: int) -> int:
        return HEADER_SIZE + replay_slots * 8 + counter_slots * 16

    @classmethod
    def create(cls, replay_slots: int = REPLAY_SLOTS, counter_slots: int = COUNTER_SLOTS,
               directory: str = "/dev/shm") -> SharedRegion:
        _power_of_two(replay_slots, _core.REPLAY_WINDOW, "replay_slots")
        _power_of_two(counter_slots, _core.COUNTERS_WINDOW, "counter_slots")
        # SECURITY: created as the stats region is (0600, exclusively): no other local user
        # can read the key, forge used tokens or counts, or pre-create the file.
        try:
            path, fd, mm = create_region_file(directory, _KIND, cls._size(replay_slots, counter_slots))
        except PermissionError:
            if directory == "/tmp":
                raise
            # A read-only /dev/shm (some containers): the region works from /tmp as well.
            return cls.create(replay_slots, counter_slots, "/tmp")
        key = os.urandom(32)
        _HEADER.pack_into(mm, 0, MAGIC, VERSION, 0, replay_slots, counter_slots, key)
        return cls(path, fd, mm, replay_slots, counter_slots, key, owner=True)

    @classmethod
    def attach(cls, name: str) -> SharedRegion:
        fd = os.open(name, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise ValueError(f"{name}: not a fastgw shared region")
            mm = mmap.mmap(fd, size)
            magic, version, _, replay_slots, counter_slots, key = _HEADER.unpack_from(mm, 0)
            if magic != MAGIC or version != VERSION or cls._size(replay_slots, counter_slots) > size:
                mm.close()
                raise ValueError(f"{name}: not a fastgw shared region (or another version)")
        except BaseException:
            os.close(fd)
            raise
        return cls(name, fd, mm, replay_slots, counter_slots, key, owner=False)

    def replay_table(self) -> _core.ReplaySet:
        self._exported = True
        return _core.ReplaySet(self._mm, HEADER_SIZE, self.replay_slots)

    def counter_table(self) -> _core.CounterTable:
        self._exported = True
        return _core.CounterTable(self._mm, HEADER_SIZE + self.replay_slots * 8, self.counter_slots)

    def replay_guard(self) -> object:
        from fastgw.replay import ReplayGuard

        return ReplayGuard(self.replay_table(), self.key)

    def counters(self) -> object:
        from fastgw.counters import NodeCounters

        return NodeCounters(self.counter_table(), self.key)

    def publish_purge(self, scope: dict[str, str]) -> int:
        """Supervisor: tell every worker to drop its cached answers of ``scope`` (``{}``:
        all; ``{"service": s}``; ``{"service": s, "stage": t}``). Returns the purge's
        sequence number."""
        data = orjson.dumps(scope)
        if len(data) > PURGE_MAX:
            raise ValueError(f"cache purge scope too long ({len(data)} bytes of JSON, at most {PURGE_MAX})")
        mm = self._mm
        seq = _SEQ.unpack_from(mm, PURGE_OFFSET)[0] | 1     # odd: being written
        _SEQ.pack_into(mm, PURGE_OFFSET, seq)
        mm[PURGE_OFFSET + _PURGE_HEAD.size:PURGE_OFFSET + _PURGE_HEAD.size + len(data)] = data
        _PURGE_HEAD.pack_into(mm, PURGE_OFFSET, seq + 1, len(data))
        return seq + 1

    def purge_watch(self) -> PurgeWatch:
        """Worker: the reader of the purge record (purges from now on)."""
        self._exported = True
        return PurgeWatch(self._mm)

    def close(self) -> None:
        """Unmap (when no table still points into it) and, for the creator, remove the file."""
        if self._fd < 0:
            return
        if not self._exported:
            self._mm.close()
        os.close(self._fd)
        self._fd = -1
        if self.owner:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class PurgeWatch:
    """A worker's view of the last cache purge (see the module docstring)."""

    def __init__(self, mm: mmap.mmap) -> None:
        self._mm = mm
        self.seen = _SEQ.unpack_from(mm, PURGE_OFFSET)[0] & ~1   # purges before this worker: not its own

    def poll(self) -> dict[str, str] | None:
        """None when nothing was purged since the last call, else the scope to drop: the
        last purge's, or ``{}`` (everything) when more than one came meanwhile. A record the
        supervisor is writing right now is read at the next call."""
        mm = self._mm
        seq = _SEQ.unpack_from(mm, PURGE_OFFSET)[0]
        if seq == self.seen or seq & 1:
            return None
        _, n = _PURGE_HEAD.unpack_from(mm, PURGE_OFFSET)
        data = bytes(mm[PURGE_OFFSET + _PURGE_HEAD.size:PURGE_OFFSET + _PURGE_HEAD.size + min(n, PURGE_MAX)])
        if _SEQ.unpack_from(mm, PURGE_OFFSET)[0] != seq:
            return None                     # rewritten while read: read it next time
        missed = seq - self.seen != 2
        self.seen = seq
        if missed:
            return {}
        try:
            scope = orjson.loads(data)
        except orjson.JSONDecodeError:
            return {}
        return scope if isinstance(scope, dict) else {}
