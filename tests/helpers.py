"""Shared test helpers: free ports, a real backend, a gateway subprocess, a raw HTTP client.

Everything here uses real sockets and real processes, on loopback only.

- :func:`free_port` — a TCP port that is free on 127.0.0.1 right now.
- :class:`Backend` — a small asyncio HTTP/1.1 server (keep-alive) in a thread of the test
  process. Routes:

  ================  ==========================================================
  ``/slow?ms=N``    answers after N ms (echo body, see below)
  ``/status/N``     answers status N (JSON body, none for 204/304)
  ``/bytes/N``      N bytes (``x`` repeated), Content-Length, written in pieces
  ``/chunked?n=K&size=S``  K chunks of S bytes, ``Transfer-Encoding: chunked`` (``&trailer=1``: ended
                           with an ``X-Checksum`` trailer field; ``&json=1``: the JSON object
                           ``{"data": <K*S x's>}`` sent in K chunks)
  ``/close``        answers, then closes the connection (``Connection: close``)
  ``/respond``      ``?status=N&h=Name: value&ms=N``: echo with that status and those
                    header lines (each ``h``), after N ms
  anything else     echo: ``{"method", "path", "query", "headers", "raw_headers",
                    "body", "backend"}`` as JSON (headers: lower-cased name -> value)
  ================  ==========================================================

  Every request is appended to ``backend.requests`` (a :class:`Echo` dict).
- :class:`Gateway` — ``python -m fastgw run`` on a config dict written to a temp file,
  with stderr captured to a file; :meth:`Gateway.start` returns once the supervisor
  logged ``serving:`` (all workers ready). ``reload(config)``, ``stop()``,
  ``worker_pids()``, ``wait_log(text)``.
- :func:`request` (one request on a new connection) and :class:`RawClient` (a keep-alive
  connection; ``send(bytes)`` for hand-made requests, ``read_response()``) — both return
  a :class:`Response` with ``status``, ``headers`` (lower-case name -> value),
  ``raw_headers``, ``body`` and ``json()``.
- :func:`gateway_config` — a minimal valid config dict: one service, one stage in front
  of a backend, ``ANY /{path*}`` forwarded as is, plus any routes you add.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port that nothing listens on at 127.0.0.1 (bound once and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``predicate()`` until it returns something truthy; return it, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# ============================================================================ HTTP client


@dataclass
class Response:
    """A parsed HTTP/1.1 response."""

    status: int
    reason: str
    raw_headers: list[tuple[str, str]]
    body: bytes
    chunked: bool = False

    @property
    def headers(self) -> dict[str, str]:
        """Lower-cased header name -> value (the last one wins)."""
        return {name.lower(): value for name, value in self.raw_headers}

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """One client connection to ``host:port``, kept alive across requests.

    >>> with RawClient(port) as c:
    ...     r1 = c.request("GET", "/a")
    ...     c.send(b"GET /b HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"); r2 = c.read_response()
    """

    def __init__(self, port: int, host: str = LOOPBACK, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.skipped_interim = 0
        self.host = host
        self.port = port

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
        body: bytes = b"",
        host: str | None = None,
    ) -> Response:
        """Send one request (Content-Length framing when there is a body) and read the answer."""
        if host is None:
            # An IPv6 literal goes in brackets (RFC 3986 3.2.2); the gateway refuses it bare.
            host = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        self.send(build_request(method, path, headers, body, host))
        return self.read_response(head_only=method.upper() == "HEAD")

    # ---------------------------------------------------------------- reading

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def _read_until(self, marker: bytes) -> bytes:
        while True:
            idx = self.buf.find(marker)
            if idx >= 0:
                out, self.buf = self.buf[:idx], self.buf[idx + len(marker):]
                return out
            if not self._fill():
                raise ConnectionError(f"connection closed while waiting for {marker!r}")

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError(f"connection closed with {n - len(self.buf)} body bytes missing")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_interim(self) -> bytes:
        """The next response head, raw, without its blank line (read_response skips
        interim 1xx answers, counting them in ``skipped_interim``)."""
        return self._read_until(b"\r\n\r\n")

    def read_response(self, head_only: bool = False) -> Response:
        """Read one response (skipping 1xx); Content-Length, chunked or close-delimited body."""
        while True:
            head = self._read_until(b"\r\n\r\n").decode("latin-1")
            status_line, *lines = head.split("\r\n")
            parts = status_line.split(" ", 2)
            status = int(parts[1])
            reason = parts[2] if len(parts) > 2 else ""
            raw_headers = []
            for line in lines:
                name, _, value = line.partition(":")
                raw_headers.append((name.strip(), value.strip()))
            if not 100 <= status < 200:
                break
            self.skipped_interim += 1
        headers = {name.lower(): value for name, value in raw_headers}
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if head_only or status in (204, 304):
            body = b""
        elif chunked:
            body = self._read_chunked()
        elif "content-length" in headers:
            body = self._read_exact(int(headers["content-length"]))
        else:
            while self._fill():
                pass
            body, self.buf = self.buf, b""
        return Response(status, reason, raw_headers, body, chunked)

    def _read_chunked(self) -> bytes:
        body = b""
        while True:
            size = int(self._read_until(b"\r\n").split(b";")[0], 16)
            if size == 0:
                while self._read_until(b"\r\n"):  # trailers, then the empty line
                    pass
                return body
            body += self._read_exact(size)
            self._read_until(b"\r\n")


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives until the peer's FIN (a reset raises)."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def recv_head(sock: Any) -> tuple[bytes, bytes]:
    """Read from ``sock`` (a socket or a TLS socket) until a blank line ends a message head:
    (the head without it, the bytes after it). ConnectionError when the peer closes first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a whole head: {data[:200]!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def recv_sized(sock: Any) -> tuple[bytes, bytes]:
    """One message framed by Content-Length: (head, body)."""
    head, body = recv_head(sock)
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed with {length - len(body)} body bytes missing")
        body += chunk
    return head, body


def build_request(
    method: str,
    path: str,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body: bytes = b"",
    host: str = "localhost",
) -> bytes:
    """The bytes of one HTTP/1.1 request; adds Host and (for a body) Content-Length."""
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {name.lower() for name, _ in pairs}
    if "host" not in names:
        pairs.insert(0, ("Host", host))
    if body and "content-length" not in names and "transfer-encoding" not in names:
        pairs.append(("Content-Length", str(len(body))))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in pairs) + "\r\n"
    return head.encode("latin-1") + body


