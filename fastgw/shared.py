"""Node-wide state in shared memory: hmac-auth's replay set, the rate-limit counters, the
cache purges, the active health checks' verdicts and the targets' passive marks.

The supervisor creates one region (a file in ``/dev/shm``, like the stats region) for its
whole life and passes its name to every worker (``--shared``); each worker attaches and
hands its plugins the node's guards through ``PluginScope.services`` (``"replay"``,
``"counters"``). Every worker, and every generation after a reload, writes the same
tables with atomic compare-and-swap, so what they hold is true for the node. Layout::

    header (4096 B)   magic, version, health slots, replay slots, counter slots, 32-byte
                      random key, mark slots; at PURGE_OFFSET the last cache purge (see below)
    replay table      replay_slots x u64            (fastgw/_replay.pxi)
    counter table     counter_slots x 2 u64         (fastgw/_counters.pxi)
    health table      health_slots x 2 u64          (:class:`HealthTable`)
    marks table       mark_slots x 4 u64            (fastgw/_marks.pxi)

Sizes: 2**21 replay slots (16 MB of address space: about a million live signatures) and
2**18 counter slots (4 MB: about 130 000 live counters, a counter being one caller in one
period of one limit). A page takes memory only once something lands in it. The random key
makes each node's slots unpredictable (no one can aim many keys at one window offline).

Cache purges (``POST /cache/purge`` on the admin API) reach every worker through the last
purge record: a sequence number and the purge's scope as JSON. Only the supervisor writes
it (a sequence lock: odd while it writes); a worker's :class:`PurgeWatch` compares the
number with the one it saw last, on each cache lookup (one 8-byte read), and acts on the
scope, or on everything when it missed a purge in between.

Active health checks (fastgw/health.py) are run by one worker of the node, which writes
each target's verdict (in use, or passed over) in the health table; the other workers read
it. A new generation's workers start from the verdicts the last one left.

Passive marks: every worker counts a target's failed connections in the marks table, so
``max_fails`` counts the node's failures; the worker that reaches it writes until when the
target is passed over there, and every worker's picks read it (one memory read), so the
node's other workers skip the target at once; the first answer on a new connection to it,
in any worker, clears the count and the mark.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct

import orjson

from fastgw import _core
from fastgw.stats import attach_region_file, close_region_file, create_region_file

MAGIC = b"FGWSHRD1"
VERSION = 4
HEADER_SIZE = 4096
REPLAY_SLOTS = 1 << 21
COUNTER_SLOTS = 1 << 18
HEALTH_SLOTS = 1 << 10                  # distinct (target, check) pairs checked on a node, at most
MARK_SLOTS = 1 << 10                    # distinct targets with a passive mark on a node, at most
_HEADER = struct.Struct("<8sIIQQ32sI")  # magic, version, health slots, replay slots, counter slots, key, mark slots
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
                 key: bytes, owner: bool, health_slots: int = HEALTH_SLOTS, mark_slots: int = MARK_SLOTS) -> None:
        self.path = path
        self._fd = fd
        self._mm = mm
        self.replay_slots = replay_slots
        self.counter_slots = counter_slots
        self.health_slots = health_slots
        self.mark_slots = mark_slots
        self.key = key
        self.owner = owner
        self._exported = False

    @property
    def name(self) -> str:
        return self.path

    @staticmethod
    def _offsets(replay_slots: int, counter_slots: int, health_slots: int = HEALTH_SLOTS,
                 mark_slots: int = MARK_SLOTS) -> tuple[int, int, int, int, int]:
        """Where the replay, counter, health and marks tables start, and where the region
        ends (the layout in the module docstring)."""
        counters = HEADER_SIZE + replay_slots * 8
        health = counters + counter_slots * 16
        marks = health + health_slots * 16
        return HEADER_SIZE, counters, health, marks, marks + mark_slots * 32

    @classmethod
    def _size(cls, replay_slots: int, counter_slots: int, health_slots: int = HEALTH_SLOTS,
              mark_slots: int = MARK_SLOTS) -> int:
        return cls._offsets(replay_slots, counter_slots, health_slots, mark_slots)[4]

    def _table_at(self, table: int) -> int:
        """This region's offset of table 0 (replay) to 3 (marks)."""
        return self._offsets(self.replay_slots, self.counter_slots, self.health_slots, self.mark_slots)[table]

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
        _HEADER.pack_into(mm, 0, MAGIC, VERSION, HEALTH_SLOTS, replay_slots, counter_slots, key, MARK_SLOTS)
        return cls(path, fd, mm, replay_slots, counter_slots, key, owner=True)

    @classmethod
    def attach(cls, name: str) -> SharedRegion:
        def fits(fields: tuple, size: int) -> bool:
            magic, version, health_slots, replay_slots, counter_slots, _, mark_slots = fields
            return magic == MAGIC and version == VERSION and \
                cls._size(replay_slots, counter_slots, health_slots, mark_slots) <= size

        fd, mm, (_, _, health_slots, replay_slots, counter_slots, key, mark_slots) = attach_region_file(
            name, _HEADER, "shared region", fits)
        return cls(name, fd, mm, replay_slots, counter_slots, key, owner=False, health_slots=health_slots,
                   mark_slots=mark_slots)

    def replay_table(self) -> _core.ReplaySet:
        self._exported = True
        return _core.ReplaySet(self._mm, self._table_at(0), self.replay_slots)

    def counter_table(self) -> _core.CounterTable:
        self._exported = True
        return _core.CounterTable(self._mm, self._table_at(1), self.counter_slots)

    def health_table(self) -> HealthTable:
        self._exported = True
        return HealthTable(self._mm, self._table_at(2), self.health_slots)

    def passive_marks(self) -> _core.PassiveMarks:
        self._exported = True
        return _core.PassiveMarks(self._mm, self._table_at(3), self.mark_slots)

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
        close_region_file(self._fd, self.path, self.owner)
        self._fd = -1


