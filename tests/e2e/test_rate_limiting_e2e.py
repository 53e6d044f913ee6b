"""End-to-end: rate limits hold for the whole node (shared memory, any worker) and, with
policy ``redis``, for every node sharing the Redis."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    Backend,
    RedisServer,
    SentinelSetup,
    clear_of_window_edge,
    free_port,
    gateway_config,
    redis_cli,
    request,
)


def _config(port: int, backend: Backend, **limits: Any) -> dict[str, Any]:
    plugin = {"name": "rate-limiting", "config": {"minute": 5, "limit_by": "ip", **limits}}
    cfg = gateway_config(port, backend.url, {"/api/{p*}": {"GET": {}}, "/free": {"GET": {}}})
    cfg["services"][0]["resources"]["/api/{p*}"]["plugins"] = [plugin]
    return cfg


def test_a_limit_holds_across_the_workers_of_a_node(backend: Backend, port: int, gateway: Any) -> None:
    g = gateway(_config(port, backend), workers=4)
    clear_of_window_edge(60)
    # one new connection per request: the kernel spreads them over the four workers
    answers = [request(g.port, "GET", f"/api/{i}", headers={"Connection": "close"}) for i in range(12)]
    assert [r.status for r in answers] == [200] * 5 + [429] * 7
    assert [r.headers["x-ratelimit-remaining-minute"] for r in answers[:5]] == ["4", "3", "2", "1", "0"]
    refused = answers[-1]
    assert refused.json()["error"] == "API rate limit exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert len([r for r in backend.requests if r["path"].startswith("/api/")]) == 5
    assert request(g.port, "GET", "/free").status == 200          # no limit on that route


def test_nodes_sharing_redis_share_a_limit(backend: Backend, gateway: Any, redis: RedisServer) -> None:
    nodes = []
    for _ in range(2):
        cfg = _config(free_port(), backend, minute=4, policy="redis")
        cfg["redis"] = {"url": redis.url, "timeout": 0.5}
        nodes.append(gateway(cfg, workers=2))
    clear_of_window_edge(60)
    statuses = [request(nodes[i % 2].port, "GET", f"/api/{i}").status for i in range(8)]
    assert statuses == [200] * 4 + [429] * 4
    # The admin API counts the Redis commands the requests waited on, and how long they took.
    admin = nodes[0].config["admin"]["port"]
    redis_metrics = _redis_metrics(admin)
    assert redis_metrics[("fastgw_redis_commands_total", "ok")] >= 4
    assert redis_metrics[("fastgw_redis_command_duration_seconds_count", "ok")] == \
        redis_metrics[("fastgw_redis_commands_total", "ok")]
    assert redis_metrics.get(("fastgw_redis_commands_total", "failed"), 0) == 0
    stats = request(admin, "GET", "/stats", headers={"Authorization": "Bearer test-token"}).json()
    assert [r["result"] for r in stats["redis"]] == ["ok"] and stats["redis"][0]["calls"] >= 4   # the dashboard's
    assert stats["totals"]["calls"] == 4                                                        # (not requests)
    # Redis gone: fault-tolerant (the default) lets requests through
    redis.stop()
    assert request(nodes[0].port, "GET", "/api/after").status == 200
    nodes[0].wait_log("rate-limit counters: Redis unavailable")
    assert _redis_metrics(admin)[("fastgw_redis_commands_total", "failed")] >= 1


def _redis_metrics(admin: int) -> dict[tuple[str, str], float]:
    """(sample name, result label) -> value of the admin API's fastgw_redis_* metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = request(admin, "GET", "/metrics", headers={"Authorization": "Bearer test-token"}).body.decode()
    return {(s.name, s.labels["result"]): s.value for f in text_string_to_metric_families(text)
            if f.name.startswith("fastgw_redis_") for s in f.samples if "le" not in s.labels}


def test_a_limit_in_redis_through_sentinel(backend: Backend, gateway: Any, tmp_path: Path) -> None:
    """redis.url through Redis Sentinel: the workers find the master and count there."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    setup = SentinelSetup(tmp_path)
    try:
        cfg = _config(free_port(), backend, minute=3, policy="redis")
        cfg["redis"] = {"url": f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{setup.sentinel_port}/mymaster/1",
                        "timeout": 0.5}
        g = gateway(cfg, workers=2)
        clear_of_window_edge(60)
        statuses = [request(g.port, "GET", f"/api/{i}", headers={"Connection": "close"}).status for i in range(5)]
        assert statuses == [200] * 3 + [429] * 2
        assert b"fastgw:" in redis_cli(setup.master.port, "-n", "1", "--scan")       # counted on the master
    finally:
        setup.stop()
