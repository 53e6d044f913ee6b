"""fastgw beside nginx, HAProxy, Caddy and a plain aiohttp proxy, measured the same way.

    python bench/run.py                      # all scenarios, all proxies, 3 rounds x 5 s
    python bench/run.py --smoke              # CI: 1 round, 2 s, plain, fastgw + nginx
    python bench/run.py --scenarios plain,post --proxies fastgw,nginx --rounds 5 --duration 10

Method (shared/BENCHMARKING.md): each proxy runs one worker pinned to core 0; wrk
(``-t1 -c64 --latency``) and a fast nginx upstream are pinned to core 1. Each proxy is
started fresh for each measurement, checked (exact upstream body; 401 without the key in
the gateway scenario; the third GET a cache hit in the cache scenario, which Caddy and the
aiohttp proxy have no part in; 401 without a token and with a forged one in the jwt
scenario, which only fastgw and HAProxy can do: JWT checks are NGINX Plus' and a Caddy
plugin) or its row is FAIL, warmed up, then measured. The figure that
compares proxies fairly is the CPU time of the proxy's whole process tree (utime+stime
from /proc/PID/stat) over the window divided by the requests served: the load core is
often the limit, and then req/s says little. A row is flagged when the load core was
>= 95% busy. The proxy order alternates over rounds and medians of rounds are quoted.
Results go to stdout, ``bench/results/<stamp>.json`` and a PNG chart. A scenario nginx
can't do (jwt) compares fastgw with HAProxy instead.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (
    API_KEY,
    BENCH,
    GET_BODY,
    JWT_SECRET,
    LOAD_CPU,
    POST_BODY,
    POST_BODY_SENT,
    PROXY_CPU,
    REPO,
    RESULTS,
    Procs,
    busy_fraction,
    cpu_split_between,
    cpu_times,
    ensure_tools,
    free_port,
    http_call,
    jwt_token,
    jwt_tokens,
    machine_info,
    python_bin,
    start_upstream,
    tail,
    tree_cpu_split,
    wait_http,
    which,
)

ALL_SCENARIOS = ("plain", "post", "gateway", "routes", "close", "cache", "jwt", "ratelimit")
# ratelimit: requests counted per client address (in the node's shared memory: nginx's
# limit_req zone, HAProxy's stick table, fastgw's rate-limiting with policy node), a limit
# no run reaches; /api/limited allows one request a minute, for the check.
RATE_LIMIT = 1_000_000_000
ALL_PROXIES = ("fastgw", "nginx", "haproxy", "caddy", "aiohttp")
# fastgw doing the same job with its own bookkeeping switched off, to price it (issue: the
# counters may cost at most 5%): "-nostats" without the stats counters, "-bare" without
# counters and access log, "-uvloop" with client sockets on uvloop transports instead of
# fastgw's own epoll set. Run them with --proxies fastgw,fastgw-nostats,fastgw-bare,nginx.
FASTGW_VARIANTS = ("fastgw-nostats", "fastgw-bare", "fastgw-uvloop")
# "pipe": bench/experiments/pipe_proxy.c, a byte pipe in C that makes only the system calls a
# keep-alive proxy can't avoid and does nothing else (no parsing, no routing): the least
# CPU per request any proxy can spend here, so nginx µs ÷ pipe µs bounds every proxy's efficiency
# in the same run. Plain and POST only; run it with --proxies fastgw,nginx,pipe.
KNOWN_PROXIES = ALL_PROXIES + FASTGW_VARIANTS + ("pipe",)
PIPE_SOURCE = BENCH / "experiments" / "pipe_proxy.c"
SCRIPTS = {s: BENCH / f"{s}.lua" for s in ALL_SCENARIOS}
NROUTES = 1000
CONNECTIONS = 64
LOAD_BUSY_FLAG = 0.95
GATEWAY_PLUGINS = ("key_auth", "request_id", "response_headers")


class NotApplicable(Exception):
    """This proxy cannot run this scenario (its row reads "n/a: <reason>")."""


# ---- proxy configurations ----------------------------------------------------------------------

@dataclass
class Launch:
    cmd: list[str]
    env: dict[str, str] | None = None
    cwd: Path | None = None
    startup_timeout: float = 15.0


def nginx_launch(scenario: str, port: int, up: int, wd: Path) -> Launch:
    """nginx proxy_pass, upstream keepalive 64, one worker; the gateway job with map/if/add_header."""
    if scenario == "jwt":
        raise NotApplicable("JWT checks are NGINX Plus' (auth_jwt)")
    log = "access_log off;"
    auth = ""
    extra = ""
    if scenario == "gateway":
        log = (f"log_format gw '$remote_addr - $request_id [$time_local] \"$request\" $status "
               f"$body_bytes_sent $request_time $upstream_response_time';\n"
               f"    access_log {wd}/nginx-access.log gw buffer=64k flush=1s;")
        auth = f'map $http_apikey $bench_auth {{ default 0; "{API_KEY}" 1; }}'
        extra = """
            if ($bench_auth = 0) { return 401 '{"error":"unauthorized","status":401}\\n'; }
            proxy_set_header X-Request-Id $request_id;
            add_header X-Request-Id $request_id always;
            add_header X-Gateway bench always;"""
    if scenario == "ratelimit":
        auth = (f"limit_req_zone $binary_remote_addr zone=rl:10m rate={RATE_LIMIT}r/s;\n"
                "    limit_req_zone $binary_remote_addr zone=tiny:1m rate=1r/m;\n"
                "    limit_req_status 429;")
        # nginx counts in milliseconds: two requests within one would exceed any rate
        # without a burst allowance.
        extra = """
            limit_req zone=rl burst=1000000 nodelay;"""
    if scenario == "cache":
        # The cache in files under the work folder, its keys in shared memory (nginx's way).
        auth = (f"proxy_cache_path {wd}/nginx-cache levels=1:2 keys_zone=bench:16m max_size=64m "
                f"inactive=10m use_temp_path=off;")
        extra = """
            proxy_cache bench;
            proxy_cache_valid 200 60s;
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status always;"""
    proxy = f"""proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;{extra}"""
    if scenario == "routes":
        locations = "\n".join(f"        location /r{i}/items/ {{ {proxy} }}" for i in range(NROUTES))
        locations += "\n        location / { return 404; }"
    else:
        locations = f"        location / {{ {proxy} }}"
    if scenario == "ratelimit":
        locations += "\n        location = /api/limited { limit_req zone=tiny; proxy_pass http://up; }"
    conf = f"""