class HealthTable:
    """The node's health-check verdicts: ``set(ident, down)`` by the one worker that probes,
    ``get(ident)`` (True: passed over, False: in use, None: not probed yet) by every worker.

    A slot is two u64: the key (a hash of ``ident``, the target and its check; 0: empty) and
    the verdict. There is one writer, so no atomics: it writes the verdict before the key,
    and a reader that finds the key finds a verdict."""

    _SLOT = struct.Struct("<QQ")

    def __init__(self, mm: mmap.mmap, offset: int, slots: int) -> None:
        self._mm = mm
        self._offset = offset
        self._slots = slots

    @staticmethod
    def _key(ident: str) -> int:
        return int.from_bytes(hashlib.blake2b(ident.encode(), digest_size=8).digest(), "little") or 1

    def _find(self, key: int) -> tuple[int, bool]:
        """(offset of the key's slot, or of the first empty one on its way; whether found);
        offset -1 when the table is full."""
        mask = self._slots - 1
        for i in range(self._slots):
            at = self._offset + ((key + i) & mask) * 16
            have = _SEQ.unpack_from(self._mm, at)[0]
            if have == key:
                return at, True
            if have == 0:
                return at, False
        return -1, False

    def get(self, ident: str) -> bool | None:
        at, found = self._find(self._key(ident))
        return bool(self._SLOT.unpack_from(self._mm, at)[1]) if found else None

    def set(self, ident: str, down: bool) -> bool:
        """Record the verdict; False when the table is full (the verdict stays the writer's)."""
        key = self._key(ident)
        at, found = self._find(key)
        if at < 0:
            return False
        _SEQ.pack_into(self._mm, at + 8, int(down))
        if not found:
            _SEQ.pack_into(self._mm, at, key)
        return True


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


def target_key(host: str, port: int, tls: bool) -> int:
    """A backend target's key in the marks table: its host, port and scheme (the same
    target named by several stages is one)."""
    ident = f"{host}:{port}:{'https' if tls else 'http'}"
    return int.from_bytes(hashlib.blake2b(ident.encode(), digest_size=8).digest(), "little") or 1
