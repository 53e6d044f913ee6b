"""Shared-memory stats region: layout, slot table, writers and the supervisor-side reader.

The supervisor creates one region (a file in ``/dev/shm``, mapped by every process);
workers attach by name and write through :class:`fastgw._core.StatsWriter` (Cython; the
pure-Python :class:`PyStatsWriter` is its twin, same names and bytes). Layout::

    header (4096 B)      magic, version, sizes, offsets, keys_used
    key table            max_keys x 256 B: u16 length + UTF-8 key   (slot -> key)
    writer headers       n_writers x 64 B: worker index, generation, pid, attach time
    data                 n_writers x max_keys blocks of ``stride`` bytes, one per (writer, key)

One block (all little-endian, 64-byte aligned)::

    0      u64[32]  running totals (TOT_FIELDS)
    256    u64[384] running latency histogram (log-linear, see hist_index)
    3328   ring of ``ring_seconds`` one-second buckets of 64 B:
           u32 stamp, calls, other(1xx), 2xx, 3xx, 4xx, 5xx, gateway; u64 total_us,
           upstream_us, bytes_in, bytes_out
    ...    u32[hist_ring] period stamps, then u32[hist_ring][384] latency histograms,
           one per ``hist_seconds`` period

Writers: two per worker index (``index * 2 + generation % 2``), so an old generation that
is still draining during a reload never shares bytes with its successor. Nothing is ever
reset: a restarted worker continues into the same memory and the reader sums every
writer, so totals survive reloads and restarts. Keys (``RouteSpec.key``,
``~unmatched/{host}``, ``~consumer/{name}``, and ``~redis/{ok,error,failed}`` for the Redis
commands the workers wait on: :func:`redis_observer`) map to slots by name, first come
first served, and a slot is never reused, so counters follow the route's name across
reloads.

Memory: a block is ~770 KB with the defaults (1 h of seconds, 10 s histograms); the file
is sparse, so only keys that see traffic take RAM (blocks x writers x active keys).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"FGWSTAT1"
VERSION = 1
HEADER_SIZE = 4096
KEY_ENTRY = 256
KEY_MAX_BYTES = KEY_ENTRY - 2
WRITER_HDR = 64
WRITERS_PER_WORKER = 2
HIST_N = 384
TOT_N = 32
THIST_OFF = TOT_N * 8
SEC_OFF = THIST_OFF + HIST_N * 8
SEC_SIZE = 64
KEYS_USED_OFF = 256  # u32 in the header, on its own cache line

# Totals: index -> name (u64 each).  "other" = 1xx and anything outside 2xx-5xx.
TOT_FIELDS = (
    "calls", "other", "2xx", "3xx", "4xx", "5xx",
    "gateway", "gateway_other", "gateway_2xx", "gateway_3xx", "gateway_4xx", "gateway_5xx",
    "total_us", "upstream_us", "bytes_in", "bytes_out", "max_us", "last_sec",
)
CLASSES = ("other", "2xx", "3xx", "4xx", "5xx")
SEC_U32 = ("stamp", "calls", "other", "2xx", "3xx", "4xx", "5xx", "gateway")
SEC_U64 = ("total_us", "upstream_us", "bytes_in", "bytes_out")
SERIES_FIELDS = SEC_U32[1:] + SEC_U64

OVERFLOW_KEY = "~overflow"
UNMATCHED_PREFIX = "~unmatched/"
CONSUMER_PREFIX = "~consumer/"
REDIS_PREFIX = "~redis/"
REDIS_RESULTS = ("ok", "error", "failed")    # fastgw.resp's OK, ERROR, FAILED

_HEADER = struct.Struct("<8sIIIIIIIQQQQQ")
_WRITER = struct.Struct("<IIIId")


def _align(n: int, to: int = 64) -> int:
    return (n + to - 1) // to * to


def hist_index(us: int) -> int:
    """Histogram bucket of a latency in microseconds (twin of the C ``fgw_st_hist_index``).

    >>> [hist_index(v) for v in (0, 15, 16, 31, 32, 34, 1000)]
    [0, 15, 16, 31, 32, 33, 111]
    """
    if us < 16:
        return max(0, us)
    e = us.bit_length() - 1
    if e > 26:
        return HIST_N - 1
    return (e - 3) * 16 + ((us >> (e - 4)) & 15)


def hist_bounds(index: int) -> tuple[int, int]:
    """``[low, high)`` in microseconds of histogram bucket ``index``."""
    if index < 16:
        return index, index + 1
    e = index // 16 + 3
    sub = index % 16
    return (16 + sub) << (e - 4), (17 + sub) << (e - 4)


def percentile(hist: list[int], q: float) -> float:
    """Latency (µs) at quantile ``q`` (0..1) of histogram ``hist``, interpolated in its bucket.

    Error is bounded by the bucket width: at most 1/16 of the value, ~3% at the midpoint.
    """
    total = sum(hist)
    if total == 0:
        return 0.0
    rank = q * total
    seen = 0
    for i, n in enumerate(hist):
        if n and seen + n >= rank:
            low, high = hist_bounds(i)
            if i < 16:
                return float(low)
            return low + (high - low) * max(0.0, rank - seen) / n
        seen += n
    low, high = hist_bounds(len(hist) - 1)
    return float(low)


@dataclass
class Counts:
    """Summed counters for one key (or many): scalar fields plus a latency histogram."""

    values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOT_FIELDS, 0))
    hist: list[int] = field(default_factory=lambda: [0] * HIST_N)

    def add(self, other: Counts) -> None:
        v = self.values
        for k, n in other.values.items():
            if k == "max_us" or k == "last_sec":
                v[k] = max(v.get(k, 0), n)
            else:
                v[k] = v.get(k, 0) + n
        h = self.hist
        for i, n in enumerate(other.hist):
            if n:
                h[i] += n

    @property
    def calls(self) -> int:
        return self.values["calls"]

    def summary(self) -> dict[str, Any]:
        """JSON-ready view: counts, error rate, average/percentile latencies in ms."""
        v = self.values
        calls = v["calls"]
        backend = calls - v.get("gateway", 0)
        errors = v["4xx"] + v["5xx"]
        return {
            "calls": calls,
            "2xx": v["2xx"], "3xx": v["3xx"], "4xx": v["4xx"], "5xx": v["5xx"], "other": v["other"],
            "gateway": v.get("gateway", 0),
            "gateway_by_class": {c: v.get("gateway_" + c, 0) for c in CLASSES},
            "errors": errors,
            "error_rate": round(errors / calls, 6) if calls else 0.0,
            "avg_ms": round(v["total_us"] / calls / 1000, 3) if calls else 0.0,
            "upstream_avg_ms": round(v["upstream_us"] / backend / 1000, 3) if backend > 0 else 0.0,
            "gateway_avg_ms": round((v["total_us"] - v["upstream_us"]) / calls / 1000, 3) if calls else 0.0,
            "p50_ms": round(percentile(self.hist, 0.50) / 1000, 3),
            "p95_ms": round(percentile(self.hist, 0.95) / 1000, 3),
            "p99_ms": round(percentile(self.hist, 0.99) / 1000, 3),
            "max_ms": round(v.get("max_us", 0) / 1000, 3),
            "bytes_in": v["bytes_in"], "bytes_out": v["bytes_out"],
            "total_us": v["total_us"], "upstream_us": v["upstream_us"],
        }


_SPAN_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_span(text: str) -> int:
    """Seconds in a time range written ``300``, ``5m``, ``1h``, ``1d`` or ``30d``.

    >>> parse_span("5m"), parse_span("30d"), parse_span("90")
    (300, 2592000, 90)
    """
    text = text.strip().lower()
    unit = _SPAN_UNITS.get(text[-1:], 0)
    number = text[:-1] if unit else text
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r}: use seconds or a number with s, m, h or d (5m, 1h, 30d)") from None
    return int(value * (unit or 1))


def parse_key(key: str) -> dict[str, str]:
    """Split a stats key into its parts.

    >>> parse_key("shop/prod/GET /orders/{id}")
    {'kind': 'route', 'service': 'shop', 'stage': 'prod', 'method': 'GET', 'resource': '/orders/{id}'}
    >>> parse_key("~unmatched/api.example")["host"]
    'api.example'
    """
    if key.startswith(UNMATCHED_PREFIX):
        return {"kind": "unmatched", "host": key[len(UNMATCHED_PREFIX):]}
    if key.startswith(CONSUMER_PREFIX):
        return {"kind": "consumer", "consumer": key[len(CONSUMER_PREFIX):]}
    if key.startswith(REDIS_PREFIX):
        return {"kind": "redis", "result": key[len(REDIS_PREFIX):]}
    if key.startswith("~"):
        return {"kind": "internal", "name": key[1:]}
    service, _, rest = key.partition("/")
    stage, _, rest = rest.partition("/")
    method, _, resource = rest.partition(" ")
    return {"kind": "route", "service": service, "stage": stage, "method": method, "resource": resource}


def config_keys(config: Any) -> list[str]:
    """Every stats key a config uses: routes, unmatched per stage host, consumers, and the
    Redis commands' results with a ``redis`` section."""
    keys: list[str] = []
    hosts: list[str] = []
    for spec in getattr(config, "routes", ()) or ():
        keys.append(spec.key)
        for host in spec.hosts or ("*",):
            if host not in hosts:
                hosts.append(host)
    if "*" not in hosts:
        hosts.append("*")
    keys += [UNMATCHED_PREFIX + h for h in hosts]
    for consumer in getattr(config, "consumers", ()) or ():
        name = consumer.get("name") if isinstance(consumer, dict) else getattr(consumer, "name", None)
        if name:
            keys.append(CONSUMER_PREFIX + str(name))
    if getattr(config, "redis", None):
        keys += [REDIS_PREFIX + r for r in REDIS_RESULTS]
    return keys