worker_processes 1;
daemon off;
pid {wd}/nginx.pid;
error_log {wd}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
    {log}
    {auth}
    default_type application/json;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    upstream up {{ server 127.0.0.1:{up}; keepalive 64; keepalive_requests 10000000; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
{locations}
    }}
}}
"""
    path = wd / "nginx.conf"
    path.write_text(conf)
    return Launch([which("nginx") or "nginx", "-p", str(wd), "-c", str(path)])


def haproxy_launch(scenario: str, port: int, up: int, wd: Path) -> Launch:
    """HAProxy in http mode, one thread, http-reuse always."""
    fe = []
    glob_log = ""
    if scenario == "gateway":
        glob_log = "    log stdout format raw local0 info"
        fe = [
            "    log global",
            "    option httplog",
            f"    http-request deny deny_status 401 unless {{ req.hdr(apikey) -m str {API_KEY} }}",
            "    unique-id-format %{+X}o%pid-%rt",
            "    unique-id-header X-Request-Id",
            "    http-response set-header X-Request-Id %[unique-id]",
            "    http-response set-header X-Gateway bench",
        ]
    elif scenario == "jwt":
        # fastgw's job: an HS256 token from the issuer "bench", signature, exp and iss checked,
        # the token kept from the upstream.
        fe = [
            "    http-request set-var(txn.bearer) http_auth_bearer",
            "    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')",
            "    http-request deny deny_status 401 unless { var(txn.alg) -m str HS256 }",
            f"    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify(txn.alg,\"{JWT_SECRET}\")"
            " -m int 1 }",
            "    http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss')",
            "    http-request deny deny_status 401 unless { var(txn.iss) -m str bench }",
            "    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')",
            "    http-request set-var(txn.now) date()",
            "    http-request deny deny_status 401 unless { var(txn.exp),sub(txn.now) -m int gt 0 }",
            "    http-request del-header Authorization",
        ]
    elif scenario == "ratelimit":
        fe = [
            "    stick-table type ip size 100k expire 60s store http_req_rate(60s)",
            "    http-request track-sc0 src",
            f"    http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt {RATE_LIMIT} }}",
            "    http-request track-sc1 src table tiny if { path /api/limited }",
            "    http-request deny deny_status 429 if { path /api/limited } { sc_http_req_rate(1) gt 1 }",
        ]
    elif scenario == "routes":
        (wd / "routes.lst").write_text("".join(f"/r{i}/items/\n" for i in range(NROUTES)))
        fe = [f"    http-request deny deny_status 404 unless {{ path_beg -f {wd}/routes.lst }}"]
    be = []
    cache = []
    if scenario == "cache":
        # HAProxy stores only answers that say how long they stay fresh: the upstream's don't.
        be = ["    http-request cache-use bench", "    http-response set-header Cache-Control max-age=60",
              "    http-response cache-store bench"]
        fe = ["    http-response set-header X-Cache-Status HIT if { res.cache_hit }"]
        cache = ["cache bench", "    total-max-size 64", "    max-age 60"]
    conf = "\n".join([
        "global",
        "    nbthread 1",
        "    maxconn 8000",
        glob_log,
        "defaults",
        "    mode http",
        "    timeout connect 5s",
        "    timeout client 300s",
        "    timeout server 300s",
        "    timeout http-keep-alive 300s",
        "    option http-keep-alive",
        "    http-reuse always",
        "frontend fe",
        f"    bind 127.0.0.1:{port}",
        *fe,
        "    default_backend be",
        "backend be",
        *be,
        f"    server s1 127.0.0.1:{up} maxconn 1000",
        *cache,
        *(["backend tiny", "    stick-table type ip size 1k expire 60s store http_req_rate(60s)"]
          if scenario == "ratelimit" else []),
        "",
    ])
    path = wd / "haproxy.cfg"
    path.write_text(conf)
    return Launch([which("haproxy") or "haproxy", "-db", "-f", str(path)])


def caddy_launch(scenario: str, port: int, up: int, wd: Path) -> Launch:
    """Caddy reverse_proxy (admin API off, no automatic HTTPS), GOMAXPROCS=1."""
    if scenario == "cache":
        raise NotApplicable("no cache in stock Caddy (it is a plugin)")
    if scenario == "jwt":
        raise NotApplicable("no JWT check in stock Caddy (it is a plugin)")
    if scenario == "ratelimit":
        raise NotApplicable("no rate limiting in stock Caddy (it is a plugin)")
    rp = f"reverse_proxy 127.0.0.1:{up}"
    body = f"        {rp}"
    if scenario == "gateway":
        body = f"""        log {{
            output file {wd}/caddy-access.log
        }}
        @nokey not header apikey {API_KEY}
        respond @nokey `{{"error":"unauthorized","status":401}}` 401
        header X-Gateway bench
        header X-Request-Id {{http.request.uuid}}
        {rp} {{
            header_up X-Request-Id {{http.request.uuid}}
        }}"""
    elif scenario == "routes":
        paths = " ".join(f"/r{i}/items/*" for i in range(NROUTES))
        body = f"""        @routes path {paths}
        handle @routes {{
            {rp}
        }}
        handle {{
            respond 404
        }}"""
    conf = f"""{{
    admin off
    auto_https off
}}
http://:{port} {{
    bind 127.0.0.1
{body}
}}
"""
    path = wd / "Caddyfile"
    path.write_text(conf)
    env = dict(os.environ, GOMAXPROCS="1", HOME=str(wd), XDG_DATA_HOME=str(wd), XDG_CONFIG_HOME=str(wd))
    return Launch([which("caddy") or "caddy", "run", "--config", str(path), "--adapter", "caddyfile"], env=env)


def aiohttp_launch(scenario: str, port: int, up: int, wd: Path) -> Launch:
    """bench/aiohttp_proxy.py on uvloop with one keep-alive ClientSession."""
    if scenario == "cache":
        raise NotApplicable("a plain proxy: no cache")
    if scenario == "jwt":
        raise NotApplicable("a plain proxy: no JWT check")
    if scenario == "ratelimit":
        raise NotApplicable("a plain proxy: no rate limiting")
    cmd = [python_bin(), str(BENCH / "aiohttp_proxy.py"), "--port", str(port),
           "--upstream", f"http://127.0.0.1:{up}"]
    if scenario == "gateway":
        cmd += ["--gateway", "--access-log", str(wd / "aiohttp-access.log")]
    elif scenario == "routes":
        cmd += ["--routes", str(NROUTES)]
    return Launch(cmd)


def fastgw_config(scenario: str, port: int, up: int, wd: Path, admin_port: int, workers: int = 1) -> dict:
    """The fastgw config doing the scenario's job (see shared/DESIGN.md for the schema)."""
    if scenario == "routes":
        resources: dict = {f"/r{i}/items": {"/{id}": {"GET": {}}} for i in range(NROUTES)}
    else:
        resources = {"/api/orders": {"POST": {}, "/{orderId}": {"GET": {}}}}
    service: dict = {
        "name": "bench",
        "stages": {"prod": {"backend": {"targets": [f"http://127.0.0.1:{up}"]}}},
        "resources": resources,
    }
    cfg: dict = {
        "listen": [{"host": "127.0.0.1", "port": port}],
        "workers": workers,
        "admin": {"host": "127.0.0.1", "port": admin_port, "token": "bench-admin-token"},
        "stats": {"db": None},  # counters on (the gateway's job), no SQLite roll-up file
        "services": [service],
    }
    if scenario == "cache":
        service["plugins"] = [{"name": "proxy-cache"}]      # node-wide memory, ttl 60 s
    if scenario == "ratelimit":
        # The same job as the others': a count per client address, no headers about it.
        def limit(minute: int) -> dict:
            return {"name": "rate-limiting", "config": {"minute": minute, "limit_by": "ip",
                                                        "hide_client_headers": True}}
        service["plugins"] = [limit(RATE_LIMIT)]
        resources["/api/limited"] = {"GET": {"plugins": [limit(1)]}}
    if scenario == "jwt":
        cfg["consumers"] = [{"name": "bench", "credentials": {"jwt": [{"iss": "bench", "secret": JWT_SECRET}]}}]
        service["plugins"] = [{"name": "jwt"}]              # HS256 by the consumer's credential
    if scenario == "gateway":
        cfg["consumers"] = [{"name": "bench", "credentials": {"key-auth": [API_KEY]}}]
        service["plugins"] = [
            {"name": "key-auth"},
            {"name": "request-id", "config": {"traceparent": False}},  # nginx makes no traceparent
            {"name": "response-headers", "config": {"add": {"X-Gateway": "bench"}}},
        ]
        cfg["access_log"] = {"enabled": True, "path": str(wd / "fastgw-access.log")}
    else:
        cfg["access_log"] = {"enabled": False}
    return cfg


