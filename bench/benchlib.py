"""Shared plumbing of the bench suite: processes, ports, /proc readings, tools, HTTP checks.

Used by ``run.py`` (proxy comparison), ``scale.py`` (scale checks) and ``micro.py``. Every
process a bench script starts goes through :class:`Procs`, which stops it by PID (its own
session, so its children too) on normal exit, on an exception, and on SIGINT/SIGTERM/SIGHUP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
VENV_PY = REPO / ".venv" / "bin" / "python"
CLK_TCK = os.sysconf("SC_CLK_TCK")

API_KEY = "bench-key-1"
# The jwt scenario's tokens: HS256, one per simulated client, signed with JWT_SECRET for the
# issuer "bench" (fastgw: a consumer's jwt credential) and valid until 2100.
JWT_SECRET = "bench-jwt-secret-0123456789abcdef"
JWT_ISSUER = "bench"
JWT_EXP = 4102444800
JWT_CLIENTS = 64
# The upstream's answers: 30 bytes on GET, and the request body length echoed on POST.
GET_BODY = b'{"id":123,"status":"shipped"}\n'
POST_BODY_SENT = b'{"data":"' + b"x" * (4096 - 11) + b'"}'
POST_BODY = b'{"created":true,"len":4096}\n'
assert len(GET_BODY) == 30 and len(POST_BODY_SENT) == 4096



def jwt_token(sub: str, secret: str = JWT_SECRET, exp: int = JWT_EXP) -> str:
    """An HS256 JWT for ``sub`` from the issuer ``bench`` (RFC 7519; no library needed)."""
    def part(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    head = part(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = part(json.dumps({"iss": JWT_ISSUER, "sub": sub, "exp": exp}, separators=(",", ":")).encode())
    sig = part(hmac.new(secret.encode(), head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


def jwt_tokens() -> list[str]:
    """The tokens the jwt scenario's clients send (wrk takes them from FASTGW_BENCH_JWT)."""
    return [jwt_token(f"user-{i}") for i in range(JWT_CLIENTS)]


# Debian package that provides each tool.
DEBIAN_PACKAGES = {"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy", "caddy": "caddy",
                   "valgrind": "valgrind"}
TOOL_PATHS = {"nginx": ("/usr/sbin/nginx",), "haproxy": ("/usr/sbin/haproxy",)}

PROXY_CPU = "0"  # the proxy under test
LOAD_CPU = "1"  # wrk and the upstream


def python_bin() -> str:
    """The repo venv's interpreter when there is one (fastgw, aiohttp), else this one."""
    return str(VENV_PY) if VENV_PY.exists() else sys.executable


def which(tool: str) -> str | None:
    """Path of ``tool`` (also looks in sbin, which a non-login PATH may lack)."""
    found = shutil.which(tool)
    if found:
        return found
    for cand in TOOL_PATHS.get(tool, ()):
        if os.access(cand, os.X_OK):
            return cand
    return None


def ensure_tools(tools: Iterable[str], log=print) -> dict[str, str | None]:
    """Install the missing tools from Debian's packages; return tool -> path (None if missing).

    Runs ``apt-get install -y`` and, when that fails, ``apt-get update`` then install again.
    """
    tools = list(tools)
    missing = [t for t in tools if which(t) is None]
    if missing and shutil.which("apt-get"):
        pkgs = sorted({DEBIAN_PACKAGES[t] for t in missing if t in DEBIAN_PACKAGES})
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        log(f"installing {' '.join(pkgs)} (apt-get)")
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *pkgs]
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            res = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if res.returncode != 0:
                log(f"apt-get install failed: {res.stderr.strip()[-300:]}")
        # A package's own service must not keep running on its default port.
        for t in missing:
            if t in ("nginx", "haproxy", "caddy") and shutil.which("systemctl"):
                subprocess.run(["systemctl", "stop", t], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {t: which(t) for t in tools}


def raise_nofile(want: int = 65536) -> int:
    """Raise this process's open-files limit (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, want)
    if hard != resource.RLIM_INFINITY and target > hard:
        try:  # root may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return target
        except (ValueError, OSError):
            target = hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Procs:
    """The processes this run started; :meth:`stop_all` ends them by PID, children included."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self._installed = False

    def install_signal_handlers(self) -> None:
        raise_nofile()
        """Turn SIGTERM/SIGHUP into SystemExit so ``finally`` blocks run (SIGINT already raises)."""
        if self._installed:
            return

        def _exit(signum: int, _frame: object) -> None:
            raise SystemExit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _exit)
        self._installed = True

    def spawn(self, cmd: Sequence[str], *, cpu: str | None = None, log: Path | None = None,
              env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
        """Start ``cmd`` in its own session (pinned to ``cpu`` with taskset), output to ``log``."""
        full = list(cmd)
        if cpu is not None and shutil.which("taskset"):
            full = ["taskset", "-c", cpu, *full]
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
        try:
            proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=cwd, start_new_session=True)
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 5.0) -> None:
        """SIGTERM the process's session (pgid == its PID), then SIGKILL it if still alive."""
        if proc not in self.procs:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            except PermissionError:
                proc.send_signal(sig)
            try:
                proc.wait(wait)
                # The leader is gone; make sure no child of its session lingers.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                break
            except subprocess.TimeoutExpired:
                continue
        self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc, timeout=3.0)


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 15.0) -> bool:
    """True once 127.0.0.1:port accepts connections; False on timeout or if ``proc`` exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def wait_http(port: int, proc: subprocess.Popen | None = None, timeout: float = 15.0) -> bool:
    """True once 127.0.0.1:port answers an HTTP request (any status).

    A listening socket is not enough: fastgw's supervisor holds it before a worker serves.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            http_call(port, "GET", "/", timeout=1.0)
            return True
        except (OSError, http.client.HTTPException):
            time.sleep(0.1)
    return False


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def http_call(port: int, method: str, path: str, headers: dict[str, str] | None = None,
              body: bytes | None = None, timeout: float = 5.0) -> Answer:
    """One HTTP/1.1 request to 127.0.0.1:port; raises OSError/HTTPException on failure."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


# ---- /proc readings ---------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # Fields after the command name, which may hold spaces and parentheses: [0] = state (field 3).
    return data[data.rindex(b")") + 2:].decode().split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc/*/stat ppid links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu_split(root: int) -> dict[int, tuple[int, int]]:
    """(utime, stime) in clock ticks of every process in ``root``'s tree, by PID: the time
    spent in the process's own code and in the kernel on its behalf (system calls, and the
    loopback TCP work they do)."""
    out = {}
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            out[pid] = (int(fields[11]), int(fields[12]))
    return out


def tree_cpu_ticks(root: int) -> dict[int, int]:
    """utime+stime (clock ticks) of every process in ``root``'s tree, by PID."""
    return {pid: u + s for pid, (u, s) in tree_cpu_split(root).items()}


