"""Microbenchmarks of fastgw's hot-path pieces, in ns per operation.

    python bench/micro.py [--quick]

- ``fastgw._core.Router.match`` with 10, 1 000 and 100 000 routes (``/s{i}/items/{id}``
  plus the static ``/s{i}/items``): a hit with a path variable, a static hit, a miss (404),
  each spread uniformly over all routes, and a hit with a variable spread over at most
  1 000 of them (``hit_var_hot``: a gateway's skewed traffic; the table's size still grows),
  and a hit on ``/m{i}/{id}/items`` beside ``/m{i}/items`` over the same 1 000 (``hit_mid_hot``:
  a variable in the middle, beside a static sibling; these two routes per hot i come on
  top of the table's size); the sizes are timed in turn, round
  by round, so that their ratios see the same machine;
  the pure-Python reference ``fastgw.router_ref.Router`` beside it when it exists;
- ``fastgw._core.normalize_path`` on a clean and on an encoded path;
- head scan and header rewrite: a request head (wrk's, and a browser-like one) scanned,
  and rewritten as the backend gets it (``upstream_head_for``: hop-by-hop fields dropped,
  X-Forwarded-*, Via); the bench upstream's response head scanned and rewritten as the
  client gets it (``client_head_for``);
- ``StatsWriter.record`` (one finished request counted in the shared-memory ring).

Each figure is the best of several repeats of a loop over precomputed inputs, and
includes the Python loop and call overhead (shown on its own as "loop overhead"), which
is what a call from Python pays. A part whose module does not exist yet is skipped with
a note. Results are printed and written to ``bench/results/micro-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, for `import fastgw`

from benchlib import RESULTS, machine_info  # noqa: E402

SIZES = (10, 1_000, 100_000)
HOT_SET = 1_000   # distinct routes the "hot" lookups go to (all of them below that size)


def best_ns(fn: Callable[[], None], n_ops: int, repeats: int) -> float:
    """Best ns per op over ``repeats`` calls of ``fn`` (which does ``n_ops`` operations).

    The cyclic collector is off while timing, as timeit does. Otherwise the tuples each
    lookup allocates trigger collections that walk every object built before, the whole
    route table included, and the 100 000-route figures would count that walk: a worker
    freezes its config objects out of the collector after loading (server.py), so there
    it never happens."""
    best = float("inf")
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            fn()
            best = min(best, (time.perf_counter_ns() - t0) / n_ops)
    finally:
        if was_enabled:
            gc.enable()
    return best


IMPORT_ERRORS: dict[str, str] = {}


def try_import(name: str) -> Any | None:
    """The module, or None (a half-built extension may raise anything at import)."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001
        IMPORT_ERRORS[name] = f"{type(exc).__name__}: {exc}"
        return None


