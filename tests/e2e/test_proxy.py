"""End-to-end tests of the proxy engine over real sockets: a gateway subprocess and real backends.

Covers RFC 9110/9112 proxy behaviour (hop-by-hop headers, X-Forwarded-*, Via), keep-alive,
pipelining, chunked bodies, HEAD/204/304, HTTP/1.0 clients, 100-continue, interim 1xx answers, request-smuggling
probes, errors (404/405/502/504) and 100 MB bodies streamed each way in bounded memory.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    REPO,
    Backend,
    Gateway,
    RawClient,
    ScriptedBackend,
    free_port,
    gateway_config,
    protocol_server,
    recv_head,
    request,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def gw(backend: Backend, port: int, gateway: Any) -> Gateway:
    resources = {
        "/orders": {
            "GET": {},
            "POST": {},
            "/{id}": {"GET": {"backend_path": "/v2/orders/{id}"}, "DELETE": {}},
        },
        "/slow": {"GET": {"timeouts": {"read": 1}}},
        "/{path*}": {"ANY": {}},
    }
    return gateway(gateway_config(port, backend.url, resources))


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send raw bytes, read until the server closes or goes quiet; return (bytes, closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        closed = False
        sock.settimeout(1.5)
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    closed = True
                    break
                out += chunk
        except TimeoutError:
            pass
        return out, closed


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.") else 0


# ------------------------------------------------------------------------------ forwarding


def test_forwards_with_proxy_headers(gw: Gateway, backend: Backend) -> None:
    r = request(gw.port, "GET", "/orders/42?a=%2F&b=x+y&a=2", headers={
        "X-Forwarded-For": "10.1.1.1",
        "Connection": "keep-alive, X-Secret-Hop",
        "X-Secret-Hop": "1",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "X-Consumer-Name": "mallory",
        "X-Custom": "kept",
    })
    assert r.status == 200
    echo = r.json()
    assert echo["target"] == "/v2/orders/42?a=%2F&b=x+y&a=2"   # query bytes unchanged
    h = echo["headers"]
    assert h["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-host"] == f"127.0.0.1:{gw.port}"
    assert h["via"] == "1.1 fastgw"
    assert h["x-custom"] == "kept"
    assert h["host"] == f"127.0.0.1:{gw.port}"
    for hop in ("x-secret-hop", "keep-alive", "te", "x-consumer-name"):
        assert hop not in h
    assert "connection" not in h or h["connection"].lower() == "keep-alive"


def test_host_header_from_target(backend: Backend, port: int, gateway: Any) -> None:
    cfg = gateway_config(port, backend.url)
    cfg["services"][0]["stages"]["prod"]["backend"]["host_header"] = "target"
    g = gateway(cfg)
    echo = request(g.port, "GET", "/x").json()
    assert echo["headers"]["host"] == f"127.0.0.1:{backend.port}"


def test_404_and_405_are_json(gw: Gateway) -> None:
    r = request(gw.port, "PATCH", "/orders")
    assert r.status == 405
    assert r.headers["allow"] == "GET, HEAD, POST"
    body = r.json()
    assert body["status"] == 405 and body["error"] and body["request_id"]
    assert r.headers["content-type"] == "application/json"


def test_404_json(backend: Backend, port: int, gateway: Any) -> None:
    g = gateway(gateway_config(port, backend.url, {"/only": {"GET": {}}}))
    r = request(g.port, "GET", "/nothing/here")
    assert r.status == 404
    assert r.json()["status"] == 404


def test_path_is_normalized_before_routing_and_forwarding(gw: Gateway) -> None:
    r = request(gw.port, "GET", "/orders/x/../%34%32")
    assert r.status == 200
    assert r.json()["target"] == "/v2/orders/42"
    r = request(gw.port, "GET", "//orders//7")
    assert r.json()["target"] == "/v2/orders/7"
    r = request(gw.port, "GET", "/../etc/passwd")
    assert r.status == 400


# ------------------------------------------------------------------------------ connections


def test_keep_alive_reuses_both_sides(gw: Gateway, backend: Backend) -> None:
    with RawClient(gw.port) as c:
        for i in range(20):
            r = c.request("GET", f"/orders/{i}")
            assert r.status == 200
            assert r.json()["path"] == f"/v2/orders/{i}"
    assert backend.connections == 1     # one upstream keep-alive connection served all 20


def test_pipelining_answers_in_order(gw: Gateway) -> None:
    reqs = b"".join(
        f"GET /orders/{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(10)
    ) + b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" \
      + b"GET /nope-405 HTTP/1.1\r\nHost: x\r\n\r\n" + b"GET /orders/last HTTP/1.1\r\nHost: x\r\n\r\n"
    with RawClient(gw.port) as c:
        c.send(reqs)
        paths = [c.read_response().json()["path"] for _ in range(10)]
        assert paths == [f"/v2/orders/{i}" for i in range(10)]
        post = c.read_response().json()
        assert post["method"] == "POST" and post["body"] == "hello"
        assert c.read_response().status == 200      # /{path*} ANY
        assert c.read_response().json()["path"] == "/v2/orders/last"


def test_http10_client(gw: Gateway) -> None:
    raw, closed = raw_exchange(gw.port, b"GET /orders/1 HTTP/1.0\r\n\r\n")
    assert status_of(raw) == 200 and closed
    assert raw.startswith(b"HTTP/1.1 200")
    raw, closed = raw_exchange(gw.port, b"GET /orders/1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert status_of(raw) == 200 and not closed
    assert b"Connection: keep-alive" in raw


def test_connection_close_is_honoured(gw: Gateway) -> None:
    raw, closed = raw_exchange(gw.port, b"GET /orders/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(raw) == 200 and closed
    assert b"Connection: close" in raw


def test_a_new_connection_sees_nothing_of_a_closed_ones_request(gw: Gateway, backend: Backend) -> None:
    """Closed connections hand their parsed-head object to new ones: nothing may carry over."""
    many = b"".join(b"X-Old-%d: secret-%d\r\n" % (i, i) for i in range(40))
    for _ in range(3):
        raw, closed = raw_exchange(gw.port, b"POST /orders HTTP/1.1\r\nHost: old.example\r\n" + many
                                   + b"Content-Length: 3\r\nConnection: close\r\n\r\nabc")
        assert status_of(raw) == 200 and closed
    raw, closed = raw_exchange(gw.port, b"GET /orders/7 HTTP/1.0\r\n\r\n")
    assert status_of(raw) == 200 and closed
    seen = backend.requests[-1]
    assert seen["method"] == "GET" and seen["target"] == "/v2/orders/7"
    assert not [k for k in seen["headers"] if k.startswith("x-old")]
    assert seen["headers"].get("host") != "old.example" and seen["body"] == ""


# ------------------------------------------------------------------------------ bodies


def test_chunked_request_body(gw: Gateway) -> None:
    raw = (b"POST /orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
    with RawClient(gw.port) as c:
        c.send(raw)
        r = c.read_response()
        assert r.status == 200
        assert r.json()["body"] == "hello world"
        assert r.json()["method"] == "POST"
        # the connection stays usable after a chunked body
        assert c.request("GET", "/orders/9").json()["path"] == "/v2/orders/9"


def test_chunked_response_passes_through(gw: Gateway) -> None:
    with RawClient(gw.port) as c:
        r = c.request("GET", "/chunked?n=4&size=3")
        assert r.status == 200
        assert r.headers.get("transfer-encoding") == "chunked"
        assert r.body == b"aaabbbcccddd"
        assert c.request("GET", "/orders/1").status == 200


def test_chunked_response_to_http10_client_is_dechunked(gw: Gateway) -> None:
    raw, closed = raw_exchange(gw.port, b"GET /chunked?n=3&size=4 HTTP/1.0\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert status_of(raw) == 200 and closed
    assert b"transfer-encoding" not in head.lower()
    assert body == b"aaaabbbbcccc"


class InterimBackend(ScriptedBackend):
    """Answers /hints with a 103 Early Hints before its 200, /continue with an unasked 100."""

    def answer(self, head: bytes) -> bytes:
        interim = (b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n"
                   b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n"
                   if b" /hints " in head else b"HTTP/1.1 100 Continue\r\n\r\n")
        return interim + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"


def test_interim_answers_are_forwarded_to_http11_clients_only(port: int, gateway: Any) -> None:
    """RFC 9110 15.2: a 103 reaches an HTTP/1.1 client (hop-by-hop fields dropped) before
    the final answer, and the connection goes on; an HTTP/1.0 client gets the final answer
    only; a 100 is not forwarded (the gateway answers Expect itself)."""
    with protocol_server(InterimBackend) as bport:
        g = gateway(gateway_config(port, f"http://127.0.0.1:{bport}"))
        with RawClient(g.port) as c:
            c.send(b"GET /hints HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c._read_until(b"\r\n\r\n") == b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload"
            final = c.read_response()
            assert final.status == 200 and final.body == b"final"
            c.send(b"GET /continue HTTP/1.1\r\nHost: x\r\n\r\n")       # the same connection
            assert c._read_until(b"\r\n").startswith(b"HTTP/1.1 200 ")     # no 100 before it
        raw, closed = raw_exchange(g.port, b"GET /hints HTTP/1.0\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and b"103" not in raw and closed


class NoContentBackend(ScriptedBackend):
    """A 204 with a Content-Length (which a 204 must not carry), a 304 with one (allowed)."""

    def answer(self, head: bytes) -> bytes:
        if b" /204 " in head:
            return b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n"
        return b'HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: "v1"\r\n\r\n'


def test_a_204_goes_out_without_content_length_a_304_with_it(port: int, gateway: Any) -> None:
    with protocol_server(NoContentBackend) as bport:
        g = gateway(gateway_config(port, f"http://127.0.0.1:{bport}"))
        with RawClient(g.port) as c:
            r = c.request("GET", "/204")
            assert r.status == 204 and "content-length" not in r.headers and r.headers["x-a"] == "1"
            r = c.request("GET", "/304")
            assert r.status == 304 and r.headers["content-length"] == "1234" and r.body == b""
            assert c.request("GET", "/204").status == 204          # the connection goes on


def test_head_204_304(gw: Gateway) -> None:
    with RawClient(gw.port) as c:
        r = c.request("HEAD", "/bytes/1000")
        assert r.status == 200 and r.headers["content-length"] == "1000" and r.body == b""
        r = c.request("GET", "/status/204")
        assert r.status == 204 and r.body == b""
        r = c.request("GET", "/status/304")
        assert r.status == 304 and r.body == b""
        assert c.request("GET", "/orders/5").json()["path"] == "/v2/orders/5"


def test_expect_100_continue(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        interim = sock.recv(100)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"data")
        resp = b""
        while b"\r\n\r\n" not in resp or not resp.endswith(b"}"):
            resp += sock.recv(65536)
        assert status_of(resp) == 200
        assert b'"body": "data"' in resp
        assert b"expect" not in resp.split(b"\r\n\r\n", 1)[1].lower()   # Expect not forwarded


# ------------------------------------------------------------------------------ smuggling


SMUGGLING = {
    "cl-and-te": b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "differing-cl": b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nhello",
    "cl-list": b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 5\r\n\r\nhello",
    "te-gzip": b"POST /orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    "te-gzip-chunked": b"POST /orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te-twice": b"POST /orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-obfuscated": b"POST /orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "bad-chunk-size": b"POST /orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk-size-overflow": b"POST /orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"10000000000000005\r\nhello\r\n0\r\n\r\n",
    "chunk-missing-crlf": b"POST /orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    "space-before-colon": b"GET /orders HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\n",
    "bare-lf": b"GET /orders HTTP/1.1\nHost: x\n\n",
    "bare-lf-in-header": b"GET /orders HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n",
    "obs-fold": b"GET /orders HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  continued\r\n\r\n",
    "te-in-http10": b"POST /orders HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-hosts": b"GET /orders HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "no-host": b"GET /orders HTTP/1.1\r\n\r\n",
    "nul-in-header": b"GET /orders HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "negative-cl": b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_ambiguous_framing_is_refused(gw: Gateway, backend: Backend, name: str) -> None:
    before = len(backend.requests)
    raw, closed = raw_exchange(gw.port, SMUGGLING[name] + b"GET /orders/smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(raw) == 400, raw[:200]
    assert closed
    assert raw.count(b"HTTP/1.1 ") == 1           # nothing after the refusal was served
    assert b'"status":400' in raw
    assert not any(r["path"].endswith("smuggled") for r in backend.requests[before:])


def test_oversize_head_is_431(gw: Gateway) -> None:
    raw, closed = raw_exchange(gw.port, b"GET /orders HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
    assert status_of(raw) == 431 and closed


@pytest.mark.parametrize("complete", [True, False])
def test_oversize_request_target_is_414(gw: Gateway, complete: bool) -> None:
    line = b"GET /orders?q=" + b"a" * 70000
    raw, closed = raw_exchange(gw.port, line + (b" HTTP/1.1\r\nHost: x\r\n\r\n" if complete else b""))
    assert status_of(raw) == 414 and closed


def test_worker_survives_garbage(gw: Gateway) -> None:
    for junk in (b"\x00\xff\xfe garbage\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n"):
        raw, _ = raw_exchange(gw.port, junk)
        assert 400 <= status_of(raw) < 600
    assert request(gw.port, "GET", "/orders/1").status == 200


# ------------------------------------------------------------------------------ errors


def test_backend_down_is_502(port: int, gateway: Any) -> None:
    dead = free_port()
    g = gateway(gateway_config(port, f"http://127.0.0.1:{dead}"))
    r = request(g.port, "GET", "/x")
    assert r.status == 502
    body = r.json()
    assert body["status"] == 502 and body["request_id"] and "upstream" in body["error"]


def test_backend_too_slow_is_504(gw: Gateway) -> None:
    t0 = time.monotonic()
    r = request(gw.port, "GET", "/slow?ms=5000")
    elapsed = time.monotonic() - t0
    assert r.status == 504
    assert r.json()["status"] == 504
    assert elapsed < 4.0
    assert request(gw.port, "GET", "/slow?ms=10").status == 200   # fast enough is fine


def test_backend_closing_keepalive_connection_is_retried(gw: Gateway, backend: Backend) -> None:
    # /close makes the backend close its side after answering; the next request must not fail.
    with RawClient(gw.port) as c:
        for _ in range(5):
            assert c.request("GET", "/close").status == 200
            assert c.request("GET", "/orders/1").status == 200


# ------------------------------------------------------------------------------ big bodies


@pytest.fixture
def stream_backend() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.stream_backend", str(port)], cwd=REPO,
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        yield port
    finally:
        proc.kill()
        proc.wait()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, rss_kb(self.pid))
            time.sleep(0.02)


BIG = 100 * 1024 * 1024
RSS_GROWTH_LIMIT_KB = 40 * 1024


def test_100mb_upload_streams_in_bounded_memory(stream_backend: int, port: int, gateway: Any) -> None:
    g = gateway(gateway_config(port, f"http://127.0.0.1:{stream_backend}"))
    assert request(g.port, "GET", "/source/10").status == 200   # warm up
    pid = next(iter(g.worker_pids().values()))
    base = rss_kb(pid)
    sampler = RssSampler(pid)
    sampler.start()
    piece = os.urandom(1 << 20)
    sha = hashlib.sha256()
    with RawClient(g.port, timeout=60) as c:
        # The backend stalls reading for 1 s: the gateway must push back, not buffer 100 MB.
        c.send(f"POST /sink?stall_ms=1000 HTTP/1.1\r\nHost: x\r\nContent-Length: {BIG}\r\n\r\n".encode())
        for _ in range(BIG // len(piece)):
            c.send(piece)
            sha.update(piece)
        r = c.read_response()
    sampler.stop = True
    sampler.join()
    assert r.status == 200
    assert r.json() == {"received": BIG, "sha256": sha.hexdigest()}
    assert sampler.peak - base < RSS_GROWTH_LIMIT_KB, (base, sampler.peak)


def test_100mb_download_streams_in_bounded_memory(stream_backend: int, port: int, gateway: Any) -> None:
    g = gateway(gateway_config(port, f"http://127.0.0.1:{stream_backend}"))
    assert request(g.port, "GET", "/source/10").status == 200
    pid = next(iter(g.worker_pids().values()))
    base = rss_kb(pid)
    sampler = RssSampler(pid)
    sampler.start()
    with socket.create_connection(("127.0.0.1", g.port), timeout=60) as sock:
        sock.sendall(f"GET /source/{BIG} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(1.0)       # a slow reader at first: the gateway must stop reading the backend
        head, rest = recv_head(sock)
        got = len(rest)
        while got < BIG:
            chunk = sock.recv(1 << 20)
            assert chunk
            got += len(chunk)
    sampler.stop = True
    sampler.join()
    assert got == BIG
    assert b"Content-Length: %d" % BIG in head
    assert sampler.peak - base < RSS_GROWTH_LIMIT_KB, (base, sampler.peak)


def test_chunked_upload_of_many_pieces(stream_backend: int, backend: Backend, port: int, gateway: Any) -> None:
    g = gateway(gateway_config(port, backend.url))
    pieces = [os.urandom(1000).hex().encode() for _ in range(50)]
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    with RawClient(g.port) as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(body), 777):       # arbitrary split points across chunk framing
            c.send(body[i:i + 777])
        r = c.read_response()
    assert r.status == 200
    assert r.json()["body"] == b"".join(pieces).decode()


def test_many_concurrent_clients(gw: Gateway) -> None:
    errors: list[str] = []

    def run(n: int) -> None:
        try:
            with RawClient(gw.port) as c:
                for i in range(30):
                    r = c.request("GET", f"/orders/{n}-{i}")
                    if r.status != 200 or r.json()["path"] != f"/v2/orders/{n}-{i}":
                        errors.append(f"{n}-{i}: {r.status}")
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    wait_until(lambda: True)


def test_head_split_across_packets(gw: Gateway) -> None:
    # Heads arrive in pieces in real life (slow links, big headers): byte by byte here.
    head = b"GET /orders/77 HTTP/1.1\r\nHost: x\r\nX-Long: " + b"v" * 3000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, 60):
            sock.sendall(head[i:i + 1])
            time.sleep(0.001)
        sock.sendall(head[60:2000])
        time.sleep(0.05)
        sock.sendall(head[2000:])
        data = b""
        while b"}" not in data:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    assert b"/v2/orders/77" in data
    assert request(gw.port, "GET", "/orders/1").status == 200     # the worker is still serving