def redis_observer(writer: Any, slot_for: Callable[[str], int]) -> Callable[[int, float], None]:
    """A ``RespClient.observe`` that counts each command in the stats region: calls per
    result (``~redis/ok``, ``~redis/error``, ``~redis/failed``) and how long each waited, in
    the keys' latency histograms."""
    slots = tuple(slot_for(REDIS_PREFIX + r) for r in REDIS_RESULTS)
    statuses = (200, 500, 503)
    record = writer.record

    def observe(result: int, seconds: float) -> None:
        record(slots[result], statuses[result], int(seconds * 1e6), 0, 0, 0, 0)

    return observe


def _encode_key(key: str) -> bytes:
    raw = key.encode("utf-8")
    if len(raw) <= KEY_MAX_BYTES:
        return raw
    # Long keys keep a readable head and a hash tail, so two long keys never collide.
    digest = hashlib.sha1(raw).hexdigest()[:16].encode()
    return raw[: KEY_MAX_BYTES - 17].decode("utf-8", "ignore").encode() + b"#" + digest


@dataclass(frozen=True)
class Layout:
    """Sizes and offsets of a region; computed from the creation parameters."""

    n_writers: int
    n_keys: int
    ring_len: int
    hist_period: int
    hist_ring_len: int
    created: int = 0

    @property
    def keys_off(self) -> int:
        return HEADER_SIZE

    @property
    def writers_off(self) -> int:
        return self.keys_off + _align(self.n_keys * KEY_ENTRY, 4096)

    @property
    def data_off(self) -> int:
        return _align(self.writers_off + self.n_writers * WRITER_HDR, 4096)

    @property
    def hstamp_off(self) -> int:
        return SEC_OFF + self.ring_len * SEC_SIZE

    @property
    def hring_off(self) -> int:
        return _align(self.hstamp_off + self.hist_ring_len * 4)

    @property
    def stride(self) -> int:
        return _align(self.hring_off + self.hist_ring_len * HIST_N * 4, 4096)

    @property
    def size(self) -> int:
        return self.data_off + self.n_writers * self.n_keys * self.stride

    def block(self, writer: int, slot: int) -> int:
        return self.data_off + (writer * self.n_keys + slot) * self.stride


