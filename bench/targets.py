"""The performance targets, checked against saved runs: which were met, in how many runs.

    python bench/targets.py [--since 20261127] [--brief] [FILE_OR_DIR ...]
    (default: bench/results and docs/bench-history)

Reads the JSON that ``run.py`` writes (CPU µs per request of each proxy, per round) and the
JSON of ``micro.py`` (router ns per match), and checks each against the targets below, run
by run. On a shared machine one run's ratio moves by ±10–20 %, so a target is judged by
how many runs meet it, not by one: the last lines count them. Nothing is timed here.

Targets (the performance issue's):

- ``plain`` and ``gateway``: fastgw's efficiency (nginx µs/req ÷ fastgw µs/req, ratio of
  the medians of the run's rounds) at least 1.2×, and never below 0.9×;
- every scenario: at least 10× the aiohttp proxy's efficiency (aiohttp µs ÷ fastgw µs);
- every scenario: fastgw's p99 at most nginx's (medians of rounds);
- router: match cost at 100 000 routes at most 1.3× the cost at 10 (``hot``: hits over
  1 000 of the routes; ``uniform``: over all of them, shown, the same bound).

Shown beside them where a run split each proxy's CPU into its own code (user) and the
kernel's work for it (``user_us``, ``kernel_us``): the ``plain`` and ``gateway`` ceiling,
nginx µs/req ÷ fastgw's kernel µs/req — the efficiency fastgw would reach if its own code
took no time at all — against the same 1.2× bound: a run whose ceiling is under it could
not have met the target whatever fastgw's code did. And where a run measured the C byte
pipe (``--proxies ...,pipe``: only the system calls a keep-alive proxy can't avoid), its
bound, nginx µs/req ÷ the pipe's, against the same bound: what a proxy doing no work at
all reads in that run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
DEFAULT_SOURCES = (BENCH / "results", BENCH.parent / "docs" / "bench-history")

EFFICIENCY_MIN = 1.2      # plain and gateway, fastgw vs nginx
EFFICIENCY_FLOOR = 0.9    # never below, once reached
AIOHTTP_MIN = 10.0        # fastgw vs the aiohttp proxy, every scenario
ROUTER_GROWTH_MAX = 1.3   # router match cost, 100 000 routes over 10
RATIO_SCENARIOS = ("plain", "gateway")


@dataclass
class Check:
    """One target in one run: the figure, its bound, and whether the figure meets it."""
    target: str
    value: float
    bound: float
    at_most: bool = False       # the figure must be <= bound (else >=)

    @property
    def met(self) -> bool:
        return self.value <= self.bound if self.at_most else self.value >= self.bound

    def text(self) -> str:
        sign = "<=" if self.at_most else ">="
        return f"{self.target}: {self.value:.3f} ({'met' if self.met else 'NOT met'}, {sign} {self.bound:g})"


@dataclass
class RunChecks:
    source: str                   # the result file's name
    checks: list[Check] = field(default_factory=list)


def _median_of(row: dict, key: str) -> float | None:
    med = row.get("median") or {}
    value = med.get(key)
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def check_run(data: dict, source: str) -> RunChecks | None:
    """The targets a run.py JSON can show (None: a smoke run, or no scenario where fastgw
    was measured; a target whose other proxy is missing from the run is left out)."""
    rows = {(r.get("scenario"), r.get("proxy")): r for r in data.get("rows", []) if r.get("status") == "ok"}
    scenarios = [s for s in data.get("params", {}).get("scenarios", []) if (s, "fastgw") in rows]
    if data.get("params", {}).get("smoke") or not scenarios:
        return None
    out = RunChecks(source)
    for sc in scenarios:
        fg = _median_of(rows[(sc, "fastgw")], "cpu_us")
        ng = _median_of(rows.get((sc, "nginx"), {}), "cpu_us")
        if fg is None:
            continue
        if ng is not None:
            eff = ng / fg
            if sc in RATIO_SCENARIOS:
                out.checks.append(Check(f"{sc} vs nginx", eff, EFFICIENCY_MIN))
                kernel = _median_of(rows[(sc, "fastgw")], "kernel_us")
                if kernel is not None:
                    out.checks.append(Check(f"{sc} ceiling (no user time)", ng / kernel, EFFICIENCY_MIN))
            out.checks.append(Check(f"{sc} vs nginx, floor", eff, EFFICIENCY_FLOOR))
            p99_fg = _median_of(rows[(sc, "fastgw")], "p99_ms")
            p99_ng = _median_of(rows[(sc, "nginx")], "p99_ms")
            if p99_fg is not None and p99_ng is not None:
                out.checks.append(Check(f"{sc} p99 / nginx p99", p99_fg / p99_ng, 1.0, at_most=True))
        pipe = _median_of(rows.get((sc, "pipe"), {}), "cpu_us")
        if ng is not None and pipe is not None:
            out.checks.append(Check(f"{sc} bound (C byte pipe)", ng / pipe, EFFICIENCY_MIN))
        aio = _median_of(rows.get((sc, "aiohttp"), {}), "cpu_us")
        if aio is not None:
            out.checks.append(Check(f"{sc} vs aiohttp", aio / fg, AIOHTTP_MIN))
    return out


def check_micro(data: dict, source: str) -> RunChecks | None:
    """The router target from a micro.py JSON (None: no router rows at 10 and 100 000)."""
    results = data.get("results", {})
    small, large = results.get("router cython 10 routes"), results.get("router cython 100000 routes")
    if not small or not large:
        return None
    out = RunChecks(source)
    for label, key in (("router growth, hot", "hit_var_hot_ns"), ("router growth, uniform", "hit_var_ns")):
        if small.get(key) and large.get(key):
            out.checks.append(Check(label, large[key] / small[key], ROUTER_GROWTH_MAX, at_most=True))
    return out


def stamp_of(path: Path) -> str:
    """The time stamp a result file is named by (``20261127-022859``, ``micro-20261127-030451``,
    ``20261127-024935-before-2a85997``): its first two dash-separated numbers."""
    parts = [p for p in path.stem.split("-") if p.isdigit()]
    return "-".join(parts[:2])


def load(paths: Iterable[Path], since: str = "") -> list[RunChecks]:
    """Every readable run/micro JSON under ``paths`` (files or folders) stamped ``since`` or
    later, in stamp order."""
    files: list[Path] = []
    for p in paths:
        files.extend(p.glob("*.json") if p.is_dir() else [p])
    files = sorted((f for f in files if stamp_of(f) >= since), key=stamp_of)
    out: list[RunChecks] = []
    seen: set[str] = set()
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        # The same run is often both in results/ and, copied, in docs/bench-history/.
        key = json.dumps(data.get("rows") or data.get("results"), sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        checked = check_micro(data, f.name) if f.name.startswith("micro-") else check_run(data, f.name)
        if checked is not None and checked.checks:
            out.append(checked)
    return out


def summary(runs: list[RunChecks]) -> list[str]:
    """Per target: in how many of the runs that measured it it was met, and the range."""
    by_target: dict[str, list[Check]] = {}
    for run in runs:
        for c in run.checks:
            by_target.setdefault(c.target, []).append(c)
    lines = []
    for target, checks in by_target.items():
        met = sum(c.met for c in checks)
        lo, hi = min(c.value for c in checks), max(c.value for c in checks)
        lines.append(f"{target:<31} met in {met:>2} of {len(checks):>2} runs  (range {lo:.3f}–{hi:.3f})")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sources", nargs="*", type=Path, help="JSON files or folders (default: results and history)")
    ap.add_argument("--since", default="", metavar="STAMP",
                    help="only results stamped this or later (e.g. 20261127 or 20261127-020000)")
    ap.add_argument("--brief", action="store_true", help="only the summary")
    args = ap.parse_args(argv)
    runs = load(args.sources or [p for p in DEFAULT_SOURCES if p.exists()], args.since)
    if not runs:
        print("no run.py or micro.py results found", file=sys.stderr)
        return 2
    if not args.brief:
        for run in runs:
            print(f"{run.source}:")
            for c in run.checks:
                print(f"  {c.text()}")
        print()
    print("\n".join(summary(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
