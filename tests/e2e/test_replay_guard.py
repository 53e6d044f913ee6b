"""End-to-end: a signed request is accepted once per node, whichever worker it reaches.

Four workers each own a listening socket (SO_REUSEPORT), so fresh connections spread over
them; the replay guard lives in shared memory created by the supervisor, so a captured
signature replayed on any connection, to any worker, and after a reload (new workers) is
refused. Before the shared table each worker kept its own, and a signature could be
replayed once per worker. Nodes that share a Redis (config ``redis``) share one set there;
without an answer from it, signed requests are refused (503), never let through.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import time
from email.utils import formatdate
from typing import Any

from tests.helpers import Backend, RedisServer, free_port, gateway_config, request

SECRET = "alice-hmac-secret-0123456789"
WORKERS = 4


def _signed(path: str) -> dict[str, str]:
    date = formatdate(time.time(), usegmt=True)
    text = f"date: {date}\nGET {path} HTTP/1.1"
    sig = base64.b64encode(hmac.new(SECRET.encode(), text.encode(), hashlib.sha256).digest()).decode()
    return {"Date": date, "Connection": "close",
            "Authorization": f'hmac username="alice", algorithm="hmac-sha256", headers="date request-line", '
                             f'signature="{sig}"'}


def _config(port: int, backend: Backend) -> dict[str, Any]:
    cfg = gateway_config(port, backend.url, {"/pay/{id}": {"GET": {"plugins": [{"name": "hmac-auth"}]}}})
    cfg["consumers"] = [{"name": "alice", "credentials": {"hmac-auth": [{"username": "alice", "secret": SECRET}]}}]
    return cfg


def test_a_signature_is_used_once_across_workers_and_reloads(backend: Backend, port: int, gateway: Any) -> None:
    cfg = _config(port, backend)
    g = gateway(cfg, workers=WORKERS)
    captured = _signed("/pay/1")
    # one new connection per try (Connection: close): the kernel spreads them over the workers
    answers = [request(g.port, "GET", "/pay/1", headers=captured) for _ in range(6 * WORKERS)]
    statuses = [r.status for r in answers]
    assert statuses.count(200) == 1 and statuses[0] == 200, statuses
    assert {r.json()["error"] for r in answers[1:]} == {"Signature already used"}
    assert len([r for r in backend.requests if r["path"] == "/pay/1"]) == 1
    # other signatures still pass, once each
    for i in range(2, 6):
        fresh = _signed(f"/pay/{i}")
        assert request(g.port, "GET", f"/pay/{i}", headers=fresh).status == 200
        assert request(g.port, "GET", f"/pay/{i}", headers=fresh).status == 401
    # a reload starts new workers; they attach the same table
    reloaded = copy.deepcopy(cfg)
    reloaded["services"][0]["resources"]["/other"] = {"GET": {}}
    g.reload(reloaded)
    g.wait_log("reload done: generation 2", timeout=15)
    again = [request(g.port, "GET", "/pay/1", headers=captured).status for _ in range(2 * WORKERS)]
    assert again == [401] * (2 * WORKERS)
    assert len([r for r in backend.requests if r["path"] == "/pay/1"]) == 1


def test_nodes_sharing_redis_accept_a_signature_once(backend: Backend, gateway: Any, redis: RedisServer) -> None:
    nodes = []
    for _ in range(2):                                 # two gateway nodes, two workers each
        cfg = _config(free_port(), backend)
        cfg["redis"] = {"url": redis.url, "timeout": 0.5}
        nodes.append(gateway(cfg, workers=2))
    captured = _signed("/pay/7")
    answers = [request(nodes[i % 2].port, "GET", "/pay/7", headers=captured) for i in range(8)]
    assert [r.status for r in answers] == [200] + [401] * 7
    assert {r.json()["error"] for r in answers[1:]} == {"Signature already used"}
    fresh = _signed("/pay/8")
    assert request(nodes[1].port, "GET", "/pay/8", headers=fresh).status == 200
    assert request(nodes[0].port, "GET", "/pay/8", headers=fresh).status == 401
    assert len([r for r in backend.requests if r["path"] in ("/pay/7", "/pay/8")]) == 2


def test_without_redis_signed_requests_fail_closed(backend: Backend, gateway: Any, redis: RedisServer) -> None:
    cfg = _config(free_port(), backend)
    cfg["services"][0]["resources"]["/open"] = {"GET": {}}
    cfg["redis"] = {"url": redis.url, "timeout": 0.3}
    g = gateway(cfg, workers=1)
    assert request(g.port, "GET", "/pay/1", headers=_signed("/pay/1")).status == 200
    redis.stop()
    refused = request(g.port, "GET", "/pay/2", headers=_signed("/pay/2"))
    assert refused.status == 503 and refused.json()["error"] == "replay guard unavailable"
    assert request(g.port, "GET", "/open").status == 200          # the worker serves on
    g.wait_log("Redis unavailable")
    redis.start()                                                  # back on the same port
    assert request(g.port, "GET", "/pay/3", headers=_signed("/pay/3")).status == 200
    assert [r["path"] for r in backend.requests if r["path"].startswith("/pay/")] == ["/pay/1", "/pay/3"]
