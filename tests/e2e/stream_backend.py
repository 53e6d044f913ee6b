"""A streaming backend for the large-body tests, run as its own process.

``python -m tests.e2e.stream_backend PORT``. Routes: ``POST /sink`` reads the body
(Content-Length or chunked is not needed: Content-Length only) without keeping it, after a
``?stall_ms=`` pause in reading, and answers ``{"received": N, "sha256": ...}``;
``GET /source/N`` sends N bytes (``Content-Length``) honouring flow control.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys


class StreamProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.left = -1
        self.sha = hashlib.sha256()
        self.received = 0
        self.can_write: asyncio.Event = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        if self.left < 0:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
            self.buf = b""
            line, *lines = head.split("\r\n")
            method, target, _ = line.split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
            if method == "GET" and target.startswith("/source/"):
                asyncio.ensure_future(self._source(int(target.rsplit("/", 1)[1])))
                self.left = 0
                return
            self.left = int(headers.get("content-length", "0"))
            if "stall_ms=" in target:
                self.transport.pause_reading()
                ms = int(target.split("stall_ms=")[1])
                asyncio.get_running_loop().call_later(ms / 1000, self.transport.resume_reading)
        take = data[: self.left]
        self.sha.update(take)
        self.received += len(take)
        self.left -= len(take)
        if self.left == 0:
            body = json.dumps({"received": self.received, "sha256": self.sha.hexdigest()}).encode()
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                                 % len(body) + body)
            self.left = -1
            self.sha = hashlib.sha256()
            self.received = 0

    async def _source(self, n: int) -> None:
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Content-Length: %d\r\n\r\n" % n)
        piece = b"y" * 262144
        sent = 0
        while sent < n:
            await self.can_write.wait()
            k = min(len(piece), n - sent)
            self.transport.write(piece[:k])
            sent += k
        self.left = -1


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(StreamProtocol, "127.0.0.1", port)
    print("ready", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
