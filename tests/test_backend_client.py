"""fastgw.backend_client against a real backend: framing, keep-alive, a stale connection
retried once, deadlines and refused connections."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest

from fastgw.backend_client import BackendClient, BackendError
from tests.helpers import Backend, free_port, recv_head


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_framings_and_keep_alive(backend: Backend) -> None:
    async def go() -> None:
        client = BackendClient()
        a = await client.request(backend.url, "GET", "/one?x=1", [(b"X-Test", b"1")], 5)
        assert a.status == 200 and json.loads(a.body)["headers"]["x-test"] == "1"
        assert a.header(b"content-type") == b"application/json"
        c = await client.request(backend.url, "GET", "/chunked?n=3&size=4", [], 5)
        assert c.body == b"aaaabbbbcccc"
        h = await client.request(backend.url, "HEAD", "/bytes/100", [], 5)
        assert h.status == 200 and h.body == b""
        big = await client.request(backend.url, "GET", "/bytes/200000", [], 5)
        assert big.body == b"x" * 200000
        assert backend.connections == 1                    # one connection for all four
        closed = await client.request(backend.url, "GET", "/close", [], 5)   # answer, then close
        assert closed.status == 200
        after = await client.request(backend.url, "GET", "/two", [], 5)
        assert json.loads(after.body)["path"] == "/two" and backend.connections == 2
    run(go())


def test_a_connection_closed_while_idle_is_retried_once() -> None:
    # A server that answers the first request of each connection with keep-alive and closes
    # it on reading the next one (as a server whose idle timeout just ran out): that
    # request must go out again on a new connection.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    accepted = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            accepted.append(conn)
            recv_head(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            conn.recv(4096)                          # the next request: no answer
            conn.close()

    threading.Thread(target=serve, daemon=True).start()

    async def go() -> None:
        client = BackendClient()
        for _ in range(3):
            a = await client.request(f"http://127.0.0.1:{port}", "GET", "/", [], 5)
            assert a.body == b"ok"
    try:
        run(go())
        assert len(accepted) == 3
    finally:
        srv.close()


def test_errors(backend: Backend) -> None:
    async def go() -> None:
        client = BackendClient()
        with pytest.raises(BackendError, match="cannot connect"):
            await client.request(f"http://127.0.0.1:{free_port()}", "GET", "/", [], 5)
        with pytest.raises(BackendError, match="no answer within 0.2 s"):
            await client.request(backend.url, "GET", "/slow?ms=1000", [], 0.2)
    run(go())
