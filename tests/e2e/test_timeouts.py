"""End-to-end: the coarse timer wheel's timeouts (slow client head, idle keep-alive, slow backend).

Timeouts have the wheel's resolution (a quarter second), so the assertions allow a margin;
none of them is a speed target.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from tests.helpers import Backend, gateway_config, request


def _limits(**kw: float) -> dict[str, Any]:
    return {"drain_timeout": 5, **kw}


def test_slow_request_head_gets_408(backend: Backend, port: int, gateway: Any) -> None:
    g = gateway(gateway_config(port, backend.url, limits=_limits(client_header_timeout=1)))
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as sock:
        t0 = time.monotonic()
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n")     # never finished
        data = sock.recv(65536)
        elapsed = time.monotonic() - t0
    assert data.startswith(b"HTTP/1.1 408")
    assert 0.7 < elapsed < 4


def test_idle_keepalive_connection_is_closed(backend: Backend, port: int, gateway: Any) -> None:
    g = gateway(gateway_config(port, backend.url, limits=_limits(client_idle_timeout=1)))
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert sock.recv(65536) == b""                       # closed by the gateway
        assert 0.7 < time.monotonic() - t0 < 4


def test_read_timeout_longer_than_the_wheel_horizon(backend: Backend, port: int, gateway: Any) -> None:
    # 6 s is beyond the wheel's 5 s filing horizon: the entry is re-filed once, then fires.
    g = gateway(gateway_config(port, backend.url, {"/slow": {"GET": {"timeouts": {"read": 6}}}}))
    t0 = time.monotonic()
    r = request(g.port, "GET", "/slow?ms=9000", timeout=15)
    elapsed = time.monotonic() - t0
    assert r.status == 504
    assert 5.5 < elapsed < 8.5


def test_a_stalled_request_body_gets_408_not_504(backend: Backend, port: int, gateway: Any) -> None:
    """The client stops sending its body while the backend waits for it: the client is
    timed out (408), the backend is not blamed (504), and a whole body still gets through."""
    g = gateway(gateway_config(port, backend.url, {"/up": {"POST": {"timeouts": {"read": 1}}}}))
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as sock:
        t0 = time.monotonic()
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b")
        data = sock.recv(65536)
        elapsed = time.monotonic() - t0
    assert data.startswith(b"HTTP/1.1 408") and b"Connection: close" in data, data[:200]
    assert 0.7 < elapsed < 4
    assert request(g.port, "POST", "/up", body=b"x" * 100).status == 200


def test_a_request_step_that_waits_too_long_gets_504(backend: Backend, port: int, gateway: Any) -> None:
    """A plugin's request step (async on_request) is bounded by the route's read timeout:
    504 and the step cancelled, the worker serving on; a step within the timeout is fine."""
    slow = "tests.fixtures_plugins.slow_plugin"
    g = gateway(gateway_config(port, backend.url, {
        "/stuck": {"GET": {"timeouts": {"read": 1}, "plugins": [{"name": slow, "config": {"seconds": 60}}]}},
        "/brief": {"GET": {"timeouts": {"read": 2}, "plugins": [{"name": slow, "config": {"seconds": 0.2}}]}},
    }))
    t0 = time.monotonic()
    r = request(g.port, "GET", "/stuck")
    elapsed = time.monotonic() - t0
    assert r.status == 504 and r.json()["error"] == "plugin timed out", r.body
    assert 0.7 < elapsed < 4
    assert request(g.port, "GET", "/brief").status == 200
    log = g.log()
    assert "plugin timed out on" in log and "Traceback" not in log and "never awaited" not in log, log[-2000:]
