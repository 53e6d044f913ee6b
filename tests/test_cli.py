"""The ``fastgw`` command line: ``validate`` and ``routes`` (run as real subprocesses)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import REPO, free_port, gateway_config

DEMO = REPO / "examples" / "demo.json"


def fastgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastgw", *args], capture_output=True, text=True, cwd=REPO, timeout=30
    )


def write(tmp_path: Path, config: dict[str, Any]) -> str:
    path = tmp_path / "gw.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_validate_ok_counts_routes(tmp_path: Path) -> None:
    config = gateway_config(8080, "http://127.0.0.1:9000", resources={
        "/orders": {"GET": {}, "POST": {}, "/{id}": {"GET": {}}},
    })
    result = fastgw("validate", write(tmp_path, config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok: 3 routes"


def test_validate_demo_config() -> None:
    result = fastgw("validate", str(DEMO))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok: ")


def test_validate_bad_config_prints_each_error(tmp_path: Path) -> None:
    config = gateway_config(8080, "http://127.0.0.1:9000", resources={"/orders": {"GET": {"backend_path": 5}}})
    config["workers"] = 0
    result = fastgw("validate", write(tmp_path, config))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) >= 2, result.stdout
    assert any(line.startswith("workers") for line in lines), lines
    assert any("resources./orders.GET.backend_path" in line for line in lines), lines
    assert "error" in result.stderr


def test_validate_builds_the_plugins_as_a_worker_would(tmp_path: Path) -> None:
    # Settings no schema can judge: the plugins refuse them when built.
    cors = {"name": "cors", "config": {"origins": ["*"], "credentials": True}}
    config = gateway_config(8080, "http://127.0.0.1:9000", resources={
        "/a": {"GET": {"plugins": [cors]}, "POST": {"plugins": [cors]}},
        "/b": {"GET": {"plugins": [{"name": "response-transformer", "config": {"json": {"remove": ["/x/~7"]}}}]}},
    })
    result = fastgw("validate", write(tmp_path, config))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "services[0].resources./a.GET.plugins[0].config: credentials: true cannot be combined with origin '*' "
        "(list the origins)",
        "services[0].resources./a.POST.plugins[0].config: credentials: true cannot be combined with origin '*' "
        "(list the origins)",
        "services[0].resources./b.GET.plugins[0].config: json.remove: '/x/~7': '~' must be followed by 0 or 1 "
        "(RFC 6901)",
    ]
    # A service-level plugin is one entry: its error is one line, whatever the routes.
    config = gateway_config(8080, "http://127.0.0.1:9000", resources={"/a": {"GET": {}}, "/b": {"GET": {}}})
    config["services"][0]["plugins"] = [cors]
    result = fastgw("validate", write(tmp_path, config))
    assert result.returncode == 1 and result.stdout.splitlines() == [
        "services[0].plugins[0].config: credentials: true cannot be combined with origin '*' (list the origins)"]


def test_validate_missing_and_broken_files(tmp_path: Path) -> None:
    result = fastgw("validate", str(tmp_path / "nope.json"))
    assert result.returncode == 1 and result.stdout.strip()
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = fastgw("validate", str(broken))
    assert result.returncode == 1 and result.stdout.strip()


def test_routes_prints_the_tree_per_service_and_stage() -> None:
    result = fastgw("routes", str(DEMO))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    lines = out.splitlines()
    assert "service shop" in lines
    prod = next(line for line in lines if line.startswith("  stage prod"))
    assert "targets: http://127.0.0.1:9101" in prod
    alpha = next(line for line in lines if line.startswith("  stage alpha"))
    assert "prefix: /alpha" in alpha
    # nested paths, methods with their backend paths (stage variables filled in)
    assert "    /orders" in lines
    assert any(line.strip() == "GET     -> /v1/orders  plugins: request-id, cors" for line in lines)
    assert any(line.strip() == "GET     -> /v2/orders/{id}  plugins: request-id, cors" for line in lines)
    assert "      /{id}" in lines
    assert any(line.strip() == "/static/{path*}" for line in lines)
    assert any(line.strip() == "GET     -> /assets/{path}  plugins: proxy-cache" for line in lines)
    assert any(line.strip() == "ANY     -> (same path)" for line in lines)


def test_routes_shows_plugins(tmp_path: Path) -> None:
    config = gateway_config(8080, "http://127.0.0.1:9000", resources={
        "/a": {"plugins": [{"name": "request-id"}], "GET": {}},
    })
    result = fastgw("routes", write(tmp_path, config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "plugins: request-id" in result.stdout


def test_routes_shows_weights_and_balance(tmp_path: Path) -> None:
    config = gateway_config(8080, "http://127.0.0.1:9000")
    config["services"][0]["stages"]["prod"]["backend"] = {
        "targets": ["http://127.0.0.1:9000", {"url": "http://127.0.0.1:9001", "weight": 3}],
        "balance": "least_conn"}
    result = fastgw("routes", write(tmp_path, config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("targets: http://127.0.0.1:9000 (weight 1), http://127.0.0.1:9001 (weight 3) (least_conn)"
            in result.stdout)
    config["services"][0]["stages"]["prod"]["backend"].update(balance="hash", hash_key="cookie:sid")
    result = fastgw("routes", write(tmp_path, config))
    assert "(weight 3) (hash on cookie:sid)" in result.stdout, result.stdout


def test_routes_bad_config_exits_1(tmp_path: Path) -> None:
    result = fastgw("routes", write(tmp_path, {"services": "x"}))
    assert result.returncode == 1
    assert "services" in result.stderr


def test_run_refuses_a_port_another_process_listens_on(tmp_path: Path) -> None:
    # SO_REUSEPORT must not let a second gateway silently share a busy port.
    port = free_port()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        cfg = tmp_path / "gw.json"
        cfg.write_text(json.dumps(gateway_config(port, "http://127.0.0.1:9")))
        proc = subprocess.run([sys.executable, "-m", "fastgw", "run", "-c", str(cfg)], capture_output=True,
                              text=True, timeout=30, cwd=REPO)
        assert proc.returncode != 0
        assert "already in use" in proc.stderr
    finally:
        holder.close()
