"""``fastgw stats``: the dashboard's numbers in the terminal, read from the admin API.

    fastgw stats --admin http://127.0.0.1:9901 --token TOKEN [--range 300] [--stage shop/prod]
                 [--watch [SECONDS]] [--json]

The token may also come from ``FASTGW_ADMIN_TOKEN``. Exit codes: 0 ok, 1 the admin API
could not be read, 2 bad arguments.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import orjson

from fastgw.cli_admin import admin_call, admin_parser, parse_admin_args
from fastgw.stats import parse_span


def fetch(admin: str, token: str, params: dict[str, str], timeout: float = 5.0) -> dict[str, Any]:
    """``GET {admin}/stats?params`` with the bearer token; raises ``RuntimeError`` on failure."""
    return admin_call(admin, token, "GET", "/stats", params, timeout)


def _ms(v: float) -> str:
    return f"{v:.1f}" if v < 1000 else f"{v / 1000:.2f}s"


def render(data: dict[str, Any], width: int = 100) -> str:
    """A plain-text report: totals line, then one row per resource."""
    t = data["totals"]
    span = data["to"] - data["from"]
    lines = [
        f"fastgw stats · last {span}s · {t['calls']:,} calls · errors {t['error_rate'] * 100:.2f}% "
        f"(4xx {t['4xx']:,}, 5xx {t['5xx']:,}) · avg {_ms(t['avg_ms'])} ms · p99 {_ms(t['p99_ms'])} ms",
        f"running since start: {data['running']['calls']:,} calls",
        "",
    ]
    header = f"{'SERVICE/STAGE':<18} {'METHOD':<7} {'RESOURCE':<30} {'CALLS':>9} {'2xx':>8} {'4xx':>7} " \
             f"{'5xx':>7} {'ERR%':>6} {'AVG ms':>8} {'P99 ms':>8}"
    lines.append(header)
    lines.append("-" * len(header))
    rows = [r for r in data["resources"] if r["calls"]]
    for r in rows:
        where = f"{r['service']}/{r['stage']}"
        lines.append(
            f"{where[:18]:<18} {r['method']:<7} {r['resource'][:30]:<30} {r['calls']:>9,} {r['2xx']:>8,} "
            f"{r['4xx']:>7,} {r['5xx']:>7,} {r['error_rate'] * 100:>6.2f} {_ms(r['avg_ms']):>8} {_ms(r['p99_ms']):>8}"
        )
    if not rows:
        lines.append("(no calls in this period)")
    unmatched = [u for u in data.get("unmatched", []) if u["calls"]]
    if unmatched:
        lines.append("")
        lines.append("unmatched: " + ", ".join(f"{u['host']} {u['calls']:,}" for u in unmatched))
    consumers = sorted((c for c in data.get("consumers", []) if c["calls"]), key=lambda c: -c["calls"])
    if consumers:
        lines.append("consumers: " + ", ".join(f"{c['name']} {c['calls']:,}" for c in consumers[:10]))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Entry point called by ``fastgw.cli`` with the arguments after ``stats``."""
    p = admin_parser("fastgw stats", "Live stats of a running fastgw, from its admin API.")
    p.add_argument("--range", default="5m", help="5m, 1h, 1d, 30d or seconds (default 5m)")
    p.add_argument("--stage", default="", help="SERVICE/STAGE or STAGE to filter on")
    p.add_argument("--resource", default="", help="resource path (includes its subtree)")
    p.add_argument("--watch", nargs="?", const=2.0, type=float, default=None, metavar="SECONDS",
                   help="refresh every SECONDS (default 2) until Ctrl-C")
    p.add_argument("--json", action="store_true", help="print the raw /stats JSON")
    args = parse_admin_args(p, argv)
    if isinstance(args, int):
        return args
    try:
        rng = parse_span(args.range)
    except ValueError as exc:
        print(f"fastgw stats: --range {exc}", file=sys.stderr)
        return 2
    params = {"range": str(rng), "resource": args.resource}
    if "/" in args.stage:
        params["service"], params["stage"] = args.stage.split("/", 1)
    else:
        params["stage"] = args.stage
    while True:
        try:
            data = fetch(args.admin, args.token, params)
        except RuntimeError as exc:
            print(f"fastgw stats: {exc}", file=sys.stderr)
            if args.watch is None:
                return 1
            data = None
        if data is not None:
            text = orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() if args.json else render(data)
            if args.watch is not None and sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            print(text, flush=True)
        if args.watch is None:
            return 0
        try:
            time.sleep(max(0.2, args.watch))
        except KeyboardInterrupt:
            return 0
