"""Backend.pick_live: round-robin, smooth weighted round-robin when the weights differ, least_conn
(fastgw/_proxy.pxi). The e2e side (real targets, one down) is in tests/e2e/test_failover.py."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

core = pytest.importorskip("fastgw._core")


@pytest.fixture
def pools() -> Iterator[list[Any]]:
    loop = asyncio.new_event_loop()
    engine = core.Engine(loop, None)
    yield [core.UpstreamPool(engine, "127.0.0.1", port) for port in (1, 2, 3)]
    loop.close()


def picks(backend: Any, pools: list[Any], n: int, avoid: Any = None) -> str:
    return "".join("abc"[pools.index(backend._pick_for_tests(avoid))] for _ in range(n))


def test_equal_weights_are_plain_round_robin(pools: list[Any]) -> None:
    b = core.Backend(pools, 1, 10.0, [2, 2, 2])
    assert not b.weighted
    assert picks(b, pools, 7) == "abcabca"


def test_smooth_weighted_round_robin_interleaves(pools: list[Any]) -> None:
    b = core.Backend(pools, 1, 10.0, [5, 1, 1])
    assert b.weighted
    assert picks(b, pools, 14) == "aabacaa" * 2           # nginx's sequence for 5, 1, 1
    b = core.Backend(pools[:2], 1, 10.0, [3, 1])
    assert picks(b, pools, 8) == "aaba" * 2


@pytest.mark.parametrize("weights", [[1, 2, 3], [7, 3, 1], [100, 1, 10]])
def test_each_target_gets_exactly_its_share(pools: list[Any], weights: list[int]) -> None:
    b = core.Backend(pools, 1, 10.0, weights)
    rounds = 50
    got = Counter(picks(b, pools, rounds * sum(weights)))
    assert [got[k] for k in "abc"] == [w * rounds for w in weights]


def test_the_target_to_avoid_gives_its_turn_to_the_others(pools: list[Any]) -> None:
    b = core.Backend(pools, 1, 10.0, [5, 1, 1])
    assert set(picks(b, pools, 20, avoid=pools[0])) == {"b", "c"}
    lone = core.Backend(pools[:1], 1, 10.0, [4])
    assert picks(lone, pools, 3, avoid=pools[0]) == "aaa"   # nothing else to take: the one there is


@pytest.mark.parametrize("weights", [[1, 0, 1], [1, 2], [-1, 1, 1]])
def test_bad_weights_are_refused(pools: list[Any], weights: list[int]) -> None:
    with pytest.raises(ValueError):
        core.Backend(pools, 1, 10.0, weights)


def busy(pools: list[Any], *counts: int) -> None:
    for pool, n in zip(pools, counts, strict=True):
        pool._set_busy_for_tests(n)


def test_least_conn_is_a_choice(pools: list[Any]) -> None:
    assert core.Backend(pools, 1, 10.0, [1, 1, 1], "least_conn").least_conn
    assert not core.Backend(pools, 1, 10.0, [1, 1, 1]).least_conn


@pytest.mark.parametrize(("weights", "steps"), [
    # the fewest in flight wins; the counts are the pools' own (a pick adds none)
    ([1, 1, 1], [((2, 0, 1), "bbb"), ((2, 3, 1), "cc")]),
    # ties go in turn from the round-robin position, which moves past each pick
    ([1, 1, 1], [((0, 0, 0), "abcabca"), ((1, 0, 0), "bcbc")]),
    # busy / weight: a 4/4 = 1, b 1/1 = 1, c 3/2 = 1.5 (a, b tie); then b 2/1 > a 1;
    # then a 9/4 = 2.25, b 2, c 1.5
    ([4, 1, 2], [((4, 1, 3), "ab"), ((4, 2, 3), "aa"), ((9, 2, 3), "c")]),
])
def test_least_conn_picks(pools: list[Any], weights: list[int],
                          steps: list[tuple[tuple[int, ...], str]]) -> None:
    b = core.Backend(pools, 1, 10.0, weights, "least_conn")
    for counts, expected in steps:
        busy(pools, *counts)
        assert picks(b, pools, len(expected)) == expected, counts


def test_least_conn_skips_the_target_to_avoid_and_the_passed_over(pools: list[Any]) -> None:
    b = core.Backend(pools, 1, 10.0, [1, 1, 1], "least_conn")
    busy(pools, 0, 5, 5)
    assert set(picks(b, pools, 4, avoid=pools[0])) == {"b", "c"}
    pools[0].checked_down = True
    assert set(picks(b, pools, 4)) == {"b", "c"}
    pools[1].checked_down = pools[2].checked_down = True
    assert picks(b, pools, 3) == "abc"            # all passed over: in turn, as round-robin does


def test_unknown_balance_is_refused(pools: list[Any]) -> None:
    with pytest.raises(ValueError, match="unknown balance 'random'"):
        core.Backend(pools, 1, 10.0, [1, 1, 1], "random")


@pytest.mark.parametrize(("tries", "effective"), [(0, 3), (1, 1), (2, 2), (3, 3), (9, 3)])
def test_tries_is_the_targets_a_request_may_go_through(pools: list[Any], tries: int, effective: int) -> None:
    assert core.Backend(pools, 1, 10.0, [1, 1, 1], "round_robin", tries).tries == effective


def test_negative_tries_are_refused(pools: list[Any]) -> None:
    with pytest.raises(ValueError):
        core.Backend(pools, 1, 10.0, [1, 1, 1], "round_robin", -1)
    with pytest.raises(ValueError):
        core.Backend(pools, 1, 10.0, [1, 1, 1], "round_robin", 0, -0.5)


def key_picks(backend: Any, pools: list[Any], keys: list[bytes], avoid: Any = None) -> str:
    return "".join("abc"[pools.index(backend._pick_key_for_tests(k, avoid))] for k in keys)


KEYS = [f"user-{i}".encode() for i in range(3_000)]


def test_hash_sends_a_key_to_one_target_always_and_spreads_the_keys(pools: list[Any]) -> None:
    b = core.Backend(pools, 1, 10.0, [1, 1, 1], "hash", 0, 0.0, "header:X-User")
    assert (b.hash_on, b.hash_name) == (3, b"x-user")
    first = key_picks(b, pools, KEYS)
    assert key_picks(b, pools, KEYS) == first                                  # stable
    again = core.Backend(list(pools), 1, 10.0, [1, 1, 1], "hash", 0, 0.0, "header:X-User")
    assert key_picks(again, pools, KEYS) == first        # another worker, node or restart: the same ring
    shares = Counter(first)
    assert all(800 <= shares[t] <= 1_200 for t in "abc"), shares               # about a third each


def test_hash_weights_and_a_removed_target_move_only_its_share(pools: list[Any]) -> None:
    three = core.Backend(pools, 1, 10.0, [1, 1, 2], "hash", 0, 0.0, "ip")
    got = key_picks(three, pools, KEYS)
    shares = Counter(got)
    assert 1_300 <= shares["c"] <= 1_700, shares                                # weight 2 of 4: about half
    two = core.Backend(pools[:2], 1, 10.0, [1, 1], "hash", 0, 0.0, "ip")
    without_c = key_picks(two, pools, KEYS)
    # Consistent: the keys on a and b stay there; only c's keys move.
    assert all(w == g for g, w in zip(got, without_c, strict=True) if g != "c")


def test_hash_passes_over_to_the_next_target_on_the_ring(pools: list[Any]) -> None:
    b = core.Backend(pools, 1, 10.0, [1, 1, 1], "hash", 0, 0.0, "path")
    got = key_picks(b, pools, KEYS[:300])
    pools[0].checked_down = True
    moved = key_picks(b, pools, KEYS[:300])
    assert "a" not in moved and all(m == g for g, m in zip(got, moved, strict=True) if g != "a")
    assert "b" not in key_picks(b, pools, KEYS[:300], avoid=pools[1])
    pools[1].checked_down = pools[2].checked_down = True
    assert key_picks(b, pools, KEYS[:3]) == "abc"               # all passed over: in turn


def test_a_request_without_the_key_goes_in_turn(pools: list[Any]) -> None:
    b = core.Backend(pools, 1, 10.0, [1, 1, 1], "hash", 0, 0.0, "cookie:sid")
    assert "".join("abc"[pools.index(b._pick_key_for_tests(None))] for _ in range(4)) == "abca"


@pytest.mark.parametrize("key", ["", "ip:x", "header:", "cookie", "query:x"])
def test_bad_hash_keys_are_refused(pools: list[Any], key: str) -> None:
    with pytest.raises(ValueError, match="bad hash_key"):
        core.Backend(pools, 1, 10.0, [1, 1, 1], "hash", 0, 0.0, key)


def test_heavy_weights_keep_the_ring_small_and_the_shares(pools: list[Any]) -> None:
    b = core.Backend(pools, 1, 10.0, [1_000, 1_000, 2_000], "hash", 0, 0.0, "ip")
    shares = Counter(key_picks(b, pools, KEYS))
    assert 1_300 <= shares["c"] <= 1_700 and 600 <= shares["a"] <= 900, shares
