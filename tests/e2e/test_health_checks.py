"""End-to-end: active health checks pass over a target before any request fails on it, use
it again once it answers, and never make an outage when every target fails them."""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.test_failover import blackhole
from tests.helpers import Backend, free_port, gateway_config, request, wait_until

CHECK = {"path": "/", "interval": 0.1, "timeout": 0.2, "healthy": 1, "unhealthy": 1}


def _config(port: int, targets: list[str], check: dict[str, Any] | None = None, **backend: Any) -> dict[str, Any]:
    cfg = gateway_config(port, targets[0])
    # max_fails 0: only the active checks pass a target over
    cfg["services"][0]["stages"]["prod"]["backend"] = {"targets": targets, "max_fails": 0,
                                                       "health_check": check or CHECK, **backend}
    cfg["services"][0]["stages"]["prod"]["timeouts"] = {"connect": 1.5}
    return cfg


def test_a_black_holed_target_is_passed_over_before_a_request_waits_on_it(backend: Backend, port: int,
                                                                          gateway: Any) -> None:
    with blackhole() as hole:
        g = gateway(_config(port, [hole, backend.url]))
        g.wait_log("passed over after 1 failed health checks (no answer within 0.2 s)")
        t0 = time.monotonic()
        answers = [request(g.port, "GET", f"/x{i}") for i in range(6)]
        assert [r.status for r in answers] == [200] * 6
        assert time.monotonic() - t0 < 1.5          # no request waited for the 1.5 s connect


def _active(cfg: dict[str, Any]) -> dict[str, Any]:
    """The admin API's active verdict of each target (GET /targets)."""
    got = request(cfg["admin"]["port"], "GET", "/targets", headers={"Authorization": "Bearer test-token"})
    return {t["target"]: t["active"] for t in got.json()["targets"]}


def test_a_target_that_comes_back_is_used_again(backend: Backend, port: int, gateway: Any) -> None:
    dead = free_port()
    cfg = _config(port, [f"http://127.0.0.1:{dead}", backend.url])
    g = gateway(cfg)
    g.wait_log("passed over after 1 failed health checks")
    assert {request(g.port, "GET", "/a").json()["backend"] for _ in range(4)} == {"backend"}
    wait_until(lambda: _active(cfg) == {f"http://127.0.0.1:{dead}": "unhealthy", backend.url: "healthy"},
               timeout=5, what="the verdicts on the admin API")
    from prometheus_client.parser import text_string_to_metric_families

    text = request(cfg["admin"]["port"], "GET", "/metrics", headers={"Authorization": "Bearer test-token"}).body
    fams = {f.name: f for f in text_string_to_metric_families(text.decode())}
    assert {s.labels["target"]: s.value for s in fams["fastgw_target_healthy"].samples} == {
        f"http://127.0.0.1:{dead}": 0.0, backend.url: 1.0}
    assert {s.labels["target"]: s.value for s in fams["fastgw_target_passed_over"].samples} == {
        f"http://127.0.0.1:{dead}": 1.0, backend.url: 0.0}
    with Backend("revived", port=dead):
        g.wait_log("healthy again (1 passed checks); in use")
        wait_until(lambda: _active(cfg)[f"http://127.0.0.1:{dead}"] == "healthy", timeout=5, what="revived")
        seen = wait_until(lambda: {request(g.port, "GET", "/b").json()["backend"] for _ in range(4)} == {
            "backend", "revived"}, timeout=5, what="both targets in use")
        assert seen


def test_error_statuses_fail_the_check_and_all_failing_still_serves(port: int, gateway: Any) -> None:
    with Backend("one") as one, Backend("two") as two:
        g = gateway(_config(port, [one.url, two.url], {**CHECK, "path": "/status/503"}))
        g.wait_log(f"upstream 127.0.0.1:{one.port}: passed over after 1 failed health checks (status 503)")
        g.wait_log(f"upstream 127.0.0.1:{two.port}: passed over after 1 failed health checks (status 503)")
        seen = {request(g.port, "GET", "/c").json()["backend"] for _ in range(4)}
        assert seen == {"one", "two"}              # every target failing: all tried in turn
        probes = [r for r in one.requests if r["path"] == "/status/503"]
        assert probes and probes[0]["headers"]["user-agent"] == "fastgw-health-check"


def test_one_worker_probes_for_the_node_and_every_worker_follows(backend: Backend, port: int,
                                                                  gateway: Any) -> None:
    with blackhole() as hole:
        check = {**CHECK, "interval": 0.2}
        g = gateway(_config(port, [hole, backend.url], check), workers=2)
        g.wait_log("passed over after 1 failed health checks (no answer within 0.2 s)")
        time.sleep(0.5)                        # the other worker takes the verdict (every 0.1 s)
        t0 = time.monotonic()
        answers = [request(g.port, "GET", f"/y{i}") for i in range(12)]   # each on a new connection
        assert [r.status for r in answers] == [200] * 12
        assert time.monotonic() - t0 < 1.5          # neither worker waited on the black hole
        # One prober: about 1/interval probes a second, not one stream per worker.
        before = sum(1 for r in backend.requests if r["headers"].get("user-agent") == "fastgw-health-check")
        time.sleep(2.0)
        probes = sum(1 for r in backend.requests if r["headers"].get("user-agent") == "fastgw-health-check")
        assert 5 <= probes - before <= 14, probes - before
        assert g.log().count("passed over after") == 1
        # A reload's workers start from the node's verdicts: no request waits on the hole
        # while the new prober learns again, and nothing is logged again.
        g.reload()
        g.wait_log("reload done: generation 2", timeout=15)
        t0 = time.monotonic()
        assert [request(g.port, "GET", f"/z{i}").status for i in range(8)] == [200] * 8
        assert time.monotonic() - t0 < 1.5
        assert g.log().count("passed over after") == 1
