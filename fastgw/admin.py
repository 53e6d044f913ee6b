"""The admin listener: stats JSON, Prometheus metrics, routes, health, reload, config, dashboard.

A small raw asyncio HTTP/1.1 server (keep-alive, no framework) that runs in the
supervisor's loop. Every data endpoint needs ``Authorization: Bearer <token>``; the
dashboard page and its static assets do not (the page asks for the token and sends it
on its own data calls), nor does ``/health``'s bare status, for load balancer and
orchestrator probes::

    GET  /stats     JSON: totals, time series, resources, unmatched hosts, consumers
                    (?service= &stage= &resource= &method= &range=300 | &from= &to= , &step=)
    GET  /metrics   Prometheus text format 0.0.4
    GET  /routes    the routes of the running config
    GET  /health    200 {"status": "ok"}, or 503 {"status": "degraded"} when a worker is
                    down; with the token, also the workers and the config generation
    POST /reload    load the config file again: 200 once the new workers serve, 400 + the
                    errors when refused (the schema's, or a plugin's as the workers build it)
    POST /cache/purge  drop proxy-cache answers (?service= &stage= to narrow it): every
                    worker's memory, and Redis with policy "redis"
    GET  /config    the running config, secrets redacted
    GET  /dashboard/ (and its assets)

``hooks`` is any object with ``reload() -> list[str]``, ``routes() -> list[dict]``,
``config() -> dict``, ``health() -> dict`` and ``purge_cache(service, stage) -> dict``
(each may also be a coroutine function).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import os
import re
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from fastgw.cache_region import tag
from fastgw.plugins.proxy_cache import purge_scope
from fastgw.stats import CLASSES, HIST_N, StatsRegion, hist_bounds, parse_key, parse_span
from fastgw.statsdb import RollupTask, StatsDB, StatsQuery, resolve_db_path
from fastgw.workers import log as supervisor_log

DASHBOARD_DIR = os.path.join(os.path.dirname(__file__), "dashboard")
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
IDLE_TIMEOUT = 30.0
REDACTED = "***"
# SECURITY: setting names that hold secrets; matched anywhere in the config tree.
SECRET_NAME = re.compile(r"secret|passw|key|token|credential|private|signature", re.IGNORECASE)
# Prometheus histogram bounds: powers of two microseconds (exact edges of the stats
# histogram, so every bucket count is exact), 128 µs .. 67 s.
PROM_EDGES_US = [1 << k for k in range(7, 27)]
_EDGE_INDEX = [next(i for i in range(HIST_N) if hist_bounds(i)[0] >= e) for e in PROM_EDGES_US]

# SECURITY: the dashboard only loads its own files and talks to its own origin.
_PAGE_HEADERS = (
    b"Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "
    b"img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    b"frame-ancestors 'none'\r\n"
    b"X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n"
)
_REASONS = {200: "OK", 302: "Found", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 413: "Payload Too Large",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}


def redact(value: Any, name: str = "") -> Any:
    """A copy of ``value`` with secrets replaced by ``"***"``.

    A value is secret when its setting name looks like one (secret, password, key,
    token, credential ...); every consumer's ``credentials`` are redacted whole.

    >>> redact({"admin": {"port": 1, "token": "t"}, "plugins": [{"config": {"api_key": "k"}}]})
    {'admin': {'port': 1, 'token': '***'}, 'plugins': [{'config': {'api_key': '***'}}]}
    """
    if name and SECRET_NAME.search(name):
        return REDACTED if value not in (None, "", [], {}) else value
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_esc(str(v))}"' for k, v in labels.items()) + "}"


def _num(x: float) -> str:
    return repr(float(x)) if isinstance(x, float) else str(x)


def render_cache_metrics(info: dict[str, Any]) -> str:
    """Prometheus lines for proxy-cache's node store (``SupervisorHooks.cache_info``); none
    without one."""
    if info.get("store") != "node":
        return ""
    out = []
    for name, kind, text, key in (
            ("fastgw_cache_capacity_bytes", "gauge", "Size of proxy-cache's node store.", "capacity_bytes"),
            ("fastgw_cache_answers", "gauge", "Answers the node store holds (fresh, or kept for a stale window).",
             "answers"),
            ("fastgw_cache_written_bytes_total", "counter", "Bytes ever written to the node store's ring.",
             "written_bytes"),
            ("fastgw_cache_purges_total", "counter", "Purges of the node store.", "purges")):
        out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {int(info[key])}"]
    return "\n".join(out) + "\n"


def render_target_metrics(targets: list[dict[str, Any]]) -> str:
    """Prometheus lines for the backend targets (``SupervisorHooks.targets``): whether each
    is passed over now, and, for stages with health checks, whether it passes them."""
    if not targets:
        return ""
    over = ["# HELP fastgw_target_passed_over 1 while the target is passed over after failed connections "
            "(the node's passive mark) or by its health checks.",
            "# TYPE fastgw_target_passed_over gauge"]
    healthy = ["# HELP fastgw_target_healthy 1 while the target passes its health checks (stages with checks; "
               "absent before the first).",
               "# TYPE fastgw_target_healthy gauge"]
    for t in targets:
        labels = _labels(service=t["service"], stage=t["stage"], target=t["target"])
        down = bool(t.get("passed_over_for")) or t.get("active") == "unhealthy"
        over.append(f"fastgw_target_passed_over{labels} {int(down)}")
        if t.get("active") in ("healthy", "unhealthy"):
            healthy.append(f"fastgw_target_healthy{labels} {int(t['active'] == 'healthy')}")
    return "\n".join(over + (healthy if len(healthy) > 2 else [])) + "\n"


def _histogram(name: str, labels: dict[str, str], counts: Any, total_us: int, calls: int) -> list[str]:
    """A Prometheus histogram's lines from a key's latency histogram (cumulative buckets at
    PROM_EDGES_US, +Inf, sum and count)."""
    out = []
    cum = prev = 0
    hist = counts.hist
    for edge, idx in zip(PROM_EDGES_US, _EDGE_INDEX, strict=True):
        cum += sum(hist[prev:idx])
        prev = idx
        out.append(f"{name}_bucket{_labels(**labels, le=repr(edge / 1e6))} {cum}")
    out.append(f"{name}_bucket{_labels(**labels, le='+Inf')} {calls}")
    out.append(f"{name}_sum{_labels(**labels)} {_num(total_us / 1e6)}")
    out.append(f"{name}_count{_labels(**labels)} {calls}")
    return out


def render_metrics(region: StatsRegion) -> str:
    """Prometheus text exposition (0.0.4) of the running totals."""
    totals = region.totals()
    req, lat, up, up_calls, bin_, bout, unmatched, consumers = ([] for _ in range(8))
    redis_calls: list[str] = []
    redis_lat: list[str] = []
    for key, counts in totals.items():
        v = counts.values
        p = parse_key(key)
        if p["kind"] == "route":
            base = {k: p[k] for k in ("service", "stage", "resource", "method")}
            for cls in CLASSES:
                gw = v["gateway_" + cls]
                for source, n in (("backend", v[cls] - gw), ("gateway", gw)):
                    if n:
                        req.append(f"fastgw_requests_total{_labels(**base, status_class=cls, source=source)} {n}")
            if not v["calls"]:
                continue
            lat += _histogram("fastgw_request_duration_seconds", base, counts, v["total_us"], v["calls"])
            up.append(f"fastgw_upstream_duration_seconds_total{_labels(**base)} {_num(v['upstream_us'] / 1e6)}")
            up_calls.append(f"fastgw_upstream_requests_total{_labels(**base)} {v['calls'] - v['gateway']}")
            bin_.append(f"fastgw_received_bytes_total{_labels(**base)} {v['bytes_in']}")
            bout.append(f"fastgw_sent_bytes_total{_labels(**base)} {v['bytes_out']}")
        elif p["kind"] == "unmatched":
            for cls in CLASSES:
                if v[cls]:
                    unmatched.append(f"fastgw_unmatched_requests_total{_labels(host=p['host'], status_class=cls)} {v[cls]}")
        elif p["kind"] == "consumer" and v["calls"]:
            consumers.append(f"fastgw_consumer_requests_total{_labels(consumer=p['consumer'])} {v['calls']}")
        elif p["kind"] == "redis":
            redis_calls.append(f"fastgw_redis_commands_total{_labels(result=p['result'])} {v['calls']}")
            if v["calls"]:
                redis_lat += _histogram("fastgw_redis_command_duration_seconds", {"result": p["result"]}, counts,
                                        v["total_us"], v["calls"])
    out: list[str] = []

    def family(name: str, kind: str, help_: str, lines: list[str]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(lines)

    family("fastgw_requests_total", "counter",
           "Requests per route and status class; source=gateway when fastgw answered itself.", req)
    family("fastgw_request_duration_seconds", "histogram", "Total request latency seen by the client.", lat)
    family("fastgw_upstream_duration_seconds_total", "counter", "Time spent waiting for the backend.", up)
    family("fastgw_upstream_requests_total", "counter", "Requests forwarded to the backend.", up_calls)
    family("fastgw_received_bytes_total", "counter", "Request bytes received from clients.", bin_)
    family("fastgw_sent_bytes_total", "counter", "Response bytes sent to clients.", bout)
    family("fastgw_unmatched_requests_total", "counter", "Requests that matched no route, per stage host.",
           unmatched)
    family("fastgw_consumer_requests_total", "counter", "Requests per authenticated consumer.", consumers)
    if redis_calls:
        family("fastgw_redis_commands_total", "counter",
               "Redis commands requests waited on (rate limits, the replay guard, proxy-cache), by result: "
               "ok, error (an error reply), failed (no reply: connection failed, too slow, or Redis unavailable).",
               redis_calls)
        family("fastgw_redis_command_duration_seconds", "histogram",
               "How long each Redis command waited for its reply (or its failure).", redis_lat)
    family("fastgw_stats_keys", "gauge", "Stats slots in use.", [f"fastgw_stats_keys {region.keys_used()}"])
    return "\n".join(out) + "\n"


_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


def redis_client(settings: dict[str, Any]) -> Any:
    """A ``redis.asyncio`` client for a config's ``redis`` section (connects on first use;
    ``timeout`` bounds connects and commands)."""
    import redis.asyncio

    from fastgw.resp import SENTINEL_SCHEMES, parse_sentinel_url

    timeout = float(settings.get("timeout", 0.25))
    url = settings["url"]
    if url.split("://", 1)[0] not in SENTINEL_SCHEMES:
        return redis.asyncio.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    from redis.asyncio.sentinel import Sentinel

    s = parse_sentinel_url(url)
    tls = {"ssl": True, "ssl_cert_reqs": s.query.get("ssl_cert_reqs", "required"),
           "ssl_ca_certs": s.query.get("ssl_ca_certs"), "ssl_certfile": s.query.get("ssl_certfile"),
           "ssl_keyfile": s.query.get("ssl_keyfile"),
           "ssl_check_hostname": s.query.get("ssl_check_hostname", "").lower() not in ("false", "0", "no")
           } if s.tls else {}
    common = {"socket_timeout": timeout, "socket_connect_timeout": timeout, **tls}
    sentinels = Sentinel(list(s.nodes), sentinel_kwargs={"username": s.sentinel_username,
                                                          "password": s.sentinel_password, **common}, **common)
    return sentinels.master_for(s.master, username=s.username, password=s.password, db=s.db)


async def purge_redis(settings: dict[str, Any], service: str | None, stage: str | None) -> int:
    """Delete proxy-cache entries from the config's Redis (the keys name their route:
    ``<prefix>pc:<service>/<stage>/<METHOD> <path>|...``). Returns how many."""
    prefix = settings.get("key_prefix", "fastgw:") + "pc:"
    scope = "" if service is None else service + "/" + ("" if stage is None else stage + "/")
    pattern = _GLOB_SPECIAL.sub(r"\\\1", prefix + scope) + "*"
    client = redis_client(settings)
    removed = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                removed += await client.unlink(*batch)
                batch = []
        if batch:
            removed += await client.unlink(*batch)
    finally:
        await (getattr(client, "aclose", None) or client.close)()   # (aclose: redis-py >= 5.0.1)
    return removed


class SupervisorHooks:
    """Hooks over a :class:`fastgw.workers.Supervisor` (``config``, ``current``, ``reload``)."""

    def __init__(self, supervisor: Any) -> None:
        self.sup = supervisor

    async def reload(self) -> list[str]:
        """Errors, or none once the new generation serves: a config a plugin refuses when
        the workers build it is reported here too, not only in the log."""
        return list(await self.sup.reload_and_wait())

    def routes(self) -> list[dict[str, Any]]:
        out = []
        for spec in getattr(self.sup.config, "routes", ()) or ():
            out.append({
                "key": spec.key, "service": spec.service, "stage": spec.stage, "hosts": list(spec.hosts),
                "path_prefix": spec.path_prefix, "resource": spec.resource, "method": spec.method,
                "backend_path": spec.backend_path, "targets": list(spec.targets), "weights": list(spec.weights),
                "balance": spec.backend.get("balance", "round_robin"),
                "hash_key": spec.backend.get("hash_key", "ip"),
                "plugins": [p.get("name") for p in spec.plugins],
            })
        return out

    def config(self) -> dict[str, Any]:
        return dict(getattr(self.sup.config, "raw", {}) or {})

    def cache_info(self) -> dict[str, Any]:
        """proxy-cache's node store (policy memory): its size and fill; ``{"store": "none"}``
        when no route caches in memory (or each worker keeps its own)."""
        store = getattr(self.sup, "cache_region", None)
        if store is None:
            return {"store": "none"}
        return {"store": "node", **store.info()}

    async def purge_cache(self, service: str | None, stage: str | None) -> dict[str, Any]:
        """Publish the purge to this node's workers, then delete the matching entries from
        Redis when the config has a redis section. ValueError for a service or stage the
        running config lacks."""
        cfg = self.sup.config
        routes = getattr(cfg, "routes", ()) or ()
        if service is not None and not any(r.service == service for r in routes):
            raise ValueError(f"no service {service!r} in the running config")
        if stage is not None and not any(r.service == service and r.stage == stage for r in routes):
            raise ValueError(f"service {service!r} has no stage {stage!r} in the running config")
        scope = {k: v for k, v in (("service", service), ("stage", stage)) if v is not None}
        out: dict[str, Any] = {"service": service, "stage": stage, "workers": "purged"}
        region = getattr(self.sup, "shared_region", None)
        if region is not None:
            region.publish_purge(scope)
        else:
            out["workers"] = "no shared region"
        store = getattr(self.sup, "cache_region", None)
        if store is not None:
            # The node's store (policy memory): cleared here, once for every worker.
            n = store.purge(tag(service) if service is not None else None,
                            tag(stage) if stage is not None else None)
            out["answers"] = n
            supervisor_log(f"proxy-cache: purged {n} stored answers ({purge_scope(service, stage)})")
        redis_settings = getattr(cfg, "redis", None)
        if redis_settings:
            try:
                out["redis_keys"] = await purge_redis(redis_settings, service, stage)
            except Exception as exc:  # noqa: BLE001 - reported: the purge is incomplete
                out["error"] = f"Redis: {type(exc).__name__}: {exc}"
        return out

    def targets(self) -> list[dict[str, Any]]:
        """Every backend target of the running config, by service and stage, with what keeps
        it out of the picks: the node's passive mark (``passed_over_for``: seconds left,
        0.0 when none; fastgw/_marks.pxi), the node's failed connections to it counted
        toward ``max_fails`` in the current window (``failed_connects``) and, for a target
        some stage checks, the active verdict (``"healthy"``, ``"unhealthy"``, or
        ``"unchecked"`` before the first)."""
        from fastgw.compile import target_address
        from fastgw.health import CheckSettings, check_ident
        from fastgw.shared import target_key

        region = getattr(self.sup, "shared_region", None)
        marks = region.passive_marks() if region is not None else None
        verdicts = region.health_table() if region is not None else None
        now = time.monotonic()
        routes = getattr(self.sup.config, "routes", ()) or ()
        # A target (URL) is one pool in a worker, checked with the settings of the first
        # stage that checks it (fastgw/health.py), and its verdict holds for every stage.
        check_path: dict[str, str] = {}
        for spec in routes:
            check = spec.backend.get("health_check")
            if check:
                for url in spec.targets:
                    check_path.setdefault(url, CheckSettings.from_config(check).path)
        out: list[dict[str, Any]] = []
        seen: set[tuple[str, str, str]] = set()
        for spec in routes:
            for url, weight in zip(spec.targets, spec.weights, strict=True):
                if (spec.service, spec.stage, url) in seen:
                    continue
                seen.add((spec.service, spec.stage, url))
                host, port, tls = target_address(url)
                item: dict[str, Any] = {"service": spec.service, "stage": spec.stage, "target": url,
                                        "weight": weight, "passed_over_for": None, "failed_connects": None,
                                        "active": None}
                if marks is not None:
                    key = target_key(host, port, tls)
                    item["passed_over_for"] = round(max(0.0, marks.until(key) - now), 3)
                    item["failed_connects"] = marks.fails(key)
                if url in check_path and verdicts is not None:
                    down = verdicts.get(check_ident(host, port, tls, check_path[url]))
                    item["active"] = "unchecked" if down is None else "unhealthy" if down else "healthy"
                out.append(item)
        return out

    def health(self) -> dict[str, Any]:
        workers = [
            {"slot": w.slot, "generation": w.generation, "pid": w.pid, "alive": w.alive}
            for w in (getattr(self.sup, "current", None) or []) if w is not None
        ]
        ok = bool(workers) and all(w["alive"] for w in workers)
        return {"status": "ok" if ok else "degraded", "generation": getattr(self.sup, "generation", 0),
                "workers": workers}


class AdminServer:
    """The admin listener. ``AdminServer(region, hooks, token)``; ``await start(host, port)``.

    Also accepts ``AdminServer(supervisor, config)`` (region, hooks, token, address and
    history file taken from them). ``db`` (a :class:`StatsDB`) adds history and runs the
    roll-up every ``rollup_interval`` seconds while the server runs.
    """

    def __init__(self, region: Any, hooks: Any, token: str | None = None, *, db: StatsDB | None = None,
                 rollup_interval: float = 10.0) -> None:
        self.host, self.port = "127.0.0.1", 9901
        if not isinstance(region, StatsRegion) and hasattr(region, "stats_region") and hasattr(hooks, "admin"):
            supervisor, config = region, hooks
            admin = dict(config.admin or {})
            region, hooks = supervisor.stats_region, SupervisorHooks(supervisor)
            token = admin.get("token")
            self.host, self.port = admin.get("host", self.host), int(admin.get("port", self.port))
            stats_cfg = dict(getattr(config, "stats", None) or {})
            db_path = resolve_db_path(stats_cfg.get("db") or stats_cfg.get("path"),
                                      getattr(config, "source", ""))
            if db is None and db_path and region is not None:
                db = StatsDB(str(db_path), int(stats_cfg.get("retention_days", 90)))
        if not token:
            # SECURITY: never run open; a random token is logged once for the operator.
            token = secrets.token_urlsafe(24)
            print(f"fastgw admin: no admin.token configured; using generated token {token}", flush=True)
        self.region = region
        self.hooks = hooks
        self._token = token.encode()
        self.db = db
        self.query = StatsQuery(region, db) if region is not None else None
        self._rollup = RollupTask(region, db, rollup_interval) if (db is not None and region is not None) else None
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ life cycle

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        host = host or self.host
        port = self.port if port is None else port
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
        sock = self._server.sockets[0]
        self.host, self.port = sock.getsockname()[:2]
        if self._rollup is not None:
            self._rollup.start()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._conns):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        if self._rollup is not None:
            await self._rollup.stop()
        if self.db is not None:
            self.db.close()
            self.db = None

    async def close(self) -> None:
        await self.stop()

    def update_config(self, config: Any) -> None:
        """After a reload: take a changed admin token."""
        token = (getattr(config, "admin", None) or {}).get("token")
        if token:
            self._token = str(token).encode()

    # ------------------------------------------------------------------ HTTP

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    self._write(writer, 431, b'{"error":"header too large","status":431}', close=True)
                    return
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                    self._write(writer, 400, b'{"error":"bad request","status":400}', close=True)
                    return
                method, target, version = parts
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0) if headers.get(
                    "content-length", "0").isdigit() else -1
                if length < 0 or length > MAX_BODY or "transfer-encoding" in headers:
                    self._write(writer, 413, b'{"error":"body not accepted","status":413}', close=True)
                    return
                if length:
                    await reader.readexactly(length)
                close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
                status, body, ctype, extra = await self._dispatch(method, target, headers)
                self._write(writer, status, body, ctype, extra, close, head_only=(method == "HEAD"))
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if task is not None:
                self._conns.discard(task)
            writer.close()

    @staticmethod
    def _write(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str = "application/json",
               extra: bytes = b"", close: bool = False, head_only: bool = False) -> None:
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n").encode() + extra + b"\r\n"
        writer.write(head if head_only else head + body)

    def _authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer":
            return False
        # SECURITY: constant-time compare, so timing does not reveal the token prefix.
        return hmac.compare_digest(given.strip().encode(), self._token)

    async def _dispatch(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, bytes, str, bytes]:
        url = urlsplit(target)
        path = url.path
        if path in ("/", "/dashboard"):
            return 302, b"", "text/plain", b"Location: /dashboard/\r\n"
        if path.startswith("/dashboard/"):
            if method not in ("GET", "HEAD"):
                return self._json(405, {"error": "method not allowed", "status": 405})
            return self._static(path[len("/dashboard/"):] or "index.html")
        endpoints = {("GET", "/stats"), ("GET", "/metrics"), ("GET", "/routes"), ("GET", "/health"),
                     ("GET", "/config"), ("GET", "/cache"), ("GET", "/targets"), ("POST", "/reload"),
                     ("POST", "/cache/purge")}
        if (method, path) not in endpoints and ("GET", path) not in endpoints and ("POST", path) not in endpoints:
            return self._json(404, {"error": "not found", "status": 404})
        authorized = self._authorized(headers)
        if path == "/health" and method in ("GET", "HEAD"):
            return await self._health(authorized)
        if not authorized:
            return (401, b'{"error":"missing or wrong admin token","status":401}', "application/json",
                    b'WWW-Authenticate: Bearer realm="fastgw-admin"\r\n')
        if (method, path) not in endpoints:
            return self._json(405, {"error": "method not allowed", "status": 405})
        try:
            if path == "/stats":
                return self._json(200, self._stats(parse_qs(url.query)))
            if path == "/metrics":
                cache = render_cache_metrics(dict(await self._call("cache_info") or {})) \
                    if hasattr(self.hooks, "cache_info") else ""
                targets = render_target_metrics(list(await self._call("targets") or [])) \
                    if hasattr(self.hooks, "targets") else ""
                text = (render_metrics(self.region) if self.region is not None else "") + cache + targets
                return 200, text.encode(), "text/plain; version=0.0.4; charset=utf-8", b""
            if path == "/routes":
                return self._json(200, {"routes": await self._call("routes")})
            if path == "/targets":
                return self._json(200, {"targets": await self._call("targets")})
            if path == "/config":
                return self._json(200, redact(await self._call("config") or {}))
            if path == "/cache/purge":
                return await self._purge(parse_qs(url.query))
            if path == "/cache":
                return self._json(200, await self._call("cache_info"))
            errors = list(await self._call("reload") or [])
            if errors:
                return self._json(400, {"ok": False, "errors": errors, "status": 400})
            return self._json(200, {"ok": True})
        except ValueError as exc:
            return self._json(400, {"error": str(exc), "status": 400})
        except Exception as exc:  # an admin bug must not take down the supervisor
            return self._json(500, {"error": f"{type(exc).__name__}: {exc}", "status": 500})

    async def _health(self, detailed: bool) -> tuple[int, bytes, str, bytes]:
        """503 when the hooks say degraded (a probe's verdict is the status code). Without the
        token only the verdict: pids and generations are for the operator."""
        try:
            info = dict(await self._call("health") or {})
        except Exception as exc:  # noqa: BLE001 - a probe must get an answer, and a 503
            info = {"status": "degraded", "error": f"{type(exc).__name__}: {exc}"}
        state = info.pop("status", "ok")
        status = 200 if state == "ok" else 503
        if not detailed:
            return self._json(status, {"status": state})
        return self._json(status, {"status": state, "time": time.time(), **info})

    async def _purge(self, qs: dict[str, list[str]]) -> tuple[int, bytes, str, bytes]:
        unknown = sorted(set(qs) - {"service", "stage"})
        if unknown:
            raise ValueError(f"unknown parameter {unknown[0]!r} (service and stage are)")
        service = qs.get("service", [None])[-1] or None
        stage = qs.get("stage", [None])[-1] or None
        if stage is not None and service is None:
            raise ValueError("stage needs service")
        result = dict(await self._call("purge_cache", service, stage) or {})
        status = 502 if result.get("error") else 200
        return self._json(status, {"ok": status == 200, **result, **({"status": status} if status != 200 else {})})

    async def _call(self, name: str, *args: Any) -> Any:
        result = getattr(self.hooks, name)(*args)
        if inspect.isawaitable(result):
            result = await result
        return result

    @staticmethod
    def _json(status: int, data: Any) -> tuple[int, bytes, str, bytes]:
        return status, orjson.dumps(data), "application/json", b""

    def _static(self, name: str) -> tuple[int, bytes, str, bytes]:
        # SECURITY: a flat whitelist of the package's own files; no path joins from input.
        ext = os.path.splitext(name)[1]
        if "/" in name or name.startswith(".") or ext not in STATIC_TYPES:
            return self._json(404, {"error": "not found", "status": 404})
        path = os.path.join(DASHBOARD_DIR, name)
        try:
            with open(path, "rb") as fh:
                body = fh.read()
        except OSError:
            return self._json(404, {"error": "not found", "status": 404})
        return 200, body, STATIC_TYPES[ext], _PAGE_HEADERS

    def _stats(self, qs: dict[str, list[str]]) -> dict[str, Any]:
        if self.query is None:
            raise ValueError("stats are not enabled")

        def one(name: str) -> str | None:
            vals = qs.get(name)
            return vals[-1] if vals else None

        now = int(time.time())

        def when(name: str) -> int | None:
            raw = one(name)
            if raw is None or raw == "":
                return None
            try:
                v = int(float(raw))
            except ValueError:
                raise ValueError(f"{name}: not a number") from None
            return now + v if v <= 0 else v

        t1 = when("to")
        t0 = when("from")
        rng = one("range")
        if t0 is None and rng:
            try:
                span = parse_span(rng)
            except ValueError as exc:
                raise ValueError(f"range: {exc}") from None
            if span <= 0:
                raise ValueError("range: must be > 0")
            t0 = (t1 if t1 is not None else now + 1) - span
        step_raw = one("step")
        step = int(float(step_raw)) if step_raw else None
        if step is not None and step <= 0:
            raise ValueError("step: must be > 0")
        if t0 is not None and t1 is not None and step and (t1 - t0) / step > 5000:
            raise ValueError("step: too many points")
        filters = {k: one(k) or "" for k in ("service", "stage", "resource", "method")}
        return self.query.stats(filters, t0, t1, step, now=now)