class SlotTable:
    """Stable key → slot assignment stored in the region (so every process agrees).

    ``slot_for`` assigns a new slot under an ``flock`` of the region file (config-load
    time only); a known key is a dict lookup. Slots are never reused; when the table is
    full, new keys count in slot 0 (``~overflow``).
    """

    def __init__(self, region: StatsRegion) -> None:
        self._region = region
        self._slots: dict[str, int] = {}
        self._keys: list[str] = []

    def _refresh(self) -> None:
        region = self._region
        used = min(region.keys_used(), region.layout.n_keys)
        mm = region.mm
        for slot in range(len(self._keys), used):
            off = region.layout.keys_off + slot * KEY_ENTRY
            (length,) = struct.unpack_from("<H", mm, off)
            key = bytes(mm[off + 2: off + 2 + length]).decode("utf-8", "replace")
            self._keys.append(key)
            self._slots.setdefault(key, slot)

    def slot_for(self, key: str) -> int:
        """The slot of ``key``, assigning the next free one the first time."""
        slot = self._slots.get(key)
        if slot is not None:
            return slot
        self._refresh()
        slot = self._slots.get(key)
        if slot is not None:
            return slot
        region = self._region
        fcntl.flock(region.fd, fcntl.LOCK_EX)
        try:
            self._refresh()
            slot = self._slots.get(key)
            if slot is not None:
                return slot
            used = region.keys_used()
            if used >= region.layout.n_keys:
                return 0
            raw = _encode_key(key)
            off = region.layout.keys_off + used * KEY_ENTRY
            region.mm[off: off + 2 + len(raw)] = struct.pack("<H", len(raw)) + raw
            # Publish after the entry is written: readers see whole keys only.
            struct.pack_into("<I", region.mm, KEYS_USED_OFF, used + 1)
            self._keys.append(key)
            self._slots[key] = used
            return used
        finally:
            fcntl.flock(region.fd, fcntl.LOCK_UN)

    def assign(self, keys: Iterable[str]) -> dict[str, int]:
        """Assign slots for ``keys`` (e.g. :func:`config_keys`); returns key → slot."""
        return {key: self.slot_for(key) for key in keys}

    def items(self) -> list[tuple[str, int]]:
        """Every assigned ``(key, slot)`` in slot order."""
        self._refresh()
        return [(key, slot) for slot, key in enumerate(self._keys)]

    def __contains__(self, key: str) -> bool:
        self._refresh()
        return key in self._slots


