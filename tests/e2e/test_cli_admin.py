"""``fastgw reload``, ``fastgw purge`` and ``fastgw targets`` against a running gateway (real
subprocesses, real admin API): what they print and their exit codes."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

from tests.helpers import REPO, Backend, gateway_config, request


def fastgw(*args: str, token: str | None = "test-token", admin: int | None = None) -> subprocess.CompletedProcess[str]:
    extra = ([f"--admin=http://127.0.0.1:{admin}"] if admin else []) + ([f"--token={token}"] if token else [])
    env = {"PATH": "/usr/bin:/bin"}          # no FASTGW_ADMIN_TOKEN from the caller's environment
    return subprocess.run([sys.executable, "-m", "fastgw", *args, *extra], capture_output=True, text=True,
                          cwd=REPO, timeout=90, env=env)


def test_reload_reports_success_and_each_refused_setting(backend: Backend, port: int, gateway: Any) -> None:
    cfg = gateway_config(port, backend.url, {"/a": {"GET": {}}})
    g = gateway(cfg)
    admin = cfg["admin"]["port"]
    new = copy.deepcopy(cfg)
    new["services"][0]["resources"]["/b"] = {"GET": {}}
    g.write_config(new)
    done = fastgw("reload", admin=admin)
    assert done.returncode == 0 and done.stdout.strip() == "reloaded: the new workers serve", done.stderr
    assert request(g.port, "GET", "/b").status == 200
    refused = copy.deepcopy(new)
    refused["services"][0]["plugins"] = [{"name": "cors", "config": {"origins": ["*"], "credentials": True}}]
    refused["services"][0]["resources"]["/c"] = {"GET": {}}
    g.write_config(refused)
    bad = fastgw("reload", admin=admin)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "fastgw reload: admin API answered 400:",
        "  services[0].plugins[0].config: credentials: true cannot be combined with origin '*' (list the origins)"]
    assert request(g.port, "GET", "/c").status == 404          # the old config serves on
    assert fastgw("reload", admin=admin, token="wrong").stderr.strip() == \
        "fastgw reload: the admin API refused the token (401)"
    missing = fastgw("reload", admin=admin, token=None)
    assert missing.returncode == 2 and "--token" in missing.stderr


def test_purge_drops_the_cached_answers(backend: Backend, port: int, gateway: Any) -> None:
    cached = {"/{path*}": {"GET": {"plugins": [{"name": "proxy-cache"}]}}}
    cfg = gateway_config(port, backend.url, cached)
    g = gateway(cfg)
    admin = cfg["admin"]["port"]
    request(g.port, "GET", "/x")
    assert request(g.port, "GET", "/x").headers["x-cache-status"] == "Hit"
    unknown = fastgw("purge", "elsewhere", admin=admin)
    assert unknown.returncode == 1 and unknown.stderr.splitlines() == [
        "fastgw purge: admin API answered 400:", "  no service 'elsewhere' in the running config"]
    assert request(g.port, "GET", "/x").headers["x-cache-status"] == "Hit"
    done = fastgw("purge", "test/prod", admin=admin)
    assert done.returncode == 0 and '"ok":true' in done.stdout, done.stderr
    assert request(g.port, "GET", "/x").headers["x-cache-status"] == "Miss"
    down = fastgw("purge", admin=1)
    assert down.returncode == 1 and down.stderr.startswith("fastgw purge: cannot reach http://127.0.0.1:1")


def test_targets_shows_which_target_is_passed_over(backend: Backend, port: int, gateway: Any) -> None:
    from tests.helpers import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    cfg = gateway_config(port, dead, {"/a": {"GET": {}}})
    cfg["services"][0]["stages"]["prod"]["backend"] = {"targets": [dead, backend.url], "fail_timeout": 30}
    g = gateway(cfg)
    admin = cfg["admin"]["port"]
    assert request(g.port, "GET", "/a").status == 200        # the dead one refused, passed over
    shown = fastgw("targets", admin=admin)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["SERVICE/STAGE", "TARGET", "WEIGHT", "STATE"] and len(lines) == 3
    assert lines[1].startswith("test/prod") and dead in lines[1]
    assert "passed over: failed connections (" in lines[1] and lines[1].endswith(" s left)")
    assert backend.url in lines[2] and lines[2].endswith("  in use")
    as_json = fastgw("targets", "--json", admin=admin)
    assert '"target":"' + backend.url + '"' in as_json.stdout
    assert fastgw("targets", admin=admin, token="wrong").returncode == 1


def test_target_state_names_failures_counted_short_of_max_fails() -> None:
    from fastgw.cli_admin import target_state

    assert target_state({"passed_over_for": 0.0, "failed_connects": 0, "active": None}) == "in use"
    assert target_state({"passed_over_for": 0.0, "active": "unchecked"}) == "in use (not checked yet)"
    assert target_state({"passed_over_for": 0.0, "failed_connects": 1, "active": None}) == \
        "in use (1 failed connection counted)"
    assert target_state({"passed_over_for": 0.0, "failed_connects": 2, "active": "unchecked"}) == \
        "in use (not checked yet; 2 failed connections counted)"
    assert target_state({"passed_over_for": 4.0, "failed_connects": 2, "active": None}) == \
        "passed over: failed connections (4.0 s left)"