def bench_router(results: dict, notes: list[str], repeats: int, n_paths: int) -> None:
    core = try_import("fastgw._core")
    ref = try_import("fastgw.router_ref")
    impls = []
    if core is not None and hasattr(core, "Router"):
        impls.append(("cython", core.Router))
    else:
        notes.append("router: fastgw._core.Router missing (build with `make build`): skipped")
    if ref is not None and hasattr(ref, "Router"):
        impls.append(("python-ref", ref.Router))
    rng = random.Random(42)
    # (row, match, kind, paths) for every size and implementation; timed below in turn.
    cases: list[tuple[str, Callable, str, list[bytes]]] = []
    for size in SIZES:
        n = size // 2  # two routes per i
        var_paths = [f"/s{rng.randrange(n)}/items/{rng.randrange(10**6)}".encode() for _ in range(n_paths)]
        # A gateway's traffic is skewed: most requests go to a few hundred resources. The same
        # lookups spread over at most HOT_SET routes show the router's own growth with the
        # table's size; the uniform ones above add the memory latency of touching any route.
        hot = [rng.randrange(n) for _ in range(min(n, HOT_SET))]
        hot_paths = [f"/s{rng.choice(hot)}/items/{rng.randrange(10**6)}".encode() for _ in range(n_paths)]
        static_paths = [f"/s{rng.randrange(n)}/items".encode() for _ in range(n_paths)]
        miss_paths = [f"/s{rng.randrange(n)}/nothing/{i}".encode() for i in range(n_paths)]
        # A variable in the middle beside a static sibling (/users/{id}/orders beside
        # /users/me): the id is no static child of /s{i}, and learning so must stay cheap.
        mid_paths = [f"/m{rng.choice(hot)}/{rng.randrange(10**6)}/items".encode() for _ in range(n_paths)]
        for label, cls in impls:
            if label == "python-ref" and size > 1_000:
                continue  # slow to build and not the hot path
            router = cls()
            t0 = time.perf_counter()
            for i in range(n):
                router.add(("*",), "", f"/s{i}/items/{{id}}", "GET", ("var", i))
                router.add(("*",), "", f"/s{i}/items", "GET", ("static", i))
            build_s = time.perf_counter() - t0
            for i in sorted(set(hot)):
                router.add(("*",), "", f"/m{i}/{{id}}/items", "GET", ("mid", i))
                router.add(("*",), "", f"/m{i}/items", "GET", ("mid-static", i))
            match = router.match
            check = match(b"example.com", b"GET", var_paths[0])
            if check[0] != 200 or match(b"example.com", b"GET", mid_paths[0])[0] != 200:
                notes.append(f"router {label}: unexpected answer {check!r}; skipped")
                continue
            row = f"router {label} {size} routes"
            results[row] = {"build_ms": round(build_s * 1000, 1)}
            for kind, paths in (("hit_var", var_paths), ("hit_static", static_paths), ("miss", miss_paths),
                                ("hit_var_hot", hot_paths), ("hit_mid_hot", mid_paths)):
                cases.append((row, match, kind, paths))
    # PERF (of the measurement): on a shared machine the state of the caches and of the
    # neighbours moves between minutes, so every size is timed once per round, in turn,
    # and each figure is its best round: the growth ratios compare like with like.
    best: dict[tuple[str, str], float] = {}
    for _ in range(repeats):
        for row, match, kind, paths in cases:
            def loop(paths: list[bytes] = paths, match: Callable = match) -> None:
                for p in paths:
                    match(b"example.com", b"GET", p)
            ns = best_ns(loop, len(paths), 1)
            best[(row, kind)] = min(best.get((row, kind), ns), ns)
    for (row, kind), ns in best.items():
        results[row][f"{kind}_ns"] = round(ns, 1)


def bench_normalize(results: dict, notes: list[str], repeats: int, n_paths: int) -> None:
    core = try_import("fastgw._core")
    if core is None or not hasattr(core, "normalize_path"):
        notes.append("normalize_path missing: skipped")
        return
    norm = core.normalize_path
    row = {}
    for kind, path in (("clean", b"/api/orders/123"), ("encoded", b"/api/%6Frders/./x/../123%2f")):
        paths = [path] * n_paths

        def loop(paths: list[bytes] = paths) -> None:
            for p in paths:
                norm(p)
        row[f"{kind}_ns"] = round(best_ns(loop, n_paths, repeats), 1)
    results["normalize_path"] = row


# Request heads: what wrk sends, and a browser-like one (13 fields, a cookie, an XFF).
WRK_HEAD = b"GET /api/orders/123 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
BROWSER_HEAD = (
    b"GET /api/orders/123?expand=items&page=2 HTTP/1.1\r\nHost: api.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: application/json, text/plain, */*\r\nAccept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\nReferer: https://app.example.com/orders\r\n"
    b"Origin: https://app.example.com\r\nConnection: keep-alive\r\n"
    b"Cookie: session=3f2a9c1e7b6d4a0f8e5c2b1a9d8e7f6c; theme=dark; lang=en\r\n"
    b"Sec-Fetch-Dest: empty\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Site: same-site\r\n"
    b"X-Forwarded-For: 203.0.113.7\r\n\r\n"
)
# What the bench's nginx upstream answers.
UPSTREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 23:44:48 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: 97\r\nConnection: keep-alive\r\n\r\n"
)


