"""End-to-end: misbehaving backends and hostile clients; the worker answers sensibly and lives on."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from fastgw import _core
from tests.helpers import Backend, gateway_config, protocol_server, request

# path -> raw bytes the backend writes back (then it closes), or None: reset at once
ANSWERS: dict[str, bytes | None] = {
    "/reset": None,
    "/garbage": b"NOT HTTP AT ALL\r\n\r\n",
    "/bad-status": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    "/truncated": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-a-part",
    "/cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "/until-close": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nbody until the end",
    "/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "/huge-head": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
}


class MisbehavingBackend(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            return
        path = self.buf.split(b" ", 2)[1].decode().split("?")[0]
        answer = ANSWERS.get(path, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        if answer is None:
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.transport.abort()
            return
        self.transport.write(answer)
        self.transport.close()


@pytest.fixture
def bad_backend() -> Iterator[int]:
    with protocol_server(MisbehavingBackend) as port:
        yield port


@pytest.fixture
def gw_bad(bad_backend: int, port: int, gateway: Any) -> Any:
    cfg = gateway_config(port, f"http://127.0.0.1:{bad_backend}")
    return gateway(cfg)


@pytest.mark.parametrize("path", ["/reset", "/garbage", "/bad-status", "/huge-head", "/bad-chunk"])
def test_broken_backend_answers_are_502(gw_bad: Any, path: str) -> None:
    raw = _exchange(gw_bad.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    if path == "/bad-chunk":
        # the head was fine and went out; the broken body ends the connection instead
        assert raw.startswith(b"HTTP/1.1 200") or raw.startswith(b"HTTP/1.1 502")
    else:
        assert raw.startswith(b"HTTP/1.1 502"), raw[:80]
        assert b'"status":502' in raw
    assert request(gw_bad.port, "GET", "/fine").status == 200


def test_truncated_backend_body_closes_the_client(gw_bad: Any) -> None:
    raw = _exchange(gw_bad.port, b"GET /truncated HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 100" in head
    assert body == b"only-a-part"            # and the connection was closed (no hang)


def test_backend_framing_rules(gw_bad: Any) -> None:
    raw = _exchange(gw_bad.port, b"GET /cl-and-te HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-length" not in head.lower()           # TE wins; the CL is dropped
    assert body == b"5\r\nhello\r\n0\r\n\r\n"
    raw = _exchange(gw_bad.port, b"GET /until-close HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Connection: close" in head and body == b"body until the end"


def test_random_garbage_never_kills_the_worker(gw_bad: Any) -> None:
    rnd = random.Random(1234)
    pid = next(iter(gw_bad.worker_pids().values()))
    for _ in range(60):
        junk = os.urandom(rnd.randint(1, 300))
        if rnd.random() < 0.5:
            junk = b"GET /" + junk
        raw = _exchange(gw_bad.port, junk + b"\r\n\r\n", quiet=0.3)
        assert raw == b"" or raw.startswith(b"HTTP/1.1 4") or raw.startswith(b"HTTP/1.1 5"), raw[:60]
    assert next(iter(gw_bad.worker_pids().values())) == pid      # the same worker, alive
    assert request(gw_bad.port, "GET", "/fine").status == 200


def _exchange(port: int, data: bytes, quiet: float = 1.5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.settimeout(quiet)
        out = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out


class OneShotBackend(asyncio.Protocol):
    """Answers the first request of a connection (keep-alive), silently drops the second:
    what a backend closing an idle keep-alive connection looks like to a proxy that reuses it."""

    seen: list[str] = []
    bodies: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = b""
        self.count = 0

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.buf = rest[length:]
            self.count += 1
            if self.count > 1:
                self.transport.abort()
                return
            OneShotBackend.seen.append(head.split(b" ", 2)[0].decode())
            OneShotBackend.bodies.append(rest[:length])
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest.fixture
def one_shot_backend() -> Iterator[int]:
    OneShotBackend.seen = []
    OneShotBackend.bodies = []
    with protocol_server(OneShotBackend) as port:
        yield port


def test_stale_pooled_connection_retries_only_idempotent_requests(one_shot_backend: int, port: int,
                                                                   gateway: Any) -> None:
    g = gateway(gateway_config(port, f"http://127.0.0.1:{one_shot_backend}"))
    assert request(g.port, "GET", "/a").status == 200          # opens the pooled connection
    assert request(g.port, "GET", "/b").status == 200          # dropped on reuse, retried fresh
    assert OneShotBackend.seen == ["GET", "GET"]
    r = request(g.port, "POST", "/pay", body=b"{}")             # dropped on reuse: NOT replayed
    assert r.status == 502
    assert OneShotBackend.seen == ["GET", "GET"]               # the POST never ran twice (nor once)


def test_retried_idempotent_request_carries_its_body(one_shot_backend: int, port: int,
                                                     gateway: Any) -> None:
    """A PUT is idempotent, so a stale pooled connection is retried on a fresh one: with
    the body it came with (it was sent glued to the head the first time)."""
    cfg = gateway_config(port, f"http://127.0.0.1:{one_shot_backend}")
    cfg["services"][0]["timeouts"] = {"read": 3}
    g = gateway(cfg)
    assert request(g.port, "GET", "/a").status == 200          # opens the pooled connection
    r = request(g.port, "PUT", "/item/7", body=b'{"v":7}')    # dropped on reuse, retried fresh
    assert r.status == 200
    assert OneShotBackend.seen == ["GET", "PUT"]
    assert OneShotBackend.bodies == [b"", b'{"v":7}']


def test_a_hash_request_retried_after_a_stale_connection_stays_with_its_target(
        one_shot_backend: int, port: int, gateway: Any) -> None:
    """A stale pooled connection is retried on a fresh one to the same target when the
    backend places requests by key: the retry must not go to the next target in turn."""
    with Backend("b") as b:
        targets = [f"http://127.0.0.1:{one_shot_backend}", b.url]
        cfg = gateway_config(port, targets[0])
        cfg["services"][0]["stages"]["prod"]["backend"] = {"targets": targets, "balance": "hash",
                                                           "hash_key": "header:X-User"}
        # The same ring the worker builds (fixed seed): a user the one-shot target owns.
        loop = asyncio.new_event_loop()
        try:
            engine = _core.Engine(loop, None)
            pools = [_core.UpstreamPool(engine, "127.0.0.1", one_shot_backend), _core.UpstreamPool(engine, "127.0.0.1", b.port)]
            ring = _core.Backend(pools, 1, 10.0, [1, 1], "hash", 0, 0.0, "header:X-User")
            user = next(f"u{i}" for i in range(1_000) if ring._pick_key_for_tests(f"u{i}".encode()) is pools[0])
        finally:
            loop.close()
        g = gateway(cfg)
        assert request(g.port, "GET", "/anon").status == 200     # in turn: the one-shot target; turn -> b
        r = request(g.port, "GET", "/mine", headers={"X-User": user})  # the pooled one, dropped: retried
        assert r.status == 200 and r.body == b"ok"
        assert OneShotBackend.seen == ["GET", "GET"] and b.requests == []
