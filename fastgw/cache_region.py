"""proxy-cache's node-wide store: stored answers in one shared-memory file every worker maps.

With ``policy: memory`` under a supervisor, every worker of the node reads and writes the
same answers (as Kong's shared dict or nginx's cache zone): a miss costs the backend one
request for the node, not one per worker, the memory bound is the node's, and the answers
outlive a reload (unless it changes the size). The supervisor creates the file
(:meth:`CacheRegion.create`, sized by the largest ``max_memory`` of the config's
memory-policy routes) and passes its name to the workers (``--cache``), which attach.

Layout::

    header (4096 B)   magic, version, buckets, ways, lock slots, capacity, head, purges,
                      the writers' sequence word
    index             buckets x ways slots of 48 B: key digest (16), position (u64),
                      length (u32), service tag (u32), stage tag (u32), 0 (u32), expires (f64)
    fill locks        LOCK_SLOTS slots of 24 B: key digest (16), deadline (f64)
    data              ``capacity`` bytes, written as a ring

An answer is one record in the ring (its key digest, then msgpack of status, header fields,
body, ETag, when stored and the Age it came with), written at ``head``, which only grows: a
record at position ``p`` (its offset being ``p % capacity``) is still there while
``p >= head - capacity``. So the oldest stored go first, and nothing has to be freed; a hit
on an answer in the older half of the ring writes it again at the head, so answers in use
stay (close to least recently used out first). The index is set-associative: a key's
bucket holds ``ways`` slots, and a new key takes a free or dead slot there, else the
oldest one's.

Writers hold ``flock`` on the file, exclusive, through the process's own descriptor (the
kernel gives the lock up when a worker dies holding it), and count the sequence word up
before and after they change the index or the ring. A cache hit reads without a system
call (fastgw/_cache.pxi): it takes what it read only when no writer was at work meanwhile,
and reads under a shared ``flock`` when writers keep it from that. Hold times are a copy
of one answer. A worker remembers the answers it decoded by their position in the ring,
which no other record ever takes (``head`` only grows): a hit on the same record costs a
look at its slot, not a copy.

Fill locks (``proxy_cache_lock`` for the node): the request that asks the backend for an
answer holds its key's slot until the answer is stored or not (or the deadline passes, if
its worker died); requests of other workers look again every few milliseconds.

Purges (the admin API, in the supervisor) clear the matching slots and count ``purges``
up; an answer asked of the backend before a purge is not stored after it (``put`` compares
the count the request saw with the current one, under the lock).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from fastgw import _core
from fastgw.stats import attach_region_file, close_region_file, create_region_file

UNKNOWN = _core.CACHE_UNKNOWN      # lookup(): no record of the key decoded yet

MAGIC = b"FGWCACH1"
VERSION = 1
HEADER_SIZE = 4096
WAYS = 8
LOCK_SLOTS = 4096
LOCK_WAYS = 4
PURGE_CHUNK = 4096                                   # index slots a purge clears per hold of the lock
RECORD_HEAD = struct.Struct("<16sI")                 # key digest, payload length
_HEADER = struct.Struct("<8sIIIIQ")                  # magic, version, buckets, ways, lock slots, capacity
_HEAD_AT = 64                                        # u64: the ring's head (bytes ever written)
_PURGES_AT = 72                                      # u64: purges so far
_SEQ_AT = 80                                         # u64: the writers' sequence word (odd: at work)
_U64 = struct.Struct("<Q")
_SLOT = struct.Struct("<16sQIIIId")
_LOCK = struct.Struct("<16sd")
_KIND = "cache"


def digest(prefix: bytes, key: object) -> bytes:
    """A stored answer's name: 16 bytes of BLAKE2b over its route's prefix and its key."""
    return hashlib.blake2b(prefix + repr(key).encode(), digest_size=16).digest()


def tag(name: str) -> int:
    """A service's or stage's 32-bit tag (what a purge compares; never 0)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little") or 1


