"""The node's passive marks (fastgw/_marks.pxi in the shared region): the node's workers
count a target's failed connections together, a target one worker passes over after
``max_fails`` of them is passed over by every worker of the node, and a new connection
that gets an answer, in any worker, clears the count and the mark for all of them. Across
processes: here (fork) and tests/e2e/test_failover.py."""

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
        b.answer_received()                                # the target is back: for both
        assert not a.passed_over_now() and not b.passed_over_now() and a.down_until == 0.0
    finally:
        other.close()
        region.close()


def _two_workers_pools(engine: Any, key: int) -> tuple[Any, Any, Any]:
    """A marks table and two pools of one target (two workers') sharing its slot ``key``."""
    marks = core.PassiveMarks(mmap.mmap(-1, 64 * 32), 0, 64)
    a, b = core.UpstreamPool(engine, "10.0.0.9", 80), core.UpstreamPool(engine, "10.0.0.9", 80)
    assert marks.share(a, key) and marks.share(b, key)
    return marks, a, b


def test_a_mark_ends_and_a_later_one_is_not_shortened(engine: Any) -> None:
    marks, a, b = _two_workers_pools(engine, 5)
    a.fail_connect(1, 0.15)
    assert b.passed_over_now()
    b.fail_connect(1, 30.0)                                  # (counted: passed over already)
    time.sleep(0.2)
    assert not b.passed_over_now()                           # the mark ended
    b.fail_connect(1, 30.0)
    a.fail_connect(1, 0.01)                                  # a shorter one never cuts it short
    assert a.passed_over_now() and a.down_until > time.monotonic() + 20


def test_max_fails_counts_the_failures_of_every_worker(engine: Any, tmp_path: Any) -> None:
    region = SharedRegion.create(directory=str(tmp_path))
    other = SharedRegion.attach(region.name)
    try:
        key = target_key("10.0.0.7", 8080, False)
        a, b = core.UpstreamPool(engine, "10.0.0.7", 8080), core.UpstreamPool(engine, "10.0.0.7", 8080)
        mine, theirs = region.passive_marks(), other.passive_marks()
        assert mine.share(a, key) and theirs.share(b, key)
        a.fail_connect(3, 30.0)
        b.fail_connect(3, 30.0)
        assert a.fails == b.fails == mine.fails(key) == 2     # one count for the node
        assert not a.passed_over_now() and not b.passed_over_now()
        b.fail_connect(3, 30.0)                              # the node's third: each worker met fewer
        assert a.passed_over_now() and b.passed_over_now() and theirs.fails(key) == 3
        # An answer on a new connection, in a worker that met no failure of its own, ends both
        # the mark and the count, for the node.
        c = core.UpstreamPool(engine, "10.0.0.7", 8080)
        assert theirs.share(c, key)
        c.answer_received()
        assert not a.passed_over_now() and a.fails == b.fails == mine.fails(key) == 0
        a.fail_connect(3, 30.0)
        assert b.fails == 1 and not b.passed_over_now()      # counting starts again from one
    finally:
        other.close()
        region.close()


def test_a_count_whose_window_ended_starts_again(engine: Any) -> None:
    marks, a, b = _two_workers_pools(engine, 5)
    a.fail_connect(2, 0.15)
    time.sleep(0.2)
    assert b.fails == 0 and marks.fails(5) == 0              # the window ended
    b.fail_connect(2, 0.15)                                  # a new window: one of two
    assert not a.passed_over_now() and a.fails == 1
    a.fail_connect(2, 0.15)
    assert a.passed_over_now() and b.passed_over_now()


def test_targets_without_room_keep_their_marks_to_themselves(engine: Any) -> None:
    marks = core.PassiveMarks(mmap.mmap(-1, 16 * 32), 0, 16)
    for key in range(1, 17):                                 # every slot of key 1's window taken
        assert marks.share(core.UpstreamPool(engine, "10.0.1.1", key), key)
    lone = core.UpstreamPool(engine, "10.0.1.2", 80)
    assert not marks.share(lone, 99)
    lone.fail_connect(2, 30.0)
    assert lone.fails == 1 and not lone.passed_over_now()   # its own count
    lone.fail_connect(2, 30.0)
    assert lone.passed_over_now()                            # and its own mark
    assert marks.until(99) == 0.0 and marks.fails(99) == 0
    lone.answer_received()
    assert lone.fails == 0 and not lone.passed_over_now()
    with pytest.raises(ValueError):
        core.PassiveMarks(mmap.mmap(-1, 16 * 32), 0, 12)      # not a power of two


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
        # Each counted 500 failures of key 9 at the same time: none lost.
        assert marks.fails(9) == 4 * 500 and marks.until(9) == 0.0
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
    counted = core.UpstreamPool(engine, "10.0.2.1", 9)
    assert marks.share(counted, 9)
    for _ in range(500):
        counted.fail_connect(0, 60.0)                        # max_fails 0: counted, never marked
    region.close()


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["fail", "ok"])), max_size=40),
       max_fails=st.integers(1, 4))
def test_pools_of_one_target_always_agree(ops: list[tuple[int, str]], max_fails: int) -> None:
    """Any sequence of failed connections and successful ones on pools of three targets,
    two pools (two workers) each: a target is passed over once the failures since its last
    success, in either pool, reach max_fails; every pool of a target agrees on that and on
    the count, and other targets are untouched."""
    loop = asyncio.new_event_loop()
    try:
        engine = core.Engine(loop, None)
        marks = core.PassiveMarks(mmap.mmap(-1, 64 * 32), 0, 64)
        pools = [core.UpstreamPool(engine, "10.0.3.1", 80 + i // 2) for i in range(6)]
        for i, pool in enumerate(pools):
            assert marks.share(pool, 500 + i // 2)
        count = [0, 0, 0]
        for i, op in ops:
            if op == "fail":
                pools[i].fail_connect(max_fails, 60.0)
                count[i // 2] += 1
            else:
                pools[i].answer_received()
                count[i // 2] = 0
            assert [p.passed_over_now() for p in pools] == [count[j // 2] >= max_fails for j in range(6)]
            assert [p.fails for p in pools] == [count[j // 2] for j in range(6)]
    finally:
        loop.close()
