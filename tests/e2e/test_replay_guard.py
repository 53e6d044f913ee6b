"""End-to-end: a signed request is accepted once per node, whichever worker it reaches.

Four workers each own a listening socket (SO_REUSEPORT), so fresh connections spread over
them; the replay guard lives in shared memory created by the supervisor, so a captured
signature replayed on any connection, to any worker, and after a reload (new workers) is
refused. Before the shared table each worker kept its own, and a signature could be
replayed once per worker.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import time
from email.utils import formatdate
from typing import Any

from tests.helpers import Backend, gateway_config, request

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