def fastgw_command() -> list[str]:
    exe = REPO / ".venv" / "bin" / "fastgw"
    return [str(exe)] if exe.exists() else [python_bin(), "-m", "fastgw"]


def fastgw_launch(scenario: str, port: int, up: int, wd: Path, variant: str = "") -> Launch:
    """``fastgw run -c <generated config> --workers 1`` from the repo."""
    if not (REPO / "fastgw" / "server.py").exists() or not (REPO / "fastgw" / "workers.py").exists():
        raise NotApplicable("engine missing (fastgw/server.py, fastgw/workers.py)")
    if scenario == "gateway":
        missing = [p for p in GATEWAY_PLUGINS if not (REPO / "fastgw" / "plugins" / f"{p}.py").exists()]
        if missing:
            raise NotApplicable(f"plugin missing ({', '.join(missing)})")
    cfg = fastgw_config(scenario, port, up, wd, free_port())
    if variant in ("nostats", "bare"):
        cfg["stats"] = {"enabled": False}
    if variant == "bare":
        cfg["access_log"] = {"enabled": False}
    path = wd / "fastgw.json"
    path.write_text(json.dumps(cfg, indent=1))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["FASTGW_UVLOOP_TRANSPORTS"] = "1" if variant == "uvloop" else "0"
    return Launch([*fastgw_command(), "run", "-c", str(path), "--workers", "1"], env=env, cwd=REPO,
                  startup_timeout=30.0)


