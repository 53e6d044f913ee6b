"""Scale checks of fastgw: idle connections, workers, and a 1 GB streamed body.

    python bench/scale.py [--conns 10000] [--duration 5] [--gigabytes 1] [--only idle,workers,stream]

- **idle**: N concurrent keep-alive client connections (each made one request first) held
  open against one fastgw worker; reports the worker's RSS before and while holding them
  (KiB per connection), checks that a sample of the held connections still answers and
  that a new client is served meanwhile. The open-files limit is raised in-process
  (``resource.setrlimit``), and fastgw inherits it.
- **workers**: plain-scenario throughput (wrk -t1 -c64) with ``--workers 1`` (pinned to
  core 0, wrk and upstream on core 1, as in run.py) and ``--workers 2`` (unpinned: on a
  2-core machine the two workers share the cores with wrk and the upstream, so read it as
  "does a second worker serve", not as scaling).
- **stream**: a 1 GB request body uploaded through fastgw to a counting sink, then a 1 GB
  response body downloaded through it; the RSS of fastgw's processes is sampled every
  50 ms during each transfer: memory must stay flat (streamed, never buffered).

Results are printed and written to ``bench/results/scale-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchlib import (
    BENCH,
    GET_BODY,
    LOAD_CPU,
    PROXY_CPU,
    RESULTS,
    Procs,
    cpu_seconds_between,
    ensure_tools,
    free_port,
    http_call,
    machine_info,
    process_tree,
    raise_nofile,
    rss_kb,
    start_upstream,
    tail,
    tree_cpu_ticks,
    wait_http,
    wait_port,
)
from run import fastgw_command, fastgw_config, run_wrk

STREAM_CHUNK = 1 << 20


# ---- the sink/source upstream (runs as `scale.py --sink PORT` in its own process) ----------------

async def _sink_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """POST: count the body (Content-Length or chunked), answer the count. GET /download/N: N bytes."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target = lines[0].split(" ")[:2]
            headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
            if method == "POST":
                n = 0
                if "content-length" in headers:
                    left = int(headers["content-length"])
                    while left:
                        data = await reader.read(min(left, 1 << 18))
                        if not data:
                            return
                        n += len(data)
                        left -= len(data)
                else:  # chunked
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        if size == 0:
                            await reader.readuntil(b"\r\n")
                            break
                        await reader.readexactly(size + 2)
                        n += size
                body = json.dumps({"received": n}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
            else:
                size = int(target.rsplit("/", 1)[-1]) if target.startswith("/download/") else 0
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: "
                             + str(size).encode() + b"\r\n\r\n")
                chunk = b"\0" * STREAM_CHUNK
                while size > 0:
                    writer.write(chunk[:size])
                    size -= min(size, STREAM_CHUNK)
                    await writer.drain()
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


def sink_main(port: int) -> None:
    async def serve() -> None:
        server = await asyncio.start_server(_sink_conn, "127.0.0.1", port, limit=1 << 16)
        async with server:
            await server.serve_forever()

    try:
        import uvloop

        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())


# ---- fastgw under test ---------------------------------------------------------------------------

class Gateway:
    """One fastgw supervisor started with a generated config."""

    def __init__(self, procs: Procs, wd: Path, up: int, workers: int, cpu: str | None,
                 extra_routes: dict | None = None, idle_timeout: float | None = None) -> None:
        self.port = free_port()
        cfg = fastgw_config("plain", self.port, up, wd, free_port(), workers=workers)
        if extra_routes:
            cfg["services"].append(extra_routes)
        if idle_timeout:
            cfg["limits"] = {"client_idle_timeout": idle_timeout}
        path = wd / f"fastgw-{self.port}.json"
        path.write_text(json.dumps(cfg, indent=1))
        env = dict(os.environ, PYTHONPATH=str(BENCH.parent))
        self.log = wd / f"fastgw-{self.port}.out"
        self.proc = procs.spawn([*fastgw_command(), "run", "-c", str(path), "--workers", str(workers)],
                                cpu=cpu, log=self.log, env=env, cwd=BENCH.parent)
        self.procs = procs
        if not wait_http(self.port, self.proc, 30):
            raise RuntimeError(f"fastgw did not start: {tail(self.log)}")

    def workers(self) -> list[int]:
        return [p for p in process_tree(self.proc.pid) if p != self.proc.pid]

    def rss(self) -> dict[int, int]:
        return {pid: rss_kb(pid) for pid in process_tree(self.proc.pid)}

    def stop(self) -> None:
        self.procs.stop(self.proc)


