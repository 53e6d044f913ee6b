"""Stats region: writer twins, exact sums over worker processes, percentiles, ring buckets, reload."""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fastgw import stats as st
from fastgw.stats import HIST_N, StatsRegion, config_keys, hist_bounds, hist_index, percentile


def _core_writer() -> type | None:
    try:
        from fastgw._core import StatsWriter
    except Exception:  # the extension is not built (or a part of it is broken)
        return None
    return StatsWriter


IMPLS = ["c", "py"]


@pytest.fixture
def region():
    r = StatsRegion.create(workers=2, max_keys=16, ring_seconds=120, hist_seconds=10)
    yield r
    r.close()


def make_writer(region: StatsRegion, impl: str, index: int = 0, generation: int = 0):
    if impl == "c" and _core_writer() is None:
        pytest.skip("fastgw._core not importable")
    return region.writer(index, generation, pure=(impl == "py"))


def test_layout_matches_cython_constants():
    src = open(st.__file__.replace("stats.py", "_stats.pxi")).read()
    assert f"_ST_THIST_OFF = {st.THIST_OFF}" in src
    assert f"_ST_SEC_OFF = {st.SEC_OFF}" in src
    assert f"_ST_HIST_N = {HIST_N}" in src
    assert st.TOT_FIELDS.index("gateway") == 6 and st.TOT_FIELDS.index("last_sec") == 17


def test_hist_index_is_monotonic_and_bounded():
    prev = -1
    for v in list(range(20000)) + [2**k + d for k in range(15, 40) for d in (-1, 0, 1)]:
        i = hist_index(v)
        assert i >= prev or v > 2**27
        low, high = hist_bounds(i)
        if v < 2**27:
            assert low <= v < high
            assert (high - low) <= max(1, low / 16)
        prev = i if v < 2**27 else prev
    core = _core_writer()
    if core is not None:
        from fastgw._core import stats_hist_index
        for v in [0, 1, 15, 16, 17, 1000, 123456, 2**27, 2**40]:
            assert stats_hist_index(v) == hist_index(v)


def test_twins_write_identical_bytes(region):
    if _core_writer() is None:
        pytest.skip("fastgw._core not importable")
    a = region.writer(0, 0)
    b = region.writer(0, 1, pure=True)
    slot = region.slots.slot_for("svc/prod/GET /x")
    rng = random.Random(7)
    now = int(time.time())
    for _ in range(500):
        args = (now - rng.randint(0, 300), slot, rng.choice([200, 204, 302, 404, 429, 503, 101]),
                rng.randint(0, 5_000_000), rng.randint(0, 1000), rng.randint(0, 999), rng.randint(0, 9999),
                rng.randint(0, 1))
        a.record_at(*args)
        b.record_at(*args)
    lay = region.layout
    blk_a, blk_b = lay.block(a.writer_index, slot), lay.block(b.writer_index, slot)
    assert region.mm[blk_a: blk_a + lay.stride] == region.mm[blk_b: blk_b + lay.stride]


def _worker_proc(name: str, index: int, key_ops: list[tuple[str, int, int, int, int, int, int]]) -> None:
    region = StatsRegion.attach(name)
    writer = region.writer(index, 1)
    for key, status, total, upstream, bin_, bout, flags in key_ops:
        writer.record(region.slots.slot_for(key), status, total, upstream, bin_, bout, flags)
    consumer = region.slots.slot_for("~consumer/alice")
    for _ in range(index + 3):
        writer.record_consumer(consumer)