def pipe_launch(scenario: str, port: int, up: int, wd: Path) -> Launch:
    """bench/experiments/pipe_proxy.c, built with cc into the run's folder."""
    if scenario not in ("plain", "post"):
        raise NotApplicable("a byte pipe: it forwards plain GETs and POSTs only")
    cc = which("cc") or which("gcc")
    if cc is None:
        raise NotApplicable("no C compiler (apt-get install build-essential)")
    exe = wd / "pipe_proxy"
    if not exe.exists():
        built = subprocess.run([cc, "-O2", "-o", str(exe), str(PIPE_SOURCE)], capture_output=True, text=True)
        if built.returncode != 0:
            raise NotApplicable(f"cc failed: {built.stderr.strip()[-200:]}")
    return Launch([str(exe), str(port), str(up)])


LAUNCHERS: dict[str, Callable[[str, int, int, Path], Launch]] = {
    "fastgw": fastgw_launch,
    "fastgw-nostats": lambda sc, port, up, wd: fastgw_launch(sc, port, up, wd, "nostats"),
    "fastgw-bare": lambda sc, port, up, wd: fastgw_launch(sc, port, up, wd, "bare"),
    "fastgw-uvloop": lambda sc, port, up, wd: fastgw_launch(sc, port, up, wd, "uvloop"),
    "nginx": nginx_launch,
    "haproxy": haproxy_launch,
    "caddy": caddy_launch,
    "aiohttp": aiohttp_launch,
    "pipe": pipe_launch,
}
TOOL_OF = {"nginx": "nginx", "haproxy": "haproxy", "caddy": "caddy"}


# ---- checks: each proxy must do the job before it is timed --------------------------------------

def check(scenario: str, port: int) -> str | None:
    """None when the proxy answers as the scenario requires, else what is wrong."""
    try:
        if scenario in ("plain", "close"):
            hdrs = {"Connection": "close"} if scenario == "close" else {}
            for _ in range(3):
                a = http_call(port, "GET", "/api/orders/123", hdrs)
                if a.status != 200 or a.body != GET_BODY:
                    return f"GET /api/orders/123 -> {a.status} {a.body[:80]!r}"
        elif scenario == "post":
            for _ in range(3):
                a = http_call(port, "POST", "/api/orders", {"Content-Type": "application/json"},
                              POST_BODY_SENT)
                if a.status != 200 or a.body != POST_BODY:
                    return f"POST /api/orders (4 KB) -> {a.status} {a.body[:80]!r}"
        elif scenario == "gateway":
            a = http_call(port, "GET", "/api/orders/123")
            if a.status != 401:
                return f"no key -> {a.status}, not 401"
            a = http_call(port, "GET", "/api/orders/123", {"apikey": "wrong-key"})
            if a.status != 401:
                return f"wrong key -> {a.status}, not 401"
            a = http_call(port, "GET", "/api/orders/123", {"apikey": API_KEY})
            if a.status != 200 or a.body != GET_BODY:
                return f"with key -> {a.status} {a.body[:80]!r}"
            if a.headers.get("x-gateway") != "bench":
                return "no X-Gateway response header"
            if not a.headers.get("x-seen-request-id"):
                return "no X-Request-Id reached the upstream"
        elif scenario == "cache":
            for _ in range(3):
                a = http_call(port, "GET", "/api/orders/123")
                if a.status != 200 or a.body != GET_BODY:
                    return f"GET /api/orders/123 -> {a.status} {a.body[:80]!r}"
            if a.headers.get("x-cache-status", "").lower() != "hit":
                return f"third GET not from the cache (X-Cache-Status: {a.headers.get('x-cache-status')!r})"
        elif scenario == "jwt":
            a = http_call(port, "GET", "/api/orders/123")
            if a.status != 401:
                return f"no token -> {a.status}, not 401"
            forged = jwt_token("user-0", secret="not-the-bench-secret-0123456789ab")
            a = http_call(port, "GET", "/api/orders/123", {"Authorization": f"Bearer {forged}"})
            if a.status != 401:
                return f"forged token -> {a.status}, not 401"
            expired = jwt_token("user-0", exp=1_000_000_000)
            a = http_call(port, "GET", "/api/orders/123", {"Authorization": f"Bearer {expired}"})
            if a.status != 401:
                return f"expired token -> {a.status}, not 401"
            for token in jwt_tokens()[:3]:
                a = http_call(port, "GET", "/api/orders/123", {"Authorization": f"Bearer {token}"})
                if a.status != 200 or a.body != GET_BODY:
                    return f"with a token -> {a.status} {a.body[:80]!r}"
        elif scenario == "ratelimit":
            for _ in range(3):
                a = http_call(port, "GET", "/api/orders/123")
                if a.status != 200 or a.body != GET_BODY:
                    return f"GET /api/orders/123 -> {a.status} {a.body[:80]!r}"
            seen = [http_call(port, "GET", "/api/limited").status for _ in range(3)]
            if seen[0] != 200 or 429 not in seen[1:]:
                return f"GET /api/limited (1 a minute) three times -> {seen}, not 200 then 429"
        elif scenario == "routes":
            for path in ("/r0/items/1", "/r500/items/abc", f"/r{NROUTES - 1}/items/99999"):
                a = http_call(port, "GET", path)
                if a.status != 200 or a.body != GET_BODY:
                    return f"GET {path} -> {a.status} {a.body[:80]!r}"
            a = http_call(port, "GET", f"/r{NROUTES}/items/1")
            if a.status != 404:
                return f"unknown route -> {a.status}, not 404"
    except Exception as exc:  # noqa: BLE001 - any failure makes the row FAIL
        return f"{type(exc).__name__}: {exc}"
    return None