class PyStatsWriter:
    """Pure-Python twin of :class:`fastgw._core.StatsWriter` (same arguments and bytes)."""

    def __init__(self, buffer: Any, offset: int, n_keys: int, stride: int, ring_len: int,
                 hist_period: int, hist_ring_len: int, hstamp_off: int, hring_off: int,
                 writer_index: int = 0) -> None:
        self._mv = memoryview(buffer)
        if offset < 0 or offset + n_keys * stride > len(self._mv):
            raise ValueError("stats writer block outside the region")
        self._offset = offset
        self._n_keys = n_keys
        self._stride = stride
        self._ring_len = ring_len
        self._hist_period = hist_period
        self._hist_ring_len = hist_ring_len
        self._hstamp_off = hstamp_off
        self._hring_off = hring_off
        self._fixed_now = 0
        self.writer_index = writer_index

    def set_clock(self, now_s: int = 0) -> None:
        self._fixed_now = now_s

    def _block(self, slot: int) -> int:
        if slot < 0 or slot >= self._n_keys:
            slot = 0
        return self._offset + slot * self._stride

    def _second(self, blk: int, now: int) -> int:
        off = blk + SEC_OFF + (now % self._ring_len) * SEC_SIZE
        if struct.unpack_from("<I", self._mv, off)[0] != now:
            self._mv[off: off + SEC_SIZE] = bytes(SEC_SIZE)
            struct.pack_into("<I", self._mv, off, now)
        return off

    def _add(self, fmt: str, off: int, n: int) -> None:
        struct.pack_into(fmt, self._mv, off, struct.unpack_from(fmt, self._mv, off)[0] + n)

    def _touch(self, blk: int, now: int) -> None:
        if now > struct.unpack_from("<Q", self._mv, blk + 17 * 8)[0]:
            struct.pack_into("<Q", self._mv, blk + 17 * 8, now)

    def record(self, slot: int, status: int, total_us: int, upstream_us: int, bytes_in: int,
               bytes_out: int, flags: int) -> None:
        self.record_at(self._fixed_now or int(time.time()), slot, status, total_us, upstream_us,
                       bytes_in, bytes_out, flags)

    def record_at(self, now_s: int, slot: int, status: int, total_us: int, upstream_us: int = 0,
                  bytes_in: int = 0, bytes_out: int = 0, flags: int = 0) -> None:
        blk = self._block(slot)
        c = status // 100
        if c < 2 or c > 5:
            c = 1
        t, u = max(0, total_us), max(0, upstream_us)
        bi, bo = max(0, bytes_in), max(0, bytes_out)
        add = self._add
        add("<Q", blk, 1)
        add("<Q", blk + c * 8, 1)
        if flags & 1:
            add("<Q", blk + 6 * 8, 1)
            add("<Q", blk + (6 + c) * 8, 1)
        for i, n in ((12, t), (13, u), (14, bi), (15, bo)):
            add("<Q", blk + i * 8, n)
        if t > struct.unpack_from("<Q", self._mv, blk + 16 * 8)[0]:
            struct.pack_into("<Q", self._mv, blk + 16 * 8, t)
        self._touch(blk, now_s)
        h = hist_index(t)
        add("<Q", blk + THIST_OFF + h * 8, 1)
        sb = self._second(blk, now_s)
        add("<I", sb + 4, 1)
        add("<I", sb + (1 + c) * 4, 1)
        if flags & 1:
            add("<I", sb + 28, 1)
        for i, n in enumerate((t, u, bi, bo)):
            add("<Q", sb + 32 + i * 8, n)
        period = now_s // self._hist_period
        hi = period % self._hist_ring_len
        soff = blk + self._hstamp_off + hi * 4
        hoff = blk + self._hring_off + hi * HIST_N * 4
        if struct.unpack_from("<I", self._mv, soff)[0] != period:
            self._mv[hoff: hoff + HIST_N * 4] = bytes(HIST_N * 4)
            struct.pack_into("<I", self._mv, soff, period)
        add("<I", hoff + h * 4, 1)

    def record_consumer(self, slot: int) -> None:
        now = self._fixed_now or int(time.time())
        blk = self._block(slot)
        self._add("<Q", blk, 1)
        self._touch(blk, now)
        self._add("<I", self._second(blk, now) + 4, 1)


