"""End-to-end: round-robin over a stage's targets, and plugins that need the request body.

hmac-auth with ``validate_request_body`` makes the server buffer the body (bounded) before
the request phase, so the plugin can check the ``Digest`` header against it: tested here
over real sockets with Content-Length and chunked bodies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from email.utils import formatdate
from typing import Any

from tests.helpers import Backend, RawClient, gateway_config, request

SECRET = "alice-hmac-secret-0123456789"


def test_round_robin_over_targets(port: int, gateway: Any) -> None:
    with Backend("one") as one, Backend("two") as two:
        cfg = gateway_config(port, one.url)
        cfg["services"][0]["stages"]["prod"]["backend"]["targets"] = [one.url, two.url]
        g = gateway(cfg)
        seen = [request(g.port, "GET", f"/rr/{i}").json()["backend"] for i in range(10)]
        assert seen.count("one") == 5 and seen.count("two") == 5
        assert all(a != b for a, b in zip(seen, seen[1:], strict=False))   # strictly alternating


def _signed_headers(method: str, path: str, body: bytes, secret: str = SECRET) -> list[tuple[str, str]]:
    date = formatdate(time.time(), usegmt=True)
    digest = "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()
    lines = [f"date: {date}", f"{method} {path} HTTP/1.1", f"digest: {digest}"]
    sig = base64.b64encode(hmac.new(secret.encode(), "\n".join(lines).encode(), hashlib.sha256).digest()).decode()
    auth = (f'hmac username="alice", algorithm="hmac-sha256", headers="date request-line digest", '
            f'signature="{sig}"')
    return [("Date", date), ("Digest", digest), ("Authorization", auth)]


def _hmac_gateway(port: int, backend: Backend, gateway: Any) -> Any:
    cfg = gateway_config(port, backend.url, {"/pay": {"POST": {"plugins": [
        {"name": "hmac-auth", "config": {"validate_request_body": True}}]}}})
    cfg["consumers"] = [{"name": "alice", "credentials": {"hmac-auth": [{"username": "alice", "secret": SECRET}]}}]
    return gateway(cfg)


def test_hmac_body_digest_checked_over_the_wire(backend: Backend, port: int, gateway: Any) -> None:
    g = _hmac_gateway(port, backend, gateway)
    body = b'{"amount": 42}'
    ok = request(g.port, "POST", "/pay", headers=_signed_headers("POST", "/pay", body), body=body)
    assert ok.status == 200, ok.body
    assert ok.json()["body"] == body.decode()
    assert ok.json()["headers"]["x-consumer-name"] == "alice"
    # the same signed headers with another body: the digest no longer matches
    bad = request(g.port, "POST", "/pay", headers=_signed_headers("POST", "/pay", body), body=b'{"amount": 1e9}')
    assert bad.status == 401
    assert len([r for r in backend.requests if r["path"] == "/pay"]) == 1


def test_hmac_body_digest_with_chunked_body(backend: Backend, port: int, gateway: Any) -> None:
    g = _hmac_gateway(port, backend, gateway)
    body = b"chunked payload " * 100
    head = "POST /pay HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in _signed_headers("POST", "/pay", body)) + "\r\n"
    framed = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 300]), body[i:i + 300]) for i in range(0, len(body), 300))
    with RawClient(g.port) as c:
        c.send(head.encode() + framed[:500])
        c.send(framed[500:] + b"0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, r.body
        assert r.json()["body"] == body.decode()
        assert c.request("GET", "/other").status in (404, 405)   # the connection stays usable