# ---- one measurement ---------------------------------------------------------------------------

WRKJSON = re.compile(r"^WRKJSON (\{.*\})$", re.M)


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # proxy CPU per request
    load_busy: float  # load core (wrk + upstream) busy fraction
    proxy_core_busy: float
    foreign: float  # share of the proxy core used by other processes during the window
    requests: int
    errors: int
    # cpu_us split: the proxy's own code (utime) and the kernel's work for it (stime: its
    # system calls and the loopback TCP processing they carry, the same for every proxy
    # doing the same reads and writes). nginx cpu_us ÷ a proxy's kernel_us is the
    # efficiency that proxy would reach if its own code took no time at all.
    user_us: float = 0.0
    kernel_us: float = 0.0


def run_wrk(script: Path, port: int, seconds: float, procs: Procs, wd: Path) -> dict:
    """Run wrk on the load core; return the WRKJSON summary printed by the script's done()."""
    wrk = which("wrk") or "wrk"
    cmd = [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "5s",
           "-s", str(script), f"http://127.0.0.1:{port}"]
    out = wd / "wrk.out"
    out.write_bytes(b"")
    env = dict(os.environ, FASTGW_BENCH_JWT=",".join(jwt_tokens()))   # for jwt.lua
    proc = procs.spawn(cmd, cpu=LOAD_CPU, log=out, env=env)
    try:
        proc.wait(seconds + 30)
    finally:
        procs.stop(proc)
    text = out.read_text(errors="replace")
    m = WRKJSON.search(text)
    if not m:
        raise RuntimeError(f"wrk printed no summary: {text.strip()[-300:]}")
    return json.loads(m.group(1))


def measure(proxy_proc: subprocess.Popen, script: Path, port: int, seconds: float, procs: Procs,
            wd: Path) -> Sample:
    cpu0, tree0 = cpu_times(), tree_cpu_split(proxy_proc.pid)
    res = run_wrk(script, port, seconds, procs, wd)
    cpu1, tree1 = cpu_times(), tree_cpu_split(proxy_proc.pid)
    user, kernel = cpu_split_between(tree0, tree1)
    proxy_cpu = user + kernel
    n = max(1, res["requests"])
    wall = res["duration_us"] / 1e6
    core_busy = busy_fraction(cpu0, cpu1, PROXY_CPU)
    window = (cpu1[PROXY_CPU][1] - cpu0[PROXY_CPU][1]) / os.sysconf("SC_CLK_TCK")
    foreign = max(0.0, core_busy - proxy_cpu / window) if window > 0 else 0.0
    errors = res["err_connect"] + res["err_read"] + res["err_write"] + res["err_status"] + res["err_timeout"]
    return Sample(
        rps=res["requests"] / wall if wall > 0 else 0.0,
        p50_ms=res["lat_p50_us"] / 1000, p99_ms=res["lat_p99_us"] / 1000,
        cpu_us=proxy_cpu * 1e6 / n, load_busy=busy_fraction(cpu0, cpu1, LOAD_CPU),
        proxy_core_busy=core_busy, foreign=foreign, requests=res["requests"], errors=errors,
        user_us=user * 1e6 / n, kernel_us=kernel * 1e6 / n,
    )


@dataclass
class Row:
    scenario: str
    proxy: str
    status: str = "ok"  # ok | FAIL: ... | n/a: ...
    samples: list[Sample] = field(default_factory=list)

    def med(self, attr: str) -> float | None:
        vals = [getattr(s, attr) for s in self.samples]
        return statistics.median(vals) if vals else None

    def flags(self) -> list[str]:
        out = []
        if self.samples and max(s.load_busy for s in self.samples) >= LOAD_BUSY_FLAG:
            out.append("LOAD>=95%")
        if self.samples and max(s.foreign for s in self.samples) > 0.10:
            out.append(f"NOISY:{max(s.foreign for s in self.samples):.0%}")
        if any(s.errors > 0.01 * max(1, s.requests) for s in self.samples):
            out.append("ERRORS")
        return out


