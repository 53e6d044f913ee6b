"""End-to-end: closing after an answer that left client bytes unread (RFC 9112 9.6).

When the gateway ends a connection while the client is still sending (a body not taken
because a plugin or the backend answered first, pipelined requests after a refused one, a
refused head), closing at once makes the kernel answer the client's next bytes with a
reset, and a reset can destroy the answer before the client reads it. The gateway
half-closes instead, reads and drops what the client still sends, and closes on the
client's EOF, after ``client_lingering_timeout`` without data, or ``client_lingering_time``
at the latest. A complete request that asked to close is closed at once. Each test runs on
fastgw's own client transport and on uvloop's (TLS connections, which cannot half-close,
close at once as before).

Each test sends the rest of the request *after* the answer arrived: without the lingering
close that send fails with a reset or a broken pipe.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import Backend, ScriptedBackend, gateway_config, protocol_server, read_to_eof, recv_sized

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True, params=["own", "uvloop"])
def transports(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test on both client transports: fastgw's own epoll one and uvloop's."""
    monkeypatch.setenv("FASTGW_UVLOOP_TRANSPORTS", "1" if request.param == "uvloop" else "0")
    return str(request.param)

BODY = 1_000_000
KEY_AUTH = {"name": "key-auth", "config": {"key_names": ["apikey"]}}
CONSUMERS = [{"name": "ann", "credentials": {"key-auth": ["ann-key-00001"]}}]


class EarlyAnswerBackend(ScriptedBackend):
    """Answers 413 as soon as a request head is in, without reading the body."""

    def answer(self, head: bytes) -> bytes:
        return b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large"


@pytest.fixture
def early_backend() -> Iterator[int]:
    with protocol_server(EarlyAnswerBackend) as port:
        yield port


def _limits(timeout: float = 5.0, total: float = 30.0) -> dict[str, Any]:
    return {"drain_timeout": 5, "client_lingering_timeout": timeout, "client_lingering_time": total}


def _read_answer(sock: socket.socket) -> bytes:
    """One answer with a Content-Length body, read as it arrives."""
    head, body = recv_sized(sock)
    return head + b"\r\n\r\n" + body


def _post_answered_early(port: int, headers: str = "") -> socket.socket:
    """A POST of BODY bytes with only its first 64 KB sent; returns once the answer is in."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"POST /upload HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {BODY}\r\n\r\n".encode()
                 + b"a" * 65536)
    return sock


def test_an_answer_from_a_plugin_before_the_body_is_read_to_the_end(backend: Backend, port: int,
                                                                      gateway: Any) -> None:
    g = gateway(gateway_config(port, backend.url, {"/upload": {"POST": {"plugins": [KEY_AUTH]}}},
                               consumers=CONSUMERS, limits=_limits()))
    with _post_answered_early(g.port) as sock:
        answer = _read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 401") and b"\r\nConnection: close\r\n" in answer
        sock.sendall(b"a" * (BODY - 65536))      # the rest is read and dropped, not reset
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b""
    assert not any(r["path"] == "/upload" for r in backend.requests)   # the plugin answered


def test_an_answer_from_the_backend_before_the_body_is_read_to_the_end(early_backend: int, port: int,
                                                                         gateway: Any) -> None:
    g = gateway(gateway_config(port, f"http://127.0.0.1:{early_backend}", limits=_limits()))
    with _post_answered_early(g.port) as sock:
        answer = _read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 413") and answer.endswith(b"too large")
        assert b"\r\nConnection: close\r\n" in answer      # the head says the connection ends
        sock.sendall(b"a" * (BODY - 65536))
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b""


def test_bytes_after_a_refused_head_are_read_not_reset(backend: Backend, port: int, gateway: Any) -> None:
    g = gateway(gateway_config(port, backend.url, limits=_limits()))
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n")
        answer = _read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 400") and b"\r\nConnection: close\r\n" in answer
        sock.sendall(b"GET /y HTTP/1.1\r\nHost: x\r\n\r\n" * 20000)   # a client that pipelines on
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b""


def _reset_by_gateway(sock: socket.socket) -> bool:
    """Whether the gateway's socket is gone: a byte sent to a closed socket is answered with
    a reset, and the send after it fails. A lingering gateway reads and drops both."""
    try:
        sock.send(b"a")
        time.sleep(0.1)
        sock.send(b"a")
    except (ConnectionResetError, BrokenPipeError):
        return True
    return False


def test_a_silent_client_is_closed_after_the_lingering_timeout(backend: Backend, port: int,
                                                                gateway: Any) -> None:
    g = gateway(gateway_config(port, backend.url, {"/upload": {"POST": {"plugins": [KEY_AUTH]}}},
                               consumers=CONSUMERS, limits=_limits(timeout=1.0)))
    with _post_answered_early(g.port) as sock:
        _read_answer(sock)
        assert sock.recv(1) == b""                 # the write side is shut after the answer ...
        assert not _reset_by_gateway(sock)         # ... and what the client sends is read
        time.sleep(2.0)                            # silent for longer than the timeout
        assert _reset_by_gateway(sock)             # closed: a byte now gets a reset


def test_a_trickling_client_is_closed_after_the_lingering_time(backend: Backend, port: int,
                                                                gateway: Any) -> None:
    g = gateway(gateway_config(port, backend.url, {"/upload": {"POST": {"plugins": [KEY_AUTH]}}},
                               consumers=CONSUMERS, limits=_limits(timeout=1.0, total=2.0)))
    with _post_answered_early(g.port) as sock:
        _read_answer(sock)
        t0 = time.monotonic()
        reset = False
        while time.monotonic() - t0 < 8 and not reset:
            reset = _reset_by_gateway(sock)        # a byte every ~0.2 s: never silent for 1 s
            time.sleep(0.1)
        assert reset and 1.7 < time.monotonic() - t0 < 5


def test_a_complete_request_that_asks_to_close_is_closed_at_once(backend: Backend, port: int,
                                                                  gateway: Any) -> None:
    g = gateway(gateway_config(port, backend.url, limits=_limits(timeout=30, total=60)))
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        t0 = time.monotonic()
        out = read_to_eof(sock)
        assert out.startswith(b"HTTP/1.1 200") and time.monotonic() - t0 < 2


def test_lingering_connections_do_not_hold_up_a_drain(backend: Backend, port: int, gateway: Any) -> None:
    g = gateway(gateway_config(port, backend.url, {"/upload": {"POST": {"plugins": [KEY_AUTH]}}},
                               consumers=CONSUMERS, limits=_limits(timeout=60, total=120)))
    with _post_answered_early(g.port) as sock:
        _read_answer(sock)
        t0 = time.monotonic()
        assert g.stop() == 0
        assert time.monotonic() - t0 < 4            # not the 60 s lingering timeout