def _writer_class(pure: bool) -> Any:
    if not pure:
        try:
            from fastgw._core import StatsWriter
            return StatsWriter
        except ImportError:
            pass
    return PyStatsWriter


def create_region_file(directory: str, kind: str, size: int, name: str | None = None) -> tuple[str, int, mmap.mmap]:
    """Create and map a shared-memory file of ``size`` bytes: ``name``, or
    ``fastgw-<kind>-<pid>-<random>`` in ``directory`` (``/tmp`` when that is not a directory),
    after removing the stale ones of ``kind``. Returns (path, fd, mapping).

    SECURITY: 0600 and created exclusively: other local users can neither read a region nor
    pre-create the file to feed the supervisor a forged one. The file is sparse: untouched
    pages take no memory."""
    if not os.path.isdir(directory):
        directory = "/tmp"
    if name is None:
        remove_stale_regions(directory, kind)
    path = os.path.join(directory, name or f"fastgw-{kind}-{os.getpid()}-{os.urandom(4).hex()}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return path, fd, mm


def attach_region_file(path: str, header: struct.Struct, what: str,
                       fits: Callable[[tuple, int], bool]) -> tuple[int, mmap.mmap, tuple]:
    """Open and map an existing region through a descriptor of this process's own, when its
    header ``fits`` (its fields, the file's size): (descriptor, mapping, fields). ValueError
    naming ``path`` and ``what`` when it does not."""
    fd = os.open(path, os.O_RDWR)
    mm = None
    try:
        size = os.fstat(fd).st_size
        if size >= header.size:
            mm = mmap.mmap(fd, size)
            fields = header.unpack_from(mm, 0)
            if fits(fields, size):
                return fd, mm, fields
        raise ValueError(f"{path}: not a fastgw {what} (or another version)")
    except BaseException:
        if mm is not None:
            mm.close()
        os.close(fd)
        raise


def close_region_file(fd: int, path: str, owner: bool) -> None:
    """Close a region's descriptor and, for its creator (``owner``), remove the file:
    processes still attached keep their mapping to the end."""
    os.close(fd)
    if owner:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def stale_entries(directory: str, kind: str) -> list[str]:
    """The paths in ``directory`` named ``fastgw-<kind>-<pid>-<random>`` whose supervisor
    (``pid``) no longer runs: left by one that was killed."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    out = []
    for entry in names:
        parts = entry.split("-")
        if len(parts) != 4 or parts[0] != "fastgw" or parts[1] != kind or not parts[2].isdigit():
            continue
        try:
            os.kill(int(parts[2]), 0)
            continue                      # its supervisor still runs
        except ProcessLookupError:
            out.append(os.path.join(directory, entry))
        except PermissionError:
            continue                      # someone else's live process
    return out


def remove_stale_regions(directory: str = "/dev/shm", kind: str = "stats") -> int:
    """Delete regions left by supervisors that were killed (their pid is in the name,
    ``fastgw-<kind>-<pid>-<random>``, and no longer runs); returns how many. The ring is a
    live view, history is in SQLite; the replay region (kind "replay") dies with its node."""
    removed = 0
    for path in stale_entries(directory, kind):
        try:
            os.unlink(path)
            removed += 1
        except OSError:
            pass
    return removed


class StatsRegion:
    """The shared-memory stats region; see the module docstring for the layout.

    Supervisor: ``StatsRegion.create(config, workers=N)`` (assigns the config's keys),
    ``region.name`` to the workers, ``region.close(unlink=True)`` at exit. Worker:
    ``StatsRegion.attach(name).writer(index, generation)``.
    """

    def __init__(self, path: str, fd: int, mm: mmap.mmap, layout: Layout, owner: bool) -> None:
        self.path = path
        self.fd = fd
        self.mm = mm
        self.layout = layout
        self.owner = owner
        self.slots = SlotTable(self)
        self._closed = False

    @property
    def name(self) -> str:
        """What workers pass to :meth:`attach` (the file path)."""
        return self.path

    @classmethod
    def create(cls, config: Any = None, *, workers: int = 1, max_keys: int | None = None,
               ring_seconds: int | None = None, hist_seconds: int | None = None,
               name: str | None = None, directory: str = "/dev/shm") -> StatsRegion:
        """Create a region for ``workers`` worker indexes and assign ``config``'s keys.

        Sizes default to the config's ``stats`` section (``max_keys``, ``ring_seconds``,
        ``hist_seconds``), then to 256 keys (at least 2x the config's), 3600 s, 10 s.
        """
        settings = dict(getattr(config, "stats", None) or {}) if config is not None else {}
        keys = config_keys(config) if config is not None else []
        n_keys = int(max_keys or settings.get("max_keys") or max(256, 2 * (len(keys) + 1)))
        ring = int(ring_seconds or settings.get("ring_seconds") or 3600)
        hist = int(hist_seconds or settings.get("hist_seconds") or 10)
        if ring < 60 or hist < 1 or ring % hist:
            raise ValueError("stats: ring_seconds must be >= 60 and a multiple of hist_seconds")
        layout = Layout(n_writers=max(1, workers) * WRITERS_PER_WORKER, n_keys=n_keys, ring_len=ring,
                        hist_period=hist, hist_ring_len=ring // hist, created=int(time.time()))
        path, fd, mm = create_region_file(directory, "stats", layout.size, name)
        _HEADER.pack_into(mm, 0, MAGIC, VERSION, layout.n_writers, layout.n_keys, layout.ring_len,
                          layout.hist_period, layout.hist_ring_len, HIST_N, layout.stride,
                          layout.keys_off, layout.writers_off, layout.data_off, layout.created)
        region = cls(path, fd, mm, layout, owner=True)
        region.slots.slot_for(OVERFLOW_KEY)
        region.slots.assign(keys)
        return region

    @classmethod
    def attach(cls, name: str) -> StatsRegion:
        """Map an existing region by the name the supervisor passed."""
        path = name if os.sep in name else os.path.join("/dev/shm", name)
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            mm = mmap.mmap(fd, size)
            (magic, version, n_writers, n_keys, ring_len, hist_period, hist_ring_len, hist_n, stride,
             _koff, _woff, _doff, created) = _HEADER.unpack_from(mm, 0)
            if magic != MAGIC or version != VERSION or hist_n != HIST_N:
                raise ValueError(f"{path}: not a fastgw stats region (or another version)")
            layout = Layout(n_writers, n_keys, ring_len, hist_period, hist_ring_len, created)
            if layout.stride != stride or layout.size > size:
                raise ValueError(f"{path}: stats region layout mismatch")
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, mm, layout, owner=False)

    def keys_used(self) -> int:
        return struct.unpack_from("<I", self.mm, KEYS_USED_OFF)[0]

    def writer_slot(self, worker_index: int, generation: int = 0) -> int:
        index = worker_index * WRITERS_PER_WORKER + generation % WRITERS_PER_WORKER
        if not 0 <= index < self.layout.n_writers:
            raise ValueError(f"stats: worker index {worker_index} outside the region "
                             f"({self.layout.n_writers // WRITERS_PER_WORKER} workers)")
        return index

    def writer(self, worker_index: int, generation: int = 0, pure: bool = False) -> Any:
        """The hot-path writer of worker ``worker_index`` in ``generation``."""
        w = self.writer_slot(worker_index, generation)
        _WRITER.pack_into(self.mm, self.layout.writers_off + w * WRITER_HDR,
                          worker_index, generation & 0xFFFFFFFF, os.getpid(), 1, time.time())
        lay = self.layout
        cls = _writer_class(pure)
        return cls(self.mm, lay.block(w, 0), lay.n_keys, lay.stride, lay.ring_len, lay.hist_period,
                   lay.hist_ring_len, lay.hstamp_off, lay.hring_off, w)

    def writers(self) -> list[dict[str, Any]]:
        """Writer headers that were ever attached: index, generation, pid, since."""
        out = []
        for w in range(self.layout.n_writers):
            index, gen, pid, used, since = _WRITER.unpack_from(self.mm, self.layout.writers_off + w * WRITER_HDR)
            if used:
                out.append({"writer": w, "worker": index, "generation": gen, "pid": pid, "since": since})
        return out

    def update_config(self, config: Any) -> None:
        """Assign slots for a reloaded config's keys (old keys keep theirs)."""
        self.slots.assign(config_keys(config))

    def close(self, unlink: bool | None = None) -> None:
        """Unmap; the creator also removes the file unless ``unlink=False``."""
        if self._closed:
            return
        self._closed = True
        try:
            self.mm.close()
        except BufferError:
            pass  # a live writer still points into the mapping; the OS unmaps at exit
        os.close(self.fd)
        if unlink if unlink is not None else self.owner:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------------ reader side

    def _active_blocks(self, slot: int, since: int = 0) -> Iterator[int]:
        lay = self.layout
        for w in range(lay.n_writers):
            off = lay.block(w, slot)
            if since and struct.unpack_from("<Q", self.mm, off + 17 * 8)[0] < since:
                continue
            if struct.unpack_from("<Q", self.mm, off)[0]:
                yield off

    def key_totals(self, slot: int) -> Counts:
        """Running totals of one slot summed over every writer."""
        counts = Counts()
        for off in self._active_blocks(slot):
            vals = struct.unpack_from(f"<{len(TOT_FIELDS)}Q", self.mm, off)
            hist = memoryview(self.mm)[off + THIST_OFF: off + THIST_OFF + HIST_N * 8].cast("Q").tolist()
            counts.add(Counts(dict(zip(TOT_FIELDS, vals, strict=True)), hist))
        return counts

    def totals(self) -> dict[str, Counts]:
        """Running totals of every key (key → Counts) since the region was created."""
        return {key: self.key_totals(slot) for key, slot in self.slots.items()}

    def seconds(self, slot: int, t0: int, t1: int) -> dict[int, list[int]]:
        """One-second buckets of ``slot`` in ``[t0, t1)``: second → SERIES_FIELDS values."""
        lay = self.layout
        t0 = max(t0, t1 - lay.ring_len + 1)
        out: dict[int, list[int]] = {}
        if t1 <= t0:
            return out
        mv = memoryview(self.mm)
        for off in self._active_blocks(slot, since=t0):
            ring = mv[off + SEC_OFF: off + SEC_OFF + lay.ring_len * SEC_SIZE]
            u32 = ring.cast("I")
            u64 = ring.cast("Q")
            for s in range(t0, t1):
                i = s % lay.ring_len
                if u32[i * 16] != s:
                    continue
                row = out.get(s)
                vals = u32[i * 16 + 1: i * 16 + 8].tolist() + u64[i * 8 + 4: i * 8 + 8].tolist()
                if row is None:
                    out[s] = vals
                else:
                    for j, n in enumerate(vals):
                        row[j] += n
        return out

    def hists(self, slot: int, t0: int, t1: int) -> dict[int, list[int]]:
        """Latency histograms of ``slot`` per period start second, periods within ``[t0, t1)``."""
        lay = self.layout
        p0 = max(t0 // lay.hist_period, (t1 - lay.ring_len) // lay.hist_period + 1)
        p1 = (t1 + lay.hist_period - 1) // lay.hist_period
        out: dict[int, list[int]] = {}
        mv = memoryview(self.mm)
        for off in self._active_blocks(slot, since=p0 * lay.hist_period):
            stamps = mv[off + lay.hstamp_off: off + lay.hstamp_off + lay.hist_ring_len * 4].cast("I")
            for p in range(p0, p1):
                i = p % lay.hist_ring_len
                if stamps[i] != p:
                    continue
                start = off + lay.hring_off + i * HIST_N * 4
                h = mv[start: start + HIST_N * 4].cast("I").tolist()
                cur = out.get(p * lay.hist_period)
                if cur is None:
                    out[p * lay.hist_period] = h
                else:
                    for j, n in enumerate(h):
                        if n:
                            cur[j] += n
        return out

    def __enter__(self) -> StatsRegion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