def measure_one(scenario: str, proxy: str, up: int, args: argparse.Namespace, procs: Procs,
                wd: Path, log: Callable[[str], None]) -> Sample | str:
    """Start the proxy fresh, check it, warm it up, measure it, stop it. A str is a FAIL/n/a reason."""
    pdir = wd / f"{scenario}-{proxy}"
    pdir.mkdir(exist_ok=True)
    port = free_port()
    try:
        launch = LAUNCHERS[proxy](scenario, port, up, pdir)
    except NotApplicable as exc:
        return f"n/a: {exc}"
    proc = procs.spawn(launch.cmd, cpu=PROXY_CPU, log=pdir / "proxy.out", env=launch.env, cwd=launch.cwd)
    try:
        if not wait_http(port, proc, launch.startup_timeout):
            why = "exited" if proc.poll() is not None else "did not answer HTTP"
            return f"FAIL: {why}: {tail(pdir / 'proxy.out', 3)}"[:400]
        problem = check(scenario, port)
        if problem:
            if proc.poll() is not None:
                problem += f" (exited: {tail(pdir / 'proxy.out', 3)})"
            return f"FAIL: {problem}"[:400]
        if args.warmup > 0:
            run_wrk(SCRIPTS[scenario], port, args.warmup, procs, pdir)
        sample = measure(proc, SCRIPTS[scenario], port, args.duration, procs, pdir)
        if proc.poll() is not None:
            return f"FAIL: exited during the run: {tail(pdir / 'proxy.out', 4)}"[:300]
        return sample
    except RuntimeError as exc:
        return f"FAIL: {exc}"[:300]
    finally:
        procs.stop(proc)


# ---- report ------------------------------------------------------------------------------------

def efficiency(rows: dict[tuple[str, str], Row], scenario: str, proxy: str, versus: str = "nginx") -> float | None:
    """``versus``'s CPU µs/req ÷ ``proxy``'s (medians of rounds); None without both."""
    base, row = rows.get((scenario, versus)), rows.get((scenario, proxy))
    if not base or not row or not base.samples or not row.samples:
        return None
    return base.med("cpu_us") / row.med("cpu_us")  # type: ignore[operator]


def ceiling(rows: dict[tuple[str, str], Row], scenario: str, proxy: str = "fastgw",
            versus: str = "nginx") -> float | None:
    """``versus``'s CPU µs/req ÷ ``proxy``'s kernel µs/req (medians of rounds): the efficiency
    ``proxy`` would reach if its own code took no time, the kernel's share unchanged. None
    without both rows (or without a kernel figure)."""
    base, row = rows.get((scenario, versus)), rows.get((scenario, proxy))
    if not base or not row or not base.samples or not row.samples:
        return None
    kernel = row.med("kernel_us")
    return base.med("cpu_us") / kernel if kernel else None  # type: ignore[operator]


def paired_ratios(rows: dict[tuple[str, str], Row], scenario: str, proxy: str, versus: str = "nginx") -> list[float]:
    """``versus`` µs/req ÷ proxy µs/req for each round where both were measured."""
    base, row = rows.get((scenario, versus)), rows.get((scenario, proxy))
    if not base or not row:
        return []
    return [b.cpu_us / s.cpu_us for b, s in zip(base.samples, row.samples, strict=False) if s.cpu_us > 0]


def _block(lines: list[str], header: str, scenarios: list[str], line_for: Callable[[str], str | None]) -> None:
    """``header`` then a line per scenario that ``line_for`` has one for (none: no block)."""
    body = [f"  {sc:<8} {text}" for sc in scenarios if (text := line_for(sc)) is not None]
    if body:
        lines.append(header)
        lines.extend(body)