def test_exact_counts_from_two_worker_processes():
    if _core_writer() is None:
        pytest.skip("fastgw._core not importable")
    cfg = SimpleNamespace(
        routes=[SimpleNamespace(key="shop/prod/GET /orders", hosts=("api.shop",)),
                SimpleNamespace(key="shop/prod/POST /orders", hosts=("api.shop",))],
        consumers=[{"name": "alice"}], stats={},
    )
    region = StatsRegion.create(cfg, workers=2, ring_seconds=120)
    try:
        rng = random.Random(1)
        plans = []
        for _ in range(2):
            ops = []
            for _ in range(3000):
                key = rng.choice(["shop/prod/GET /orders", "shop/prod/POST /orders", "~unmatched/api.shop"])
                status = rng.choice([200, 201, 204, 301, 304, 400, 401, 404, 429, 500, 502, 101])
                ops.append((key, status, rng.randint(100, 90_000), rng.randint(0, 50_000),
                            rng.randint(0, 2000), rng.randint(0, 20000), int(status in (401, 429, 404))))
            plans.append(ops)
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=_worker_proc, args=(region.name, i, plans[i])) for i in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        totals = region.totals()
        for key in ("shop/prod/GET /orders", "shop/prod/POST /orders", "~unmatched/api.shop"):
            ops = [o for plan in plans for o in plan if o[0] == key]
            v = totals[key].values
            assert v["calls"] == len(ops)
            for cls in (2, 3, 4, 5):
                assert v[f"{cls}xx"] == sum(1 for o in ops if o[1] // 100 == cls)
            assert v["other"] == sum(1 for o in ops if o[1] // 100 == 1)
            assert v["gateway"] == sum(o[6] for o in ops)
            assert v["gateway_4xx"] == sum(o[6] for o in ops)
            assert v["total_us"] == sum(o[2] for o in ops)
            assert v["upstream_us"] == sum(o[3] for o in ops)
            assert v["bytes_in"] == sum(o[4] for o in ops)
            assert v["bytes_out"] == sum(o[5] for o in ops)
            assert v["max_us"] == max(o[2] for o in ops)
            assert sum(totals[key].hist) == len(ops)
        assert totals["~consumer/alice"].calls == 3 + 4
        assert sorted((w["worker"], w["generation"]) for w in region.writers()) == [(0, 1), (1, 1)]
    finally:
        region.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_percentiles_within_5_percent(region, impl):
    w = make_writer(region, impl)
    slot = region.slots.slot_for("svc/prod/GET /lat")
    rng = random.Random(3)
    samples = [int(rng.lognormvariate(9.0, 1.2)) for _ in range(20000)]  # median ~8 ms, long tail
    now = int(time.time())
    for v in samples:
        w.record_at(now, slot, 200, v)
    samples.sort()
    hist = region.key_totals(slot).hist
    for q in (0.5, 0.95, 0.99):
        true = samples[int(q * len(samples)) - 1]
        est = percentile(hist, q)
        assert abs(est - true) / true < 0.05, (q, est, true)
    # the per-period ring histogram answers the same
    ring = region.hists(slot, now - 10, now + 1)
    assert sum(sum(h) for h in ring.values()) == len(samples)


@pytest.mark.parametrize("impl", IMPLS)
def test_time_series_buckets(region, impl):
    w = make_writer(region, impl)
    slot = region.slots.slot_for("svc/prod/GET /ts")
    base = (int(time.time()) // 10) * 10
    for i in range(5):
        for _ in range(i + 1):
            w.record_at(base - 30 + i, slot, 200 if i % 2 == 0 else 500, 1000 * (i + 1), 10, 1, 2)
    w.record_at(base - 200, slot, 200, 5)  # more than one ring lap (120 s) ago
    secs = region.seconds(slot, base - 60, base)
    assert sorted(secs) == [base - 30 + i for i in range(5)]
    fields = st.SERIES_FIELDS
    for i in range(5):
        row = dict(zip(fields, secs[base - 30 + i], strict=True))
        assert row["calls"] == i + 1
        assert row["2xx" if i % 2 == 0 else "5xx"] == i + 1
        assert row["total_us"] == 1000 * (i + 1) * (i + 1)
        assert row["bytes_out"] == 2 * (i + 1)
    hists = region.hists(slot, base - 60, base)
    assert sorted(hists) == [base - 30] and sum(hists[base - 30]) == 15
    # a ring slot is recycled a lap later: the old second is gone, the new one is clean
    w.record_at(base - 30 + 120, slot, 404, 7)
    secs = region.seconds(slot, base - 30, base + 100)
    assert base - 30 not in secs and secs[base + 90][fields.index("4xx")] == 1
    assert secs[base + 90][fields.index("calls")] == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_reload_keeps_counts_by_key_and_restart_continues(region, impl):
    w = make_writer(region, impl, 1, 0)
    old = {k: region.slots.slot_for(k) for k in ("s/p/GET /a", "s/p/GET /b")}
    for _ in range(5):
        w.record(old["s/p/GET /b"], 200, 100, 50, 0, 0, 0)
    # a reload: another process attaches, the new config drops /a and adds /c before /b
    other = StatsRegion.attach(region.name)
    new = other.slots.assign(["s/p/GET /c", "s/p/GET /b"])
    assert new["s/p/GET /b"] == old["s/p/GET /b"]
    assert new["s/p/GET /c"] not in old.values()
    # the next generation of worker 1 keeps adding; nothing resets
    w2 = other.writer(1, 1, pure=(impl == "py"))
    for _ in range(3):
        w2.record(new["s/p/GET /b"], 503, 100, 50, 0, 0, 0)
    t = region.totals()["s/p/GET /b"].values
    assert (t["calls"], t["2xx"], t["5xx"]) == (8, 5, 3)
    del w2
    other.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_slot_counts_in_overflow(region, impl):
    w = make_writer(region, impl)
    w.record(10_000, 200, 1, 0, 0, 0, 0)
    w.record(-1, 200, 1, 0, 0, 0, 0)
    assert region.totals()[st.OVERFLOW_KEY].calls == 2


def test_slot_table_full_and_long_keys():
    r = StatsRegion.create(workers=1, max_keys=4, ring_seconds=60)
    try:
        long = "svc/prod/GET /" + "x" * 400
        assert r.slots.slot_for(long) == 1
        assert r.slots.slot_for(long + "y") == 2
        assert r.slots.slot_for("a") == 3
        assert r.slots.slot_for("b") == 0  # full: overflow
        assert len({k for k, _ in r.slots.items()}) == 4
    finally:
        r.close()


def test_config_keys():
    cfg = SimpleNamespace(
        routes=[SimpleNamespace(key="s/prod/GET /a", hosts=("a.example", "*.b.example")),
                SimpleNamespace(key="s/dev/GET /a", hosts=())],
        consumers=[{"name": "bob"}],
    )
    assert config_keys(cfg) == ["s/prod/GET /a", "s/dev/GET /a", "~unmatched/a.example",
                                "~unmatched/*.b.example", "~unmatched/*", "~consumer/bob"]
    cfg.redis = {"url": "redis://127.0.0.1:6379/0"}              # the Redis commands' results too
    assert config_keys(cfg)[-3:] == ["~redis/ok", "~redis/error", "~redis/failed"]


def test_summary_and_percentile_edges():
    assert percentile([0] * HIST_N, 0.99) == 0.0
    c = st.Counts()
    assert c.summary()["avg_ms"] == 0.0


def test_stale_regions_of_dead_supervisors_are_removed(tmp_path: Path) -> None:
    import subprocess
    import sys

    from fastgw.stats import remove_stale_regions

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"fastgw-stats-{dead.pid}-abcd0123").write_bytes(b"x")
    (tmp_path / f"fastgw-stats-{os.getpid()}-abcd0123").write_bytes(b"x")   # alive: kept
    (tmp_path / "unrelated-file").write_bytes(b"x")
    assert remove_stale_regions(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"fastgw-stats-{os.getpid()}-abcd0123", "unrelated-file"])
