"""End-to-end: a stage with several targets keeps answering when one of them is down.

A request whose connection to a target is refused, unreachable or not made within the
route's connect timeout goes to another target (nothing of it reached the first one, so
any method may: nginx's ``proxy_next_upstream error timeout``), and the failing target is
passed over for ``backend.fail_timeout`` seconds after ``backend.max_fails`` failures
(nginx's passive health check). Only when every target has failed does the client get
the 502 (refused) or 504 (connect timeout), with a JSON body.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import Backend, RawClient, free_port, gateway_config, request

LOOPBACK = "127.0.0.1"


def _dead_url() -> str:
    """A loopback port nothing listens on: connections to it are refused at once."""
    return f"http://{LOOPBACK}:{free_port()}"


@contextlib.contextmanager
def blackhole() -> Iterator[str]:
    """A target whose connects never complete: a listener that never accepts, its accept
    queue filled, so the kernel drops every further SYN (the client waits in SYN_SENT)."""
    listener = socket.socket()
    listener.bind((LOOPBACK, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect((LOOPBACK, port))
        fillers.append(s)
    time.sleep(0.05)
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        for s in fillers:
            s.close()
        listener.close()


@contextlib.contextmanager
def unanswering(mode: str) -> Iterator[tuple[str, list[bytes]]]:
    """A target that accepts connections and reads each request head, then closes the
    connection without a word (``"close"``) or never answers (``"silent"``). Yields its URL
    and the heads it got."""
    listener = socket.socket()
    listener.bind((LOOPBACK, 0))
    listener.listen(16)
    heads: list[bytes] = []
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            heads.append(data.split(b"\r\n", 1)[0])
            if mode == "close":
                conn.close()
            else:
                held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{listener.getsockname()[1]}", heads
    finally:
        listener.close()
        for conn in held:
            conn.close()


def _config(port: int, targets: list[str], **backend: Any) -> dict[str, Any]:
    cfg = gateway_config(port, targets[0])
    cfg["services"][0]["stages"]["prod"]["backend"] = {"targets": targets, **backend}
    return cfg


def test_a_refused_target_is_passed_over(backend: Backend, port: int, gateway: Any) -> None:
    g = gateway(_config(port, [_dead_url(), backend.url]))
    answers = [request(g.port, "GET", f"/item/{i}") for i in range(10)]
    assert [r.status for r in answers] == [200] * 10
    assert [r.json()["path"] for r in answers] == [f"/item/{i}" for i in range(10)]
    assert len(backend.requests) == 10
    g.wait_log("passed over for 10 s after 1 failed connection")


def test_a_request_body_goes_whole_to_the_next_target(backend: Backend, port: int, gateway: Any) -> None:
    dead = _dead_url()
    g = gateway(_config(port, [dead, backend.url], max_fails=0))   # never passed over: each try fails over
    body = b'{"order": 42}' * 100
    r = request(g.port, "POST", "/orders", headers={"Content-Type": "application/json"}, body=body)
    assert r.status == 200 and r.json()["body"] == body.decode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 500]), body[i:i + 500]) for i in range(0, len(body), 500))
    with RawClient(g.port) as c:
        for _ in range(2):                     # round robin starts at the dead one again
            c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                   b"Expect: 100-continue\r\n\r\n")
            assert c.read_interim() == b"HTTP/1.1 100 Continue"
            c.send(chunks + b"0\r\n\r\n")
            r = c.read_response()
            assert r.status == 200 and r.json()["body"] == body.decode()
            assert c.skipped_interim == 0       # one 100 per request, not one per target tried
    assert [q["path"] for q in backend.requests] == ["/orders", "/upload", "/upload"]


def test_an_idempotent_request_a_target_left_unanswered_goes_to_the_next(
        backend: Backend, port: int, gateway: Any) -> None:
    """A target that takes the request and closes the connection without an answer: a GET,
    or a PUT the gateway sent whole, goes to the next target and counts toward max_fails
    (nginx's proxy_next_upstream error); a POST may have run there, so it is not sent again."""
    with unanswering("close") as (closer, heads):
        cfg = _config(port, [closer, backend.url], max_fails=2, fail_timeout=60)
        g = gateway(cfg)
        r = request(g.port, "PUT", "/doc/1", body=b"x" * 5000)
        assert r.status == 200 and r.json()["body"] == "x" * 5000 and r.json()["method"] == "PUT"
        assert heads == [b"PUT /doc/1 HTTP/1.1"]                       # the closer got it first
        r = request(g.port, "POST", "/orders", body=b"once")            # the closer's turn again
        assert r.status == 502 and r.json()["error"] == "upstream closed the connection"
        assert heads[-1] == b"POST /orders HTTP/1.1"
        assert [q["path"] for q in backend.requests] == ["/doc/1"]
        # The second failure (the POST's) reached max_fails 2: the closer is passed over.
        g.wait_log("passed over for 60 s after 2 failed connection(s)")
        assert [request(g.port, "GET", f"/g/{i}").status for i in range(4)] == [200] * 4
        assert len(heads) == 2


def test_pipelined_requests_handed_on_are_answered_in_order(backend: Backend, port: int, gateway: Any) -> None:
    with unanswering("close") as (closer, heads):
        g = gateway(_config(port, [closer, backend.url], max_fails=0))    # each request meets the closer first
        with RawClient(g.port) as c:
            c.send(b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nHEAD /p2 HTTP/1.1\r\nHost: x\r\n\r\n"
                   b"GET /p3 HTTP/1.1\r\nHost: x\r\n\r\n")
            r1, r2, r3 = c.read_response(), c.read_response(head_only=True), c.read_response()
        assert (r1.status, r2.status, r3.status) == (200, 200, 200)
        assert r1.json()["path"] == "/p1" and r3.json()["path"] == "/p3"
        assert heads == [b"GET /p1 HTTP/1.1", b"HEAD /p2 HTTP/1.1", b"GET /p3 HTTP/1.1"]
        assert [q["path"] for q in backend.requests] == ["/p1", "/p2", "/p3"]


def test_without_retry_unanswered_a_close_still_counts_toward_max_fails(
        backend: Backend, port: int, gateway: Any) -> None:
    with unanswering("close") as (closer, heads):
        g = gateway(_config(port, [closer, backend.url], retry_unanswered=False, fail_timeout=60))
        r = request(g.port, "GET", "/a")
        assert r.status == 502 and r.json()["error"] == "upstream closed the connection"
        g.wait_log("passed over for 60 s after 1 failed connection(s)")
        assert [request(g.port, "GET", f"/b/{i}").status for i in range(3)] == [200] * 3
        assert heads == [b"GET /a HTTP/1.1"]


def test_a_target_that_does_not_answer_in_time_hands_an_idempotent_request_on(
        backend: Backend, port: int, gateway: Any) -> None:
    """The read timeout before the response head: the next target answers a GET (nginx's
    proxy_next_upstream timeout); retry_unanswered false keeps the 504."""
    with unanswering("silent") as (silent, heads):
        cfg = _config(port, [silent, backend.url], max_fails=0)
        cfg["services"][0]["stages"]["prod"]["timeouts"] = {"read": 0.3}
        g = gateway(cfg)
        t0 = time.monotonic()
        r = request(g.port, "GET", "/slowpoke")
        assert r.status == 200 and r.json()["path"] == "/slowpoke" and 0.25 <= time.monotonic() - t0 < 3
        assert heads == [b"GET /slowpoke HTTP/1.1"]
        cfg["services"][0]["stages"]["prod"]["backend"]["retry_unanswered"] = False
        g.reload(cfg)
        answers = [request(g.port, "GET", f"/s/{i}") for i in range(2)]     # one of the two to the silent one
        assert sorted(r.status for r in answers) == [200, 504]
        assert [r.json()["error"] for r in answers if r.status == 504] == ["upstream timed out"]


def test_every_target_down_is_a_502_and_the_worker_serves_on(port: int, gateway: Any) -> None:
    with Backend() as alive:
        cfg = _config(port, [_dead_url(), _dead_url()])
        cfg["services"].append({"name": "ok", "stages": {"prod": {"hosts": ["ok.test"],
                                "backend": {"targets": [alive.url]}}}, "resources": {"/{p*}": {"GET": {}}}})
        g = gateway(cfg)
        for _ in range(3):
            r = request(g.port, "GET", "/x")
            assert r.status == 502 and r.json()["error"] == "upstream connection failed"
        assert request(g.port, "GET", "/y", headers={"Host": "ok.test"}).status == 200


def test_a_target_is_used_again_after_fail_timeout(backend: Backend, port: int, gateway: Any) -> None:
    dead_port = free_port()
    g = gateway(_config(port, [f"http://{LOOPBACK}:{dead_port}", backend.url], fail_timeout=0.6))
    assert request(g.port, "GET", "/a").json()["backend"] == "backend"   # failed over, marked
    with Backend("revived", port=dead_port):
        seen = [request(g.port, "GET", f"/b{i}").json()["backend"] for i in range(4)]
        assert seen == ["backend"] * 4                                     # still passed over
        time.sleep(0.7)
        seen = [request(g.port, "GET", f"/c{i}").json()["backend"] for i in range(4)]
        assert sorted(seen) == ["backend", "backend", "revived", "revived"]


def test_host_header_target_names_the_target_that_answers(backend: Backend, port: int, gateway: Any) -> None:
    g = gateway(_config(port, [_dead_url(), backend.url], host_header="target", max_fails=0))
    for _ in range(2):
        r = request(g.port, "GET", "/h", headers={"Host": "client.example"})
        assert r.status == 200 and r.json()["headers"]["host"] == f"{LOOPBACK}:{backend.port}"


def test_a_connect_timeout_goes_to_the_next_target(backend: Backend, port: int, gateway: Any) -> None:
    with blackhole() as hole:
        cfg = _config(port, [hole, backend.url])
        cfg["services"][0]["stages"]["prod"]["timeouts"] = {"connect": 0.3}
        g = gateway(cfg)
        t0 = time.monotonic()
        r = request(g.port, "GET", "/slow-connect")
        assert r.status == 200 and r.json()["path"] == "/slow-connect"
        assert 0.25 <= time.monotonic() - t0 < 3
        # now passed over: no more waiting
        t0 = time.monotonic()
        assert [request(g.port, "GET", "/x").status for _ in range(4)] == [200] * 4
        assert time.monotonic() - t0 < 0.25 * 4


def test_a_target_one_worker_passes_over_is_passed_over_by_every_worker(
        backend: Backend, port: int, gateway: Any) -> None:
    """The node's passive mark (fastgw/_marks.pxi): the first request to meet the dead
    target waits its connect timeout and marks it; the other worker's requests skip it at
    once (without the shared mark each worker would wait once, and log it once)."""
    with blackhole() as hole:
        cfg = _config(port, [hole, backend.url], fail_timeout=60)
        cfg["services"][0]["stages"]["prod"]["timeouts"] = {"connect": 0.4}
        g = gateway(cfg, workers=2)
        took = []
        for i in range(16):                 # each on a new connection: both workers get some
            t0 = time.monotonic()
            assert request(g.port, "GET", f"/m/{i}").status == 200
            took.append(time.monotonic() - t0)
        assert sum(1 for t in took if t >= 0.35) == 1, took
        assert took[0] >= 0.35
        g.wait_log("passed over for 60 s after 1 failed connection")
        assert g.log().count("passed over for 60 s") == 1
        assert backend.connections >= 2     # (each worker has its own upstream connections: both served)
        # The admin API says which target is passed over, and for how long (the token needed).
        admin = cfg["admin"]["port"]
        assert request(admin, "GET", "/targets").status == 401
        got = request(admin, "GET", "/targets", headers={"Authorization": "Bearer test-token"}).json()["targets"]
        by_url = {t["target"]: t for t in got}
        assert set(by_url) == {hole, backend.url}
        assert 50 < by_url[hole]["passed_over_for"] <= 60 and by_url[backend.url]["passed_over_for"] == 0.0
        assert by_url[hole]["active"] is None and by_url[hole]["service"] == "test" and by_url[hole]["weight"] == 1
        # And on /metrics, for alerts.
        from prometheus_client.parser import text_string_to_metric_families

        text = request(admin, "GET", "/metrics", headers={"Authorization": "Bearer test-token"}).body.decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert {s.labels["target"]: s.value for s in fams["fastgw_target_passed_over"].samples} == {
            hole: 1.0, backend.url: 0.0}
        assert "fastgw_target_healthy" not in fams           # (no health checks here)


def test_max_fails_counts_the_failures_of_every_worker(backend: Backend, port: int, gateway: Any) -> None:
    """max_fails 3 with 2 workers: the node's third failed connection passes the target
    over, whichever workers met them (counted per worker, both workers would each wait
    out three connect timeouts: up to six slow requests)."""
    with blackhole() as hole:
        cfg = _config(port, [hole, backend.url], max_fails=3, fail_timeout=60)
        cfg["services"][0]["stages"]["prod"]["timeouts"] = {"connect": 0.3}
        g = gateway(cfg, workers=2)
        admin = cfg["admin"]["port"]
        took = []
        for i in range(24):                 # each on a new connection: both workers get some
            t0 = time.monotonic()
            assert request(g.port, "GET", f"/m/{i}").status == 200
            took.append(time.monotonic() - t0)
            if len(took) == 1:              # one failure counted so far, for the node
                got = request(admin, "GET", "/targets", headers={"Authorization": "Bearer test-token"}).json()
                by_url = {t["target"]: t for t in got["targets"]}
                assert by_url[hole]["failed_connects"] == 1 and by_url[hole]["passed_over_for"] == 0.0
        assert sum(1 for t in took if t >= 0.25) == 3, took
        assert backend.connections >= 2     # (both workers served)
        g.wait_log("passed over for 60 s after 3 failed connection(s)")
        assert g.log().count("passed over for 60 s") == 1
        got = request(admin, "GET", "/targets", headers={"Authorization": "Bearer test-token"}).json()["targets"]
        by_url = {t["target"]: t for t in got}
        assert by_url[hole]["failed_connects"] == 3 and 50 < by_url[hole]["passed_over_for"] <= 60
        assert by_url[backend.url]["failed_connects"] == 0


@pytest.mark.parametrize("targets", [1, 2])
def test_when_no_target_connects_in_time_the_answer_is_504(targets: int, port: int, gateway: Any) -> None:
    with blackhole() as hole, blackhole() as hole2:
        cfg = _config(port, [hole, hole2][:targets])
        cfg["services"][0]["stages"]["prod"]["timeouts"] = {"connect": 0.2}
        g = gateway(cfg)
        t0 = time.monotonic()
        r = request(g.port, "GET", "/x")
        assert r.status == 504 and r.json()["error"] == "upstream connect timed out"
        assert 0.15 * targets <= time.monotonic() - t0 < 0.2 * targets + 2


def test_weighted_targets_take_their_share_in_a_smooth_turn(backend: Backend, port: int, gateway: Any) -> None:
    """Weights 3 and 1: of every 4 requests the heavy target takes 3, interleaved (a a b a,
    nginx's smooth weighted round-robin), per worker."""
    with Backend("light") as light:
        g = gateway(_config(port, [{"url": backend.url, "weight": 3}, {"url": light.url, "weight": 1}]))
        seen = [request(g.port, "GET", f"/w{i}").json()["backend"] for i in range(12)]
    assert seen == ["backend", "backend", "light", "backend"] * 3


def test_a_weighted_target_that_is_down_gives_its_share_to_the_others(port: int, gateway: Any) -> None:
    with Backend("b1") as b1, Backend("b2") as b2:
        g = gateway(_config(port, [{"url": _dead_url(), "weight": 5}, {"url": b1.url, "weight": 2},
                                   {"url": b2.url, "weight": 1}]))
        answers = [request(g.port, "GET", f"/d{i}") for i in range(9)]
    assert [r.status for r in answers] == [200] * 9
    # The first request fails over from the dead target (then passed over for fail_timeout);
    # from there on b1 and b2 share the requests 2:1.
    assert [r.json()["backend"] for r in answers] == ["b1", "b1", "b2"] * 3


def _in_background(port: int, path: str) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(request(port, "GET", path)), daemon=True)
    t.start()
    return t, out