def format_table(rows: dict[tuple[str, str], Row], scenarios: list[str], proxies: list[str],
                 args: argparse.Namespace) -> str:
    lines = []
    head = (f"{'proxy':<15}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU µs/req':>12}{'user':>7}{'kernel':>8}"
            f"{'eff.':>8}{'load core':>11}{'proxy core':>12}  flags")
    for sc in scenarios:
        lines.append("")
        lines.append(f"== {sc}: medians of {args.rounds} round(s) x {args.duration:g} s, "
                     f"wrk -t1 -c{CONNECTIONS}; eff. = nginx µs/req ÷ proxy µs/req")
        lines.append(head)
        for px in proxies:
            row = rows[(sc, px)]
            if not row.samples:
                lines.append(f"{px:<15}{row.status[:110]}")
                continue
            eff = efficiency(rows, sc, px)
            flags = " ".join(row.flags() + ([] if row.status == "ok" else [row.status]))
            lines.append(
                f"{px:<15}{row.med('rps'):>9,.0f}{row.med('p50_ms'):>9.2f}{row.med('p99_ms'):>9.2f}"
                f"{row.med('cpu_us'):>12.1f}{row.med('user_us'):>7.1f}{row.med('kernel_us'):>8.1f}"
                f"{(f'{eff:.2f}x' if eff else '-'):>8}"
                f"{row.med('load_busy') * 100:>10.0f}%{row.med('proxy_core_busy') * 100:>11.0f}%  {flags}")
    lines.append("")
    if "fastgw" in proxies and "nginx" in proxies:
        lines.append("fastgw / nginx efficiency (nginx CPU µs/req ÷ fastgw CPU µs/req; >1 = fastgw cheaper):")
        for sc in scenarios:
            eff = efficiency(rows, sc, "fastgw")
            per = paired_ratios(rows, sc, "fastgw")
            if eff is None and rows[(sc, "nginx")].status.startswith("n/a") and "haproxy" in proxies \
                    and efficiency(rows, sc, "fastgw", "haproxy") is not None:
                # A job nginx can't do (jwt): HAProxy is the reference instead.
                eff, per = efficiency(rows, sc, "fastgw", "haproxy"), paired_ratios(rows, sc, "fastgw", "haproxy")
                rounds = " ".join(f"{r:.2f}" for r in per)
                lines.append(f"  {sc:<8} nginx {rows[(sc, 'nginx')].status}; fastgw / haproxy {eff:.2f}x "
                             f"(median of paired rounds {statistics.median(per):.2f}x; per round: {rounds})")
            elif eff is None:
                why = rows[(sc, "fastgw")].status if rows[(sc, "fastgw")].status != "ok" else "no data"
                lines.append(f"  {sc:<8} -  ({why})")
            else:
                rounds = " ".join(f"{r:.2f}" for r in per)
                lines.append(f"  {sc:<8} {eff:.2f}x  (ratio of medians; median of paired rounds "
                             f"{statistics.median(per):.2f}x; per round: {rounds})")
    def ceiling_line(sc: str) -> str | None:
        top = ceiling(rows, sc)
        if top is None:
            return None
        fg, ng = rows[(sc, "fastgw")], rows[(sc, "nginx")]
        return (f"{top:.2f}x  (user {fg.med('user_us'):.1f} vs {ng.med('user_us'):.1f} µs; "
                f"kernel {fg.med('kernel_us'):.1f} vs {ng.med('kernel_us'):.1f} µs)")

    def bound_line(sc: str) -> str | None:
        bound = efficiency(rows, sc, "pipe")
        if bound is None:
            return None
        eff = efficiency(rows, sc, "fastgw")
        per = " ".join(f"{r:.2f}" for r in paired_ratios(rows, sc, "pipe"))
        return f"{bound:.2f}x (per round: {per})" + (f"; fastgw {eff:.2f}x, {eff / bound:.0%} of it" if eff else "")

    if "nginx" in proxies:
        _block(lines, "fastgw / nginx ceiling (nginx CPU µs/req ÷ fastgw kernel µs/req: the efficiency with "
               "fastgw's own code taking no time; user µs/req fastgw vs nginx):", scenarios, ceiling_line)
        _block(lines, "the bound (nginx CPU µs/req ÷ the C byte pipe's: the most any proxy's efficiency "
               "can read here; fastgw's as a share of it):", scenarios, bound_line)
    for variant, what in (("fastgw-nostats", "stats counters"), ("fastgw-bare", "counters + access log")):
        if "fastgw" not in proxies or variant not in proxies:
            continue
        lines.append(f"cost of fastgw's {what} (CPU µs/req of fastgw over {variant}):")
        for sc in scenarios:
            full, off = rows.get((sc, "fastgw")), rows.get((sc, variant))
            if full and off and full.samples and off.samples:
                cost = full.med("cpu_us") / off.med("cpu_us") - 1  # type: ignore[operator]
                per = [a.cpu_us / b.cpu_us - 1 for a, b in zip(full.samples, off.samples, strict=False)
                       if b.cpu_us > 0]
                lines.append(f"  {sc:<8} {cost * 100:+.1f}%  (per round: "
                             + " ".join(f"{c * 100:+.1f}%" for c in per) + ")")
    return "\n".join(lines)


def to_json(rows: dict[tuple[str, str], Row], scenarios: list[str], proxies: list[str],
            args: argparse.Namespace, info: dict, notes: list[str]) -> dict:
    out_rows = []
    for sc in scenarios:
        for px in proxies:
            row = rows[(sc, px)]
            eff = efficiency(rows, sc, px)
            out_rows.append({
                "scenario": sc, "proxy": px, "status": row.status, "flags": row.flags(),
                "median": None if not row.samples else {
                    k: row.med(k) for k in ("rps", "p50_ms", "p99_ms", "cpu_us", "user_us", "kernel_us",
                                            "load_busy", "proxy_core_busy", "foreign")},
                "efficiency_vs_nginx": eff,
                "rounds": [s.__dict__ for s in row.samples],
            })
    return {
        "machine": info,
        "params": {"rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
                   "connections": CONNECTIONS, "threads": 1, "proxy_cpu": PROXY_CPU, "load_cpu": LOAD_CPU,
                   "scenarios": scenarios, "proxies": proxies, "smoke": args.smoke},
        "fastgw_vs_nginx": {sc: efficiency(rows, sc, "fastgw") for sc in scenarios},
        "fastgw_vs_nginx_paired_rounds": {sc: paired_ratios(rows, sc, "fastgw") for sc in scenarios},
        "fastgw_vs_haproxy": {sc: efficiency(rows, sc, "fastgw", "haproxy") for sc in scenarios},
        "fastgw_vs_nginx_ceiling": {sc: ceiling(rows, sc) for sc in scenarios},
        "rows": out_rows,
        "notes": notes,
    }


def ensure_matplotlib(log: Callable[[str], None]) -> bool:
    """Import matplotlib, installing it into the venv (never elsewhere) when it is missing."""
    try:
        importlib.import_module("matplotlib")
        return True
    except ImportError:
        pass
    if sys.prefix == sys.base_prefix:
        log("matplotlib missing and not running in a venv: no PNG")
        return False
    log("installing matplotlib into the venv for the chart")
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=True,
                       timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        importlib.invalidate_caches()
        importlib.import_module("matplotlib")
        return True
    except (subprocess.SubprocessError, OSError, ImportError):
        log("matplotlib could not be installed: no PNG")
        return False


