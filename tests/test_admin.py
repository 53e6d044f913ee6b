"""Admin listener: token, /stats, /metrics (parsed by prometheus_client), /config redaction,
reload, dashboard assets; and the SQLite history surviving a restart."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastgw.admin import AdminServer, redact
from fastgw.stats import StatsRegion
from fastgw.statsdb import StatsDB, StatsQuery

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FakeHooks:
    def __init__(self) -> None:
        self.reloads = 0
        self.next_errors: list[str] = []
        self.health_state: dict[str, Any] | Exception = {"workers": [{"slot": 0, "alive": True}]}

    def reload(self) -> list[str]:
        self.reloads += 1
        return self.next_errors

    def routes(self) -> list[dict[str, Any]]:
        return [{"key": "shop/prod/GET /orders", "service": "shop"}]

    def config(self) -> dict[str, Any]:
        return {
            "admin": {"host": "127.0.0.1", "port": 9901, "token": TOKEN},
            "consumers": [{"name": "alice", "credentials": {"key-auth": ["alice-key"], "jwt": [{"secret": "x"}]}}],
            "services": [{"name": "shop", "plugins": [{"name": "hmac-auth", "config": {"signing_secret": "y",
                                                                                      "password": "z",
                                                                                      "header": "x-sig"}}]}],
        }

    async def health(self) -> dict[str, Any]:
        if isinstance(self.health_state, Exception):
            raise self.health_state
        return self.health_state


@pytest.fixture
def region():
    r = StatsRegion.create(workers=2, max_keys=32, ring_seconds=600)
    yield r
    r.close()


def _fill(region: StatsRegion, now: int) -> None:
    w0 = region.writer(0, 0)
    w1 = region.writer(1, 0)
    get = region.slots.slot_for("shop/prod/GET /orders")
    post = region.slots.slot_for("shop/prod/POST /orders")
    item = region.slots.slot_for("shop/prod/GET /orders/{id}")
    dev = region.slots.slot_for("shop/dev/GET /orders")
    um = region.slots.slot_for("~unmatched/api.shop")
    alice = region.slots.slot_for("~consumer/alice")
    for _ in range(10):
        w0.record_at(now - 5, get, 200, 2000, 1500, 100, 1000)
    for _ in range(4):
        w1.record_at(now - 65, get, 503, 30000, 29000, 100, 50)
    w1.record_at(now - 3, post, 401, 100, 0, 10, 20, 1)
    w1.record_at(now - 3, post, 201, 5000, 4000, 10, 20)
    w0.record_at(now - 2, item, 404, 300, 200, 0, 10)
    w0.record_at(now - 2, dev, 200, 300, 200, 0, 10)
    w0.record_at(now - 1, um, 404, 50, 0, 0, 30, 1)
    w0.set_clock(now - 1)
    for _ in range(3):
        w0.record_consumer(alice)


async def _with_server(region, fn, hooks=None, db=None):
    server = AdminServer(region, hooks or FakeHooks(), TOKEN, db=db)
    await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.port}") as http:
            return await fn(http, server)
    finally:
        await server.stop()


def test_token_enforced(region):
    async def fn(http, server):
        for path in ("/stats", "/metrics", "/routes", "/config"):
            async with http.get(path) as r:
                assert r.status == 401, path
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.get(path, headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            async with http.get(path, headers={"Authorization": f"Basic {TOKEN}"}) as r:
                assert r.status == 401
            async with http.get(path, headers=AUTH) as r:
                assert r.status == 200, path
        async with http.post("/reload") as r:
            assert r.status == 401
        assert server.hooks.reloads == 0
        async with http.get("/nope", headers=AUTH) as r:
            assert r.status == 404
        async with http.get("/dashboard/") as r:  # the page itself needs no token
            assert r.status == 200
            assert "text/html" in r.headers["Content-Type"]
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        async with http.get("/dashboard/../admin.py") as r:
            assert r.status == 404
        async with http.get("/", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/dashboard/"

    asyncio.run(_with_server(region, fn))


def test_stats_json_counts_and_filters(region):
    now = int(time.time())
    _fill(region, now)

    async def fn(http, server):
        async with http.get("/stats", params={"range": "300", "step": "10"}, headers=AUTH) as r:
            assert r.status == 200
            s = await r.json()
        assert s["totals"]["calls"] == 10 + 4 + 2 + 1 + 1
        assert s["totals"]["5xx"] == 4 and s["totals"]["4xx"] == 2 and s["totals"]["2xx"] == 12
        assert s["running"]["calls"] == 18
        assert sum(p["calls"] for p in s["series"]) == 18
        async with http.get("/stats", params={"range": "5m", "step": "10"}, headers=AUTH) as r:
            assert r.status == 200      # the same range with a unit, as the README writes it
            assert (await r.json())["totals"]["calls"] == 18
        assert all(p["t"] % 10 == 0 for p in s["series"])
        by_key = {r["key"]: r for r in s["resources"]}
        assert by_key["shop/prod/GET /orders"]["calls"] == 14
        assert by_key["shop/prod/GET /orders"]["running"]["5xx"] == 4
        assert by_key["shop/prod/POST /orders"]["running"]["gateway"] == 1
        assert s["unmatched"][0]["host"] == "api.shop" and s["unmatched"][0]["calls"] == 1
        assert s["consumers"] == [{"name": "alice", "calls": 3, "running_calls": 3}]
        assert s["services"] == {"shop": ["prod", "dev"]}
        # filters: stage, resource subtree, method, time range
        async with http.get("/stats", params={"stage": "prod", "resource": "/orders", "method": "GET",
                                              "range": "300"}, headers=AUTH) as r:
            s = await r.json()
        assert {r["key"] for r in s["resources"]} == {"shop/prod/GET /orders", "shop/prod/GET /orders/{id}"}
        assert s["totals"]["calls"] == 15
        async with http.get("/stats", params={"from": str(now - 30), "to": str(now)}, headers=AUTH) as r:
            s = await r.json()
        assert s["totals"]["calls"] == 14 and s["totals"]["5xx"] == 0
        async with http.get("/stats", params={"range": "abc"}, headers=AUTH) as r:
            assert r.status == 400

    asyncio.run(_with_server(region, fn))


def test_metrics_parse_with_prometheus_client(region):
    now = int(time.time())
    _fill(region, now)

    async def fn(http, server):
        async with http.get("/metrics", headers=AUTH) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return await r.text()

    text = asyncio.run(_with_server(region, fn))
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    req = fams["fastgw_requests"]
    assert req.type == "counter"
    got = {(s.labels["resource"], s.labels["method"], s.labels["status_class"], s.labels["source"], s.labels["stage"]): s.value
           for s in req.samples if s.name == "fastgw_requests_total"}
    assert got[("/orders", "GET", "2xx", "backend", "prod")] == 10
    assert got[("/orders", "GET", "5xx", "backend", "prod")] == 4
    assert got[("/orders", "POST", "4xx", "gateway", "prod")] == 1
    assert got[("/orders", "GET", "2xx", "backend", "dev")] == 1
    hist = fams["fastgw_request_duration_seconds"]
    assert hist.type == "histogram"
    samples = [s for s in hist.samples if s.labels.get("method") == "GET" and s.labels["resource"] == "/orders"
               and s.labels["stage"] == "prod"]
    buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket")}
    assert buckets["+Inf"] == 14
    assert buckets["0.002048"] == 10 and buckets["0.032768"] == 14 and buckets["0.001024"] == 0
    count = [s.value for s in samples if s.name.endswith("_count")][0]
    total = [s.value for s in samples if s.name.endswith("_sum")][0]
    assert count == 14 and total == pytest.approx((10 * 2000 + 4 * 30000) / 1e6)
    um = {s.labels["host"]: s.value for s in fams["fastgw_unmatched_requests"].samples}
    assert um == {"api.shop": 1}
    assert [s.value for s in fams["fastgw_consumer_requests"].samples] == [3]


def test_health_answers_probes_without_the_token(region):
    hooks = FakeHooks()

    async def fn(http, server):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with http.get("/health", headers=headers) as r:
                assert r.status == 200 and await r.json() == {"status": "ok"}    # no pids for strangers
            async with http.head("/health", headers=headers) as r:
                assert r.status == 200 and await r.read() == b""
        hooks.health_state = {"status": "degraded", "workers": [{"slot": 0, "alive": False}]}
        async with http.get("/health") as r:
            assert r.status == 503 and await r.json() == {"status": "degraded"}
        async with http.get("/health", headers=AUTH) as r:
            h = await r.json()
            assert r.status == 503 and h["status"] == "degraded" and h["workers"] == [{"slot": 0, "alive": False}]
        hooks.health_state = RuntimeError("supervisor gone")
        async with http.get("/health") as r:
            assert r.status == 503 and await r.json() == {"status": "degraded"}
        async with http.get("/health", headers=AUTH) as r:
            assert r.status == 503 and (await r.json())["error"] == "RuntimeError: supervisor gone"
        async with http.post("/health") as r:          # only reading is open
            assert r.status == 401

    asyncio.run(_with_server(region, fn, hooks))


def test_config_redacted_routes_health_reload(region):
    hooks = FakeHooks()

    async def fn(http, server):
        async with http.get("/config", headers=AUTH) as r:
            cfg = await r.json()
        assert TOKEN not in str(cfg) and "alice-key" not in str(cfg)
        assert cfg["admin"] == {"host": "127.0.0.1", "port": 9901, "token": "***"}
        assert cfg["consumers"][0] == {"name": "alice", "credentials": "***"}
        pc = cfg["services"][0]["plugins"][0]["config"]
        assert pc == {"signing_secret": "***", "password": "***", "header": "x-sig"}
        async with http.get("/routes", headers=AUTH) as r:
            assert (await r.json())["routes"][0]["service"] == "shop"
        async with http.get("/health", headers=AUTH) as r:
            h = await r.json()
            assert h["status"] == "ok" and h["workers"][0]["alive"] is True
        async with http.post("/reload", headers=AUTH) as r:
            assert r.status == 200 and (await r.json()) == {"ok": True}
        hooks.next_errors = ["services[0].name: required"]
        async with http.post("/reload", headers=AUTH) as r:
            assert r.status == 400 and (await r.json())["errors"] == ["services[0].name: required"]
        async with http.get("/reload", headers=AUTH) as r:
            assert r.status == 405
        assert hooks.reloads == 2

    asyncio.run(_with_server(region, fn, hooks))
    assert redact({"tls": {"cert": "c.pem", "key": "k.pem"}}) == {"tls": {"cert": "c.pem", "key": "***"}}


def test_history_rollup_survives_restart(tmp_path):
    now = int(time.time()) // 60 * 60 + 30
    path = str(tmp_path / "stats.db")
    r1 = StatsRegion.create(workers=1, ring_seconds=3600)
    object.__setattr__(r1.layout, "created", now - 3000)
    w = r1.writer(0, 0)
    slot = r1.slots.slot_for("shop/prod/GET /orders")
    for s in range(now - 600, now):
        w.record_at(s, slot, 500 if s % 10 == 0 else 200, 1000 + (s % 7) * 100, 800, 1, 2)
    db = StatsDB(path)
    assert db.rollup(r1, now) >= 10
    assert db.rollup(r1, now) == 0  # watermark: nothing counted twice
    with_db = StatsQuery(r1, db).stats(t0=now - 3600, t1=now + 1, step=60, now=now)
    ring_only = StatsQuery(r1).stats(t0=now - 3600, t1=now + 1, step=60, now=now)
    assert with_db["totals"]["calls"] == ring_only["totals"]["calls"] == 600
    assert [p["calls"] for p in with_db["series"]] == [p["calls"] for p in ring_only["series"]]
    assert with_db["totals"]["p99_ms"] == ring_only["totals"]["p99_ms"]
    del w
    r1.close()
    db.close()
    # a new supervisor: empty ring, same history file
    r2 = StatsRegion.create(workers=1, ring_seconds=3600)
    r2.slots.slot_for("shop/prod/GET /orders")
    db2 = StatsDB(path)
    later = now + 120
    day = StatsQuery(r2, db2).stats(t0=later - 86400, t1=later, step=3600, now=later)
    rolled = db2.rolled_until
    assert day["totals"]["calls"] == sum(1 for s in range(now - 600, now) if s < rolled)
    assert day["totals"]["5xx"] == sum(1 for s in range(now - 600, now) if s < rolled and s % 10 == 0)
    days = StatsQuery(r2, db2).stats(t0=later // 86400 * 86400 - 29 * 86400, t1=later, step=86400, now=later)
    assert days["totals"]["calls"] == day["totals"]["calls"] and len(days["series"]) == 30
    r2.close()
    db2.close()


def test_cli_stats_reads_admin(region, capsys):
    from fastgw import cli_stats

    now = int(time.time())
    _fill(region, now)

    async def fn(http, server):
        url = f"http://127.0.0.1:{server.port}"
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, cli_stats.main, ["--admin", url, "--token", TOKEN, "--range", "5m"])
        bad = await loop.run_in_executor(None, cli_stats.main, ["--admin", url, "--token", "nope"])
        return ok, bad

    ok, bad = asyncio.run(_with_server(region, fn))
    out = capsys.readouterr()
    assert ok == 0 and bad == 1
    assert "18 calls" in out.out and "/orders/{id}" in out.out and "api.shop 1" in out.out
    assert "refused the token" in out.err
    assert cli_stats.main([]) == 2 or "FASTGW_ADMIN_TOKEN" in __import__("os").environ


def test_history_file_defaults_to_one_per_config(tmp_path, monkeypatch) -> None:
    from fastgw.statsdb import resolve_db_path

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    a = resolve_db_path("auto", "/etc/fastgw/a.json")
    b = resolve_db_path("auto", "/etc/fastgw/b.json")
    assert a != b and a.startswith(str(tmp_path / "fastgw")) and a.endswith(".sqlite3")
    assert resolve_db_path("auto", "/etc/fastgw/a.json") == a      # stable across restarts
    assert resolve_db_path(None, "/etc/fastgw/a.json") is None     # null: no history
    assert resolve_db_path("/var/lib/x.db", "/etc/fastgw/a.json") == "/var/lib/x.db"


def test_time_ranges_take_units() -> None:
    import pytest

    from fastgw.stats import parse_span

    assert [parse_span(x) for x in ("300", "5m", "1h", "1d", "30d", "90s")] == [300, 300, 3600, 86400, 2592000, 90]
    with pytest.raises(ValueError):
        parse_span("soon")
