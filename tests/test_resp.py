"""fastgw.resp, the lean Redis client of rate limits with policy redis: RESP parsing
(hypothesis: any reply, cut anywhere) and the client against a real redis-server
(pipelining, error replies, AUTH/SELECT, unix socket, TLS) and against servers that fail
(refused, silent, closing, talking nonsense)."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.resp import RespClient, RespError, _Incomplete, encode, parse
from tests.helpers import RedisServer, free_port, make_cert

# -- the wire format ----------------------------------------------------------------------

def reply_bytes(value: Any) -> bytes:
    """A RESP2 reply holding ``value`` (int, bytes, None, RespError, list of those)."""
    if isinstance(value, bool) or isinstance(value, int):
        return b":%d\r\n" % value
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, RespError):
        return b"-%s\r\n" % str(value).encode()
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    return b"*%d\r\n" % len(value) + b"".join(reply_bytes(v) for v in value)


replies = st.recursive(
    st.integers(min_value=-2**63, max_value=2**63 - 1) | st.binary(max_size=40) | st.none()
    | st.text(alphabet="abcdefghijklmnop ERR", min_size=1, max_size=20).map(lambda t: RespError(t.strip() or "ERR")),
    lambda inner: st.lists(inner, max_size=5), max_leaves=12)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, RespError) or isinstance(b, RespError):
        return type(a) is type(b) and str(a) == str(b)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@settings(max_examples=300, deadline=None)
@given(st.lists(replies, min_size=1, max_size=4), st.data())
def test_parse_reads_back_any_replies_and_waits_for_a_cut_one(values: list[Any], data: st.DataObject) -> None:
    wire = b"".join(reply_bytes(v) for v in values)
    pos, got = 0, []
    while pos < len(wire):
        value, pos = parse(wire, pos)
        got.append(value)
    assert pos == len(wire) and len(got) == len(values)
    assert all(same(a, b) for a, b in zip(got, values, strict=True))
    # Cut anywhere inside the first reply: the parser says so and consumes nothing.
    first = len(reply_bytes(values[0]))
    cut = data.draw(st.integers(min_value=0, max_value=first - 1))
    with pytest.raises(_Incomplete):
        parse(wire[:cut], 0)


def test_encode_is_a_resp_array_of_bulk_strings() -> None:
    assert encode((b"SET", "k", 12)) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n"


def test_parse_refuses_what_is_not_resp() -> None:
    with pytest.raises(ValueError):
        parse(b"HTTP/1.1 400 Bad Request\r\n", 0)


# -- the client against a real redis-server -------------------------------------------------

def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_commands_of_one_turn_share_a_write_and_replies_keep_their_order(redis: RedisServer) -> None:
    async def scenario() -> None:
        c = RespClient(redis.url, timeout=2.0)
        try:
            assert await c.call("PING") == b"PONG"
            # 500 commands issued in one turn: one write, replies matched in order.
            futs = [c.call("INCRBY", "n", i) for i in range(500)]
            got = await asyncio.gather(*futs)
            assert got == [sum(range(i + 1)) for i in range(500)]
            assert await c.call("GET", "n") == str(sum(range(500))).encode()
            assert await c.call("GET", "absent") is None
            assert await c.call("LRANGE", "absent", 0, -1) == []
        finally:
            await c.aclose()

    run(scenario())


def test_an_error_reply_fails_its_command_only(redis: RedisServer) -> None:
    async def scenario() -> None:
        c = RespClient(redis.url, timeout=2.0)
        try:
            await c.call("SET", "s", "text")
            bad, good = c.call("INCR", "s"), c.call("ECHO", "still here")
            with pytest.raises(RespError, match="not an integer"):
                await bad
            assert await good == b"still here"
        finally:
            await c.aclose()

    run(scenario())


def test_password_and_database_come_from_the_url(tmp_path: Path) -> None:
    server = RedisServer("--requirepass", "s3cret").start()
    try:
        async def scenario() -> None:
            anon = RespClient(server.url, timeout=2.0)
            with pytest.raises(RespError, match="NOAUTH"):      # each command refused
                await anon.call("SET", "k", "0")
            await anon.aclose()
            wrong = RespClient(f"redis://:nope@127.0.0.1:{server.port}/0", timeout=2.0)
            with pytest.raises(ConnectionError, match="handshake refused.*WRONGPASS"):
                await wrong.call("PING")
            await wrong.aclose()
            db3 = RespClient(f"redis://:s3cret@127.0.0.1:{server.port}/3", timeout=2.0)
            db0 = RespClient(f"redis://default:s3cret@127.0.0.1:{server.port}/0", timeout=2.0)
            try:
                await db3.call("SET", "k", "three")
                assert await db0.call("GET", "k") is None
                assert await db3.call("GET", "k") == b"three"
                await db0.call("SELECT", 3)
                assert await db0.call("GET", "k") == b"three"
            finally:
                await db3.aclose()
                await db0.aclose()

        run(scenario())
    finally:
        server.stop()


def test_unix_socket_url(tmp_path: Path) -> None:
    path = tmp_path / "redis.sock"
    server = RedisServer("--unixsocket", str(path), "--unixsocketperm", "700").start()
    try:
        async def scenario() -> None:
            c = RespClient(f"unix://{path}?db=2", timeout=2.0)
            try:
                await c.call("SET", "u", "x")
                assert await c.call("GET", "u") == b"x"
            finally:
                await c.aclose()
            tcp = RespClient(f"redis://127.0.0.1:{server.port}/2", timeout=2.0)
            try:
                assert await tcp.call("GET", "u") == b"x"       # db 2 from ?db=2
            finally:
                await tcp.aclose()

        run(scenario())
    finally:
        server.stop()


def test_tls_url_verifies_the_server(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    tls_port = free_port()
    server = RedisServer("--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no").start()
    try:
        async def scenario() -> None:
            trusted = RespClient(f"rediss://localhost:{tls_port}/0?ssl_ca_certs={cert}", timeout=2.0)
            try:
                assert await trusted.call("PING") == b"PONG"
            finally:
                await trusted.aclose()
            # The certificate is self-signed: without its CA the handshake fails.
            untrusted = RespClient(f"rediss://localhost:{tls_port}/0", timeout=2.0)
            with pytest.raises(ConnectionError, match="cannot connect"):
                await untrusted.call("PING")
            await untrusted.aclose()
            unchecked = RespClient(f"rediss://localhost:{tls_port}/0?ssl_cert_reqs=none", timeout=2.0)
            try:
                assert await unchecked.call("PING") == b"PONG"
            finally:
                await unchecked.aclose()

        run(scenario())
    finally:
        server.stop()


# -- servers that fail ------------------------------------------------------------------------

class FakeServer:
    """A loopback server whose every connection gets ``behave(conn)`` on a thread."""

    def __init__(self, behave: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.behave = behave
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self.behave, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake_server() -> Iterator[Callable[[Any], FakeServer]]:
    """Start a FakeServer (closed after the test)."""
    made: list[FakeServer] = []

    def start(behave: Any) -> FakeServer:
        made.append(FakeServer(behave))
        return made[-1]

    yield start
    for server in made:
        server.close()


def test_a_silent_server_times_out_and_the_next_call_connects_again(fake_server: Any) -> None:
    held: list[socket.socket] = []
    server = fake_server(held.append)          # accepts, reads nothing, answers nothing

    async def scenario() -> None:
        c = RespClient(f"redis://127.0.0.1:{server.port}/0", timeout=0.2)
        t0 = time.monotonic()
        futs = [c.call("PING"), c.call("PING")]
        for f in futs:
            with pytest.raises(TimeoutError, match="no answer"):
                await f
        assert time.monotonic() - t0 < 2.0
        with pytest.raises(TimeoutError):
            await c.call("PING")
        assert server.accepted == 2           # the timed-out connection was dropped
        await c.aclose()

    run(scenario())


def test_a_connection_closed_by_the_server_fails_its_commands(fake_server: Any) -> None:
    def answer_one_then_close(conn: socket.socket) -> None:
        conn.recv(1024)
        conn.sendall(b"+PONG\r\n")
        time.sleep(0.05)
        conn.recv(1024)
        conn.close()

    server = fake_server(answer_one_then_close)

    async def scenario() -> None:
        c = RespClient(f"redis://127.0.0.1:{server.port}/0", timeout=2.0)
        assert await c.call("PING") == b"PONG"
        await asyncio.sleep(0.1)
        with pytest.raises(ConnectionError, match="connection lost"):
            await c.call("PING")
        await c.aclose()

    run(scenario())


def test_nonsense_from_the_server_fails_the_connection(fake_server: Any) -> None:
    def nonsense(conn: socket.socket) -> None:
        conn.recv(1024)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        time.sleep(0.5)
        conn.close()

    server = fake_server(nonsense)

    async def scenario() -> None:
        c = RespClient(f"redis://127.0.0.1:{server.port}/0", timeout=2.0)
        with pytest.raises(ConnectionError, match="not a RESP2 reply"):
            await c.call("PING")
        await c.aclose()

    run(scenario())


def test_a_connect_that_hangs_makes_calls_fail_at_once_until_retry_after() -> None:
    # A listening socket whose accept queue is full: the kernel drops further SYNs, so a
    # connect hangs as one to a host that drops packets does.
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    filler = socket.create_connection(lsock.getsockname(), timeout=1)

    async def scenario() -> None:
        c = RespClient(f"redis://127.0.0.1:{lsock.getsockname()[1]}/0", timeout=0.3, retry_after=0.5)
        t0 = time.monotonic()
        first, second = c.call("PING"), c.call("PING")       # both wait on one connect
        for f in (first, second):
            with pytest.raises(ConnectionError, match="cannot connect"):
                await f
        assert 0.2 < time.monotonic() - t0 < 2.0
        fast = c.call("PING")
        assert fast.done()                    # no connect tried: failed before any await
        with pytest.raises(ConnectionError, match="unavailable"):
            await fast
        await asyncio.sleep(0.55)
        later = c.call("PING")
        assert not later.done()               # tries again
        with pytest.raises(ConnectionError, match="cannot connect"):
            await later
        await c.aclose()

    try:
        run(scenario())
    finally:
        filler.close()
        lsock.close()


def test_a_refused_connect_is_tried_again_by_the_next_call() -> None:
    port = free_port()          # nothing listens

    async def scenario() -> None:
        c = RespClient(f"redis://127.0.0.1:{port}/0", timeout=1.0, retry_after=5.0)
        with pytest.raises(ConnectionError, match="cannot connect.*(refused|Errno 111)"):
            await c.call("PING")
        again = c.call("PING")
        assert not again.done()
        with pytest.raises(ConnectionError, match="cannot connect"):
            await again
        await c.aclose()

    run(scenario())


def test_a_server_back_after_an_outage_is_used_again(redis: RedisServer) -> None:
    async def scenario() -> None:
        c = RespClient(redis.url, timeout=0.5, retry_after=0.2)
        try:
            assert await c.call("PING") == b"PONG"
            redis.stop()
            with pytest.raises(ConnectionError):
                await c.call("PING")
            redis.start()
            await asyncio.sleep(0.25)
            assert await c.call("PING") == b"PONG"
        finally:
            await c.aclose()

    run(scenario())


def test_observe_hears_of_every_command_once(redis: RedisServer) -> None:
    """A reply, an error reply, and no reply (a silent server: the command times out; a
    refused handshake, then a call while the client waits retry_after) each reach
    ``observe`` once, with how long the command waited."""
    from fastgw.resp import ERROR, FAILED, OK

    heard: list[tuple[int, float]] = []

    async def scenario() -> None:
        c = RespClient(redis.url, timeout=0.5)
        c.observe = lambda result, seconds: heard.append((result, seconds))
        try:
            await c.call("SET", "s", "text")
            with pytest.raises(RespError):
                await c.call("INCR", "s")
            assert redis.proc is not None
            redis.proc.send_signal(signal.SIGSTOP)          # silent: the command times out
            try:
                with pytest.raises(TimeoutError):
                    await c.call("PING")
            finally:
                redis.proc.send_signal(signal.SIGCONT)
        finally:
            await c.aclose()
        wrong = RespClient(f"redis://:nope@127.0.0.1:{redis.port}/0", timeout=0.5, retry_after=30.0)
        wrong.observe = c.observe
        try:
            with pytest.raises(ConnectionError, match="handshake refused"):
                await wrong.call("PING")
            with pytest.raises(ConnectionError, match="unavailable"):    # at once, for retry_after
                await wrong.call("PING")
        finally:
            await wrong.aclose()

    run(scenario())
    assert [r for r, _ in heard] == [OK, ERROR, FAILED, FAILED, FAILED]
    assert heard[2][1] >= 0.45 and heard[3][1] < 0.45 and heard[4][1] == 0.0
