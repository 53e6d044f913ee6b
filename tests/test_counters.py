"""Rate-limit counters (fastgw/counters.py, fastgw/_counters.pxi): the node's shared table
(windows, take-backs, the clock wrap, no room, many processes adding at once), its
in-process twin, and the Redis counters every node shares (a real redis-server)."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from fastgw import _core
from fastgw.admin import redis_client
from fastgw.counters import LocalCounters, RedisCounters, window_end
from fastgw.resp import RespClient
from fastgw.shared import SharedRegion


def table(capacity: int = 1 << 10) -> Any:
    return _core.CounterTable(bytearray(capacity * 16 + 64), 64, capacity)


def test_counts_in_a_window_and_a_new_window_starts_at_zero() -> None:
    t = table()
    assert [t.hit(5, 77, 1000, 1060, 1) for _ in range(3)] == [1, 2, 3]
    assert t.count(5, 77, 1030, 1060) == 3
    assert t.hit(5, 77, 1059, 1060, -1) == 2           # a take-back
    assert t.hit(5, 77, 1060, 1120, 1) == 1            # the next minute
    assert t.count(5, 77, 1060, 1060) == 0
    assert t.hit(5, 77, 1061, 1120, -5) == 0           # never below zero


@pytest.mark.parametrize("now", [(1 << 20) - 2, (1 << 32) - 3, 0])
def test_windows_across_the_clock_wrap(now: int) -> None:
    t = table()
    end = (now + 60) & 0xFFFFFFFF
    assert t.hit(1, 2, now, end, 1) == 1
    assert t.hit(1, 2, (now + 59) & 0xFFFFFFFF, end, 1) == 2
    assert t.hit(1, 2, (now + 60) & 0xFFFFFFFF, (now + 120) & 0xFFFFFFFF, 1) == 1
    assert t.hit(3, 4, now, (now + 86_400) & 0xFFFFFFFF, 1) == 1        # a day window


def test_keys_share_a_home_and_a_full_window_answers_minus_one() -> None:
    t = table(32)
    for key in range(1, 33):
        assert t.hit(0, key << 1, 100, 160, 1) == 1
    assert t.hit(0, 999 << 1, 100, 160, 1) == -1       # no room: nothing counted
    for key in range(1, 33):
        assert t.count(0, key << 1, 100, 160) == 1
    assert t.hit(0, 999 << 1, 160, 220, 1) == 1        # their windows ended: room again


def test_a_day_counter_is_not_taken_by_a_second_counter() -> None:
    t = table(32)
    for key in range(1, 33):
        assert t.hit(0, key << 1, 100, 86_400, 1) == 1
    assert t.hit(0, 5000, 101, 102, 1) == -1            # the day counters are still live


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        _core.CounterTable(bytearray(4096), 0, 48)
    with pytest.raises(ValueError):
        table().hit(1, 1, 100, 100, 1)                 # a window that ended
    with pytest.raises(ValueError):
        table().hit(1, 1, 100, 100 + (1 << 19), 1)


def _add(name: str, keys: int, rounds: int, start: Any, out: Any) -> None:
    counters = SharedRegion.attach(name).counters()
    start.wait()
    for _ in range(rounds):
        for k in range(keys):
            assert counters.hit([(b"k%d" % k, 3600)], 1_700_000_000.0, 1) is not None
    out.send(True)
    out.close()


def test_processes_adding_at_once_lose_no_count(tmp_path: Path) -> None:
    region = SharedRegion.create(replay_slots=64, counter_slots=1 << 10, directory=str(tmp_path))
    ctx = multiprocessing.get_context("fork")
    procs, keys, rounds = 4, 50, 200
    start = ctx.Barrier(procs)
    pipes, children = [], []
    for _ in range(procs):
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_add, args=(region.name, keys, rounds, start, w))
        p.start()
        w.close()
        pipes.append(r)
        children.append(p)
    assert all(r.recv() for r in pipes)
    for p in children:
        p.join(10)
        assert p.exitcode == 0
    counters = region.counters()
    totals = counters.hit([(b"k%d" % k, 3600) for k in range(keys)], 1_700_000_000.0, 0)
    assert totals == [procs * rounds] * keys
    region.close()


@pytest.mark.parametrize("kind", ["node", "local"])
def test_node_and_local_counters_agree(kind: str, tmp_path: Path) -> None:
    region = SharedRegion.create(replay_slots=64, counter_slots=1 << 10, directory=str(tmp_path))
    counters = region.counters() if kind == "node" else LocalCounters()
    items = [(b"alice", 1), (b"alice", 60)]
    assert counters.hit(items, 1000.5, 1) == [1, 1]
    assert counters.hit(items, 1000.9, 1) == [2, 2]
    assert counters.hit(items, 1001.0, 1) == [1, 3]     # a new second, the same minute
    assert counters.hit(items, 1001.2, -1) == [0, 2]
    assert counters.hit([(b"bob", 60)], 1001.2, 1) == [1]
    region.close()


def test_window_end_is_aligned_on_the_clock() -> None:
    assert window_end(1000.7, 60) == 1020 and window_end(1020.0, 60) == 1080 and window_end(5.5, 1) == 6


def test_redis_counters_are_shared_by_nodes(redis: Any) -> None:
    async def scenario() -> None:
        a = RedisCounters(RespClient(redis.url, 1.0), "t:")
        b = RedisCounters(RespClient(redis.url, 1.0), "t:")
        look = redis_client({"url": redis.url, "timeout": 1.0})
        try:
            now = 1_700_000_030.0
            assert await a.hit([(b"alice", 60), (b"alice", 3600)], now, 1) == [1, 1]
            assert await b.hit([(b"alice", 60), (b"alice", 3600)], now, 1) == [2, 2]
            assert await b.hit([(b"alice", 60)], now + 60, 1) == [1]            # the next minute
            keys = await look.keys("t:rl:*")
            ttls = sorted([await look.ttl(k) for k in keys])
            assert len(keys) == 3 and all(0 < t <= 3600 for t in ttls)
            # One caller's windows share a Redis Cluster hash slot (a hash tag).
            assert len({k.split(b"{")[1].split(b"}")[0] for k in keys}) == 1
        finally:
            await a.aclose()
            await b.aclose()
            await look.aclose()

    asyncio.run(scenario())


def test_redis_counters_refuse_atomically_and_do_not_count_the_refused(redis: Any) -> None:
    async def scenario() -> None:
        c = RedisCounters(RespClient(redis.url, 1.0), "t:")
        try:
            now = 1_700_000_030.0
            items = [(b"bob", 1), (b"bob", 60)]
            # 50 requests at once against a limit of 5 a minute: 5 get in, whatever the
            # interleaving (the check and the add are one step in Redis).
            got = await asyncio.gather(*(c.hit(items, now, 1, (100, 5)) for _ in range(50)))
            within = [counts for counts in got if counts[1] <= 5]
            assert len(within) == 5 and sorted(counts[1] for counts in within) == [1, 2, 3, 4, 5]
            assert all(counts[1] == 6 for counts in got if counts[1] > 5)   # what a refused one sees
            # The refused ones were not counted: the per-second window holds 5 too.
            assert await c.hit(items, now, 0) == [5, 5]
            # A refusal by one limit leaves the other untouched.
            assert await c.hit([(b"carol", 1), (b"carol", 60)], now, 1, (0, 10)) == [1, 1]
            assert await c.hit([(b"carol", 1), (b"carol", 60)], now, 0) == [0, 0]
            # then: the future's result is what it makes of the counts
            assert await c.hit([(b"dave", 60)], now, 1, (5,), lambda counts: ("seen", counts)) == ("seen", [1])
        finally:
            await c.aclose()

    asyncio.run(scenario())


def test_redis_counters_load_their_script_again_after_a_flush(redis: Any) -> None:
    async def scenario() -> None:
        c = RedisCounters(RespClient(redis.url, 1.0), "t:")
        look = RespClient(redis.url, 1.0)
        try:
            assert await c.hit([(b"eve", 60)], 1_700_000_030.0, 1, (10,)) == [1]
            await look.call("SCRIPT", "FLUSH")
            assert await c.hit([(b"eve", 60)], 1_700_000_030.0, 1, (10,)) == [2]
            assert await c.hit([(b"eve", 60)], 1_700_000_030.0, 1, (10,)) == [3]
        finally:
            await c.aclose()
            await look.aclose()

    asyncio.run(scenario())


def test_redis_counters_down_answer_none(redis: Any) -> None:
    redis.stop()

    async def scenario() -> None:
        c = RedisCounters(RespClient(redis.url, 0.2))
        try:
            assert await c.hit([(b"x", 60)], 1000.0, 1) is None
            # `then` hears it too (the plugin's verdict on no counts)
            assert await c.hit([(b"x", 60)], 1000.0, 1, (5,), lambda counts: counts is None) is True
        finally:
            await c.aclose()

    asyncio.run(scenario())
