"""The process model end to end: ``fastgw run`` with 2 workers, real sockets, real signals.

Each test runs twice: on the real engine (``fastgw.server.run_worker`` proxying to a real
backend) and on the stand-in worker (tests/e2e/standin_worker.py, which answers by
itself), so the supervisor is also tested on its own.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import engine_available, requires_engine
from tests.helpers import Backend, Gateway, LoadLoop, Response, free_port, gateway_config, request

STANDIN = [sys.executable, "-m", "tests.e2e.standin_worker", "supervisor", "{config}", "{workers}"]


@pytest.fixture(params=["engine", "standin"])
def engine(request: pytest.FixtureRequest) -> str:
    if request.param == "engine" and not engine_available():
        pytest.skip("needs fastgw.server.run_worker and fastgw.config.load")
    return str(request.param)


@pytest.fixture
def start(engine: str, gateway: Any) -> Any:
    """``start(config) -> Gateway`` with 2 workers, on the engine under test; stopped after."""
    return lambda config: gateway(config, workers=2, command=STANDIN if engine == "standin" else None)


def base_config(backend: Backend) -> dict[str, Any]:
    return gateway_config(free_port(), backend.url, resources={"/ping": {"GET": {}}, "/slow": {"GET": {}}})


def serves(engine: str, resp: Response, path: str) -> bool:
    """Whether ``resp`` is a 200 for ``path`` from the real backend (or the stand-in)."""
    return resp.status == 200 and resp.json()["path"] == path


def test_reload_under_load_loses_nothing(engine: str, start: Callable[..., Gateway], backend: Backend) -> None:
    config = base_config(backend)
    gw = start(config)
    if engine == "engine":
        assert request(gw.port, "GET", "/new").status == 404
    new_config = copy.deepcopy(config)
    new_config["services"][0]["resources"]["/new"] = {"GET": {}}
    with LoadLoop(gw.port, "/ping", threads=4) as load:
        time.sleep(0.4)
        gw.reload(new_config)
        gw.wait_log("reload done: generation 2", timeout=15)
        gw.wait_log("gen 1 exited", count=2, timeout=10)  # both old workers drained
        time.sleep(0.3)
    result = load.result
    assert result.failed == 0, result.errors
    assert result.ok > 50, result
    resp = request(gw.port, "GET", "/new")
    assert serves(engine, resp, "/new")
    if engine == "standin":
        assert "/new" in resp.json()["routes"]


def test_bad_config_on_reload_keeps_old_config(start: Callable[..., Gateway], backend: Backend, engine: str) -> None:
    config = base_config(backend)
    gw = start(config)
    pids = gw.worker_pids()
    bad = copy.deepcopy(config)
    bad["listen"] = "not-a-list"
    gw.reload(bad)
    log = gw.wait_log("reload refused", timeout=10)
    assert "config error: " in log and "listen" in log
    for _ in range(10):
        assert serves(engine, request(gw.port, "GET", "/ping"), "/ping")
    assert gw.worker_pids() == pids
    assert "generation 2" not in gw.log()


def test_killed_worker_is_restarted(start: Callable[..., Gateway], backend: Backend, engine: str) -> None:
    gw = start(base_config(backend))
    old_pid = gw.worker_pids()[0]
    os.kill(old_pid, signal.SIGKILL)
    gw.wait_log("died unexpectedly (killed by SIGKILL)", timeout=10)
    gw.wait_log("ready (restarted)", timeout=10)
    new_pid = gw.worker_pids()[0]
    assert new_pid != old_pid
    for _ in range(20):  # new connections land on both sockets
        assert serves(engine, request(gw.port, "GET", "/ping", headers={"Connection": "close"}), "/ping")


def worker_config_copy(gw: Gateway, slot: int = 0) -> str:
    """The config file the worker in ``slot`` was started on (its --config argument)."""
    with open(f"/proc/{gw.worker_pids()[slot]}/cmdline") as fh:
        argv = fh.read().split("\0")
    return argv[argv.index("--config") + 1]


def test_a_restarted_worker_serves_its_generations_config_not_the_changed_file(
        start: Callable[..., Gateway], backend: Backend, engine: str) -> None:
    config = base_config(backend)
    gw = start(config)
    # Workers start on a private copy of what the supervisor validated.
    copy_path = worker_config_copy(gw)
    folder = os.path.dirname(copy_path)
    assert copy_path != str(gw.config_path) and os.path.basename(folder).startswith("fastgw-config-")
    assert os.stat(folder).st_mode & 0o077 == 0
    # The file changes without a reload (half-edited, or not meant to be live yet)...
    gw.config_path.write_text('{"listen": [')
    for round_ in range(2):
        old_pid = gw.worker_pids()[0]
        os.kill(old_pid, signal.SIGKILL)
        # ...and the worker that replaces a dead one serves what its siblings serve,
        gw.wait_log("ready (restarted)", timeout=10, count=round_ + 1)
        assert gw.worker_pids()[0] != old_pid
        for _ in range(20):
            assert serves(engine, request(gw.port, "GET", "/ping", headers={"Connection": "close"}), "/ping")
        if round_ == 0:     # even when a cleaner of old temporary files takes the copy meanwhile
            shutil.rmtree(os.path.dirname(worker_config_copy(gw)))
    assert "refused the config" not in gw.log()
    # A reload reads the file again: refused, and the running config stays.
    gw.reload()
    gw.wait_log("reload refused", timeout=10)
    assert serves(engine, request(gw.port, "GET", "/ping"), "/ping")
    # The copy goes with the gateway.
    folder = os.path.dirname(worker_config_copy(gw))
    assert os.path.exists(folder)
    gw.stop()
    assert not os.path.exists(folder)


def test_a_killed_supervisors_config_copies_are_removed_by_the_next(
        start: Callable[..., Gateway], backend: Backend) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = os.path.join(tempfile.gettempdir(), f"fastgw-config-{int(gone.stdout)}-left0ver")
    os.mkdir(stale, 0o700)
    with open(os.path.join(stale, "config-1.json"), "w") as fh:
        fh.write("{}")
    start(base_config(backend))
    assert not os.path.exists(stale)


def test_sigterm_finishes_in_flight_requests(start: Callable[..., Gateway], backend: Backend, engine: str) -> None:
    gw = start(base_config(backend))
    out: dict[str, Any] = {}

    def slow() -> None:
        try:
            out["resp"] = request(gw.port, "GET", "/slow?ms=1200")
        except Exception as exc:  # reported by the assertion below
            out["error"] = exc

    thread = threading.Thread(target=slow)
    thread.start()
    if engine == "engine":  # wait until the request is in flight at the backend
        deadline = time.monotonic() + 5
        while not any(r["path"] == "/slow" for r in backend.requests) and time.monotonic() < deadline:
            time.sleep(0.01)
    else:
        time.sleep(0.4)
    started = time.monotonic()
    gw.signal(signal.SIGTERM)
    thread.join(10)
    assert "error" not in out, out
    assert out["resp"].status == 200
    assert gw.stop(timeout=10) == 0
    assert time.monotonic() - started < 8
    assert "stopped" in gw.log()


@requires_engine
def test_admin_reload_uses_the_supervisor(gateway: Callable[..., Gateway], backend: Backend) -> None:
    config = base_config(backend)
    gw = gateway(config, workers=2)
    engine = "engine"
    admin = config["admin"]
    new_config = copy.deepcopy(config)
    new_config["services"][0]["resources"]["/new"] = {"GET": {}}
    gw.write_config(new_config)
    auth = {"Authorization": f"Bearer {admin['token']}"}
    resp = request(admin["port"], "POST", "/reload", headers=auth)
    assert resp.status == 200, resp.body
    gw.wait_log("reload done: generation 2", timeout=15)
    # The old workers get SIGTERM once the new ones are ready; until they stop accepting,
    # one of them may take a connection on the shared socket (seen once in CI).
    gw.wait_log("gen 1 exited", count=2, timeout=10)
    assert serves(engine, request(gw.port, "GET", "/new"), "/new")
    bad = copy.deepcopy(new_config)
    bad["workers"] = 0
    gw.write_config(bad)
    resp = request(admin["port"], "POST", "/reload", headers=auth)
    assert resp.status == 400 and b"workers" in resp.body
    # A config the schema passes but a plugin refuses when the workers build it: the new
    # workers report the exact setting, the reload answers it, the old ones serve on.
    pids = gw.worker_pids()
    refused = copy.deepcopy(new_config)
    refused["services"][0]["resources"]["/new"] = {"GET": {"plugins": [
        {"name": "cors", "config": {"origins": ["*"], "credentials": True}}]}}
    gw.write_config(refused)
    resp = request(admin["port"], "POST", "/reload", headers=auth)
    assert resp.status == 400 and resp.json()["errors"] == [
        "services[0].resources./new.GET.plugins[0].config: credentials: true cannot be combined with "
        "origin '*' (list the origins)"]
    assert "reload failed: generation 3 did not start; old workers keep serving" in gw.log()
    assert serves(engine, request(gw.port, "GET", "/new"), "/new") and gw.worker_pids() == pids


@requires_engine
def test_a_config_a_plugin_refuses_stops_the_start_with_the_setting_named(backend: Backend, tmp_path: Any) -> None:
    config = base_config(backend)
    config["services"][0]["plugins"] = [{"name": "cors", "config": {"origins": ["*"], "credentials": True}}]
    path = tmp_path / "gw.json"
    path.write_text(json.dumps(config))
    result = subprocess.run([sys.executable, "-m", "fastgw", "run", "-c", str(path), "--workers", "2"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "workers failed to start; exiting" in result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("fastgw[supervisor] config error: ")]
    assert errors == ["fastgw[supervisor] config error: services[0].plugins[0].config: "
                      "credentials: true cannot be combined with origin '*' (list the origins)"], result.stderr
