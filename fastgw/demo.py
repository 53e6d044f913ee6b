"""``fastgw demo``: three small demo backends and the gateway on ``examples/demo.json``.

The backends are HTTP/1.1 servers with keep-alive (asyncio + httptools) that answer JSON:

- ``orders`` on 127.0.0.1:9101 — ``GET /{version}/orders``, ``GET /{version}/orders/{id}``,
  ``POST /{version}/orders`` (creates an order from the JSON body, 201);
- ``users`` on 127.0.0.1:9102 — ``GET /users``, ``GET /users/{id}``;
- ``files`` on 127.0.0.1:9103 — ``GET /assets/{path}`` (a JSON description of the asset)
  and anything else echoed back (method, path, query, headers, body).

They run on the supervisor's event loop, so one Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httptools

HOST = "127.0.0.1"
ORDERS_PORT, USERS_PORT, FILES_PORT = 9101, 9102, 9103
ADMIN_TOKEN = "demo-token"

Handler = Callable[[str, str, dict[str, str], bytes], tuple[int, Any]]
_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class DemoProtocol(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of a demo backend (pipelined requests answered in order)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(400, {"error": "bad request"}, keep_alive=False)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", {}, []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        status, payload = self.handler(method, self.url.decode("latin-1"), self.headers, b"".join(self.body))
        self._write(status, payload, self.parser.should_keep_alive())

    def _write(self, status: int, payload: Any, keep_alive: bool) -> None:
        assert self.transport is not None
        body = json.dumps(payload).encode() + b"\n"
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            + ("" if keep_alive else "Connection: close\r\n")
            + "\r\n"
        )
        self.transport.write(head.encode() + body)
        if not keep_alive:
            self.transport.close()


class OrdersAPI:
    """An in-memory order book, served under a version prefix (``/v1/orders``, ``/v2/orders``)."""

    def __init__(self) -> None:
        self.orders: dict[int, dict[str, Any]] = {
            1: {"id": 1, "item": "coffee beans", "qty": 2, "status": "shipped"},
            2: {"id": 2, "item": "teapot", "qty": 1, "status": "open"},
        }

    def __call__(self, method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        path = urlsplit(url).path
        match = re.fullmatch(r"/(v\d+)/orders(?:/([^/]+))?", path)
        if not match:
            return 404, {"error": f"no such path: {path}", "backend": "orders"}
        version, order_id = match.groups()
        if order_id is None and method == "GET":
            return 200, {"version": version, "orders": list(self.orders.values())}
        if order_id is None and method == "POST":
            try:
                data = json.loads(body or b"{}")
                if not isinstance(data, dict):
                    raise ValueError("not an object")
            except ValueError:
                return 400, {"error": "body must be a JSON object", "backend": "orders"}
            new_id = max(self.orders, default=0) + 1
            order = {"id": new_id, "item": str(data.get("item", "?")), "qty": int(data.get("qty", 1)),
                     "status": "open"}
            self.orders[new_id] = order
            return 201, {"version": version, "order": order}
        if order_id is not None and method == "GET":
            order = self.orders.get(int(order_id)) if order_id.isdigit() else None
            if order is None:
                return 404, {"error": f"no order {order_id}", "backend": "orders"}
            return 200, {"version": version, "order": order}
        return 405, {"error": f"{method} not allowed", "backend": "orders"}


USERS = {
    1: {"id": 1, "name": "Ada", "email": "ada@example.com"},
    2: {"id": 2, "name": "Grace", "email": "grace@example.com"},
}


def users_api(method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
    """``GET /users``, ``GET /users/{id}`` and ``DELETE /users/{id}`` (which only pretends);
    the answer names the consumer the gateway authenticated (``X-Consumer-Name``)."""
    path = urlsplit(url).path
    caller = headers.get("x-consumer-name")
    if path == "/users":
        return 200, {"users": list(USERS.values()), "caller": caller}
    match = re.fullmatch(r"/users/(\d+)", path)
    if match and int(match.group(1)) in USERS:
        if method == "DELETE":
            return 200, {"deleted": int(match.group(1)), "caller": caller}
        return 200, {"user": USERS[int(match.group(1))], "caller": caller}
    return 404, {"error": f"no such user or path: {path}", "backend": "users"}


def files_api(method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
    """``GET /assets/{path}`` describes an asset; anything else is echoed back."""
    parts = urlsplit(url)
    if parts.path.startswith("/assets/") and method in ("GET", "HEAD"):
        name = parts.path[len("/assets/"):]
        kind = name.rsplit(".", 1)[-1] if "." in name else "bin"
        return 200, {"asset": name, "type": kind, "size": 1024 + len(name)}
    return 200, {
        "method": method,
        "path": parts.path,
        "query": {k: v[-1] for k, v in parse_qs(parts.query).items()},
        "headers": headers,
        "body": body.decode("utf-8", "replace"),
    }


async def start_backends(host: str = HOST) -> list[asyncio.AbstractServer]:
    """Start the three demo backends on ``host``:9101-9103; returns their servers."""
    loop = asyncio.get_running_loop()
    servers = []
    orders = OrdersAPI()
    for port, handler in ((ORDERS_PORT, orders), (USERS_PORT, users_api), (FILES_PORT, files_api)):
        servers.append(await loop.create_server(lambda h=handler: DemoProtocol(h), host, port))
    return servers


def find_demo_config() -> Path:
    """``examples/demo.json`` of the source tree (or of the current directory)."""
    for base in (Path(__file__).resolve().parent.parent, Path.cwd()):
        candidate = base / "examples" / "demo.json"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("examples/demo.json not found (run from the fastgw source tree)")


def banner(port: int) -> str:
    """The curl commands to try, for a gateway on ``port``."""
    base = f"http://localhost:{port}"
    return f"""