def request(
    port: int,
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body: bytes = b"",
    host: str | None = None,
    timeout: float = 10.0,
) -> Response:
    """One request on a new connection to 127.0.0.1:``port``, then close."""
    with RawClient(port, timeout=timeout) as client:
        return client.request(method, path, headers, body, host)


# ============================================================================ backend


@contextlib.contextmanager
def protocol_server(factory: Any) -> Iterator[int]:
    """A raw asyncio server (``factory`` makes its protocols) on a free loopback port, run
    by its own loop in a daemon thread; yields the port, stops the loop on exit."""
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(loop.create_server(factory, LOOPBACK, port))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(5)
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


class ScriptedBackend(asyncio.Protocol):
    """A backend for ``protocol_server`` that writes ``answer(head)`` for each request head
    it gets (raw bytes, so any answer an HTTP backend could give, right or wrong); what
    follows a head without another blank line (a body) is never answered."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            self.transport.write(self.answer(head))

    def answer(self, head: bytes) -> bytes:
        raise NotImplementedError



Echo = dict[str, Any]


class _BackendProtocol(asyncio.Protocol):
    """HTTP/1.1 server side of one connection (pipelining handled in order)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.queue: asyncio.Queue[Echo | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.backend.connections += 1
        self.backend._live.add(self)
        self.task = asyncio.ensure_future(self._answer_loop())
        # Tracked until done, not until the connection goes: a handler may still be
        # sleeping (/slow) after its client hung up, and stop() cancels it too.
        self.backend._tasks.add(self.task)
        self.task.add_done_callback(self.backend._tasks.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        self.backend._live.discard(self)
        self.queue.put_nowait(None)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            parsed = self._parse_one()
            if parsed is None:
                return
            self.queue.put_nowait(parsed)

    def _parse_one(self) -> Echo | None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self.buf[:end].decode("latin-1")
        request_line, *lines = head.split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        raw_headers = []
        for line in lines:
            name, _, value = line.partition(":")
            raw_headers.append([name.strip(), value.strip()])
        headers = {name.lower(): value for name, value in raw_headers}
        rest = self.buf[end + 4:]
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = b""
            pos = 0
            while True:
                nl = rest.find(b"\r\n", pos)
                if nl < 0:
                    return None
                size = int(rest[pos:nl].split(b";")[0], 16)
                if size == 0:
                    trailer_end = rest.find(b"\r\n\r\n", nl)
                    if rest[nl + 2:nl + 4] == b"\r\n":
                        pos = nl + 4
                    elif trailer_end >= 0:
                        pos = trailer_end + 4
                    else:
                        return None
                    break
                if len(rest) < nl + 2 + size + 2:
                    return None
                body += rest[nl + 2:nl + 2 + size]
                pos = nl + 2 + size + 2
            self.buf = rest[pos:]
        else:
            length = int(headers.get("content-length", "0"))
            if len(rest) < length:
                return None
            body, self.buf = rest[:length], rest[length:]
        url = urlsplit(target)
        return {
            "method": method,
            "path": url.path,
            "target": target,
            "query": {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()},
            "headers": headers,
            "raw_headers": raw_headers,
            "body": body.decode("latin-1"),
            "backend": self.backend.name,
        }

    async def _answer_loop(self) -> None:
        while True:
            req = await self.queue.get()
            if req is None or self.transport is None or self.transport.is_closing():
                return
            self.backend.requests.append(req)
            try:
                keep = await self._answer(req)
            except Exception as exc:  # a test backend must never hang a test
                self._write_json(500, {"error": repr(exc)}, close=True)
                keep = False
            if not keep:
                self.transport.close()
                return

    def _write_json(self, status: int, payload: Any, close: bool = False, extra: str = "") -> None:
        body = json.dumps(payload).encode()
        no_body = status in (204, 304)
        head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}"
        if not no_body:
            head += f"Content-Length: {len(body)}\r\n"
        if close:
            head += "Connection: close\r\n"
        assert self.transport is not None
        self.transport.write(head.encode() + b"\r\n" + (b"" if no_body else body))

    async def _answer(self, req: Echo) -> bool:
        """Write the answer to ``req``; return whether the connection stays open."""
        assert self.transport is not None
        path = req["path"]
        close = req["headers"].get("connection", "").lower() == "close"
        if path == "/slow":
            await asyncio.sleep(int(req["query"].get("ms", "100")) / 1000)
            self._write_json(200, req, close)
        elif m := re.fullmatch(r"/status/(\d{3})", path):
            self._write_json(int(m.group(1)), {"status": int(m.group(1))}, close)
        elif m := re.fullmatch(r"/bytes/(\d+)", path):
            n = int(m.group(1))
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n"
            self.transport.write(head.encode() + (b"Connection: close\r\n" if close else b"") + b"\r\n")
            if req["method"] != "HEAD":
                sent = 0
                while sent < n:
                    piece = min(65536, n - sent)
                    self.transport.write(b"x" * piece)
                    sent += piece
                    await asyncio.sleep(0)
        elif path == "/chunked":
            count = int(req["query"].get("n", "3"))
            size = int(req["query"].get("size", "5"))
            as_json = bool(req["query"].get("json"))
            ctype = "application/json" if as_json else "text/plain"
            head = f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n"
            self.transport.write(head.encode() + (b"Connection: close\r\n" if close else b"") + b"\r\n")
            doc = json.dumps({"data": "x" * (count * size)}).encode()
            step = -(-len(doc) // count)
            for i in range(count):
                chunk = doc[i * step:(i + 1) * step] if as_json else bytes([97 + i % 26]) * size
                self.transport.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                await asyncio.sleep(0)
            trailer = b"X-Checksum: 1234\r\n" if req["query"].get("trailer") else b""
            self.transport.write(b"0\r\n" + trailer + b"\r\n")
        elif path == "/respond":
            # Answer headers chosen by the test: each ``h=Name: value`` query argument is one.
            extra = "".join(f"{h}\r\n" for h in parse_qs(urlsplit(req["target"]).query).get("h", []))
            if "ms" in req["query"]:                       # and after this many ms
                await asyncio.sleep(int(req["query"]["ms"]) / 1000)
            self._write_json(int(req["query"].get("status", "200")), req, close, extra)
        elif path == "/close":
            self._write_json(200, req, close=True)
            return False
        else:
            self._write_json(200, req, close)
        return not close


class Backend:
    """A real HTTP/1.1 backend on 127.0.0.1 served by an asyncio loop in a daemon thread.

    >>> with Backend() as backend:
    ...     request(backend.port, "GET", "/hello").json()["path"]
    '/hello'
    """

    def __init__(self, name: str = "backend", port: int = 0) -> None:
        self.name = name
        self.requests: list[Echo] = []
        self.connections = 0
        self._want_port = port
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._live: set[_BackendProtocol] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> Backend:
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                loop.create_server(lambda: _BackendProtocol(self), LOOPBACK, self._want_port, backlog=1024)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            started.set()
            loop.run_forever()
            self._server.close()
            tasks = list(self._tasks)
            for proto in list(self._live):
                if proto.transport is not None:
                    proto.transport.abort()
            for task in tasks:
                task.cancel()


            async def finish() -> None:
                await asyncio.gather(*tasks, return_exceptions=True)

            loop.run_until_complete(finish())
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"backend-{self.name}", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("backend did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> Backend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ============================================================================ gateway


def clear_of_window_edge(period: int = 60, margin: float = 3.0) -> None:
    """Wait, if need be, until the current clock-aligned ``period`` window has at least
    ``margin`` seconds left, so a test that counts within one window can't straddle two."""
    left = period - time.time() % period
    if left < margin:
        time.sleep(left + 0.05)


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for ``localhost`` and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path



class RedisServer:
    """A private ``redis-server`` on a free loopback port, no persistence (real Redis for
    the tests that need state shared by many gateway nodes). ``stop()`` takes it away
    mid-test; ``url`` is what a config's ``redis.url`` takes."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.extra = extra          # more redis-server options (--requirepass, --unixsocket, --tls-port ...)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             *self.extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def answers() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
            return False

        wait_until(answers, timeout=10, what=f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def redis_cli(port: int, *args: str) -> bytes:
    """One command to a local redis-server or sentinel with redis-cli (its raw reply text)."""
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, timeout=5, check=True).stdout


class SentinelSetup:
    """A master, a replica of it and one sentinel watching them as ``mymaster`` (real
    processes: Redis Sentinel high availability for ``redis+sentinel://`` URLs)."""

    def __init__(self, directory: Path) -> None:
        # (shutdown-on-sigterm now: a master does not wait for its replica when stopped)
        # (a replica writes the master's snapshot to its --dir)
        common = ("--shutdown-on-sigterm", "now", "--dir", str(directory))
        self.master = RedisServer(*common).start()
        self.replica = RedisServer(*common, "--replicaof", "127.0.0.1", str(self.master.port)).start()
        self.sentinel_port = free_port()
        conf = directory / "sentinel.conf"
        conf.write_text(f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {directory}\n"
                        f"sentinel monitor mymaster 127.0.0.1 {self.master.port} 1\n"
                        "sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 3000\n")
        self.sentinel = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        # Ready when the sentinel has the replica's INFO, linked to the master (a failover
        # needs such a replica to promote).
        wait_until(lambda: b"master-link-status\nok" in self._ask_sentinel("sentinel", "replicas", "mymaster"),
                   timeout=20, interval=0.2, what="the sentinel to know the replica")

    def _ask_sentinel(self, *args: str) -> bytes:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            return redis_cli(self.sentinel_port, *args)
        return b""

    def master_port(self) -> int:
        return int(self._ask_sentinel("sentinel", "get-master-addr-by-name", "mymaster").split()[1])

    def stop(self) -> None:
        self.sentinel.terminate()
        self.sentinel.wait(5)
        self.replica.stop()
        self.master.stop()


def gateway_config(
    port: int,
    backend_url: str,
    resources: dict[str, Any] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """A minimal config: listen on 127.0.0.1:``port``, one service ``test``, stage ``prod``
    (any host) in front of ``backend_url``, admin on a free loopback port, drain timeout
    5 s. ``resources`` defaults to ``ANY /{path*}`` forwarded unchanged; extra top-level
    keys (``limits``, ``admin``, ``consumers`` …) replace the defaults."""
    if resources is None:
        resources = {"/{path*}": {"ANY": {}}}
    config: dict[str, Any] = {
        "listen": [{"host": LOOPBACK, "port": port}],
        "workers": 1,
        # Never the default 9901: tests run beside each other and beside `fastgw demo`.
        "admin": {"host": LOOPBACK, "port": free_port(), "token": "test-token"},
        "limits": {"drain_timeout": 5},
        "services": [
            {
                "name": "test",
                "stages": {"prod": {"backend": {"targets": [backend_url]}}},
                "resources": resources,
            }
        ],
    }
    config.update(top)
    return config


_READY = re.compile(r"worker (\d+) pid (\d+) gen (\d+) ready")


class Gateway:
    """``python -m fastgw run`` as a subprocess on a config dict.

    >>> gw = Gateway(gateway_config(free_port(), backend.url), workers=2).start()
    >>> request(gw.port, "GET", "/x").status
    200
    >>> gw.stop()   # SIGTERM, returns the exit code
    0

    Teardown should call ``close()`` (SIGTERM, then SIGKILL after 10 s): a SIGKILLed
    supervisor cannot remove its stats region from /dev/shm.

    The supervisor's stderr (and the workers') goes to ``gw.log_path``; ``gw.log()``
    reads it. A failed start raises with the log in the message. ``command`` replaces
    the command line (``{config}`` and ``{workers}`` are filled in).
    """

    def __init__(
        self,
        config: dict[str, Any],
        workers: int = 1,
        directory: str | Path | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.config = config
        self.initial_config = config
        self.command = command or [sys.executable, "-m", "fastgw", "run", "-c", "{config}", "--workers", "{workers}"]
        self.workers = workers
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="fastgw-test-")
        self.dir = Path(directory or self._tmp.name)  # type: ignore[union-attr]
        self.config_path = self.dir / "gateway.json"
        self.log_path = self.dir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def port(self) -> int:
        """The port of the first listen address of the config the gateway started with."""
        return int(self.initial_config["listen"][0]["port"])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def write_config(self, config: dict[str, Any]) -> None:
        """Replace the config file atomically (a reload never sees half a file)."""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2))
        os.replace(tmp, self.config_path)
        self.config = config

    def start(self, timeout: float = 20.0) -> Gateway:
        """Start and wait for "serving:". The admin port is picked free (``free_port``) and
        bound later, by the supervisor: in between, any outgoing connection on the machine
        may take it as its local port. A start that failed on just that is tried again with
        another admin port, written into the same config dict (tests read it from there)."""
        for attempt in range(3):
            self.write_config(self.config)
            env = dict(os.environ)
            env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
            env["PYTHONUNBUFFERED"] = "1"
            self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
            cmd = [arg.format(config=self.config_path, workers=self.workers) for arg in self.command]
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, cwd=REPO
            )
            try:
                self.wait_log("serving:", timeout=timeout)
                return self
            except AssertionError:
                self.kill()
                log = self.log()
                admin = self.config.get("admin")
                if attempt < 2 and isinstance(admin, dict) and "cannot start stats/admin" in log \
                        and "address already in use" in log:
                    admin["port"] = free_port()
                    continue
                raise
            except BaseException:
                self.kill()
                raise
        raise AssertionError("unreachable")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str | re.Pattern[str], timeout: float = 10.0, count: int = 1) -> str:
        """Wait until the log holds ``text`` (a substring or regex) ``count`` times; return the log."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            found = len(text.findall(log)) if isinstance(text, re.Pattern) else log.count(text)
            if found >= count:
                return log
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"gateway exited ({self.proc.returncode}) before {text!r}:\n{log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {text!r} in gateway log:\n{log}")
            time.sleep(0.02)

    def worker_pids(self) -> dict[int, int]:
        """Slot -> pid of the worker that most recently became ready in that slot (from the log)."""
        pids: dict[int, int] = {}
        serving = re.search(r"serving: \d+ workers .*\(pids ([\d ]+);", self.log())
        if serving:
            pids.update(enumerate(int(p) for p in serving.group(1).split()))
        for match in _READY.finditer(self.log()):
            pids[int(match.group(1))] = int(match.group(2))
        return pids

    def reload(self, config: dict[str, Any] | None = None) -> None:
        """Write ``config`` (if given) and send SIGHUP; does not wait (see :meth:`wait_log`)."""
        if config is not None:
            self.write_config(config)
        self.signal(signal.SIGHUP)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code (kills after ``timeout``)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._close()
        return code

    def close(self, timeout: float = 10.0) -> None:
        """Stop gracefully if still running (so the supervisor cleans up), else kill."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close()

    def _close(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
        if self._tmp is not None:
            self._tmp.cleanup()


@dataclass
class LoadResult:
    """Outcome of :class:`LoadLoop`: counts and the first failures (for the assertion message)."""

    ok: int = 0
    failed: int = 0
    retried: int = 0
    errors: list[str] = field(default_factory=list)


class LoadLoop:
    """Threads that issue requests until stopped: half keep-alive, half new connections.

    A request fails if it raises or its status is not ``expect``. As HTTP clients do
    (RFC 9112 section 9.3.1), a GET sent on a *reused* keep-alive connection that the server
    closed before sending a single byte back (the idle-close race) is retried once on a
    new connection and counted in ``retried``; any other error counts as failed.
    """

    def __init__(self, port: int, path: str = "/", threads: int = 4, expect: int = 200) -> None:
        self.port, self.path, self.expect = port, path, expect
        self.result = LoadResult()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(i % 2 == 0,), daemon=True) for i in range(threads)
        ]

    def _record(self, ok: bool, error: str = "") -> None:
        with self._lock:
            if ok:
                self.result.ok += 1
            else:
                self.result.failed += 1
                if len(self.result.errors) < 10:
                    self.result.errors.append(error)

    def _keep_alive_request(self, client: RawClient | None) -> tuple[Response, RawClient | None]:
        if client is not None:  # reused connection: the idle-close race is retryable
            try:
                resp = client.request("GET", self.path)
            except (ConnectionError, TimeoutError) as exc:
                if client.buf:
                    raise
                client.close()
                with self._lock:
                    self.result.retried += 1
                    if len(self.result.errors) < 10:
                        self.result.errors.append(f"retried: {type(exc).__name__}: {exc}")
                client = None
            else:
                return resp, client
        client = RawClient(self.port)
        return client.request("GET", self.path), client

    def _run(self, keep_alive: bool) -> None:
        client: RawClient | None = None
        while not self._stop.is_set():
            try:
                if keep_alive:
                    resp, client = self._keep_alive_request(client)
                    if client is not None and resp.headers.get("connection", "").lower() == "close":
                        client.close()
                        client = None
                else:
                    resp = request(self.port, "GET", self.path, headers={"Connection": "close"})
                self._record(resp.status == self.expect, f"status {resp.status}: {resp.body[:200]!r}")
            except (OSError, ValueError) as exc:
                if client is not None:
                    client.close()
                    client = None
                self._record(False, f"{type(exc).__name__}: {exc}")
        if client is not None:
            client.close()

    def __enter__(self) -> LoadLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
