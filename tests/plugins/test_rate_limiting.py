"""rate-limiting: limits per period, who is counted, scope, refused requests not counted,
headers, and what happens when the counts can't be had."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from fastgw.consumers import Consumer
from fastgw.counters import LocalCounters
from fastgw.pipeline import PipelineError
from fastgw.shared import SharedRegion
from tests.helpers import clear_of_window_edge

from .util import error_of, hdrs, make_ctx, make_pipeline, run

_new_store: Any = LocalCounters


@pytest.fixture(autouse=True, params=["python", "native"])
def counting(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Every test twice: counted in a dict by the plugin module (which asks RateLimitStep
    for the verdict), and in the node's shared table by RateLimitStep's own request phase:
    the two must behave the same."""
    global _new_store
    region = None
    if request.param == "native":
        region = SharedRegion.create(replay_slots=64, counter_slots=1 << 12, directory=str(tmp_path))
        _new_store = region.counters
    else:
        _new_store = LocalCounters
    yield request.param
    _new_store = LocalCounters
    if region is not None:
        region.close()


def new_store() -> Any:
    return _new_store()


def limiter(config: dict[str, Any], counters: Any = None, **kw: Any) -> Any:
    clear_of_window_edge(60, 1.0)      # the tests count within one minute (and second) window
    services = {"counters": counters if counters is not None else new_store()}
    return make_pipeline([{"name": "rate-limiting", "config": config}], services=services, **kw)


def test_the_step_runs_in_c_on_the_node_table(counting: str) -> None:
    plugin = limiter({"minute": 1}).plugins[0]
    assert (getattr(plugin, "native", None) is not None) == (counting == "native")


def test_a_limit_per_minute_and_its_headers() -> None:
    pipe = limiter({"minute": 3})
    for left in (2, 1, 0):
        ctx = make_ctx(peer="10.0.0.1")
        assert run(pipe, ctx) is False
        added = hdrs(ctx.response_headers_add)
        assert added["x-ratelimit-limit-minute"] == "3" and added["x-ratelimit-remaining-minute"] == str(left)
        assert added["ratelimit-limit"] == "3" and added["ratelimit-remaining"] == str(left)
        assert 1 <= int(added["ratelimit-reset"]) <= 60
    ctx = make_ctx(peer="10.0.0.1")
    assert run(pipe, ctx) is True and ctx.answer_status == 429 and error_of(ctx) == "API rate limit exceeded"
    answer = hdrs(ctx.answer_headers)
    assert 1 <= int(answer["retry-after"]) <= 60 and answer["x-ratelimit-remaining-minute"] == "0"
    assert run(pipe, make_ctx(peer="10.0.0.2")) is False        # another caller has its own count


def test_refused_requests_are_not_counted() -> None:
    counters = new_store()
    pipe = limiter({"minute": 2, "hour": 5}, counters)
    results = [run(pipe, make_ctx(peer="10.0.0.1")) for _ in range(6)]
    assert results == [False, False, True, True, True, True]
    # the hour counted only the two that went through
    ctx = make_ctx(peer="10.0.0.1")
    run(pipe, ctx)
    assert hdrs(ctx.answer_headers)["x-ratelimit-remaining-hour"] == "3"


def test_the_tightest_limit_is_the_one_in_ratelimit_headers() -> None:
    pipe = limiter({"second": 100, "minute": 2})
    ctx = make_ctx()
    run(pipe, ctx)
    added = hdrs(ctx.response_headers_add)
    assert added["ratelimit-limit"] == "2" and added["ratelimit-remaining"] == "1"
    assert added["x-ratelimit-remaining-second"] == "99"


def test_header_values_on_both_sides_of_the_shared_cache_and_each_period_its_own_name() -> None:
    """Header pairs for values below 1 024 are built once a process and shared by every
    route (one cache a header name); those above are built each time: both read right, and
    a period's cached pair never answers for another period at the same value."""
    pipe = limiter({"minute": 1026, "hour": 1026})
    daily = limiter({"day": 1026})      # (a per-second window could end between two requests)
    for left in (1025, 1024, 1023, 1022):
        ctx = make_ctx(peer="10.0.0.1")
        assert run(pipe, ctx) is False
        added = dict(ctx.response_headers_add)
        assert added[b"X-RateLimit-Remaining-Minute"] == added[b"X-RateLimit-Remaining-Hour"] == b"%d" % left
        assert added[b"RateLimit-Remaining"] == b"%d" % left
        ctx = make_ctx(peer="10.0.0.1")
        assert run(daily, ctx) is False
        assert dict(ctx.response_headers_add)[b"X-RateLimit-Remaining-Day"] == b"%d" % left
        assert b"X-RateLimit-Remaining-Minute" not in dict(ctx.response_headers_add)


def test_limit_by_consumer_header_or_ip() -> None:
    pipe = limiter({"minute": 1})
    alice = make_ctx(peer="10.0.0.1")
    alice.consumer = Consumer("alice", ())
    assert run(pipe, alice) is False
    again = make_ctx(peer="10.0.0.9")                       # alice from another address
    again.consumer = Consumer("alice", ())
    assert run(pipe, again) is True
    assert run(pipe, make_ctx(peer="10.0.0.1")) is False     # no consumer: by address

    pipe = limiter({"minute": 1, "limit_by": "header", "header_name": "X-Tenant"})
    assert run(pipe, make_ctx(headers=[(b"X-Tenant", b"t1")])) is False
    assert run(pipe, make_ctx(headers=[(b"X-Tenant", b"t1")], peer="10.9.9.9")) is True
    assert run(pipe, make_ctx(headers=[(b"X-Tenant", b"t2")])) is False

    pipe = limiter({"minute": 1, "limit_by": "ip"})
    ctx = make_ctx(peer="10.0.0.1")
    ctx.consumer = Consumer("bob", ())
    assert run(pipe, ctx) is False
    assert run(pipe, make_ctx(peer="10.0.0.1")) is True