def plot(data: dict, path: Path) -> None:
    """Grouped bars of CPU µs/req (left) and req/s (right) per scenario and proxy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios, proxies = data["params"]["scenarios"], data["params"]["proxies"]
    by = {(r["scenario"], r["proxy"]): r for r in data["rows"]}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(proxies))
    for ax, key, title in ((axes[0], "cpu_us", "proxy CPU µs per request (lower is better)"),
                           (axes[1], "rps", "requests per second (load core may limit)")):
        for j, px in enumerate(proxies):
            xs, ys = [], []
            for i, sc in enumerate(scenarios):
                med = by[(sc, px)]["median"]
                if med:
                    xs.append(i + (j - (len(proxies) - 1) / 2) * width)
                    ys.append(med[key])
            bars = ax.bar(xs, ys, width, label=px)
            if key == "cpu_us":
                ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(range(len(scenarios)), scenarios)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    m = data["machine"]
    fig.suptitle(f"fastgw bench {m['date']} - {m['cpu_model']}, {m['cpus']} cores, kernel {m['kernel']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- main --------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="fastgw beside nginx, HAProxy, Caddy and aiohttp.")
    ap.add_argument("--smoke", action="store_true", help="CI check: 1 round, 2 s, plain, fastgw+nginx")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per proxy and round")
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each measurement")
    ap.add_argument("--scenarios", default=",".join(ALL_SCENARIOS))
    ap.add_argument("--proxies", default=",".join(ALL_PROXIES))
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and PNG")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get/pip install anything")
    ap.add_argument("--strict", action="store_true", help="exit 1 when any row is FAIL")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, logs)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.rounds, args.duration, args.warmup = 1, 2.0, 1.0
        args.scenarios, args.proxies = "plain", "fastgw,nginx"
    args.scenario_list = [s for s in args.scenarios.split(",") if s]
    args.proxy_list = [p for p in args.proxies.split(",") if p]
    for s in args.scenario_list:
        if s not in ALL_SCENARIOS:
            ap.error(f"unknown scenario {s!r} (known: {', '.join(ALL_SCENARIOS)})")
    for p in args.proxy_list:
        if p not in KNOWN_PROXIES:
            ap.error(f"unknown proxy {p!r} (known: {', '.join(KNOWN_PROXIES)})")
    if args.rounds < 1 or args.duration < 1:
        ap.error("--rounds and --duration must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios, proxies = args.scenario_list, args.proxy_list
    notes: list[str] = []

    def log(msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    if (os.cpu_count() or 1) < 2:
        notes.append("fewer than 2 CPUs: proxy and load share a core, CPU µs/req still valid")
    tools = {"wrk", "nginx"} | {TOOL_OF[p] for p in proxies if p in TOOL_OF}
    found = ensure_tools(sorted(tools), log) if not args.no_install else {t: which(t) for t in tools}
    if not found["wrk"] or not found["nginx"]:
        log("wrk and nginx are required (apt-get install wrk nginx-light)")
        return 2

    procs = Procs()
    procs.install_signal_handlers()
    wd = Path(tempfile.mkdtemp(prefix="fastgw-bench-"))
    os.chmod(wd, 0o755)  # nginx workers run as nobody
    rows = {(s, p): Row(s, p) for s in scenarios for p in proxies}
    for (_s, p), row in rows.items():
        if p in TOOL_OF and not found.get(TOOL_OF[p]):
            row.status = f"n/a: {TOOL_OF[p]} not installed"
    info = machine_info()
    log(f"{info['cpu_model']}, {info['cpus']} cores, kernel {info['kernel']}, load {info['loadavg']}")
    rc = 0
    try:
        up = free_port()
        start_upstream(procs, wd, up)
        for sc in scenarios:
            for rnd in range(args.rounds):
                order = [p for p in proxies if rows[(sc, p)].status == "ok"]
                order = order[rnd % len(order):] + order[:rnd % len(order)] if order else []
                if rnd % 2:
                    order.reverse()
                for px in order:
                    row = rows[(sc, px)]
                    if row.status != "ok":
                        continue
                    log(f"{sc} round {rnd + 1}/{args.rounds}: {px}")
                    res = measure_one(sc, px, up, args, procs, wd, log)
                    if isinstance(res, str):
                        row.status = res
                        log(f"  {px}: {res}")
                    else:
                        row.samples.append(res)
                        log(f"  {px}: {res.rps:,.0f} req/s, {res.cpu_us:.1f} µs/req, "
                            f"load core {res.load_busy:.0%}")
    except KeyboardInterrupt:
        log("interrupted: reporting what was measured")
        notes.append("interrupted")
        rc = 130
    finally:
        procs.stop_all()
        if args.keep:
            log(f"configs and logs kept in {wd}")
        else:
            shutil.rmtree(wd, ignore_errors=True)

    print(format_table(rows, scenarios, proxies, args))
    data = to_json(rows, scenarios, proxies, args, info, notes)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + ("-smoke" if args.smoke else "")
    jpath = args.out / f"{stamp}.json"
    if ensure_matplotlib(log) if not args.no_install else importlib.util.find_spec("matplotlib"):
        try:
            plot(data, args.out / f"{stamp}.png")
            data["png"] = f"{stamp}.png"
        except Exception as exc:  # noqa: BLE001 - the chart is optional
            notes.append(f"no PNG: {exc}")
    else:
        notes.append("no PNG: matplotlib not available")
    jpath.write_text(json.dumps(data, indent=1))
    print(f"\nresults: {jpath}" + (f"  chart: {args.out / data['png']}" if "png" in data else ""))
    if rc == 0 and any(r.status.startswith("FAIL") for r in rows.values()):
        if args.strict:
            rc = 1
        if any(r.status.startswith("FAIL") for (_s, p), r in rows.items() if p == "nginx"):
            rc = 2  # the baseline itself is broken: a setup problem
    return rc


if __name__ == "__main__":
    sys.exit(main())
