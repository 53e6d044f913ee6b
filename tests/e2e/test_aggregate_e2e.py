"""End-to-end: aggregate answers with one JSON object from several backend calls made at
once, over kept-alive connections, with the caller's identity and no way for a request
value to change a call's path; failed calls fail the request or become null."""

from __future__ import annotations

import time
from typing import Any

from tests.helpers import Backend, free_port, gateway_config, request

KEY = "ada-key-0123456789abcdef"


def aggregating_gateway(gateway: Any, backend: Backend, port: int, calls: dict[str, str], **settings: Any) -> Any:
    cfg = gateway_config(port, backend.url, {
        "/view/{id}": {"GET": {"plugins": [
            {"name": "key-auth"},
            {"name": "aggregate", "config": {"calls": calls, **settings}}]}},
    })
    cfg["consumers"] = [{"name": "ada", "credentials": {"key-auth": [KEY]}}]
    return gateway(cfg)


def test_calls_are_made_at_once_and_merged(backend: Backend, port: int, gateway: Any) -> None:
    g = aggregating_gateway(gateway, backend, port, {
        "user": "/users/{id}", "orders": "/orders?customer={id}&lang=${header.accept-language}",
        "slow": "/slow?ms=300"}, forward_headers=["Accept-Language"])
    assert request(g.port, "GET", "/view/17").status == 401          # key-auth runs first
    started = time.monotonic()
    r = request(g.port, "GET", "/view/17", headers={"apikey": KEY, "Accept-Language": "fr/../x?y#z",
                                                    "X-Request-Id": "client-id-1"})
    took = time.monotonic() - started
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"user", "orders", "slow"}
    assert body["user"]["path"] == "/users/17"
    # a request value is one encoded query value: no new segment, query or fragment
    assert body["orders"]["target"] == "/orders?customer=17&lang=fr%2F..%2Fx%3Fy%23z"
    assert body["orders"]["query"] == {"customer": "17", "lang": "fr/../x?y#z"}
    h = body["user"]["headers"]
    assert h["x-consumer-name"] == "ada" and h["accept-language"] == "fr/../x?y#z"
    assert h["x-forwarded-for"] == "127.0.0.1" and h["x-request-id"]   # the gateway's id
    assert body["orders"]["headers"]["x-request-id"] == h["x-request-id"]
    assert "apikey" not in h                                          # not asked for: not forwarded
    assert took < 0.9                                                 # in parallel, not 3 x 300 ms
    paths = [q["path"] for q in backend.requests]
    assert sorted(paths) == ["/orders", "/slow", "/users/17"] and "/view/17" not in paths


def test_a_call_may_go_to_another_service(backend: Backend, port: int, gateway: Any) -> None:
    with Backend("other") as other:
        g = aggregating_gateway(gateway, backend, port, {"here": "/users/{id}",
                                                         "there": f"{other.url}/orders?customer={{id}}"})
        body = request(g.port, "GET", "/view/5", headers={"apikey": KEY}).json()
        assert body["here"]["backend"] == "backend" and body["here"]["path"] == "/users/5"
        assert body["there"]["backend"] == "other" and body["there"]["target"] == "/orders?customer=5"
        assert body["there"]["headers"]["host"] == f"127.0.0.1:{other.port}"


def test_connections_are_kept_alive(backend: Backend, port: int, gateway: Any) -> None:
    g = aggregating_gateway(gateway, backend, port, {"a": "/a/{id}", "b": "/b/{id}"})
    for i in range(6):
        r = request(g.port, "GET", f"/view/{i}", headers={"apikey": KEY})
        assert r.json()["a"]["path"] == f"/a/{i}" and r.json()["b"]["path"] == f"/b/{i}"
    assert backend.connections <= 2


def test_a_failed_call_fails_the_request_or_becomes_null(backend: Backend, port: int, gateway: Any) -> None:
    calls = {"ok": "/ok/{id}", "err": "/status/503", "text": "/bytes/10", "late": "/slow?ms=3000"}
    g = aggregating_gateway(gateway, backend, port, calls, timeout=5)
    started = time.monotonic()
    r = request(g.port, "GET", "/view/1", headers={"apikey": KEY})
    assert r.status == 502 and r.json()["error"] in ("call 'err' answered 503", "call 'text' did not answer JSON")
    assert time.monotonic() - started < 2                  # the first failure ends it: no wait for "late"
    backend2 = Backend("b2").start()
    try:
        g2 = aggregating_gateway(gateway, backend2, free_port(), calls, timeout=0.5, on_error="null")
        started = time.monotonic()
        r = request(g2.port, "GET", "/view/1", headers={"apikey": KEY})
        assert r.status == 200 and time.monotonic() - started < 2
        body = r.json()
        assert body["ok"]["path"] == "/ok/1" and body["err"] is None and body["text"] is None
        assert body["late"] is None
        assert r.headers["x-aggregate-failed"] == "err,text,late"
    finally:
        backend2.stop()


def test_backend_down_is_a_502(port: int, gateway: Any) -> None:
    cfg = gateway_config(port, f"http://127.0.0.1:{free_port()}", {
        "/view/{id}": {"GET": {"plugins": [{"name": "aggregate", "config": {"calls": {"x": "/x"}}}]}}})
    r = request(gateway(cfg).port, "GET", "/view/1")
    assert r.status == 502 and "call 'x' failed: cannot connect" in r.json()["error"]


def test_each_call_may_have_its_own_timeout_and_on_error(backend: Backend, port: int, gateway: Any) -> None:
    # "user" must answer; "recs" is optional and may take 0.3 s; "ads" is optional and late.
    calls: dict[str, Any] = {
        "user": "/users/{id}",
        "recs": {"url": "/slow?ms=1000", "timeout": 0.3, "on_error": "null"},
        "ads": {"url": "/status/500", "on_error": "null"},
    }
    g = aggregating_gateway(gateway, backend, port, calls, timeout=5)
    started = time.monotonic()
    r = request(g.port, "GET", "/view/3", headers={"apikey": KEY})
    took = time.monotonic() - started
    assert r.status == 200 and 0.25 < took < 0.9            # recs gave up at its own 0.3 s
    body = r.json()
    assert body["user"]["path"] == "/users/3" and body["recs"] is None and body["ads"] is None
    assert r.headers["x-aggregate-failed"] == "recs,ads"
    # A call that must answer fails the request even when the plugin's on_error is null;
    # the others' failures alone do not.
    calls = {"user": {"url": "/status/404", "on_error": "fail"}, "recs": "/status/500"}
    g2 = aggregating_gateway(gateway, backend, free_port(), calls, on_error="null")
    r = request(g2.port, "GET", "/view/3", headers={"apikey": KEY})
    assert r.status == 502 and r.json()["error"] == "call 'user' answered 404"
    calls = {"user": {"url": "/users/{id}", "on_error": "fail"}, "recs": "/status/500"}
    g3 = aggregating_gateway(gateway, backend, free_port(), calls, on_error="null")
    r = request(g3.port, "GET", "/view/3", headers={"apikey": KEY})
    assert r.status == 200 and r.json()["recs"] is None and r.headers["x-aggregate-failed"] == "recs"