def _wait_for(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("balance", ["least_conn", "round_robin"])
def test_least_conn_sends_requests_past_a_busy_target(port: int, gateway: Any, balance: str) -> None:
    """While target a holds a slow request, least_conn sends the others to b; once it is
    answered the two share again in turn. round_robin (the control) keeps alternating."""
    with Backend("a") as a, Backend("b") as b:
        g = gateway(_config(port, [a.url, b.url], balance=balance))
        slow, out = _in_background(g.port, "/slow?ms=1500")
        _wait_for(lambda: len(a.requests) == 1)
        during = [request(g.port, "GET", f"/f{i}").json()["backend"] for i in range(6)]
        slow.join(5)
        assert out and out[0].status == 200
        after = [request(g.port, "GET", f"/g{i}").json()["backend"] for i in range(4)]
    if balance == "least_conn":
        assert during == ["b"] * 6
        assert sorted(after) == ["a", "a", "b", "b"] and after[0] != after[1]
    else:
        assert during == ["b", "a", "b", "a", "b", "a"]


def _ends(port: int, how: str) -> None:
    if how == "client gone":
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /slow?ms=2000 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        # A reset, not a FIN: a half-closed client is still answered (RFC 9112 9.6).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        time.sleep(0.2)
    elif how == "read timeout":
        r = request(port, "GET", "/slow?ms=3000")
        assert r.status == 504
    else:
        assert request(port, "GET", "/ok").status == 200


@pytest.mark.parametrize("how", ["answered", "client gone", "read timeout"])
def test_least_conn_counts_each_exchange_back_whichever_way_it_ends(port: int, gateway: Any, how: str) -> None:
    """An exchange that ends (answered, the client gone mid-way, the backend too slow) no
    longer counts on its target: were one left counted, every later pick would avoid it."""
    with Backend("a") as a, Backend("b") as b:
        cfg = _config(port, [a.url, b.url], balance="least_conn")
        cfg["services"][0]["resources"] = {"/{path*}": {"ANY": {"timeouts": {"read": 0.5}}}}
        g = gateway(cfg)
        _ends(g.port, how)              # on a: the first pick of a fresh turn
        seen = [request(g.port, "GET", f"/n{i}").json()["backend"] for i in range(4)]
    assert len(a.requests) >= 1
    assert sorted(seen) == ["a", "a", "b", "b"] and seen[0] != seen[1]


@pytest.mark.parametrize("tries", [0, 2])
def test_tries_bounds_the_targets_one_request_goes_through(backend: Backend, port: int, gateway: Any,
                                                          tries: int) -> None:
    # max_fails 0: nothing is passed over, so the turn alone decides the order.
    g = gateway(_config(port, [_dead_url(), _dead_url(), _dead_url(), backend.url], max_fails=0, tries=tries))
    r = request(g.port, "GET", "/t")
    if tries == 2:
        assert r.status == 502 and r.json()["error"] == "upstream connection failed"
        assert backend.requests == []
        assert request(g.port, "GET", "/t2").status == 200      # the turn goes on: dead3, then the backend
    else:
        assert r.status == 200 and len(backend.requests) == 1    # every target, once


def test_tries_timeout_stops_the_failover_of_an_old_request(port: int, gateway: Any) -> None:
    with contextlib.ExitStack() as stack:
        holes = [stack.enter_context(blackhole()) for _ in range(4)]
        cfg = _config(port, holes, tries_timeout=0.3)
        cfg["services"][0]["stages"]["prod"]["timeouts"] = {"connect": 0.2}
        g = gateway(cfg)
        t0 = time.monotonic()
        r = request(g.port, "GET", "/x")
        took = time.monotonic() - t0
    assert r.status == 504 and r.json()["error"] == "upstream connect timed out"
    assert 0.35 <= took < 0.75, took        # two tries (0.2 s each), not four


@pytest.mark.parametrize("hash_key", ["header:X-User", "cookie:sid"])
def test_hash_sends_each_key_to_one_target(port: int, gateway: Any, hash_key: str) -> None:
    """Every request of a user lands on the same backend (whichever connection brings it);
    the users spread over both; a request without the key goes in turn."""
    def user(i: int) -> dict[str, str]:
        if hash_key.startswith("header"):
            return {"X-User": f"user-{i}"}
        return {"Cookie": f"theme=dark; sid=user-{i}; lang=en"}

    with Backend("a") as a, Backend("b") as b:
        g = gateway(_config(port, [a.url, b.url], balance="hash", hash_key=hash_key))
        seen: dict[int, set[str]] = {i: set() for i in range(20)}
        for _ in range(3):
            for i in range(20):
                seen[i].add(request(g.port, "GET", f"/u{i}", headers=user(i)).json()["backend"])
        keyless = [request(g.port, "GET", "/anon").json()["backend"] for _ in range(4)]
    assert all(len(s) == 1 for s in seen.values()), seen
    assert {next(iter(s)) for s in seen.values()} == {"a", "b"}
    assert sorted(keyless) == ["a", "a", "b", "b"]


def test_hash_on_ip_places_the_caller_behind_trusted_proxies(port: int, gateway: Any) -> None:
    """Behind a load balancer every request comes from its address: with ip-restriction
    trusting it, hash on "ip" places each request by the caller in X-Forwarded-For."""
    def xff(i: int) -> dict[str, str]:
        return {"X-Forwarded-For": f"203.0.113.{i}"}

    with Backend("a") as a, Backend("b") as b:
        cfg = _config(port, [a.url, b.url], balance="hash", hash_key="ip")
        cfg["services"][0]["resources"] = {
            "/{path*}": {"ANY": {}},
            "/trusted/{path*}": {"ANY": {"plugins": [{"name": "ip-restriction", "config": {
                "allow": ["0.0.0.0/0"], "trusted_proxies": ["127.0.0.1/32"]}}]}}}
        g = gateway(cfg)
        seen: dict[int, set[str]] = {i: set() for i in range(20)}
        for _ in range(3):
            for i in range(20):
                seen[i].add(request(g.port, "GET", f"/trusted/u{i}", headers=xff(i)).json()["backend"])
        untrusted = {request(g.port, "GET", f"/u{i}", headers=xff(i)).json()["backend"] for i in range(20)}
    assert all(len(s) == 1 for s in seen.values()), seen
    assert {next(iter(s)) for s in seen.values()} == {"a", "b"}
    assert len(untrusted) == 1          # no trusted proxy: the TCP peer (127.0.0.1) is the caller
