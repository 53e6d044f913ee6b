"""Real traffic through ``fastgw run`` with 2 workers → exact counts in ``GET /stats`` and
``GET /metrics``; counts survive a reload."""

from __future__ import annotations

import json
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import Backend, Gateway, RawClient, free_port, gateway_config, request, wait_until

TOKEN = "e2e-stats-token"


def _admin(gw: Gateway, path: str) -> bytes:
    admin = gw.config["admin"]
    req = urllib.request.Request(f"http://{admin['host']}:{admin['port']}{path}",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as res:
        return res.read()


def _stats(gw: Gateway) -> dict:
    return json.loads(_admin(gw, "/stats?range=600"))


def test_exact_counts_through_two_workers():
    with Backend() as backend:
        resources = {
            "/items": {"GET": {}, "/{id}": {"GET": {}}},
            "/status/{code}": {"GET": {"backend_path": "/status/{code}"}},
        }
        cfg = gateway_config(free_port(), backend.url, resources,
                             admin={"host": "127.0.0.1", "port": free_port(), "token": TOKEN})
        gw = Gateway(cfg, workers=2).start()
        try:
            # many short connections, so SO_REUSEPORT spreads them over both workers
            for i in range(30):
                assert request(gw.port, "GET", "/items").status == 200
                assert request(gw.port, "GET", f"/items/{i}").status == 200
            with RawClient(gw.port) as client:
                for _ in range(7):
                    assert client.request("GET", "/status/503").status == 503
                for _ in range(5):
                    assert client.request("GET", "/nowhere").status == 404
            expect = {"test/prod/GET /items": (30, 30, 0), "test/prod/GET /items/{id}": (30, 30, 0),
                      "test/prod/GET /status/{code}": (7, 0, 7)}

            def counted() -> dict | None:
                s = _stats(gw)
                got = {r["key"]: (r["running"]["calls"], r["running"]["2xx"], r["running"]["5xx"])
                       for r in s["resources"]}
                return s if got == expect else None

            s = wait_until(counted, timeout=10, what="exact counts in /stats")
            assert s["running"]["calls"] == 67 and s["totals"]["calls"] == 67
            assert sum(p["calls"] for p in s["series"]) == 67
            assert sum(u["running"]["calls"] for u in s["unmatched"]) == 5
            writers = json.loads(_admin(gw, "/health"))
            assert writers["status"] in ("ok", "degraded")
            fams = {f.name: f for f in text_string_to_metric_families(_admin(gw, "/metrics").decode())}
            total = sum(x.value for x in fams["fastgw_requests"].samples)
            assert total == 67
            # a reload keeps the counts (keys are names, not indexes)
            gw.reload()
            gw.wait_log("reload", timeout=15)
            for _ in range(3):
                assert request(gw.port, "GET", "/items").status == 200
            wait_until(lambda: {r["key"]: r["running"]["calls"] for r in _stats(gw)["resources"]}
                       .get("test/prod/GET /items") == 33, timeout=15, what="counts after reload")
        finally:
            gw.stop()


def test_calls_per_consumer_alternating_and_after_a_reload():
    # The worker remembers the last consumer's stats slot: alternating consumers on one
    # connection, and the slots a reload assigns again, must each land on the right name.
    with Backend() as backend:
        cfg = gateway_config(free_port(), backend.url,
                             {"/k": {"GET": {"plugins": [{"name": "key-auth"}]}}},
                             admin={"host": "127.0.0.1", "port": free_port(), "token": TOKEN})
        cfg["consumers"] = [{"name": "alice", "credentials": {"key-auth": ["alice-key-0001"]}},
                            {"name": "bob", "credentials": {"key-auth": ["bob-key-00001"]}}]
        gw = Gateway(cfg, workers=1).start()

        def per_consumer() -> dict:
            return {c["name"]: c["running_calls"] for c in _stats(gw)["consumers"]}

        try:
            with RawClient(gw.port) as client:
                for key in ("alice-key-0001", "bob-key-00001", "alice-key-0001", "alice-key-0001",
                            "bob-key-00001"):
                    assert client.request("GET", "/k", headers={"apikey": key}).status == 200
                assert client.request("GET", "/k", headers={"apikey": "nobody"}).status == 401
            wait_until(lambda: per_consumer() == {"alice": 3, "bob": 2}, timeout=10, what="calls per consumer")
            gw.reload()
            gw.wait_log("reload", timeout=15)
            for key in ("bob-key-00001", "alice-key-0001", "bob-key-00001"):
                assert request(gw.port, "GET", "/k", headers={"apikey": key}).status == 200
            wait_until(lambda: per_consumer() == {"alice": 4, "bob": 4}, timeout=15,
                       what="calls per consumer after a reload")
        finally:
            gw.stop()