def cpu_split_between(before: dict[int, tuple[int, int]],
                      after: dict[int, tuple[int, int]]) -> tuple[float, float]:
    """(user, kernel) CPU seconds the tree used between two :func:`tree_cpu_split` snapshots
    (new PIDs count whole)."""
    user = sum(u - before.get(pid, (0, 0))[0] for pid, (u, _) in after.items())
    kernel = sum(s - before.get(pid, (0, 0))[1] for pid, (_, s) in after.items())
    return user / CLK_TCK, kernel / CLK_TCK


def cpu_seconds_between(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds the tree used between two :func:`tree_cpu_ticks` snapshots (new PIDs count whole)."""
    ticks = sum(t - before.get(pid, 0) for pid, t in after.items())
    return ticks / CLK_TCK


def cpu_times() -> dict[str, tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from /proc/stat; busy excludes idle and iowait."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                vals = [int(v) for v in parts[1:9]]
                total = sum(vals)
                out[parts[0][3:]] = (total - vals[3] - vals[4], total)
    return out


def busy_fraction(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], cpu: str) -> float:
    b0, t0 = before.get(cpu, (0, 0))
    b1, t1 = after.get(cpu, (0, 0))
    return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def rss_kb(pid: int) -> int:
    """Resident set size of one process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_info() -> dict[str, object]:
    """CPU model, cores, kernel, date, load and tool versions, for the results file."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def version(cmd: list[str]) -> str:
        if which(cmd[0]) is None:
            return "missing"
        cmd = [which(cmd[0]) or cmd[0], *cmd[1:]]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        text = (res.stdout + res.stderr).strip().splitlines()
        return text[0] if text else "?"

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "loadavg": os.getloadavg(),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "nginx": version(["nginx", "-v"]),
        "haproxy": version(["haproxy", "-v"]),
        "caddy": version(["caddy", "version"]),
        "wrk": version(["wrk", "-v"]),
    }


# ---- the upstream ---------------------------------------------------------------------------

def upstream_nginx_conf(workdir: Path, port: int) -> Path:
    """nginx as the fast upstream: 30-byte JSON on GET, body length echoed on POST."""
    get_body = GET_BODY.decode().rstrip("\n").replace("'", "\\'")
    conf = f"""
worker_processes 1;
daemon off;
pid {workdir}/upstream.pid;
error_log {workdir}/upstream-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_max_body_size 0;
    client_body_buffer_size 64k;
    default_type application/json;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        # Echoes the gateway's request id so the check can see it arrived.
        add_header X-Seen-Request-Id $http_x_request_id;
        location = /api/orders {{ return 200 '{{"created":true,"len":$content_length}}\\n'; }}
        location / {{ return 200 '{get_body}\\n'; }}
    }}
}}
"""
    path = workdir / "upstream.conf"
    path.write_text(conf)
    return path


def start_upstream(procs: Procs, workdir: Path, port: int) -> subprocess.Popen:
    """Start the upstream nginx on the load core; raises RuntimeError when it does not answer."""
    nginx = which("nginx")
    if nginx is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
    conf = upstream_nginx_conf(workdir, port)
    proc = procs.spawn([nginx, "-p", str(workdir), "-c", str(conf)], cpu=LOAD_CPU,
                       log=workdir / "upstream.out")
    if not wait_port(port, proc, 10):
        raise RuntimeError(f"upstream nginx did not start: {tail(workdir / 'upstream.out')}"
                           f" {tail(workdir / 'upstream-error.log')}")
    ans = http_call(port, "GET", "/api/orders/123")
    if ans.body != GET_BODY:
        raise RuntimeError(f"upstream answers {ans.body!r}, not {GET_BODY!r}")
    return proc


def tail(path: Path, n: int = 6) -> str:
    """The last ``n`` lines of a log file, on one line (for error messages)."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-n:])
