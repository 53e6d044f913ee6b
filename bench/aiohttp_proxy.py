"""A plain aiohttp reverse proxy: the Python baseline of the bench suite.

One process on uvloop, one keep-alive ``ClientSession`` to the upstream, every request
forwarded as it came (method, path, query, headers, body) and the answer returned whole.

    python bench/aiohttp_proxy.py --port 8081 --upstream http://127.0.0.1:8090 \\
        [--gateway --access-log FILE] [--routes 1000]

``--gateway`` does the gateway scenario's job: 401 without ``apikey: bench-key-1``, an
``X-Request-Id`` (counter + per-process prefix) sent upstream and returned, an
``X-Gateway`` response header, and an access log line per request.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os

import aiohttp
from aiohttp import web

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency of fastgw
    uvloop = None  # type: ignore[assignment]

HOP_BY_HOP = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding",
              "Upgrade", "Host", "Content-Length")
)
API_KEY = "bench-key-1"


def build_app(upstream: str, gateway: bool, routes: int = 0) -> web.Application:
    """The proxy application: one catch-all handler over one keep-alive session."""
    app = web.Application(client_max_size=1 << 30)
    prefix = f"{os.getpid():x}-"
    counter = itertools.count(1)

    async def on_startup(app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        app["session"] = aiohttp.ClientSession(
            base_url=upstream, connector=connector, auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=60),
        )

    async def on_cleanup(app: web.Application) -> None:
        await app["session"].close()

    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        extra: dict[str, str] = {}
        if gateway:
            if request.headers.get("apikey") != API_KEY:
                return web.json_response({"error": "unauthorized", "status": 401}, status=401)
            rid = prefix + str(next(counter))
            headers["X-Request-Id"] = rid
            extra = {"X-Request-Id": rid, "X-Gateway": "bench"}
        body = await request.read() if request.body_exists else None
        async with request.app["session"].request(
            request.method, request.rel_url, headers=headers, data=body, allow_redirects=False,
        ) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
            out.update(extra)
            return web.Response(status=resp.status, body=data, headers=out)

    if routes:
        # The "routes" scenario: /r{i}/items/{id}, anything else is 404.
        for i in range(routes):
            app.router.add_route("GET", f"/r{i}/items/{{id}}", handler)
    else:
        app.router.add_route("*", "/{tail:.*}", handler)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="http://host:port")
    ap.add_argument("--gateway", action="store_true", help="key auth, request id, header, access log")
    ap.add_argument("--access-log", default=None, help="access log file (gateway scenario)")
    ap.add_argument("--routes", type=int, default=0, help="serve only /r{i}/items/{id}, i < ROUTES")
    args = ap.parse_args()
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    access_logger = None
    if args.access_log:
        access_logger = logging.getLogger("aiohttp.access")
        access_logger.setLevel(logging.INFO)
        access_logger.addHandler(logging.FileHandler(args.access_log))
        access_logger.propagate = False
    web.run_app(build_app(args.upstream, args.gateway, args.routes), host=args.host, port=args.port,
                access_log=access_logger, print=None, handle_signals=True)


if __name__ == "__main__":
    main()