fastgw demo is up: gateway {base}
admin API and dashboard: http://127.0.0.1:9901/dashboard/ (token {ADMIN_TOKEN})
backends: orders 127.0.0.1:{ORDERS_PORT}, users {USERS_PORT}, files {FILES_PORT}

Try:
  curl -s {base}/orders                       # prod stage -> backend /v1/orders
  curl -s {base}/orders/1
  curl -s -X POST {base}/orders -H 'Content-Type: application/json' -d '{{"item": "mug", "qty": 3}}'
  curl -s {base}/alpha/orders/2               # alpha stage (path prefix) -> /v2/orders/2
  curl -s {base}/orders/1/tracking            # mock: answered by the gateway, no backend yet
  curl -s -i {base}/users/2                   # 401: the accounts service needs an API key
  curl -s -i -H 'apikey: demo-key-ada' {base}/users/2   # 60 a minute per consumer: RateLimit-* headers
  curl -s -X DELETE -H 'apikey: demo-key-bob' {base}/users/2   # 403: acl allows group staff only
  curl -s {base}/static/css/site.css          # {{path*}} -> /assets/css/site.css
  curl -s -i {base}/static/css/site.css       # again: X-Cache-Status: Hit once a worker has it
  curl -s -H 'apikey: demo-key-ada' {base}/users/1/overview   # aggregate: users + orders in one
  curl -s -X PUT '{base}/echo?x=1' -d hello   # echoed back by the files backend
  curl -s -i {base}/nope                      # 404 answered by the gateway itself
  curl -s -H 'Authorization: Bearer {ADMIN_TOKEN}' http://127.0.0.1:9901/health
  kill -HUP {os.getpid()}   # reload the config without dropping a request

Ctrl-C stops everything.
"""


def _config_for_port(path: Path, port: int) -> tuple[str, str | None]:
    """The config path to run: ``path`` itself, or a temp copy listening on ``port``."""
    data = json.loads(path.read_text())
    if all(item.get("port") == port for item in data.get("listen", [])):
        return str(path), None
    for item in data.get("listen", []):
        item["port"] = port
    fd, tmp = tempfile.mkstemp(prefix="fastgw-demo-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    return tmp, tmp


def main(port: int = 8080, workers: int | None = 2, config: str | None = None) -> int:
    """Run the demo until Ctrl-C; returns the exit code."""
    import uvloop

    from fastgw.workers import Supervisor

    try:
        source = Path(config) if config else find_demo_config()
    except FileNotFoundError as exc:
        print(f"fastgw demo: {exc}", file=sys.stderr)
        return 1
    config_path, tmp = _config_for_port(source, port)

    async def run() -> int:
        try:
            servers = await start_backends()
        except OSError as exc:
            print(f"fastgw demo: cannot start the demo backends: {exc}", file=sys.stderr)
            return 1
        supervisor = Supervisor(config_path, workers, on_serving=lambda: print(banner(port), flush=True))
        try:
            return await supervisor.serve()
        finally:
            for server in servers:
                server.close()

    try:
        return uvloop.run(run())
    finally:
        if tmp is not None:
            os.unlink(tmp)
