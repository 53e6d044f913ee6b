"""The node's passive marks (fastgw/_marks.pxi in the shared region): a target one worker
passes over after failed connections is passed over by every worker of the node, and a
new connection that succeeds clears it for all of them. Across processes: tests/e2e/
test_failover.py."""

from __future__ import annotations

import asyncio
import mmap
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.shared import SharedRegion, target_key

core = pytest.importorskip("fastgw._core")


@pytest.fixture
def engine() -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    yield core.Engine(loop, None)
    loop.close()


def test_a_mark_made_by_one_worker_is_read_by_another(engine: Any, tmp_path: Any) -> None:
    region = SharedRegion.create(directory=str(tmp_path))
    other = SharedRegion.attach(region.name)                 # a second worker's attachment
    try:
        a = core.UpstreamPool(engine, "10.0.0.7", 8080)
        b = core.UpstreamPool(engine, "10.0.0.7", 8080)
        elsewhere = core.UpstreamPool(engine, "10.0.0.8", 8080)
        mine, theirs = region.passive_marks(), other.passive_marks()
        assert mine.share(a, target_key(a.host, a.port, False)) and theirs.share(b, target_key(b.host, b.port, False))
        assert theirs.share(elsewhere, target_key(elsewhere.host, elsewhere.port, False))
        assert not a.passed_over_now() and not b.passed_over_now()
        a.fail_connect(2, 30.0)                              # one of max_fails 2: not yet
        assert not b.passed_over_now()
        a.fail_connect(2, 30.0)
        assert a.passed_over_now() and b.passed_over_now() and not elsewhere.passed_over_now()
        assert b.down_until == a.down_until == pytest.approx(time.monotonic() + 30.0, abs=1.0)
        assert theirs.until(target_key(a.host, a.port, False)) == a.down_until
        b.connect_succeeded()                                # the target is back: for both
        assert not a.passed_over_now() and not b.passed_over_now() and a.down_until == 0.0
    finally:
        other.close()
        region.close()


def test_a_mark_ends_and_a_later_one_is_not_shortened(engine: Any) -> None:
    marks = core.PassiveMarks(mmap.mmap(-1, 64 * 16), 0, 64)
    a, b = core.UpstreamPool(engine, "10.0.0.9", 80), core.UpstreamPool(engine, "10.0.0.9", 80)
    assert marks.share(a, 5) and marks.share(b, 5)
    a.fail_connect(1, 0.15)
    assert b.passed_over_now()
    b.fail_connect(1, 30.0)                                  # (b's own count: passed over already)
    time.sleep(0.2)
    assert not b.passed_over_now()                           # the mark ended
    b.fail_connect(1, 30.0)
    a.fail_connect(1, 0.01)                                  # a shorter one never cuts it short
    assert a.passed_over_now() and a.down_until > time.monotonic() + 20


def test_targets_without_room_keep_their_marks_to_themselves(engine: Any) -> None:
    marks = core.PassiveMarks(mmap.mmap(-1, 16 * 16), 0, 16)
    for key in range(1, 17):                                 # every slot of key 1's window taken
        assert marks.share(core.UpstreamPool(engine, "10.0.1.1", key), key)
    lone = core.UpstreamPool(engine, "10.0.1.2", 80)
    assert not marks.share(lone, 99)
    lone.fail_connect(1, 30.0)
    assert lone.passed_over_now()                            # its own mark, as before
    assert marks.until(99) == 0.0
    with pytest.raises(ValueError):
        core.PassiveMarks(mmap.mmap(-1, 16 * 16), 0, 12)      # not a power of two


def test_workers_claiming_one_target_at_once_share_one_slot(tmp_path: Any) -> None:
    """Processes that claim the same targets at the same time end up on the same slots."""
    import multiprocessing

    region = SharedRegion.create(directory=str(tmp_path))
    try:
        ctx = multiprocessing.get_context("fork")
        start = ctx.Event()
        procs = [ctx.Process(target=_claim_and_mark, args=(region.name, start, i)) for i in range(4)]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(10)
            assert p.exitcode == 0
        marks = region.passive_marks()
        # Each process marked key 1000 + its index, and all of them key 7 (the last one to
        # mark it set the latest time): every key is found where its first claim put it.
        assert all(marks.until(1000 + i) > time.monotonic() + 50 for i in range(4))
        assert marks.until(7) > time.monotonic() + 50
    finally:
        region.close()


def _claim_and_mark(name: str, start: Any, index: int) -> None:
    loop = asyncio.new_event_loop()
    engine = core.Engine(loop, None)
    region = SharedRegion.attach(name)
    marks = region.passive_marks()
    start.wait(5)
    pools = []
    for key in (7, 1000 + index):
        pool = core.UpstreamPool(engine, "10.0.2.1", key)
        assert marks.share(pool, key)
        pool.fail_connect(1, 60.0)
        pools.append(pool)
    region.close()


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["fail", "ok"])), max_size=40))
def test_pools_of_one_target_always_agree(ops: list[tuple[int, str]]) -> None:
    """Any sequence of failed connections (max_fails 1) and successful ones on pools of
    three targets, two pools (two workers) each: every pool of a target says what the
    last event of that target says, and other targets are untouched."""
    loop = asyncio.new_event_loop()
    try:
        engine = core.Engine(loop, None)
        marks = core.PassiveMarks(mmap.mmap(-1, 64 * 16), 0, 64)
        pools = [core.UpstreamPool(engine, "10.0.3.1", 80 + i // 2) for i in range(6)]
        for i, pool in enumerate(pools):
            assert marks.share(pool, 500 + i // 2)
        down = [False, False, False]
        for i, op in ops:
            if op == "fail":
                pools[i].fail_connect(1, 60.0)
                down[i // 2] = True
            else:
                pools[i].connect_succeeded()
                down[i // 2] = False
            assert [p.passed_over_now() for p in pools] == [down[j // 2] for j in range(6)]
    finally:
        loop.close()
