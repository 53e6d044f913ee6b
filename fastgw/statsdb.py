"""Stats history: SQLite roll-up of the shared-memory ring, and the queries the admin serves.

The supervisor rolls completed minutes out of the one-second ring into 1 min, 1 h and
1 day rows (UTC) of one table, so history survives restarts; a watermark
(``rolled_until``) makes each minute count exactly once. :class:`StatsQuery` answers
``GET /stats``: rows from SQLite up to the watermark, the ring after it, summed per key
and per time step, with latency percentiles from the merged histograms.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import struct
import time
from collections.abc import Iterable
from typing import Any

from fastgw.stats import (
    HIST_N,
    REDIS_RESULTS,
    SERIES_FIELDS,
    Counts,
    StatsRegion,
    parse_key,
)

RESOLUTIONS = (60, 3600, 86400)
GRACE_S = 2            # a second is final once the coarse clocks of all writers passed it
DEFAULT_RETENTION_DAYS = 90
STEPS = (1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 10800, 21600, 43200, 86400)
_COLS = ("calls", "other", "s2xx", "s3xx", "s4xx", "s5xx", "gateway", "total_us", "upstream_us",
         "bytes_in", "bytes_out")
_PAIR = struct.Struct("<HQ")


def encode_hist(hist: list[int]) -> bytes:
    """Sparse histogram blob: ``(index u16, count u64)`` pairs of the non-zero buckets."""
    return b"".join(_PAIR.pack(i, n) for i, n in enumerate(hist) if n)


def decode_hist(blob: bytes | None, into: list[int] | None = None) -> list[int]:
    hist = into if into is not None else [0] * HIST_N
    if blob:
        for i, n in _PAIR.iter_unpack(blob):
            if i < HIST_N:
                hist[i] += n
    return hist


def _counts_from_series(row: list[int], hist: list[int] | None = None) -> Counts:
    c = Counts()
    for name, n in zip(SERIES_FIELDS, row, strict=True):
        c.values[name] = n
    if hist is not None:
        c.hist = hist
    return c


class StatsDB:
    """The SQLite history file (1 min / 1 h / 1 day rows, ``retention_days`` kept)."""

    def __init__(self, path: str, retention_days: int = DEFAULT_RETENTION_DAYS) -> None:
        self.path = path
        self.retention_s = int(retention_days) * 86400
        self.conn = sqlite3.connect(path, isolation_level=None)
        # PERF: WAL + NORMAL sync: a roll-up is one small transaction every few seconds.
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS buckets (res INTEGER NOT NULL, t INTEGER NOT NULL, "
            "key TEXT NOT NULL, " + ", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in _COLS)
            + ", hist BLOB, PRIMARY KEY (res, t, key)) WITHOUT ROWID"
        )
        self.conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER)")

    def close(self) -> None:
        self.conn.close()

    @property
    def rolled_until(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE name='rolled_until'").fetchone()
        return int(row[0]) if row else 0

    def rollup(self, region: StatsRegion, now: float | None = None) -> int:
        """Move every completed minute still in ``region``'s ring into SQLite; returns minutes."""
        now_i = int(now if now is not None else time.time())
        lay = region.layout
        oldest = (now_i - lay.ring_len + 60) // 60 * 60          # still wholly inside the ring
        start = max(self.rolled_until, lay.created // 60 * 60, oldest)
        end = (now_i - GRACE_S) // 60 * 60
        if end <= start:
            return 0
        minute_rows: dict[tuple[int, str], tuple[list[int], list[int]]] = {}
        for key, slot in region.slots.items():
            for sec, row in region.seconds(slot, start, end).items():
                m = sec // 60 * 60
                cur = minute_rows.get((m, key))
                if cur is None:
                    minute_rows[(m, key)] = (list(row), [0] * HIST_N)
                else:
                    for j, n in enumerate(row):
                        cur[0][j] += n
            for pstart, hist in region.hists(slot, start, end).items():
                cur = minute_rows.get((pstart // 60 * 60, key))
                if cur is not None:
                    for j, n in enumerate(hist):
                        if n:
                            cur[1][j] += n
        db = self.conn
        db.execute("BEGIN IMMEDIATE")
        try:
            for (m, key), (row, hist) in minute_rows.items():
                for res in RESOLUTIONS:
                    self._add(res, m // res * res, key, row, hist)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('rolled_until', ?)", (end,))
            if self.retention_s:
                db.execute("DELETE FROM buckets WHERE t < ?", (now_i - self.retention_s,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return (end - start) // 60

    def _add(self, res: int, t: int, key: str, row: list[int], hist: list[int]) -> None:
        db = self.conn
        old = db.execute(f"SELECT {', '.join(_COLS)}, hist FROM buckets WHERE res=? AND t=? AND key=?",
                         (res, t, key)).fetchone()
        if old is not None:
            row = [a + b for a, b in zip(row, old[:-1], strict=True)]
            hist = decode_hist(old[-1], list(hist))
        db.execute(f"INSERT OR REPLACE INTO buckets (res, t, key, {', '.join(_COLS)}, hist) "
                   f"VALUES (?, ?, ?, {', '.join('?' * len(_COLS))}, ?)", (res, t, key, *row, encode_hist(hist)))

    def rows(self, res: int, t0: int, t1: int, keys: Iterable[str]) -> Iterable[tuple[Any, ...]]:
        """``(key, t, *series fields, hist blob)`` rows of resolution ``res`` in ``[t0, t1)``."""
        wanted = set(keys)
        for row in self.conn.execute(
            f"SELECT key, t, {', '.join(_COLS)}, hist FROM buckets WHERE res=? AND t>=? AND t<?",
            (res, t0, t1),
        ):
            if row[0] in wanted:
                yield row


def choose_step(span: int) -> int:
    """A step giving at most ~120 points over ``span`` seconds."""
    for step in STEPS:
        if span / step <= 120:
            return step
    return STEPS[-1]


def key_matches(parts: dict[str, str], filters: dict[str, str]) -> bool:
    """Whether a route key's parts pass ``service``/``stage``/``method``/``resource`` filters.

    ``resource`` matches the resource and everything below it in the tree.
    """
    for name in ("service", "stage", "method"):
        want = filters.get(name)
        if want and parts.get(name) != want:
            return False
    res = filters.get("resource")
    if res:
        have = parts.get("resource", "")
        if have != res and not have.startswith(res.rstrip("/") + "/"):
            return False
    return True


class StatsQuery:
    """Builds the ``GET /stats`` document from the region (and the history, when given)."""

    def __init__(self, region: StatsRegion, db: StatsDB | None = None) -> None:
        self.region = region
        self.db = db

    def _per_key(self, keys: list[tuple[str, int]], t0: int, t1: int, step: int) -> dict[str, dict[int, Counts]]:
        """key → point start → Counts over ``[t0, t1)`` at ``step``."""
        region, db = self.region, self.db
        out: dict[str, dict[int, Counts]] = {key: {} for key, _ in keys}

        def point(key: str, t: int) -> Counts:
            p = (t - t0) // step * step + t0
            pts = out[key]
            c = pts.get(p)
            if c is None:
                c = pts[p] = Counts()
            return c

        ring_from = t0
        if db is not None and step >= 60:
            rolled = db.rolled_until
            res = max(r for r in RESOLUTIONS if r <= step and step % r == 0)
            if rolled > t0:
                names = [k for k, _ in keys]
                for row in db.rows(res, t0 // res * res, min(t1, rolled), names):
                    c = point(row[0], max(row[1], t0))
                    c.add(_counts_from_series(list(row[2:-1]), decode_hist(row[-1])))
                ring_from = max(t0, rolled)
        if ring_from < t1:
            for key, slot in keys:
                for sec, row in region.seconds(slot, ring_from, t1).items():
                    point(key, sec).add(_counts_from_series(row))
                for pstart, hist in region.hists(slot, ring_from, t1).items():
                    c = point(key, max(pstart, ring_from))
                    for j, n in enumerate(hist):
                        if n:
                            c.hist[j] += n
        return out

    def stats(self, filters: dict[str, str] | None = None, t0: int | None = None, t1: int | None = None,
              step: int | None = None, now: int | None = None) -> dict[str, Any]:
        """Totals, a time series, per-resource rows, unmatched hosts, consumers and the
        Redis commands' results (ok, error, failed: fastgw.stats.redis_observer)."""
        filters = {k: v for k, v in (filters or {}).items() if v}
        now = int(now if now is not None else time.time())
        t1 = int(t1 if t1 is not None else now + 1)
        t0 = int(t0 if t0 is not None else t1 - 300)
        if t0 >= t1:
            t0 = t1 - 1
        step = int(step or choose_step(t1 - t0))
        step = max(1, step)
        t0 = t0 // step * step if step <= 86400 else t0
        items = self.region.slots.items()
        parsed = {key: parse_key(key) for key, _ in items}
        routes = [(k, s) for k, s in items if parsed[k]["kind"] == "route" and key_matches(parsed[k], filters)]
        others = [(k, s) for k, s in items if parsed[k]["kind"] in ("unmatched", "consumer", "redis")]
        per_key = self._per_key(routes + others, t0, t1, step)
        series_pts: dict[int, Counts] = {}
        for key, _ in routes:
            for p, c in per_key[key].items():
                series_pts.setdefault(p, Counts()).add(c)
        series = []
        for p in range(t0, t1, step):
            c = series_pts.get(p) or Counts()
            s = c.summary()
            series.append({"t": p, **{k: s[k] for k in ("calls", "2xx", "3xx", "4xx", "5xx", "other", "gateway",
                                                       "avg_ms", "upstream_avg_ms", "p50_ms", "p95_ms",
                                                       "p99_ms", "bytes_in", "bytes_out")}})
        totals = Counts()
        for c in series_pts.values():
            totals.add(c)
        running_all = Counts()
        resources = []
        for key, slot in routes:
            rng = Counts()
            for c in per_key[key].values():
                rng.add(c)
            run = self.region.key_totals(slot)
            running_all.add(run)
            if rng.calls == 0 and run.calls == 0:
                continue
            resources.append({"key": key, **parsed[key], **rng.summary(), "running": run.summary()})
        resources.sort(key=lambda r: (r["service"], r["stage"], r["resource"], r["method"]))
        unmatched, consumers, redis = [], [], []
        for key, slot in others:
            rng = Counts()
            for c in per_key[key].values():
                rng.add(c)
            run = self.region.key_totals(slot)
            if rng.calls == 0 and run.calls == 0:
                continue
            if parsed[key]["kind"] == "unmatched":
                unmatched.append({"host": parsed[key]["host"], **rng.summary(), "running": run.summary()})
            elif parsed[key]["kind"] == "redis":
                redis.append({"result": parsed[key]["result"], **rng.summary(), "running": run.summary()})
            else:
                consumers.append({"name": parsed[key]["consumer"], "calls": rng.calls, "running_calls": run.calls})
        services: dict[str, list[str]] = {}
        for key, _ in items:
            p = parsed[key]
            if p["kind"] == "route" and p["stage"] not in services.setdefault(p["service"], []):
                services[p["service"]].append(p["stage"])
        return {
            "now": now, "from": t0, "to": t1, "step": step, "filters": filters,
            "since": self.region.layout.created,
            "rolled_until": self.db.rolled_until if self.db is not None else None,
            "totals": totals.summary(), "running": running_all.summary(),
            "series": series, "resources": resources, "unmatched": unmatched, "consumers": consumers,
            "redis": sorted(redis, key=lambda r: REDIS_RESULTS.index(r["result"]) if r["result"] in REDIS_RESULTS
                            else len(REDIS_RESULTS)),
            "services": services,
        }


class RollupTask:
    """Runs :meth:`StatsDB.rollup` every ``interval`` seconds on the running loop."""

    def __init__(self, region: StatsRegion, db: StatsDB, interval: float = 10.0) -> None:
        self.region = region
        self.db = db
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.db.rollup(self.region)
            except sqlite3.Error as exc:  # a full disk must not stop the admin listener
                print(f"fastgw stats: roll-up failed: {exc}", flush=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(sqlite3.Error):
            self.db.rollup(self.region)


def resolve_db_path(setting: str | None, config_source: str) -> str | None:
    """Where the history of a config lives: ``setting`` as given, None for none, or for
    ``"auto"`` one file per config file under ``$XDG_STATE_HOME/fastgw`` (so a restart, or
    another config on the same machine, finds its own history)."""
    if not setting:
        return None
    if setting != "auto":
        return setting
    import hashlib

    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    source = os.path.abspath(config_source) if config_source and not config_source.startswith("<") else "data"
    stem = os.path.splitext(os.path.basename(source))[0] or "fastgw"
    digest = hashlib.sha256(source.encode()).hexdigest()[:10]
    directory = os.path.join(state, "fastgw")
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, f"{stem}-{digest}.sqlite3")