def bench_headers(results: dict, notes: list[str], repeats: int, n_ops: int) -> None:
    """Head scan and header rewrite, per head: the request head as the backend gets it
    (hop-by-hop fields dropped, X-Forwarded-*, Via) from a scanned client head, and the
    response head as the client gets it from a scanned backend head."""
    core = try_import("fastgw._core")
    if core is None or not hasattr(core, "upstream_head_for"):
        notes.append("header rewrite: fastgw._core.upstream_head_for missing: skipped")
        return
    items = [None] * n_ops
    for label, raw in (("wrk", WRK_HEAD), ("browser", BROWSER_HEAD)):
        head = core.parse_request_head(raw)
        parse, rewrite = core.parse_request_head, core.upstream_head_for

        def scan(raw: bytes = raw, head: Any = head, parse: Callable = parse) -> None:
            for _ in items:
                parse(raw, head)

        def build(head: Any = head, rewrite: Callable = rewrite) -> None:
            for _ in items:
                rewrite(head)
        results[f"request head {label} ({len(raw)} B)"] = {
            "scan_ns": round(best_ns(scan, n_ops, repeats), 1),
            "rewrite_ns": round(best_ns(build, n_ops, repeats), 1)}
    resp = core.parse_response_head(UPSTREAM_HEAD)
    parse_resp, client_head = core.parse_response_head, core.client_head_for

    def scan_resp() -> None:
        for _ in items:
            parse_resp(UPSTREAM_HEAD)

    def build_resp() -> None:
        for _ in items:
            client_head(resp)
    results[f"response head nginx ({len(UPSTREAM_HEAD)} B)"] = {
        "scan_ns": round(best_ns(scan_resp, n_ops, repeats), 1),
        "rewrite_ns": round(best_ns(build_resp, n_ops, repeats), 1)}


def bench_stats(results: dict, notes: list[str], repeats: int, n_ops: int) -> None:
    stats = try_import("fastgw.stats")
    if stats is None or not hasattr(stats, "StatsRegion"):
        notes.append("stats: fastgw.stats.StatsRegion missing: skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        region = stats.StatsRegion.create(workers=1, max_keys=256, directory=tmp)
        try:
            for label, pure in (("cython", False), ("python", True)):
                try:
                    writer = region.writer(0, 0, pure=pure)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    notes.append(f"stats {label} writer: {exc}")
                    continue
                record = writer.record
                slots = [i % 200 + 1 for i in range(n_ops)]

                def loop(slots: list[int] = slots, record: Callable = record) -> None:
                    for s in slots:
                        record(s, 200, 1234, 1000, 150, 230, 0)
                results[f"StatsWriter.record {label}"] = {"ns": round(best_ns(loop, n_ops, repeats), 1)}
                del record, writer, loop
        finally:
            region.close()


def bench_overhead(results: dict, repeats: int, n_ops: int) -> None:
    items = [b"x"] * n_ops

    def f(a: bytes, b: bytes, c: bytes) -> None:
        return None

    def loop() -> None:
        for p in items:
            f(b"h", b"GET", p)
    results["loop overhead (3-arg Python call)"] = {"ns": round(best_ns(loop, n_ops, repeats), 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fastgw microbenchmarks (ns/op)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats and inputs")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    repeats, n = (3, 20_000) if args.quick else (7, 100_000)
    results: dict[str, dict] = {}
    notes: list[str] = []
    bench_overhead(results, repeats, n)
    bench_router(results, notes, repeats, n)
    bench_normalize(results, notes, repeats, n)
    bench_headers(results, notes, repeats, n)
    bench_stats(results, notes, repeats, n)
    width = max(len(k) for k in results)
    for name, row in results.items():
        print(f"{name:<{width}}  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    notes += [f"import {k}: {v}" for k, v in IMPORT_ERRORS.items()]
    for note in notes:
        print(f"note: {note}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"micro-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": machine_info(), "results": results, "notes": notes}, indent=1))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
