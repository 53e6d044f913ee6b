"""proxy-cache's node store (fastgw/cache_region.py): the ring, the set-associative index,
purges, fill locks, and several processes writing one file at once."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.cache_region import RECORD_HEAD, WAYS, CacheRegion, digest, tag


@pytest.fixture
def region(tmp_path: Any) -> Iterator[CacheRegion]:
    r = CacheRegion.create(64 * 1024, directory=str(tmp_path))
    yield r
    r.close()


def key(i: int) -> bytes:
    return digest(b"route|", ("/p", str(i)))


def put(r: CacheRegion, k: bytes, payload: bytes, expires: float = 1e12, service: str = "svc",
        stage: str = "prod") -> bool:
    return r.put(k, payload, expires, tag(service), tag(stage), r.purges) is not None


def test_a_worker_that_decoded_a_record_is_told_it_is_the_same(region: CacheRegion) -> None:
    put(region, key(1), b"one")
    found = region.lookup(key(1), 0.0)
    assert found is not None and found[1] == b"one"
    pos = found[0]
    assert region.lookup(key(1), 0.0, pos) == (pos, None, False)     # no copy
    put(region, key(1), b"two")                                        # a new record: a new position
    again = region.lookup(key(1), 0.0, pos)
    assert again is not None and again[0] != pos and again[1] == b"two"


def test_readers_wait_out_a_writer_and_read_under_the_lock(region: CacheRegion) -> None:
    from fastgw import _core

    put(region, key(1), b"one")
    reader = region._reader
    reader.write_begin()                      # a writer at work (or one that died at work)
    try:
        assert reader.writing()
        assert reader.lookup(key(1), 0.0, _core.CACHE_UNKNOWN) is _core.CACHE_BUSY
        assert region.get(key(1), 0.0) == (b"one", False)          # under the flock instead
    finally:
        reader.write_end()
    assert not reader.writing()
    reader.write_begin()                      # a writer died at work: the next one ends it
    assert put(region, key(2), b"two") and not reader.writing()
    assert region.get(key(2), 0.0) == (b"two", False)


def test_an_answer_is_found_until_it_expires(region: CacheRegion) -> None:
    assert region.get(key(1), 0.0) is None
    assert put(region, key(1), b"one", expires=100.0)
    assert region.get(key(1), 99.0) == (b"one", False)
    assert region.get(key(1), 100.0) is None                 # expired: not answered
    assert put(region, key(1), b"uno", expires=200.0)        # stored again: the new one
    assert region.get(key(1), 150.0) == (b"uno", False)
    assert len(region) == 1


def test_the_oldest_go_first_and_an_answer_in_use_is_kept(tmp_path: Any) -> None:
    r = CacheRegion.create(10_000, directory=str(tmp_path))
    try:
        body = b"x" * (3000 - RECORD_HEAD.size)
        for i in range(3):
            assert put(r, key(i), body + bytes([i]))
        got = r.get(key(0), 0.0)                                 # in the older half of the ring
        assert got is not None and got[1] is True
        r.keep(key(0))                                           # written again at the head
        assert r.get(key(0), 0.0) == (body + b"\0", False)
        assert put(r, key(3), body + b"\3")                     # over the bound: key 1 goes
        assert r.get(key(1), 0.0) is None
        assert [r.get(key(i), 0.0) is not None for i in (0, 2, 3)] == [True, True, True]
        assert not put(r, key(9), b"y" * 10_000)                 # larger than the ring: refused
        assert r.get(key(0), 0.0) is not None
    finally:
        r.close()


def test_a_full_bucket_gives_its_oldest_slot(region: CacheRegion) -> None:
    # Keys of one bucket: the first 8 bytes pick it.
    same = [bytes(8) + os.urandom(8) for _ in range(WAYS + 2)]
    for i, k in enumerate(same):
        assert put(region, k, bytes([i]) * 10)
    found = [region.get(k, 0.0) is not None for k in same]
    assert found == [False, False] + [True] * WAYS
    assert region.get(same[-1], 0.0) == (bytes([WAYS + 1]) * 10, False)


def test_purges_drop_by_service_and_stage_and_stop_older_fills(region: CacheRegion) -> None:
    put(region, key(1), b"a", service="shop", stage="prod")
    put(region, key(2), b"b", service="shop", stage="beta")
    put(region, key(3), b"c", service="blog", stage="prod")
    seen = region.purges
    assert region.purge(tag("shop"), tag("beta")) == 1
    assert [region.get(key(i), 0.0) is not None for i in (1, 2, 3)] == [True, False, True]
    # An answer asked for before that purge is not stored after it; one asked for after is.
    assert region.put(key(2), b"old", 1e12, tag("shop"), tag("beta"), seen) is None
    assert region.get(key(2), 0.0) is None
    assert region.put(key(2), b"new", 1e12, tag("shop"), tag("beta"), region.purges) is not None
    assert region.purge(tag("shop")) == 2
    assert region.purge() == 1 and len(region) == 0


def test_a_purge_sweeps_a_large_index_in_chunks(tmp_path: Any) -> None:
    from fastgw.cache_region import PURGE_CHUNK

    r = CacheRegion.create(8 << 20, directory=str(tmp_path))
    try:
        assert r.buckets * r.ways >= 3 * PURGE_CHUNK              # several holds of the lock
        keys = [digest(b"r|", i) for i in range(3000)]
        for i, k in enumerate(keys):
            put(r, k, b"x" * 100, service="shop" if i % 2 else "blog")
        assert len(r) == 3000
        assert r.purge(tag("shop")) == 1500
        assert [r.get(k, 0.0) is None for k in keys[:4]] == [False, True, False, True]
        assert len(r) == 1500 and r.purges == 1
        assert r.purge() == 1500 and len(r) == 0 and r.purges == 2
    finally:
        r.close()


def test_fill_locks_are_one_holders_until_given_up_or_due(region: CacheRegion) -> None:
    k = key(7)
    assert region.lock(k, deadline=10.0, now=0.0)
    assert not region.lock(k, deadline=10.0, now=1.0)         # held: another request waits
    assert region.locked(k, 5.0) and not region.locked(key(8), 5.0)
    assert not region.locked(k, 10.0)                        # due: its worker died, say
    assert region.lock(k, deadline=20.0, now=10.0)
    region.unlock(k)
    assert not region.locked(k, 11.0)
    assert region.lock(k, deadline=30.0, now=11.0)
    # Storing the answer can give the lock up with it (one exclusive hold).
    assert region.put(k, b"answer", 1e12, 1, 1, region.purges, unlock=True) is not None
    assert not region.locked(k, 12.0)


def test_attach_checks_the_file(region: CacheRegion, tmp_path: Any) -> None:
    other = CacheRegion.attach(region.name)
    try:
        put(region, key(1), b"seen by every worker")
        assert other.get(key(1), 0.0) == (b"seen by every worker", False)
        assert other.capacity == region.capacity and not other.owner
    finally:
        other.close()
    assert os.path.exists(region.name)                       # only the creator removes it
    bad = tmp_path / "bad"
    bad.write_bytes(b"\0" * 8192)
    with pytest.raises(ValueError, match="not a fastgw cache region"):
        CacheRegion.attach(str(bad))
    with pytest.raises(ValueError, match="at least 1024"):
        CacheRegion.create(100, directory=str(tmp_path))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.binary(max_size=900)), max_size=120))
def test_a_lookup_finds_the_last_answer_stored_or_none(tmp_path_factory: Any, ops: list[tuple[int, bytes]]) -> None:
    """Whatever was stored and pushed out before: the last put of a key is found at once,
    and any key is either found with its last payload or not at all."""
    r = CacheRegion.create(4096, directory=str(tmp_path_factory.mktemp("ring")))
    try:
        last: dict[int, bytes] = {}
        for i, payload in ops:
            stored = put(r, key(i), payload)
            assert stored == (RECORD_HEAD.size + len(payload) <= 4096)
            if stored:
                last[i] = payload
                assert r.get(key(i), 0.0) is not None and r.get(key(i), 0.0)[0] == payload
            for j in last:
                got = r.get(key(j), 0.0)
                assert got is None or got[0] == last[j]
    finally:
        r.close()


def _writer(name: str, w: int, stop: Any) -> None:
    r = CacheRegion.attach(name)
    n = 0
    while not stop.is_set():
        i = n % 2
        r.put(key(i), bytes([65 + w * 2 + i]) * 480, 1e12, 1, 1, r.purges)
        n += 1
    r.close()


def _reader(name: str, seconds: float, out: Any) -> None:
    """Look both keys up as fast as it can; a payload of mixed bytes, or of the other key's
    byte, was read while a writer wrote over it."""
    r = CacheRegion.attach(name)
    seen = torn = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for i in (0, 1):
            got = r.lookup(key(i), 0.0)
            if got is not None and got[1] is not None:
                seen += 1
                p = got[1]
                torn += len(set(p)) != 1 or (p[0] - 65) % 2 != i
    out.put((seen, torn))
    r.close()


def test_lock_free_readers_never_take_a_record_a_writer_is_overwriting(tmp_path: Any) -> None:
    # A ring of two records' room: every write lands on one a reader may be copying. (Without
    # the writers' sequence word, this reads a hundred torn records in a few seconds.)
    r = CacheRegion.create(1024, directory=str(tmp_path))
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    writers = [ctx.Process(target=_writer, args=(r.name, w, stop)) for w in range(2)]
    reader = ctx.Process(target=_reader, args=(r.name, 2.0, out))
    try:
        for p in writers:
            p.start()
        reader.start()
        reader.join(60)
        stop.set()
        for p in writers:
            p.join(60)
        assert reader.exitcode == 0 and all(p.exitcode == 0 for p in writers)
        seen, torn = out.get(timeout=5)
        assert seen > 1000 and torn == 0
    finally:
        stop.set()
        r.close()
    assert not os.path.exists(r.name)
