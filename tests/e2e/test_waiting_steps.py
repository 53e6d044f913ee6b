"""End-to-end: a request step that returns a future (policy-redis rate limits do) goes on
from the future's callback, with no task: its verdict, the steps after it (which may wait
in turn, on a coroutine), the dispatch; failures, a client that leaves, the route's read
timeout, and requests pipelined or sent while reading is paused for the wait."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Backend, RawClient, gateway_config, request, wait_until

FUTURE = "tests.fixtures_plugins.future_plugin"
SLOW = "tests.fixtures_plugins.slow_plugin"


@pytest.fixture
def gw(backend: Backend, port: int, gateway: Any, tmp_path: Path) -> Any:
    cancels = tmp_path / "cancelled.txt"
    waiting = {"name": FUTURE, "config": {"delay": 0.05, "cancel_file": str(cancels)}}
    g = gateway(gateway_config(port, backend.url, {
        "/wait/{rest*}": {"ANY": {"plugins": [waiting]}},
        "/twice": {"GET": {"plugins": [waiting, {"name": SLOW, "config": {"seconds": 0.05}}]}},
        "/stuck": {"GET": {"timeouts": {"read": 0.5},
                           "plugins": [{"name": FUTURE, "config": {"delay": 30, "cancel_file": str(cancels)}}]}},
    }))
    g.cancels = cancels
    return g


def test_the_future_verdict_decides(gw: Any, backend: Backend) -> None:
    r = request(gw.port, "GET", "/wait/a")
    assert r.status == 200 and r.json()["headers"].get("x-waited") == "yes", r.body
    r = request(gw.port, "GET", "/wait/b", {"X-Wait": "answer"})
    assert r.status == 403 and r.json()["error"] == "refused after waiting"
    r = request(gw.port, "GET", "/wait/c", {"X-Wait": "raise"})
    assert r.status == 500 and r.json()["error"] == "internal plugin error"
    assert len(backend.requests) == 1
    # The future's result is a coroutine: the step waits on it next (a task), then goes on.
    r = request(gw.port, "GET", "/wait/d", {"X-Wait": "then-pass"})
    assert r.status == 200 and r.json()["headers"].get("x-waited") == "twice", r.body
    r = request(gw.port, "GET", "/wait/e", {"X-Wait": "then-answer"})
    assert r.status == 409 and r.json()["error"] == "refused after waiting twice"
    assert len(backend.requests) == 2
    # A step after the waited one waits in turn, on a coroutine (a task).
    r = request(gw.port, "GET", "/twice")
    assert r.status == 200 and r.json()["headers"].get("x-waited") == "yes"
    log = gw.log()
    assert "the awaited thing failed" in log and "never awaited" not in log


def test_a_request_body_and_pipelined_requests_wait_their_turn(gw: Any, backend: Backend) -> None:
    with RawClient(gw.port) as c:
        # Two requests in one write: the second is read with the first and waits for it.
        c.send(b"POST /wait/1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
               b"GET /wait/2 HTTP/1.1\r\nHost: t\r\n\r\n")
        r1, r2 = c.read_response(), c.read_response()
        assert (r1.status, r1.json()["path"], r1.json()["body"]) == (200, "/wait/1", "hello")
        assert (r2.status, r2.json()["path"]) == (200, "/wait/2")
        # A request sent while the gateway is waiting for the one before (its socket's
        # reading paused meanwhile): read when the wait is over.
        c.send(b"GET /wait/3 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.01)
        c.send(b"GET /wait/4 HTTP/1.1\r\nHost: t\r\nX-Wait: answer\r\n\r\n")
        r3, r4 = c.read_response(), c.read_response()
        assert (r3.status, r3.json()["path"], r4.status) == (200, "/wait/3", 403)
        # The body's second half comes during the wait.
        c.send(b"POST /wait/5 HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234")
        time.sleep(0.02)
        c.send(b"56789")
        r5 = c.read_response()
        assert (r5.status, r5.json()["body"]) == (200, "0123456789")


def test_a_client_that_leaves_or_half_closes_during_the_wait(gw: Any) -> None:
    # Half-close after a last request: it is answered, then the connection closes.
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(b"GET /wait/last HTTP/1.1\r\nHost: t\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200") and b"/wait/last" in data
    # Gone for good during the wait: the future is cancelled, the worker serves on.
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.sendall(b"GET /stuck HTTP/1.1\r\nHost: t\r\n\r\n")
    time.sleep(0.1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()                                           # a reset
    wait_until(lambda: gw.cancels.exists() and "cancelled /stuck" in gw.cancels.read_text(),
               timeout=5, what="the waited future cancelled")
    assert request(gw.port, "GET", "/wait/after").status == 200


def test_a_future_that_takes_too_long_is_cancelled_and_answered_504(gw: Any) -> None:
    t0 = time.monotonic()
    r = request(gw.port, "GET", "/stuck")
    assert r.status == 504 and r.json()["error"] == "plugin timed out"
    assert time.monotonic() - t0 < 5
    wait_until(lambda: gw.cancels.exists() and gw.cancels.read_text().count("cancelled /stuck") == 1,
               timeout=5, what="the timed-out future cancelled")
    assert request(gw.port, "GET", "/wait/after").status == 200
