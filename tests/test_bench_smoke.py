"""Smoke test of the bench suite: ``bench/run.py --smoke`` produces its table and JSON.

It runs the real runner (fastgw and nginx, plain scenario, one round of 2 s) as a
subprocess when nginx and wrk are installed, and skips otherwise. No timing is asserted:
the machine is shared and noisy; only a broken setup may fail this test (the nginx
baseline row must be measured).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _have(tool: str) -> bool:
    return shutil.which(tool) is not None or Path(f"/usr/sbin/{tool}").exists()


@pytest.mark.timeout(300)
@pytest.mark.skipif(not (_have("nginx") and _have("wrk")), reason="nginx and wrk are not installed")
def test_bench_smoke(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--no-install", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=280, cwd=REPO,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "== plain" in res.stdout and "CPU µs/req" in res.stdout, out[-3000:]
    files = list(tmp_path.glob("*-smoke.json"))
    assert len(files) == 1, out[-3000:]
    data = json.loads(files[0].read_text())
    assert data["params"]["smoke"] is True
    assert data["machine"]["cpu_model"] and data["machine"]["kernel"]
    rows = {(r["scenario"], r["proxy"]): r for r in data["rows"]}
    assert set(rows) == {("plain", "fastgw"), ("plain", "nginx")}
    nginx = rows[("plain", "nginx")]
    assert nginx["status"] == "ok", nginx
    assert nginx["median"]["rps"] > 0 and nginx["median"]["cpu_us"] > 0
    # Its CPU split into its own code and the kernel's work for it (loopback TCP: never 0).
    med = nginx["median"]
    assert med["kernel_us"] > 0 and med["user_us"] >= 0
    assert med["user_us"] + med["kernel_us"] == pytest.approx(med["cpu_us"])
    assert "kernel" in res.stdout
    # fastgw is measured, or its row says why not (n/a while the engine is missing, FAIL on a wrong answer).
    fastgw = rows[("plain", "fastgw")]
    assert fastgw["status"] == "ok" or fastgw["status"].startswith(("n/a", "FAIL")), fastgw


@pytest.mark.timeout(300)
@pytest.mark.skipif(not (_have("nginx") and _have("valgrind") and _have("callgrind_control")),
                    reason="nginx and valgrind are not installed")
def test_instructions_smoke(tmp_path: Path) -> None:
    """bench/instructions.py counts a worker's instructions per request under callgrind
    (here with a plugin added to the scenario's route, as --add-plugin prices one)."""
    acl = {"name": "acl", "config": {"allow_groups": ["bench"]}}
    res = subprocess.run(
        [sys.executable, str(REPO / "bench" / "instructions.py"), "--scenarios", "gateway",
         "--requests", "200", "--add-plugin", json.dumps(acl), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=280, cwd=REPO,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    data = json.loads(next(tmp_path.glob("instructions-*.json")).read_text())
    # A request through the gateway route costs thousands of instructions, not zero (an
    # instrumentation that never switched on) and not millions (startup counted).
    assert 2_000 < data["instructions_per_request"]["gateway"]["this tree"] < 500_000, data
    assert data["added_plugins"] == [acl]      # and every request passed it (drive() wants 200s)


def test_cpu_split_and_ceiling() -> None:
    """The runner's user/kernel split of a process tree's CPU and the ceiling it shows
    (nginx µs ÷ fastgw kernel µs), from known figures."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import benchlib
        import run
    finally:
        sys.path.remove(str(REPO / "bench"))
    tck = benchlib.CLK_TCK
    before = {10: (100, 50), 11: (7, 3)}
    after = {10: (100 + tck, 50 + 3 * tck), 11: (7, 3 + tck), 12: (tck, 0)}   # 12: new, counts whole
    assert benchlib.cpu_split_between(before, after) == pytest.approx((2.0, 4.0))
    own = benchlib.tree_cpu_split(os.getpid())
    assert own[os.getpid()][0] + own[os.getpid()][1] == benchlib.tree_cpu_ticks(os.getpid())[os.getpid()]

    def sample(cpu: float, user: float) -> run.Sample:
        return run.Sample(rps=1.0, p50_ms=1.0, p99_ms=1.0, cpu_us=cpu, load_busy=0.5, proxy_core_busy=0.5,
                          foreign=0.0, requests=1, errors=0, user_us=user, kernel_us=cpu - user)

    rows = {("plain", "fastgw"): run.Row("plain", "fastgw", samples=[sample(14.0, 2.0), sample(15.0, 2.0)]),
            ("plain", "nginx"): run.Row("plain", "nginx", samples=[sample(16.0, 3.0), sample(17.0, 3.0)])}
    assert run.ceiling(rows, "plain") == pytest.approx(16.5 / 12.5)
    assert run.efficiency(rows, "plain", "fastgw") == pytest.approx(16.5 / 14.5)
    assert run.ceiling(rows, "gateway") is None


def test_micro_header_rewrite_rows() -> None:
    """bench/micro.py's head scan and rewrite rows: the heads it times are valid, the
    rewrite builds what the backend and the client get (no timing asserted)."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import micro
    finally:
        sys.path.remove(str(REPO / "bench"))
    from fastgw._core import client_head_for, parse_request_head, parse_response_head, upstream_head_for

    up = upstream_head_for(parse_request_head(micro.BROWSER_HEAD), b"10.0.0.1")
    assert up.startswith(b"GET /api/orders/123?expand=items&page=2 HTTP/1.1\r\nHost: api.example.com\r\n")
    assert b"\r\nConnection:" not in up                                  # hop-by-hop dropped
    assert b"\r\nX-Forwarded-For: 203.0.113.7, 10.0.0.1\r\n" in up and b"\r\nVia: 1.1 fastgw\r\n" in up
    assert b"\r\nCookie: session=3f2a9c1e7b6d4a0f8e5c2b1a9d8e7f6c; theme=dark; lang=en\r\n" in up
    down = client_head_for(parse_response_head(micro.UPSTREAM_HEAD), body=b"x" * 97)
    assert down.startswith(b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n") and b"Connection" not in down
    assert down.endswith(b"Content-Length: 97\r\n\r\n" + b"x" * 97)
    results: dict = {}
    notes: list[str] = []
    micro.bench_headers(results, notes, repeats=1, n_ops=10)
    assert not notes and len(results) == 3
    assert all(row["scan_ns"] > 0 and row["rewrite_ns"] > 0 for row in results.values())


@pytest.mark.timeout(300)
@pytest.mark.skipif(not (_have("nginx") and _have("wrk") and _have("haproxy")),
                    reason="nginx, wrk and haproxy are not installed")
def test_jwt_scenario_checks_both_proxies(tmp_path: Path) -> None:
    """The jwt scenario: the bench's tokens verify (PyJWT, the bench's secret); fastgw and
    HAProxy pass the scenario's check (401 without a token, with a forged or an expired one;
    200 with the clients' tokens) and are measured; nginx's row says why it can't."""
    import jwt as pyjwt

    sys.path.insert(0, str(REPO / "bench"))
    try:
        import benchlib
    finally:
        sys.path.remove(str(REPO / "bench"))
    tokens = benchlib.jwt_tokens()
    assert len(set(tokens)) == benchlib.JWT_CLIENTS
    claims = pyjwt.decode(tokens[0], benchlib.JWT_SECRET, algorithms=["HS256"])
    assert claims == {"iss": "bench", "sub": "user-0", "exp": benchlib.JWT_EXP}
    res = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--scenarios", "jwt", "--proxies", "fastgw,haproxy,nginx",
         "--rounds", "1", "--duration", "1", "--warmup", "0", "--no-install", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=280, cwd=REPO,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    rows = {r["proxy"]: r for r in data["rows"]}
    assert rows["fastgw"]["status"] == "ok" and rows["haproxy"]["status"] == "ok", rows
    assert rows["nginx"]["status"].startswith("n/a"), rows["nginx"]
    assert data["fastgw_vs_haproxy"]["jwt"] > 0
    assert "fastgw / haproxy" in res.stdout


@pytest.mark.timeout(300)
@pytest.mark.skipif(not (_have("nginx") and _have("wrk") and _have("haproxy")),
                    reason="nginx, wrk and haproxy are not installed")
def test_ratelimit_scenario_checks_each_proxy(tmp_path: Path) -> None:
    """The ratelimit scenario: fastgw, nginx (limit_req) and HAProxy (a stick table) pass its
    check (the limited path gives 200, then 429 within the minute; the measured path 200s)
    and are measured; Caddy's row says why it can't."""
    res = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--scenarios", "ratelimit",
         "--proxies", "fastgw,nginx,haproxy,caddy", "--rounds", "1", "--duration", "1", "--warmup", "0",
         "--no-install", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=280, cwd=REPO,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    rows = {r["proxy"]: r for r in data["rows"]}
    assert all(rows[p]["status"] == "ok" for p in ("fastgw", "nginx", "haproxy")), rows
    assert rows["caddy"]["status"].startswith("n/a"), rows["caddy"]


@pytest.mark.skipif(not (_have("cc") or _have("gcc")), reason="no C compiler")
def test_pipe_proxy_forwards_keep_alive_requests(tmp_path: Path) -> None:
    """bench/experiments/pipe_proxy.c, the runner's no-work bound: built as the runner builds it,
    it carries several requests of one keep-alive connection (GETs, a 4 KB POST, and a 16 MB
    one to a backend that waits before reading: sends the socket can't take wait for
    EPOLLOUT) to a real backend and their answers back, byte for byte."""
    import http.client
    import http.server
    import socket
    import threading

    class Backend(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._answer(self.path.encode())

        def do_POST(self) -> None:
            n = int(self.headers["Content-Length"])
            if self.path == "/slow":
                # Read 16 MB only after a pause: the pipe's sends to this backend fill the
                # socket's buffer, and it must keep the rest and wait for EPOLLOUT.
                time.sleep(0.3)
                self._answer(hashlib.sha256(self.rfile.read(n)).hexdigest().encode())
            else:
                self._answer(self.rfile.read(n))

        def _answer(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import run
    finally:
        sys.path.remove(str(REPO / "bench"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = run.pipe_launch("plain", port, backend.server_address[1], tmp_path)
    with pytest.raises(run.NotApplicable):
        run.pipe_launch("gateway", port, backend.server_address[1], tmp_path)
    proc = subprocess.Popen(launch.cmd)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for i in range(3):
            conn.request("GET", f"/api/orders/{i}")
            ans = conn.getresponse()
            assert (ans.status, ans.read()) == (200, f"/api/orders/{i}".encode())
        body = bytes(range(256)) * 16
        conn.request("POST", "/api/orders", body=body)
        ans = conn.getresponse()
        assert (ans.status, ans.read()) == (200, body)
        big = os.urandom(1 << 20) * 16
        conn.request("POST", "/slow", body=big)
        ans = conn.getresponse()
        assert (ans.status, ans.read()) == (200, hashlib.sha256(big).hexdigest().encode())
        conn.request("GET", "/after")
        ans = conn.getresponse()
        assert (ans.status, ans.read()) == (200, b"/after")
        conn.close()
    finally:
        proc.kill()
        proc.wait()
        backend.shutdown()