def two_routes(orders_config: dict[str, Any], users_config: dict[str, Any]) -> tuple[Any, Any]:
    """Two routes of one stage (/orders/{id}, /users/{id}) counting in one store."""
    counters = new_store()
    return limiter(orders_config, counters), limiter(users_config, counters, resource="/users/{id}")


def test_scope_stage_shares_a_count_between_routes_and_route_does_not() -> None:
    orders, users = two_routes({"minute": 1}, {"minute": 1})
    assert run(orders, make_ctx()) is False
    assert run(users, make_ctx(path="/users/1")) is True        # the same stage: one count
    orders, users = two_routes({"minute": 1, "scope": "route"}, {"minute": 1, "scope": "route"})
    assert run(orders, make_ctx()) is False
    assert run(users, make_ctx(path="/users/1")) is False


def test_routes_with_other_limits_count_apart() -> None:
    tight, loose = two_routes({"minute": 1}, {"minute": 5})
    assert run(tight, make_ctx()) is False
    assert run(tight, make_ctx()) is True
    ctx = make_ctx(path="/users/1")
    assert run(loose, ctx) is False
    assert hdrs(ctx.response_headers_add)["x-ratelimit-remaining-minute"] == "4"


def test_hidden_headers() -> None:
    pipe = limiter({"minute": 1, "hide_client_headers": True})
    ctx = make_ctx()
    run(pipe, ctx)
    assert ctx.response_headers_add == []
    ctx = make_ctx()
    run(pipe, ctx)
    assert [k for k, _ in ctx.answer_headers if k.lower().startswith(b"x-ratelimit")] == []
    assert hdrs(ctx.answer_headers)["retry-after"]


def test_without_counts_fault_tolerant_lets_through_and_strict_refuses(tmp_path: Path) -> None:
    # A node table with no room left: every window of its 32 slots holds a live day counter.
    region = SharedRegion.create(replay_slots=64, counter_slots=32, directory=str(tmp_path))
    try:
        counters = region.counters()
        for i in range(10_000):
            if counters.hit([(b"filler-%d" % i, 86400)], time.time(), 1) is None:
                break
        assert counters.hit([(b"probe", 86400)], time.time(), 1) is None
        assert run(limiter({"minute": 1}, counters), make_ctx()) is False
        ctx = make_ctx()
        assert run(limiter({"minute": 1, "fault_tolerant": False}, counters), ctx) is True
        assert ctx.answer_status == 503 and error_of(ctx) == "rate limit counters unavailable"
    finally:
        region.close()


def test_settings_are_checked() -> None:
    with pytest.raises(PipelineError) as err:
        limiter({})
    assert "at least one limit" in str(err.value.errors)
    with pytest.raises(PipelineError) as err:
        limiter({"minute": 1, "limit_by": "header"})
    assert "header_name" in str(err.value.errors)
    with pytest.raises(PipelineError) as err:
        limiter({"minute": 0})
    assert "minute" in str(err.value.errors)
    with pytest.raises(PipelineError) as err:
        make_pipeline([{"name": "rate-limiting", "config": {"minute": 5, "policy": "redis"}}],
                      services={"counters": new_store()})
    assert "top-level redis" in str(err.value.errors)


def test_callers_beyond_the_step_memo_are_counted_as_before(counting: str, tmp_path: Path) -> None:
    """The C step keeps each caller's counter name and slots (at most 4 096, then forgets
    them all): 5 000 callers, then the first ones again, each counted on its own."""
    region = None
    if counting == "native":      # room for 10 000 counters
        (tmp_path / "big").mkdir()
        region = SharedRegion.create(replay_slots=64, counter_slots=1 << 15, directory=str(tmp_path / "big"))
    try:
        _many_callers(lambda: region.counters() if region is not None else LocalCounters())
    finally:
        if region is not None:
            region.close()


def _many_callers(new: Any) -> None:
    pipe = limiter({"minute": 2, "limit_by": "header", "header_name": "X-Tenant"}, new())
    for i in range(5000):
        assert run(pipe, make_ctx(headers=[(b"X-Tenant", b"t%d" % i)])) is False
    for i in range(3):
        assert run(pipe, make_ctx(headers=[(b"X-Tenant", b"t%d" % i)])) is False     # the second
        assert run(pipe, make_ctx(headers=[(b"X-Tenant", b"t%d" % i)])) is True      # the third: 429
    pipe = limiter({"minute": 1, "limit_by": "ip"}, new())
    for i in range(5000):
        assert run(pipe, make_ctx(peer=f"10.1.{i // 250}.{i % 250}")) is False
    assert run(pipe, make_ctx(peer="10.1.0.0")) is True
    assert run(pipe, make_ctx(peer="10.1.19.249")) is True
    assert run(pipe, make_ctx(peer="10.2.0.0")) is False