def _buckets(capacity: int) -> int:
    """Index buckets for ``capacity`` bytes of answers: a slot per 512 bytes, a power of two."""
    want = max(128, capacity // (512 * WAYS))
    return 1 << (want - 1).bit_length()


class CacheRegion:
    """The file. Supervisor: ``CacheRegion.create(capacity)``, ``region.name`` to the
    workers, ``purge()``, ``close()`` at exit or when a reload resizes (removes the file).
    Worker: ``CacheRegion.attach(name)``, then ``get``/``put``/``lock``/``unlock``."""

    def __init__(self, path: str, fd: int, mm: mmap.mmap, owner: bool) -> None:
        magic, version, buckets, ways, lock_slots, capacity = _HEADER.unpack_from(mm, 0)
        self.path = path
        self._fd = fd
        self._mm = mm
        self.owner = owner
        self.buckets = buckets
        self.ways = ways
        self.lock_slots = lock_slots
        self.capacity = capacity
        self._index = HEADER_SIZE
        self._locks = self._index + buckets * ways * _SLOT.size
        self._data = self._locks + lock_slots * _LOCK.size
        self._reader = _core.CacheReader(mm, _SEQ_AT, _HEAD_AT, self._index, buckets, ways, self._data, capacity)

    @property
    def name(self) -> str:
        return self.path

    @property
    def reader(self) -> _core.CacheReader:
        """The lock-free reader (fastgw/_cache.pxi), for the request path's C step."""
        return self._reader

    @staticmethod
    def _size(capacity: int, buckets: int) -> int:
        return HEADER_SIZE + buckets * WAYS * _SLOT.size + LOCK_SLOTS * _LOCK.size + capacity

    @classmethod
    def create(cls, capacity: int, directory: str = "/dev/shm") -> CacheRegion:
        """A new region for ``capacity`` bytes of records (0600, created exclusively, sparse)."""
        if capacity < 1024:
            raise ValueError(f"cache region: capacity must be at least 1024 bytes (got {capacity})")
        buckets = _buckets(capacity)
        try:
            path, fd, mm = create_region_file(directory, _KIND, cls._size(capacity, buckets))
        except PermissionError:
            if directory == "/tmp":
                raise
            return cls.create(capacity, "/tmp")       # a read-only /dev/shm (some containers)
        _HEADER.pack_into(mm, 0, MAGIC, VERSION, buckets, WAYS, LOCK_SLOTS, capacity)
        return cls(path, fd, mm, owner=True)

    @classmethod
    def attach(cls, name: str) -> CacheRegion:
        def fits(fields: tuple, size: int) -> bool:
            magic, version, buckets, ways, lock_slots, capacity = fields
            return (magic == MAGIC and version == VERSION and ways == WAYS and lock_slots == LOCK_SLOTS
                    and cls._size(capacity, buckets) <= size)

        # Its own descriptor: flock is held per open file, so each process must open the file.
        fd, mm, _ = attach_region_file(name, _HEADER, "cache region", fits)
        return cls(name, fd, mm, owner=False)

    def close(self) -> None:
        """Unmap and, for the creator, remove the file (workers still attached keep theirs)."""
        if self._fd < 0:
            return
        self._reader = None
        try:
            self._mm.close()
        except BufferError:
            pass                     # a lookup's result still points into it: unmapped with it
        close_region_file(self._fd, self.path, self.owner)
        self._fd = -1

    # ----------------------------------------------------------------- locking

    @contextmanager
    def _held(self, how: int) -> Iterator[None]:
        fcntl.flock(self._fd, how)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Exclusive, with the sequence word odd meanwhile (lock-free readers look again)."""
        with self._held(fcntl.LOCK_EX):
            self._reader.write_begin()
            try:
                yield
            finally:
                self._reader.write_end()

    @property
    def purges(self) -> int:
        """Purges so far (one 8-byte read; compared again under the lock by ``put``)."""
        return _U64.unpack_from(self._mm, _PURGES_AT)[0]

    # ----------------------------------------------------------------- answers

    def _bucket(self, key: bytes) -> int:
        return self._index + (int.from_bytes(key[:8], "little") & (self.buckets - 1)) * self.ways * _SLOT.size

    def _find(self, key: bytes, head: int) -> tuple[int, int, int, float] | None:
        """(slot offset, position, length, expires) of ``key``'s live record, or None."""
        mm = self._mm
        at = self._bucket(key)
        for i in range(self.ways):
            slot = at + i * _SLOT.size
            if mm[slot:slot + 16] == key:
                _, pos, length, _, _, _, expires = _SLOT.unpack_from(mm, slot)
                if length and pos >= head - self.capacity:
                    return slot, pos, length, expires
                return None
        return None

    def lookup(self, key: bytes, now: float, known_pos: int = UNKNOWN) -> tuple[int, bytes | None, bool] | None:
        """``key``'s answer while kept at ``now`` (monotonic; until its slot's ``expires``: its
        freshness and any stale window): ``(position, payload, older half)``, the
        payload None when the record is the one at ``known_pos`` (the caller has it decoded);
        ``older half``: the caller may :meth:`keep` it. None when there is none."""
        found = self._reader.lookup(key, now, known_pos)
        if found is not _core.CACHE_BUSY:
            return found
        with self._held(fcntl.LOCK_SH):          # writers kept changing it: read with them out
            return self._reader.lookup(key, now, known_pos, True)

    def get(self, key: bytes, now: float) -> tuple[bytes, bool] | None:
        """``key``'s payload while kept, and whether it is in the ring's older half."""
        found = self.lookup(key, now)
        return None if found is None else (found[1] or b"", found[2])

    def put(self, key: bytes, payload: bytes, expires: float, service: int, stage: int,
            purges: int, unlock: bool = False) -> int | None:
        """Store ``payload`` under ``key``, kept until ``expires`` (monotonic), tagged with its
        service and stage: its position in the ring; None when a purge came since the request
        saw ``purges``, or when it is larger than the ring. ``unlock``: give the key's fill
        lock up as well."""
        length = RECORD_HEAD.size + len(payload)
        with self._writing():
            if unlock:
                self._unlock(key)
            if length > self.capacity or _U64.unpack_from(self._mm, _PURGES_AT)[0] != purges:
                return None
            return self._append(key, payload, length, expires, service, stage)

    def keep(self, key: bytes) -> None:
        """Write a hit answer from the ring's older half again at the head, so the answers in
        use are not the next to go (a no-op when it went meanwhile or was kept already)."""
        with self._writing():
            head = _U64.unpack_from(self._mm, _HEAD_AT)[0]
            found = self._find(key, head)
            if found is None or head - found[1] <= self.capacity // 2:
                return
            slot, pos, length, _ = found
            _, _, _, service, stage, _, expires = _SLOT.unpack_from(self._mm, slot)
            off = self._data + pos % self.capacity
            payload = self._mm[off + RECORD_HEAD.size:off + length]
            self._append(key, payload, length, expires, service, stage)

    def _append(self, key: bytes, payload: bytes, length: int, expires: float, service: int,
                stage: int) -> int:
        """Write the record at the head and point ``key``'s slot at it (the lock held);
        returns its position."""
        mm, cap = self._mm, self.capacity
        head = _U64.unpack_from(mm, _HEAD_AT)[0]
        if head % cap + length > cap:
            head += cap - head % cap          # a record never wraps: skip to the start
        pos = head
        head += length
        _U64.pack_into(mm, _HEAD_AT, head)    # first: records overwritten from here are dead
        off = self._data + pos % cap
        RECORD_HEAD.pack_into(mm, off, key, len(payload))
        mm[off + RECORD_HEAD.size:off + length] = payload
        at = self._bucket(key)
        chosen, oldest = -1, None
        for i in range(self.ways):
            slot = at + i * _SLOT.size
            have, spos, slen, _, _, _, _ = _SLOT.unpack_from(mm, slot)
            if have == key or not slen or spos < head - cap:
                chosen = slot
                if have == key:
                    break
            elif chosen < 0 and (oldest is None or spos < oldest[1]):
                oldest = (slot, spos)
        if chosen < 0:
            assert oldest is not None
            chosen = oldest[0]
        # A slot whose key went elsewhere in this bucket keeps no second copy of it.
        for i in range(self.ways):
            slot = at + i * _SLOT.size
            if slot != chosen and mm[slot:slot + 16] == key:
                _SLOT.pack_into(mm, slot, b"", 0, 0, 0, 0, 0, 0.0)
        _SLOT.pack_into(mm, chosen, key, pos, length, service, stage, 0, expires)
        return pos

    def __len__(self) -> int:
        """Live answers (fresh or kept), for the admin API and tests. Read without the lock,
        so that counting a large store never holds the workers' writes up: exact when no
        writer is at work, off by the few answers being written otherwise."""
        head = _U64.unpack_from(self._mm, _HEAD_AT)[0]
        return sum(1 for _, pos, length, *_ in self._slots() if length and pos >= head - self.capacity)

    def info(self) -> dict[str, int]:
        """What the admin API shows: the ring's size, the answers it holds (fresh, or kept
        for a stale window), the bytes ever written to it and the purges so far."""
        return {"capacity_bytes": self.capacity, "answers": len(self),
                "written_bytes": _U64.unpack_from(self._mm, _HEAD_AT)[0], "purges": self.purges}

    def _slots(self, first: int = 0, count: int | None = None) -> Iterator[tuple]:
        """The index's slots from ``first`` (all, or ``count`` of them), decoded."""
        total = self.buckets * self.ways
        end = total if count is None else min(total, first + count)
        return _SLOT.iter_unpack(self._mm[self._index + first * _SLOT.size:self._index + end * _SLOT.size])

    def purge(self, service: int | None = None, stage: int | None = None) -> int:
        """Drop the answers of a service's tag (and a stage's), or all; counts ``purges`` up
        first (answers asked for before are not stored). Returns how many live answers went.

        The index is cleared ``PURGE_CHUNK`` slots at a time, each under the lock on its
        own: a store of millions of slots never holds the workers up for the whole sweep.
        An answer stored meanwhile was asked for after the purge began (a later chunk may
        drop it too, which is only a miss)."""
        mm = self._mm
        gone = 0
        with self._writing():
            _U64.pack_into(mm, _PURGES_AT, _U64.unpack_from(mm, _PURGES_AT)[0] + 1)
        total = self.buckets * self.ways
        for first in range(0, total, PURGE_CHUNK):
            with self._writing():
                head = _U64.unpack_from(mm, _HEAD_AT)[0]
                for i, (_, pos, length, sv, st, _, _) in enumerate(self._slots(first, PURGE_CHUNK), first):
                    if not length or (service is not None and sv != service) or (stage is not None and st != stage):
                        continue
                    gone += pos >= head - self.capacity
                    _SLOT.pack_into(mm, self._index + i * _SLOT.size, b"", 0, 0, 0, 0, 0, 0.0)
        return gone

    # ----------------------------------------------------------------- fill locks

    def _lock_set(self, key: bytes) -> int:
        sets = self.lock_slots // LOCK_WAYS
        return self._locks + (int.from_bytes(key[8:], "little") % sets) * LOCK_WAYS * _LOCK.size

    def lock(self, key: bytes, deadline: float, now: float) -> bool:
        """Take ``key``'s fill lock until ``deadline`` (monotonic): True when this request is
        the one to ask the backend; False when another holds it."""
        mm = self._mm
        at = self._lock_set(key)
        with self._held(fcntl.LOCK_EX):
            chosen, soonest = -1, None
            for i in range(LOCK_WAYS):
                slot = at + i * _LOCK.size
                have, until = _LOCK.unpack_from(mm, slot)
                if have == key and until > now:
                    return False
                if have == key or until <= now:
                    chosen = slot
                elif soonest is None or until < soonest[1]:
                    soonest = (slot, until)
            if chosen < 0:
                # Every way held for other keys: take the one due first (two may then fill).
                assert soonest is not None
                chosen = soonest[0]
            _LOCK.pack_into(mm, chosen, key, deadline)
        return True

    def locked(self, key: bytes, now: float) -> bool:
        """Whether a request holds ``key``'s fill lock."""
        mm = self._mm
        at = self._lock_set(key)
        with self._held(fcntl.LOCK_SH):
            for i in range(LOCK_WAYS):
                have, until = _LOCK.unpack_from(mm, at + i * _LOCK.size)
                if have == key:
                    return until > now
        return False

    def unlock(self, key: bytes) -> None:
        """Give ``key``'s fill lock up (its answer was not stored)."""
        with self._held(fcntl.LOCK_EX):
            self._unlock(key)

    def _unlock(self, key: bytes) -> None:
        mm = self._mm
        at = self._lock_set(key)
        for i in range(LOCK_WAYS):
            slot = at + i * _LOCK.size
            if mm[slot:slot + 16] == key:
                _LOCK.pack_into(mm, slot, b"", 0.0)
