"""User-space instructions per request of one fastgw worker, counted by callgrind.

    python bench/instructions.py [--scenarios plain,gateway] [--requests 3000] [--compare REF]

CPU time on a shared machine moves by ±10 % between runs; an instruction count does not
(valgrind counts the same for the same code and inputs, whatever else the machine does).
So this is the figure to compare two versions of the hot path by, beside ``run.py``'s
CPU-per-request ratio against nginx (which it does not replace: it leaves out the kernel,
~80 % of a proxied request here, and cache misses). ``--compare REF`` builds that git
revision in a temporary worktree and counts both, one after the other.

How: the upstream nginx of ``run.py``, the scenario's fastgw config (``run.fastgw_config``),
the worker started under ``valgrind --tool=callgrind --instr-atstart=no``; 300 warm-up
requests, then instrumentation on (``callgrind_control -i on``), ``--requests`` requests
from 8 keep-alive connections (``close``: one connection per request), off, dump. Results
are printed and written to ``bench/results/instructions-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import benchlib  # noqa: E402
import run as runner  # noqa: E402

SCENARIOS = ("plain", "post", "gateway", "routes", "close", "cache", "jwt", "ratelimit")
CONNECTIONS = 8
JWT_TOKENS = benchlib.jwt_tokens()
PRICED_GROUP = "bench"      # the scenario's consumer's group when plugins are added (--add-plugin)
WARMUP = 300


def request_bytes(scenario: str, port: int, rng: random.Random) -> bytes:
    """One request of ``scenario``, as the wrk script sends it."""
    host = f"Host: 127.0.0.1:{port}\r\n"
    if scenario == "post":
        body = b'{"data":"' + b"x" * (4096 - 11) + b'"}'
        return (f"POST /api/orders HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    if scenario == "gateway":
        return f"GET /api/orders/123 HTTP/1.1\r\n{host}apikey: {benchlib.API_KEY}\r\n\r\n".encode()
    if scenario == "routes":
        path = f"/r{rng.randrange(runner.NROUTES)}/items/{rng.randrange(1, 100000)}"
        return f"GET {path} HTTP/1.1\r\n{host}\r\n".encode()
    if scenario == "jwt":
        return (f"GET /api/orders/123 HTTP/1.1\r\n{host}Authorization: Bearer "
                f"{rng.choice(JWT_TOKENS)}\r\n\r\n").encode()
    if scenario == "close":
        return f"GET /api/orders/123 HTTP/1.1\r\n{host}Connection: close\r\n\r\n".encode()
    return f"GET /api/orders/123 HTTP/1.1\r\n{host}\r\n".encode()


def drive(scenario: str, port: int, n: int, seed: int = 1) -> None:
    """Send ``n`` requests over ``CONNECTIONS`` connections, one in flight on each; every
    answer must be a 200 with its whole body."""
    rng = random.Random(seed)
    sel = selectors.DefaultSelector()
    bufs: dict[socket.socket, bytes] = {}
    sent = done = 0
    close = scenario == "close"

    def send(c: socket.socket | None) -> None:
        nonlocal sent
        if sent >= n:
            if c is not None:
                sel.unregister(c)
                c.close()
            return
        if c is None:
            c = socket.create_connection(("127.0.0.1", port))
            sel.register(c, selectors.EVENT_READ)
            bufs[c] = b""
        c.sendall(request_bytes(scenario, port, rng))
        sent += 1

    for _ in range(min(CONNECTIONS, n)):
        send(None)
    while done < n:
        events = sel.select(60)
        if not events:
            raise RuntimeError(f"no answer within 60 s ({done}/{n} done)")
        for key, _ in events:
            c = key.fileobj
            assert isinstance(c, socket.socket)
            data = c.recv(65536)
            bufs[c] += data
            head_end = bufs[c].find(b"\r\n\r\n")
            if head_end < 0:
                if not data:
                    raise RuntimeError("connection closed before an answer")
                continue
            head = bufs[c][:head_end].decode("latin-1").lower()
            if not head.startswith("http/1.1 200"):
                raise RuntimeError(f"unexpected answer: {head.splitlines()[0]}")
            length = int(head.split("content-length:")[1].split("\r\n")[0])
            if len(bufs[c]) < head_end + 4 + length:
                continue
            bufs[c] = b""
            done += 1
            if close:
                sel.unregister(c)
                c.close()
                del bufs[c]
                send(None)
            else:
                send(c)
    for c in list(bufs):
        c.close()


def build_revision(ref: str, into: Path) -> Path:
    """A worktree of ``ref`` with its extension built by this Python."""
    repo = BENCH.parent
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "-f", str(into), ref],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=into, check=True,
                   capture_output=True)
    return into


def count(tree: Path, scenario: str, requests: int, up: int, wd: Path, keep: Path | None = None,
          plugins: list[dict] | None = None) -> int:
    """Instructions of ``requests`` requests in the worker of the fastgw in ``tree``
    (``plugins``: entries added to the scenario's service, to price them)."""
    port = benchlib.free_port()
    cfg = runner.fastgw_config(scenario, port, up, wd, benchlib.free_port())   # cache: the warm-up stores
    if plugins:
        cfg["services"][0]["plugins"] = [*cfg["services"][0].get("plugins", []), *plugins]
        for consumer in cfg.get("consumers", []):
            consumer["groups"] = [PRICED_GROUP]      # for an acl allowing it
    cfg_path = wd / f"fastgw-{scenario}.json"
    cfg_path.write_text(json.dumps(cfg))
    out = wd / "callgrind.out"
    for old in glob.glob(f"{out}.*"):
        os.unlink(old)
    worker = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p",
              sys.executable, "-m", "fastgw", "worker"]
    code = f"import sys; from fastgw.workers import run; sys.exit(run({str(cfg_path)!r}, 1, {worker!r}))"
    env = dict(os.environ, PYTHONPATH=str(tree), FASTGW_UVLOOP_TRANSPORTS="0")
    log = wd / f"fastgw-{scenario}.log"
    with open(log, "wb") as logf:
        sup = subprocess.Popen([sys.executable, "-c", code], cwd=tree, env=env, stdout=logf,
                               stderr=subprocess.STDOUT)
    try:
        if not benchlib.wait_http(port, sup, timeout=120):
            raise RuntimeError(f"fastgw under valgrind did not start:\n{benchlib.tail(log)}")
        pids = [p for p in benchlib.process_tree(sup.pid) if p != sup.pid]
        if not pids:
            raise RuntimeError("no worker process")
        wpid = str(pids[-1])
        drive(scenario, port, WARMUP, seed=2)
        subprocess.run(["callgrind_control", "-i", "on", wpid], check=True, capture_output=True)
        drive(scenario, port, requests)
        subprocess.run(["callgrind_control", "-i", "off", wpid], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", wpid], check=True, capture_output=True)
        total = 0
        deadline = time.monotonic() + 30
        while not total and time.monotonic() < deadline:
            for path in glob.glob(f"{out}.{wpid}*"):
                for line in Path(path).read_text(errors="replace").splitlines():
                    if line.startswith(("summary:", "totals:")):
                        n = int(line.split()[1])
                        if n > total:
                            total = n
                            if keep is not None:
                                keep.mkdir(parents=True, exist_ok=True)
                                shutil.copy(path, keep / f"callgrind.{scenario}.{tree.name}.out")
            time.sleep(0.2)
        if not total:
            raise RuntimeError("callgrind wrote no totals")
        return total
    finally:
        sup.terminate()
        try:
            sup.wait(30)
        except subprocess.TimeoutExpired:
            sup.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fastgw: user-space instructions per request (callgrind)")
    ap.add_argument("--scenarios", default="plain,gateway", help=f"comma-separated, of {','.join(SCENARIOS)}")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--compare", metavar="REF", help="also count git revision REF (built in a worktree)")
    ap.add_argument("--out", type=Path, default=benchlib.RESULTS)
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="copy each callgrind profile here (read it with callgrind_annotate)")
    ap.add_argument("--add-plugin", action="append", default=[], metavar="JSON",
                    help="a plugin entry added to the scenario's service, to price it (repeatable), e.g. "
                         f"'{{\"name\": \"acl\", \"config\": {{\"allow_groups\": [\"{PRICED_GROUP}\"]}}}}' "
                         "(the scenario's consumer is in that group)")
    args = ap.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    try:
        plugins = [json.loads(text) for text in args.add_plugin]
    except ValueError as exc:
        ap.error(f"--add-plugin: not JSON: {exc}")
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    tools = benchlib.ensure_tools(["nginx", "valgrind"])
    if not tools.get("nginx") or not tools.get("valgrind") or not shutil.which("callgrind_control"):
        print("needs nginx and valgrind (apt-get install nginx-light valgrind)", file=sys.stderr)
        return 2
    trees = {"this tree": BENCH.parent}
    procs = benchlib.Procs()
    procs.install_signal_handlers()
    tmp = Path(tempfile.mkdtemp(prefix="fastgw-instr-"))
    os.chmod(tmp, 0o755)
    results: dict[str, dict[str, float]] = {}
    try:
        if args.compare:
            print(f"building {args.compare} ...", flush=True)
            trees = {args.compare: build_revision(args.compare, tmp / "ref"), **trees}
        up = benchlib.free_port()
        benchlib.start_upstream(procs, tmp, up)
        for scenario in scenarios:
            for label, tree in trees.items():
                n = count(tree, scenario, args.requests, up, tmp, args.keep, plugins)
                results.setdefault(scenario, {})[label] = round(n / args.requests)
                print(f"{scenario:<8} {label:<14} {n / args.requests:>9.0f} instructions/request", flush=True)
    finally:
        procs.stop_all()
        if args.compare:
            subprocess.run(["git", "-C", str(BENCH.parent), "worktree", "remove", "--force", str(tmp / "ref")],
                           capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"instructions-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": benchlib.machine_info(), "requests": args.requests,
                                "added_plugins": plugins, "instructions_per_request": results}, indent=1))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
