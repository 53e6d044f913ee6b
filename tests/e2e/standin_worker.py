"""A stand-in for ``fastgw.server.run_worker`` and ``fastgw.config.load``/``load_read``, for supervisor tests.

It lets the process model (``fastgw.workers``) be exercised without the engine: the
worker answers every request itself with ``{"pid", "generation", "index", "path",
"routes"}`` (``/slow?ms=N`` waits first), writes its ready byte, and on SIGTERM drains
like the real one should (stops accepting, closes idle keep-alive connections, serves
in-flight requests and the first request of connections accepted but not yet read, each
with ``Connection: close``, exits 0).

    python -m tests.e2e.standin_worker supervisor CONFIG.json N   # a supervisor using it
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit


class ConfigError(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def load(path: str) -> SimpleNamespace:
    """Just enough of ``fastgw.config.load`` for the supervisor: JSON, a few checks."""
    try:
        with open(path, "rb") as fh:
            raw = json.load(fh)
    except ValueError as exc:
        raise ConfigError([f"<file>: not valid JSON: {exc}"]) from None
    errors = []
    if not isinstance(raw.get("listen"), list) or not raw["listen"]:
        errors.append("listen: must be a non-empty array")
    if not isinstance(raw.get("services"), list):
        errors.append("services: must be an array")
    if errors:
        raise ConfigError(errors)
    resources = [path for svc in raw["services"] for path in svc.get("resources", {})]
    return SimpleNamespace(
        raw=raw, listen=raw["listen"], workers=raw.get("workers", 1), admin=None,
        limits={"drain_timeout": 10, **raw.get("limits", {})}, routes=[], resources=resources,
    )


def load_read(path: str) -> tuple[SimpleNamespace, bytes]:
    """``fastgw.config.load_read``: the config and the bytes read."""
    with open(path, "rb") as fh:
        blob = fh.read()
    return load(path), blob


async def _serve(config_path: str, sockets: list[socket.socket], index: int, generation: int,
                 ready_fd: int | None) -> None:
    routes = load(config_path).resources
    busy = 0
    # writer -> state: "fresh" (no request yet), "busy", "idle" (between keep-alive requests)
    conns: dict[asyncio.StreamWriter, str] = {}
    draining = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal busy
        conns[writer] = "fresh"
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                conns[writer] = "busy"
                busy += 1
                try:
                    line = head.split(b"\r\n", 1)[0].decode()
                    target = line.split(" ")[1]
                    url = urlsplit(target)
                    ms = parse_qs(url.query).get("ms", ["0"])[0]
                    if url.path == "/slow":
                        await asyncio.sleep(int(ms) / 1000)
                    body = json.dumps({"pid": os.getpid(), "generation": generation, "index": index,
                                       "path": url.path, "routes": routes}).encode()
                    close = draining.is_set() or b"connection: close" in head.lower()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 + (b"Connection: close\r\n" if close else b"")
                                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                    await writer.drain()
                finally:
                    busy -= 1
                    conns[writer] = "idle"
                if close:
                    return
        finally:
            conns.pop(writer, None)
            writer.close()

    servers = [await asyncio.start_server(handle, sock=sock) for sock in sockets]
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, draining.set)
    if ready_fd is not None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)
    await draining.wait()
    for server in servers:
        server.close()  # stops accepting; the socket itself stays open in the supervisor
    # Idle keep-alive connections are closed now (a client retries a request that races
    # with this close); a fresh connection gets its first request served, with
    # Connection: close, since its client may already have sent it.
    for writer, state in list(conns.items()):
        if state == "idle":
            writer.close()
    deadline = loop.time() + 5
    while conns and loop.time() < deadline:
        await asyncio.sleep(0.01)


def run_worker(config_path: str, sockets: list[socket.socket], index: int, generation: int,
               stats_name: str | None, ready_fd: int | None) -> None:
    """Same signature as ``fastgw.server.run_worker``."""
    import uvloop

    uvloop.run(_serve(config_path, sockets, index, generation, ready_fd))


def _main(argv: list[str]) -> int:
    from fastgw import cli, workers

    if argv[0] == "supervisor":
        workers.fconfig = sys.modules[__name__]  # type: ignore[assignment]
        cmd = [sys.executable, "-m", "tests.e2e.standin_worker", "worker"]
        return workers.run(argv[1], workers=int(argv[2]), worker_cmd=cmd)
    args = cli.build_parser().parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    cli._set_parent_death_signal()
    socks = [socket.socket(fileno=fd) for fd in args.fd]
    run_worker(args.config, socks, args.index, args.generation, args.stats, args.ready_fd)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