# ---- idle connections ----------------------------------------------------------------------------

async def _hold(port: int, n: int, hold_s: float, gw: Gateway) -> dict[str, Any]:
    sem = asyncio.Semaphore(256)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failures = 0
    req = b"GET /api/orders/123 HTTP/1.1\r\nHost: bench\r\n\r\n"

    async def one() -> None:
        nonlocal failures
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
                w.write(req)
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await r.readexactly(length)
                conns.append((r, w))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, IndexError, ValueError):
                failures += 1

    workers = gw.workers()
    before = {pid: rss_kb(pid) for pid in workers}
    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(n)))
    opened_s = time.monotonic() - t0
    await asyncio.sleep(hold_s)
    during = {pid: rss_kb(pid) for pid in workers}
    # A fresh client is served while the connections are held.
    loop = asyncio.get_running_loop()
    fresh = await loop.run_in_executor(None, lambda: http_call(port, "GET", "/api/orders/123").body == GET_BODY)
    # A sample of the held connections still answers (they were kept alive).
    alive = 0
    sample = conns[:: max(1, len(conns) // 100)]
    for r, w in sample:
        try:
            w.write(req)
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await r.readexactly(length)
            alive += 1
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, IndexError, ValueError):
            pass
    for _r, w in conns:
        w.close()
    held = len(conns)
    per_worker = {str(pid): {"rss_before_kb": before[pid], "rss_holding_kb": during[pid],
                             "kb_per_conn": round((during[pid] - before[pid]) / max(1, held), 2)}
                  for pid in workers}
    return {"requested": n, "held": held, "failed": failures, "open_s": round(opened_s, 2),
            "fresh_client_ok": fresh, "sample_alive": f"{alive}/{len(sample)}", "workers": per_worker}


def check_idle(procs: Procs, wd: Path, up: int, n: int) -> dict[str, Any]:
    gw = Gateway(procs, wd, up, workers=1, cpu=PROXY_CPU, idle_timeout=600)
    try:
        try:
            import uvloop

            return uvloop.run(_hold(gw.port, n, 2.0, gw))
        except ImportError:
            return asyncio.run(_hold(gw.port, n, 2.0, gw))
    finally:
        gw.stop()


# ---- workers -------------------------------------------------------------------------------------

def check_workers(procs: Procs, wd: Path, up: int, duration: float) -> dict[str, Any]:
    out = {}
    for workers, pin in ((1, PROXY_CPU), (2, None)):
        gw = Gateway(procs, wd, up, workers=workers, cpu=pin)
        try:
            if http_call(gw.port, "GET", "/api/orders/123").body != GET_BODY:
                out[f"{workers}_workers"] = {"status": "FAIL: wrong body"}
                continue
            run_wrk(BENCH / "plain.lua", gw.port, 2, procs, wd)  # warm-up
            t0 = tree_cpu_ticks(gw.proc.pid)
            res = run_wrk(BENCH / "plain.lua", gw.port, duration, procs, wd)
            cpu = cpu_seconds_between(t0, tree_cpu_ticks(gw.proc.pid))
            out[f"{workers}_workers"] = {
                "rps": round(res["requests"] / (res["duration_us"] / 1e6)),
                "p99_ms": res["lat_p99_us"] / 1000,
                "cpu_us_per_req": round(cpu * 1e6 / max(1, res["requests"]), 1),
                "workers_seen": len(gw.workers()),
                "pinning": "core 0" if pin else "none (shares both cores with wrk + upstream)",
            }
        finally:
            gw.stop()
    return out


# ---- 1 GB streamed bodies ------------------------------------------------------------------------

def _sample_rss(gw: Gateway, stop: threading.Event, out: list[int]) -> None:
    pids = process_tree(gw.proc.pid)
    while not stop.is_set():
        out.append(sum(rss_kb(p) for p in pids))
        stop.wait(0.05)


def _read_response(sock: socket.socket) -> tuple[bytes, int, bytes]:
    """Read one response: (head, body bytes received, the body's first 4 KB)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before the head")
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    got = len(rest)
    first = rest[:4096]
    while got < length:
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError(f"closed after {got} of {length} body bytes")
        if len(first) < 4096:
            first += data[: 4096 - len(first)]
        got += len(data)
    return head, got, first


def check_stream(procs: Procs, wd: Path, size: int) -> dict[str, Any]:
    sink = free_port()
    procs.spawn([sys.executable, str(Path(__file__).resolve()), "--sink", str(sink)], cpu=LOAD_CPU,
                log=wd / "sink.out")
    if not wait_port(sink, None, 10):
        raise RuntimeError(f"sink did not start: {tail(wd / 'sink.out')}")
    routes = {"name": "stream", "stages": {"prod": {"hosts": ["stream.bench"],
                                                    "backend": {"targets": [f"http://127.0.0.1:{sink}"]}}},
              "resources": {"/upload": {"POST": {}}, "/download/{size}": {"GET": {}}}}
    gw = Gateway(procs, wd, sink, workers=1, cpu=PROXY_CPU, extra_routes=routes)
    out: dict[str, Any] = {"bytes": size}
    try:
        for kind in ("upload", "download"):
            samples: list[int] = []
            stop = threading.Event()
            base = sum(gw.rss().values())
            sampler = threading.Thread(target=_sample_rss, args=(gw, stop, samples), daemon=True)
            sampler.start()
            t0 = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", gw.port), timeout=120) as s:
                    if kind == "upload":
                        s.sendall(b"POST /upload HTTP/1.1\r\nHost: stream.bench\r\nContent-Type: "
                                  b"application/octet-stream\r\nContent-Length: " + str(size).encode()
                                  + b"\r\n\r\n")
                        chunk = b"u" * STREAM_CHUNK
                        left = size
                        while left:
                            n = min(left, STREAM_CHUNK)
                            s.sendall(chunk[:n])
                            left -= n
                        head, _, body = _read_response(s)
                        ok = head.startswith(b"HTTP/1.1 200") and json.loads(body)["received"] == size
                    else:
                        s.sendall(f"GET /download/{size} HTTP/1.1\r\nHost: stream.bench\r\n\r\n".encode())
                        head, got, _ = _read_response(s)
                        ok = head.startswith(b"HTTP/1.1 200") and got == size
                status = "ok" if ok else f"FAIL: {head[:60]!r}"
            except (OSError, ValueError, IndexError) as exc:
                status = f"FAIL: {type(exc).__name__}: {exc}"
            secs = time.monotonic() - t0
            stop.set()
            sampler.join()
            peak = max(samples) if samples else 0
            out[kind] = {"status": status, "seconds": round(secs, 2), "MB_per_s": round(size / secs / 1e6, 1),
                         "rss_base_kb": base, "rss_peak_kb": peak, "rss_growth_kb": peak - base,
                         "flat": peak - base < 64 * 1024, "samples": len(samples)}
    finally:
        gw.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fastgw scale checks")
    ap.add_argument("--conns", type=int, default=10_000, help="idle keep-alive connections to hold")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per worker count")
    ap.add_argument("--gigabytes", type=float, default=1.0, help="size of the streamed bodies")
    ap.add_argument("--only", default="idle,workers,stream")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--sink", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.sink:
        sink_main(args.sink)
        return 0
    limit = raise_nofile(max(65536, args.conns * 2 + 1024))
    if limit < args.conns + 512:
        print(f"open-files limit {limit} is too low for {args.conns} connections", file=sys.stderr)
        return 2
    found = ensure_tools(["wrk", "nginx"])
    if not all(found.values()):
        print("wrk and nginx are required", file=sys.stderr)
        return 2
    procs = Procs()
    procs.install_signal_handlers()
    results: dict[str, Any] = {"machine": machine_info(), "nofile": limit}
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="fastgw-scale-") as tmp:
        wd = Path(tmp)
        os.chmod(wd, 0o755)
        try:
            up = free_port()
            start_upstream(procs, wd, up)
            for name, fn in (("idle", lambda: check_idle(procs, wd, up, args.conns)),
                             ("workers", lambda: check_workers(procs, wd, up, args.duration)),
                             ("stream", lambda: check_stream(procs, wd, int(args.gigabytes * (1 << 30))))):
                if name not in only:
                    continue
                print(f"[scale] {name} ...", file=sys.stderr, flush=True)
                try:
                    results[name] = fn()
                except RuntimeError as exc:
                    results[name] = {"status": f"FAIL: {exc}"}
                print(f"{name}: {json.dumps(results[name], indent=1)}", flush=True)
        finally:
            procs.stop_all()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
