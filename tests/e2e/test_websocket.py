"""End-to-end: WebSocket pass-through (RFC 6455 handshake over HTTP/1.1 Upgrade), with a real
aiohttp WebSocket backend and client, through the gateway and its plugins."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import ScriptedBackend, free_port, gateway_config, protocol_server


@pytest.fixture
def ws_backend() -> Iterator[int]:
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(f"hello {request.headers.get('X-Consumer-Name', 'anonymous')}")
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="plain")

    def run() -> None:
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_get("/ws", echo)
        app.router.add_get("/plain", plain)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    yield port
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _gateway(ws_backend: int, port: int, gateway: Any) -> Any:
    cfg = gateway_config(port, f"http://127.0.0.1:{ws_backend}", {
        "/ws": {"GET": {"plugins": [{"name": "key-auth"}]}},
        "/plain": {"GET": {}},
    }, consumers=[{"name": "ada", "credentials": {"key-auth": ["ada-key-0123456789"]}}])
    return gateway(cfg)


def test_websocket_through_the_gateway(ws_backend: int, port: int, gateway: Any) -> None:
    g = _gateway(ws_backend, port, gateway)

    async def talk() -> list[Any]:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{g.port}/ws",
                                          headers={"apikey": "ada-key-0123456789"}) as ws:
                got = [await ws.receive_str()]
                await ws.send_str("one")
                got.append(await ws.receive_str())
                big = bytes(range(256)) * 400           # 100 KB, several TCP segments
                await ws.send_bytes(big)
                got.append((await ws.receive_bytes()) == big[::-1])
                await ws.close()
            # the gateway still serves plain HTTP after tunnels
            async with session.get(f"http://127.0.0.1:{g.port}/plain") as r:
                got.append(await r.text())
        return got

    assert asyncio.run(talk()) == ["hello ada", "echo:one", True, "plain"]


def test_websocket_handshake_runs_the_route_plugins(ws_backend: int, port: int, gateway: Any) -> None:
    g = _gateway(ws_backend, port, gateway)
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as sock:
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 401")            # no key: no tunnel


def test_upgrade_without_connection_token_is_plain_http(ws_backend: int, port: int, gateway: Any) -> None:
    g = _gateway(ws_backend, port, gateway)
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as sock:
        sock.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"plain")


class AnyUpgradeBackend(ScriptedBackend):
    """Switches to any protocol it is asked for (as an h2c-capable server would); a request
    without Upgrade gets a 200 saying which hop-by-hop fields reached it."""

    def answer(self, head: bytes) -> bytes:
        lower = head.lower()
        if b"\r\nupgrade:" in lower:
            return b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        body = b"settings" if b"http2-settings" in lower else b"plain"
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def test_an_h2c_upgrade_is_not_tunnelled(port: int, gateway: Any) -> None:
    """SECURITY (h2c smuggling): a tunnel to a backend that speaks h2c would carry HTTP/2
    requests that no route plugin sees. The gateway forwards the request without its
    Upgrade and HTTP2-Settings, and the backend answers it as plain HTTP/1.1."""
    with protocol_server(AnyUpgradeBackend) as bport:
        g = gateway(gateway_config(port, f"http://127.0.0.1:{bport}"))
        with socket.create_connection(("127.0.0.1", g.port), timeout=10) as sock:
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                         b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
            data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"plain"), data
