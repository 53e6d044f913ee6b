"""``bench/targets.py``: each target judged from saved run and micro JSON, runs counted.

Synthetic results with known figures (no timing here): a target just met and one just
missed, the p99 and router bounds (at most), a smoke run and a duplicate left out, the
time-stamp filter, and the command's output and exit codes.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def targets():
    spec = importlib.util.spec_from_file_location("bench_targets", REPO / "bench" / "targets.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_targets"] = module       # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _row(scenario: str, proxy: str, cpu_us: float, p99_ms: float, status: str = "ok") -> dict:
    return {"scenario": scenario, "proxy": proxy, "status": status,
            "median": {"cpu_us": cpu_us, "p99_ms": p99_ms, "rps": 1000.0}}


def _run(rows: list[dict], scenarios: list[str], smoke: bool = False) -> dict:
    return {"params": {"scenarios": scenarios, "smoke": smoke}, "rows": rows}


def _by_target(checked) -> dict:
    return {c.target: c for c in checked.checks}


def test_run_targets_met_and_missed(targets) -> None:
    data = _run([
        _row("plain", "fastgw", 10.0, 1.0), _row("plain", "nginx", 12.0, 1.1), _row("plain", "aiohttp", 99.0, 9.0),
        _row("gateway", "fastgw", 10.0, 1.2), _row("gateway", "nginx", 11.9, 1.1),
        _row("gateway", "aiohttp", 100.0, 9.0),
    ], ["plain", "gateway"])
    c = _by_target(targets.check_run(data, "x.json"))
    assert c["plain vs nginx"].value == pytest.approx(1.2) and c["plain vs nginx"].met
    assert not c["gateway vs nginx"].met                    # 1.19: just under
    assert c["gateway vs nginx, floor"].met
    assert not c["plain vs aiohttp"].met and c["gateway vs aiohttp"].met   # 9.9 and 10.0
    assert c["plain p99 / nginx p99"].met                   # 1.0 / 1.1: at most
    assert not c["gateway p99 / nginx p99"].met             # 1.2 / 1.1
    assert "NOT met" in c["gateway vs nginx"].text() and "1.190" in c["gateway vs nginx"].text()


def test_ceiling_shown_where_a_run_split_user_and_kernel_time(targets) -> None:
    """nginx µs ÷ fastgw kernel µs, against the 1.2× bound; runs without the split (older
    files) have no ceiling check."""
    plain_fg = _row("plain", "fastgw", 14.0, 1.0)
    plain_fg["median"].update(user_us=2.0, kernel_us=12.0)
    gw_fg = _row("gateway", "fastgw", 14.0, 1.0)
    gw_fg["median"].update(user_us=3.0, kernel_us=11.0)
    data = _run([plain_fg, _row("plain", "nginx", 14.0, 1.0), gw_fg, _row("gateway", "nginx", 13.0, 1.0)],
                ["plain", "gateway"])
    c = _by_target(targets.check_run(data, "x.json"))
    assert c["plain ceiling (no user time)"].value == pytest.approx(14.0 / 12.0)
    assert not c["plain ceiling (no user time)"].met            # 1.167: out of reach in this run
    assert c["gateway ceiling (no user time)"].value == pytest.approx(13.0 / 11.0)
    old = _run([_row("plain", "fastgw", 14.0, 1.0), _row("plain", "nginx", 14.0, 1.0)], ["plain"])
    assert "plain ceiling (no user time)" not in _by_target(targets.check_run(old, "y.json"))
    assert "plain bound (C byte pipe)" not in _by_target(targets.check_run(old, "y.json"))


def test_bound_shown_where_a_run_measured_the_byte_pipe(targets) -> None:
    data = _run([_row("plain", "fastgw", 14.0, 1.0), _row("plain", "nginx", 15.6, 1.0),
                 _row("plain", "pipe", 12.0, 1.0), _row("post", "fastgw", 14.0, 1.0),
                 _row("post", "nginx", 14.0, 1.0), _row("post", "pipe", 12.0, 1.0)], ["plain", "post"])
    c = _by_target(targets.check_run(data, "x.json"))
    assert c["plain bound (C byte pipe)"].value == pytest.approx(1.3) and c["plain bound (C byte pipe)"].met
    assert not c["post bound (C byte pipe)"].met            # 14 / 12 = 1.167


def test_scenarios_without_a_1_2_target_get_the_floor_only(targets) -> None:
    data = _run([_row("post", "fastgw", 10.0, 1.0), _row("post", "nginx", 8.0, 1.0)], ["post"])
    c = _by_target(targets.check_run(data, "x.json"))
    assert "post vs nginx" not in c
    assert not c["post vs nginx, floor"].met                # 0.8 < 0.9


def test_failed_rows_smoke_runs_and_runs_without_fastgw_are_left_out(targets) -> None:
    rows = [_row("plain", "fastgw", 10.0, 1.0), _row("plain", "nginx", 12.0, 1.0)]
    assert targets.check_run(_run(rows, ["plain"], smoke=True), "s.json") is None
    failed = [_row("plain", "fastgw", 10.0, 1.0, status="FAIL: wrong body"), _row("plain", "nginx", 12.0, 1.0)]
    assert targets.check_run(_run(failed, ["plain"]), "f.json") is None
    no_nginx = targets.check_run(_run([_row("plain", "fastgw", 10.0, 1.0)], ["plain"]), "n.json")
    assert no_nginx is not None and no_nginx.checks == []


def test_router_growth_from_micro(targets) -> None:
    data = {"results": {
        "router cython 10 routes": {"hit_var_ns": 100.0, "hit_var_hot_ns": 100.0},
        "router cython 100000 routes": {"hit_var_ns": 300.0, "hit_var_hot_ns": 130.0},
    }}
    c = _by_target(targets.check_micro(data, "micro-x.json"))
    assert c["router growth, hot"].met and c["router growth, hot"].value == pytest.approx(1.3)
    assert not c["router growth, uniform"].met
    assert targets.check_micro({"results": {}}, "micro-y.json") is None


def test_load_dedups_filters_by_stamp_and_counts(targets, tmp_path: Path) -> None:
    good = _run([_row("plain", "fastgw", 10.0, 1.0), _row("plain", "nginx", 13.0, 1.0)], ["plain"])
    bad = _run([_row("plain", "fastgw", 10.0, 1.0), _row("plain", "nginx", 11.0, 1.0)], ["plain"])
    (tmp_path / "20261126-210000.json").write_text(json.dumps(bad))
    (tmp_path / "20261127-010000.json").write_text(json.dumps(good))
    (tmp_path / "20261127-020000-after-abc1234.json").write_text(json.dumps(bad))
    (tmp_path / "20261127-030000.json").write_text(json.dumps(good))        # the same run, copied
    (tmp_path / "20261127-040000.json").write_text("{not json")
    (tmp_path / "instructions-20261127-050000.json").write_text(json.dumps({"results": {"plain": {}}}))
    runs = targets.load([tmp_path])
    assert [r.source for r in runs] == ["20261126-210000.json", "20261127-010000.json"]   # bad twice = one run
    runs = targets.load([tmp_path], since="20261127")
    assert [r.source for r in runs] == ["20261127-010000.json", "20261127-020000-after-abc1234.json"]
    lines = targets.summary(runs)
    assert any(line.startswith("plain vs nginx ") and "met in  1 of  2 runs" in line for line in lines)


def test_command_output_and_exit_codes(targets, tmp_path: Path, capsys) -> None:
    run = _run([_row("plain", "fastgw", 10.0, 1.0), _row("plain", "nginx", 13.0, 1.0)], ["plain"])
    (tmp_path / "20261127-010000.json").write_text(json.dumps(run))
    assert targets.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "20261127-010000.json:" in out and "plain vs nginx: 1.300 (met, >= 1.2)" in out
    assert targets.main([str(tmp_path / "empty-dir-that-is-not-there")]) == 2
