"""A small HTTP/1.1 client for plugins that call backends themselves (``aggregate``).

Not on the proxy's path (that is the C engine's UpstreamPool): this serves requests a
plugin makes on its own, on asyncio streams. Connections to each target are kept alive
and reused (up to ``max_idle`` idle ones per target); answers are framed by
Content-Length, chunked encoding or the connection's close, and their heads are checked
by the same scanner as the proxy's (``fastgw._core.parse_response_head``). A request on
a reused connection that fails before any answer byte is sent once more on a new one
(the server may have closed it while idle). Each request has one deadline for all of it.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastgw._core import ChunkedScanner, HttpError, parse_response_head

MAX_HEAD = 65536
READ_SIZE = 65536


class BackendError(Exception):
    """The backend could not be reached or gave no valid answer (message says which)."""


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        lname = name.lower()
        return next((v for n, v in self.headers if n.lower() == lname), None)


class _Conn:
    __slots__ = ("reader", "writer", "reused")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reused = False

    def close(self) -> None:
        self.writer.close()


class BackendClient:
    """Keep-alive connections per target URL (``http://host:port`` or ``https://…``)."""

    def __init__(self, max_idle: int = 8) -> None:
        self.max_idle = max_idle
        self._idle: dict[str, list[_Conn]] = {}
        self._tls: ssl.SSLContext | None = None

    async def request(self, target: str, method: str, path: str, headers: list[tuple[bytes, bytes]],
                      timeout: float, body: bytes = b"") -> Answer:
        """Send one request to ``target`` (a base URL) and read its whole answer."""
        try:
            return await asyncio.wait_for(self._request(target, method, path, headers, body), timeout)
        except asyncio.TimeoutError:
            raise BackendError(f"no answer within {timeout:g} s") from None

    async def _request(self, target: str, method: str, path: str, headers: list[tuple[bytes, bytes]],
                       body: bytes) -> Answer:
        url = urlsplit(target)
        host = url.hostname or "127.0.0.1"
        tls = url.scheme == "https"
        port = url.port or (443 if tls else 80)
        authority = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        head = [f"{method} {path} HTTP/1.1\r\nHost: {authority}\r\n".encode("latin-1")]
        for name, value in headers:
            head.append(name + b": " + value + b"\r\n")
        if body or method not in ("GET", "HEAD"):
            head.append(b"Content-Length: %d\r\n" % len(body))
        head.append(b"\r\n")
        data = b"".join(head) + body
        conn = self._take(target)
        if conn is not None:
            try:
                return await self._exchange(target, conn, data, method == "HEAD")
            except _Stale:
                pass                     # closed while idle: once more on a new connection
        try:
            reader, writer = await asyncio.open_connection(host, port, ssl=self._tls_context() if tls else None)
        except OSError as exc:
            raise BackendError(f"cannot connect to {authority}: {exc.strerror or exc}") from None
        try:
            return await self._exchange(target, _Conn(reader, writer), data, method == "HEAD")
        except _Stale as exc:
            raise BackendError(str(exc)) from None

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def _take(self, target: str) -> _Conn | None:
        idle = self._idle.get(target)
        while idle:
            conn = idle.pop()
            if not conn.writer.is_closing() and not conn.reader.at_eof():
                conn.reused = True
                return conn
            conn.close()
        return None

    def _give(self, target: str, conn: _Conn) -> None:
        idle = self._idle.setdefault(target, [])
        if len(idle) < self.max_idle:
            idle.append(conn)
        else:
            conn.close()

    async def _exchange(self, target: str, conn: _Conn, data: bytes, head_request: bool) -> Answer:
        done = False
        try:
            answer, reusable = await self._send_and_read(conn, data, head_request)
            done = True
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            if conn.reused and not getattr(exc, "partial", b""):
                raise _Stale("connection closed before an answer") from None
            raise BackendError(f"connection lost: {exc}") from None
        finally:
            if not done:
                conn.close()
        if reusable:
            self._give(target, conn)
        else:
            conn.close()
        return answer

    async def _send_and_read(self, conn: _Conn, data: bytes, head_request: bool) -> tuple[Answer, bool]:
        conn.writer.write(data)
        await conn.writer.drain()
        reader = conn.reader
        while True:
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                raise BackendError("answer head too large") from None
            if len(raw) > MAX_HEAD:
                raise BackendError("answer head too large")
            try:
                resp = parse_response_head(raw, head_request)
            except HttpError as exc:
                raise BackendError(f"bad answer: {exc.message}") from None
            if resp.status >= 200:
                break                    # a 1xx is followed by the real answer
        if resp.chunked:
            body, clean = await _read_chunked(reader)
        elif resp.content_length >= 0:
            body = await reader.readexactly(resp.content_length) if resp.content_length else b""
            clean = True
        else:
            body = await reader.read(-1)
            clean = False
        return Answer(resp.status, resp.forward_headers(), body), clean and resp.keep_alive


class _Stale(Exception):
    """A reused connection failed before any answer byte."""


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """The decoded body, and whether the connection stays usable (nothing read beyond it)."""
    scanner = ChunkedScanner()
    out: list[bytes] = []
    while not scanner.done:
        data = await reader.read(READ_SIZE)
        if not data:
            raise BackendError("connection closed in the middle of the body")
        used = scanner.feed(data, out)
        if used < 0:
            raise BackendError("bad chunked body")
        if used < len(data):
            return b"".join(out), False
    return b"".join(out), True
