"""The replay guard (fastgw/replay.py, fastgw/_replay.pxi, fastgw/shared.py): the node's shared table (expiry,
the 2**20-second wrap, full windows, several processes claiming the same tokens at once)
and the Redis set many nodes share (a real redis-server, stopped to see it fail closed)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from fastgw import _core
from fastgw.replay import LocalReplayGuard, RedisReplayGuard
from fastgw.resp import RespClient
from fastgw.shared import SharedRegion
from fastgw.stats import remove_stale_regions

FIRST, USED, FULL = _core.REPLAY_FIRST_USE, _core.REPLAY_USED, _core.REPLAY_FULL


@pytest.fixture
def region(tmp_path: Path) -> Any:
    r = SharedRegion.create(replay_slots=1 << 12, counter_slots=64, directory=str(tmp_path))
    yield r
    r.close()


def table(capacity: int = 1 << 12) -> Any:
    return _core.ReplaySet(bytearray(capacity * 8 + 64), 64, capacity)


@pytest.mark.parametrize("kind", ["shared", "local"])
def test_a_token_is_used_once(kind: str, region: Any) -> None:
    guard = region.replay_guard() if kind == "shared" else LocalReplayGuard()
    assert guard.first_use(b"sig-a", 30) is True
    assert guard.first_use(b"sig-a", 30) is False
    assert guard.first_use(b"sig-b", 30) is True
    assert guard.first_use(b"sig-a", 30) is False
    assert guard.live_count() == 2


def test_expiry_frees_the_token() -> None:
    t = table()
    assert t.claim(7, 99, 1000, 5) == FIRST
    assert t.claim(7, 99, 1004, 5) == USED       # still inside its 5 s
    assert t.claim(7, 99, 1005, 5) == FIRST      # expired: a new first use
    assert t.live_count(1005) == 1


@pytest.mark.parametrize("now", [(1 << 20) - 3, (1 << 32) - 2, 0, (1 << 19) + 1])
def test_expiry_across_the_clock_wrap(now: int) -> None:
    t = table()
    assert t.claim(1, 5, now, 10) == FIRST
    assert t.claim(1, 5, (now + 9) & 0xFFFFFFFF, 10) == USED
    assert t.claim(1, 5, (now + 10) & 0xFFFFFFFF, 10) == FIRST
    # the longest ttl the plugin may ask for (2 x 86 400 s) is honoured
    assert t.claim(2, 6, now, 172_800) == FIRST
    assert t.claim(2, 6, (now + 172_799) & 0xFFFFFFFF, 10) == USED


def test_same_home_different_tokens_and_full_window() -> None:
    t = table(64)
    for fp in range(1, 65):
        assert t.claim(0, fp << 1, 100, 50) == FIRST, fp
    for fp in range(1, 65):
        assert t.claim(0, fp << 1, 100, 50) == USED, fp
    assert t.claim(0, 999 << 1, 100, 50) == FULL     # nothing recorded, caller refuses
    assert t.claim(0, 999 << 1, 150, 50) == FIRST    # the others expired: room again


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        _core.ReplaySet(bytearray(4096), 0, 100)           # not a power of two
    with pytest.raises(ValueError):
        _core.ReplaySet(bytearray(1024), 0, 256)           # larger than the buffer
    with pytest.raises(ValueError):
        table().claim(1, 1, 0, 0)
    with pytest.raises(ValueError):
        table().claim(1, 1, 0, 1 << 19)


def _claim_all(name: str, tokens: int, start: Any, out: Any) -> None:
    guard = SharedRegion.attach(name).replay_guard()
    start.wait()
    out.send([i for i in range(tokens) if guard.first_use(b"token-%d" % i, 60)])
    out.close()


def test_processes_claiming_the_same_tokens_at_once_get_each_exactly_once(tmp_path: Path) -> None:
    # Room enough that no window fills up (at 3/4 load a window of 64 sometimes does, and
    # the guard then answers None, which is a refusal, not a claim).
    region = SharedRegion.create(replay_slots=1 << 14, counter_slots=64, directory=str(tmp_path))
    ctx = multiprocessing.get_context("fork")
    tokens, procs = 3000, 4
    start = ctx.Barrier(procs)
    pipes, children = [], []
    for _ in range(procs):
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_claim_all, args=(region.name, tokens, start, w))
        p.start()
        w.close()
        pipes.append(r)
        children.append(p)
    won = [r.recv() for r in pipes]
    for p in children:
        p.join(10)
        assert p.exitcode == 0
    claimed = [i for part in won for i in part]
    assert sorted(claimed) == list(range(tokens))          # each token once, by one process
    assert region.replay_guard().live_count() == tokens
    region.close()


def test_region_file_and_attach(tmp_path: Path) -> None:
    r = SharedRegion.create(replay_slots=1 << 10, counter_slots=64, directory=str(tmp_path))
    try:
        assert stat.S_IMODE(os.stat(r.name).st_mode) == 0o600
        assert r.replay_guard().first_use(b"x", 10) is True
        other = SharedRegion.attach(r.name)
        assert other.replay_guard().first_use(b"x", 10) is False   # same table, same key
        other.close()
        assert os.path.exists(r.name)                       # only the creator removes it
        bogus = tmp_path / "not-a-region"
        bogus.write_bytes(b"\0" * 8192)
        with pytest.raises(ValueError, match="not a fastgw shared region"):
            SharedRegion.attach(str(bogus))
    finally:
        r.close()
    assert not os.path.exists(r.name)


def test_two_regions_hash_differently(tmp_path: Path) -> None:
    # Each region has its own random key: a token's slots can't be predicted offline.
    a = SharedRegion.create(replay_slots=1 << 10, counter_slots=64, directory=str(tmp_path))
    b = SharedRegion.create(replay_slots=1 << 10, counter_slots=64, directory=str(tmp_path))
    try:
        assert a.replay_guard().first_use(b"x", 10) is True and b.replay_guard().first_use(b"x", 10) is True
        assert a.key != b.key
    finally:
        a.close()
        b.close()


def test_stale_regions_of_dead_supervisors_are_removed(tmp_path: Path) -> None:
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(0,))
    child.start()
    child.join()
    dead = tmp_path / f"fastgw-shared-{child.pid}-abcd1234"
    alive = tmp_path / f"fastgw-shared-{os.getpid()}-abcd1234"
    dead.write_bytes(b"")
    alive.write_bytes(b"")
    assert remove_stale_regions(str(tmp_path), kind="shared") == 1
    assert not dead.exists() and alive.exists()


def test_redis_guard_is_one_set_for_every_node(redis: Any) -> None:
    async def scenario() -> None:
        node_a = RedisReplayGuard(RespClient(redis.url, 1.0), "t1:")
        node_b = RedisReplayGuard(RespClient(redis.url, 1.0), "t1:")
        try:
            assert await node_a.first_use(b"sig-1", 30) is True
            assert await node_b.first_use(b"sig-1", 30) is False     # the other node sees it
            assert await node_b.first_use(b"sig-2", 7.2) is True
            # the same signature twice in one turn: one of them gets in
            both = await asyncio.gather(node_a.first_use(b"sig-3", 30), node_b.first_use(b"sig-3", 30))
            assert sorted(both) == [False, True]
            # then: the future's result is what it makes of the verdict
            assert await node_a.first_use(b"sig-4", 30, lambda first: ("verdict", first)) == ("verdict", True)
            keys = await node_a._client.call("KEYS", "t1:replay:*")
            assert len(keys) == 4
            ttls = sorted([await node_a._client.call("TTL", k) for k in keys])
            assert 7 <= ttls[0] <= 8 and 29 <= ttls[-1] <= 30           # remembered for its ttl only
        finally:
            await node_a._client.aclose()
            await node_b._client.aclose()

    asyncio.run(scenario())


def test_redis_guard_fails_closed(redis: Any, caplog: pytest.LogCaptureFixture) -> None:
    redis.stop()

    async def scenario() -> None:
        guard = RedisReplayGuard(RespClient(redis.url, 0.2))
        try:
            assert await guard.first_use(b"sig", 30) is None
            assert await guard.first_use(b"sig", 30) is None
        finally:
            await guard._client.aclose()

    with caplog.at_level(logging.ERROR, logger="fastgw.replay"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert len(lines) == 1       # logged once, not per request


def test_a_read_only_shm_directory_falls_back_to_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root ignores directory permissions here, so the refusal is simulated (the one mock).
    real_open = os.open
    refused = str(tmp_path)

    def fake_open(path: str, flags: int, mode: int = 0o777) -> int:
        if str(path).startswith(refused):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", fake_open)
    r = SharedRegion.create(replay_slots=64, counter_slots=64, directory=refused)
    try:
        assert r.name.startswith("/tmp/fastgw-shared-") and r.replay_guard().first_use(b"x", 5) is True
    finally:
        r.close()
