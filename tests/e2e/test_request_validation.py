"""End-to-end: requests the gateway refuses before any route sees them, and methods no
route takes. Each refusal is a 4xx with a JSON body, the backend never sees the request,
and the worker goes on serving."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tests.e2e.conftest import requires_engine
from tests.helpers import RawClient, gateway_config, read_to_eof, request

pytestmark = requires_engine

# Host values a backend or a cache could read otherwise than the router (RFC 9112 3.2: a
# Host with an invalid value is answered 400).
INVALID_HOSTS = [
    b"good.example@evil.example", b"evil.example/x", b"a b", b"a\\b", b"a?b", b"a#b",
    b"a:80:90", b"a:8x", b"[::1", b"[]", b"[::1]x", b"a%zz", b"\xc3\xa9.example", b'"a"',
]
VALID_HOSTS = [b"Example.COM:8080", b"[::1]:8080", b"10.0.0.1", b"a-b_c.example", b"a%2Db", b"h:"]


def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` and read until the gateway closes (every case here closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return read_to_eof(sock)


@pytest.fixture
def gw(backend: Any, port: int, gateway: Any) -> Any:
    resources = {"/any": {"/{rest*}": {"ANY": {}}}, "/get-only": {"GET": {}},
                 "/v": {"/{id}": {"GET": {"backend_path": "/got/{id}"}}}}
    return gateway(gateway_config(port, backend.url, resources=resources))


@pytest.mark.parametrize("host", INVALID_HOSTS)
def test_an_invalid_host_is_400_and_never_forwarded(gw: Any, backend: Any, host: bytes) -> None:
    before = len(backend.requests)
    raw = _exchange(gw.port, b"GET /any/x HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), raw[:100]
    assert json.loads(body)["error"] == "invalid Host"
    assert len(backend.requests) == before
    assert request(gw.port, "GET", "/any/still-serving").status == 200


def test_an_absolute_form_authority_is_held_to_the_same_rules(gw: Any, backend: Any) -> None:
    raw = _exchange(gw.port, b"GET http://a:1:2/any/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 ") and b"invalid Host" in raw
    ok = _exchange(gw.port, b"GET http://Other.example:81/any/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 ")
    assert backend.requests[-1]["path"] == "/any/x"


@pytest.mark.parametrize("host", VALID_HOSTS)
def test_valid_hosts_go_through(gw: Any, backend: Any, host: bytes) -> None:
    raw = _exchange(gw.port, b"GET /any/x HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:100]
    assert backend.requests[-1]["path"] == "/any/x"


def test_a_one_letter_host_changes_nothing_for_later_requests(gw: Any, backend: Any) -> None:
    """"Host: F" once lower-cased CPython's shared one-byte b"F" in place: from then on
    every one-letter "F" the worker sliced out (a path variable here) read "f"."""
    assert request(gw.port, "GET", "/v/F").status == 200
    assert backend.requests[-1]["path"] == "/got/F"
    for host in (b"F", b"F:80"):
        assert _exchange(gw.port, b"GET /any/x HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n") \
            .startswith(b"HTTP/1.1 200 ")
    assert request(gw.port, "GET", "/v/F").status == 200
    assert backend.requests[-1]["path"] == "/got/F"


@pytest.mark.parametrize("method", ["TRACE", "CONNECT"])
def test_trace_and_connect_are_405_even_on_an_any_route(gw: Any, backend: Any, method: str) -> None:
    before = len(backend.requests)
    resp = request(gw.port, method, "/any/x", {"Authorization": "Bearer secret"})
    assert resp.status == 405
    assert resp.json()["error"] == "method not allowed"
    # ANY stands for the methods a route can name; Allow can't say "any".
    assert resp.headers["allow"] == "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
    assert request(gw.port, method, "/get-only").headers["allow"] == "GET, HEAD"
    assert len(backend.requests) == before
    # Other methods an ANY route takes still go through, unknown ones included.
    assert request(gw.port, "PROPFIND", "/any/x").status == 200
    assert backend.requests[-1]["method"] == "PROPFIND"


def test_pipelined_requests_with_changing_hosts_each_route_by_their_own(backend: Any, port: int,
                                                                       gateway: Any) -> None:
    """The connection's head keeps the last valid Host and its key (PERF): requests on one
    keep-alive connection that switch Host, in case and port too, still each pick their
    own stage, and an invalid Host after valid ones is refused."""
    cfg = gateway_config(port, backend.url, resources={"/x": {"GET": {"backend_path": "/${stage.v}/x"}}})
    cfg["services"][0]["stages"] = {
        "prod": {"hosts": ["api.example"], "variables": {"v": "prod"}, "backend": {"targets": [backend.url]}},
        "alpha": {"hosts": ["alpha.example"], "variables": {"v": "alpha"}, "backend": {"targets": [backend.url]}},
    }
    gw = gateway(cfg)
    hosts = [b"api.example", b"ALPHA.example:8080", b"api.example", b"api.example", b"Alpha.Example", b"a@b"]
    before = len(backend.requests)
    raw = _exchange(gw.port, b"".join(b"GET /x HTTP/1.1\r\nHost: " + h + b"\r\n\r\n" for h in hosts))
    assert raw.count(b"HTTP/1.1 200 ") == 5
    assert raw.rindex(b"HTTP/1.1 400 ") > raw.rindex(b"HTTP/1.1 200 ") and b"invalid Host" in raw
    assert [r["path"] for r in backend.requests[before:]] == ["/prod/x", "/alpha/x", "/prod/x", "/prod/x", "/alpha/x"]


def test_options_asterisk_is_answered_by_the_gateway(gw: Any, backend: Any) -> None:
    with RawClient(gw.port) as c:
        c.send(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.body == b"" and r.headers["content-length"] == "0"
        assert r.headers["allow"] == "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
        assert c.request("GET", "/get-only").status == 200          # the connection goes on
    assert [x["path"] for x in backend.requests] == ["/get-only"]   # only the GET got there
    # The asterisk-form is OPTIONS's alone (RFC 9112 3.2.4).
    assert _exchange(gw.port, b"GET * HTTP/1.1\r\nHost: a\r\n\r\n").startswith(b"HTTP/1.1 400 ")
