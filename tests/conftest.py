"""Shared pytest fixtures (see tests/helpers.py for the helpers they wrap).

- ``backend``: a running :class:`helpers.Backend` on 127.0.0.1 (stopped after the test).
- ``port``: a free port on 127.0.0.1.
- ``redis``: a private, running :class:`helpers.RedisServer` (stopped after the test);
  skipped where ``redis-server`` is not installed, except in CI (``CI`` set), where it fails.
- ``gateway``: a factory ``gateway(config: dict, workers=1) -> helpers.Gateway`` that
  starts ``fastgw run`` and waits until all workers serve; every gateway it made is
  killed after the test (its log is printed when the test failed).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# Gateways started by tests keep their stats history ("stats.db": "auto") in a throwaway
# state directory, never in the user's ~/.local/state.
os.environ.setdefault("XDG_STATE_HOME", tempfile.mkdtemp(prefix="fastgw-test-state-"))

import shutil

from tests.helpers import Backend, Gateway, RedisServer, free_port


@pytest.fixture
def backend() -> Iterator[Backend]:
    with Backend() as server:
        yield server


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        pytest.skip("redis-server is not installed")
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gateway(tmp_path: Any, request: pytest.FixtureRequest) -> Iterator[Callable[..., Gateway]]:
    made: list[Gateway] = []

    def start(config: dict[str, Any], workers: int = 1, command: list[str] | None = None) -> Gateway:
        """Start a gateway on ``config`` (``command`` replaces ``fastgw run``, see Gateway)."""
        directory = tmp_path / f"gw{len(made)}"
        directory.mkdir()
        gw = Gateway(config, workers=workers, directory=directory, command=command)
        made.append(gw)
        return gw.start()

    yield start
    for gw in made:
        gw.close()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(f"--- gateway log ({gw.log_path}) ---\n{gw.log()}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item (``item.rep_call``) for fixtures to read."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
