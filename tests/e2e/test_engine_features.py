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


def _log_lines(path: Any) -> list[dict]:
    import orjson

    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def test_access_log_written_by_size_and_by_interval(port: int, gateway: Any, tmp_path: Any) -> None:
    """Lines wait in the worker until ``buffer`` bytes are there (then one write), or until
    ``flush_interval``; each line holds the request as the client sent it."""
    from tests.helpers import wait_until

    path = tmp_path / "access.log"
    with Backend() as backend:
        cfg = gateway_config(port, backend.url,
                             access_log={"enabled": True, "path": str(path), "buffer": 2048,
                                         "flush_interval": 60})
        g = gateway(cfg)
        for i in range(20):
            assert request(g.port, "GET", f"/items/{i}?q=%C3%A9&x=1").status == 200
        rows = wait_until(lambda: _log_lines(path), what="a flush by size")
        # ~300 bytes a line: written in one or two 2 KB batches, the rest still buffered.
        assert 2048 // 400 <= len(rows) < 20
        assert [r["path"] for r in rows] == [f"/items/{i}?q=%C3%A9&x=1" for i in range(len(rows))]
        assert {r["method"] for r in rows} == {"GET"} and {r["status"] for r in rows} == {200}
        assert all(r["service"] == "test" and r["stage"] == "prod" and r["resource"] == "/{path*}"
                   for r in rows)
        # buffer 0: every request is written as it ends.
        cfg["access_log"] = {"enabled": True, "path": str(path), "buffer": 0, "flush_interval": 60}
        g.stop()
        path.unlink()
        g = gateway(cfg)
        for i in range(3):
            request(g.port, "POST", "/orders", body=b"x" * 10)
            wait_until(lambda n=i + 1: len(_log_lines(path)) == n, what=f"line {i + 1}")
        assert _log_lines(path)[-1]["bytes_in"] > 10


def test_a_buffered_body_has_the_read_timeout_between_pieces_not_the_head_timeout(
        backend: Backend, port: int, gateway: Any) -> None:
    """A body collected for a plugin (hmac-auth's digest) may take longer in all than the
    head timeout while its pieces keep coming within the route's read timeout; a body that
    stops coming is answered 408."""
    cfg = gateway_config(port, backend.url, {"/pay": {"POST": {"timeouts": {"read": 1.5}, "plugins": [
        {"name": "hmac-auth", "config": {"validate_request_body": True}}]}}},
        limits={"drain_timeout": 5, "client_header_timeout": 1})
    cfg["consumers"] = [{"name": "alice", "credentials": {"hmac-auth": [{"username": "alice", "secret": SECRET}]}}]
    g = gateway(cfg)
    body = b"slow piece " * 60
    head = "POST /pay HTTP/1.1\r\nHost: x\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in _signed_headers("POST", "/pay", body)) + f"Content-Length: {len(body)}\r\n\r\n"
    with RawClient(g.port) as c:
        c.send(head.encode())
        for i in range(0, len(body), 110):           # 6 pieces, 0.5 s apart: 2.5 s in all
            time.sleep(0.5)
            c.send(body[i:i + 110])
        r = c.read_response()
        assert r.status == 200, r.body
        assert r.json()["body"] == body.decode()
    with RawClient(g.port) as c:
        c.send(head.encode() + body[:100])            # and then nothing
        r = c.read_response()
        assert r.status == 408 and "body" in r.json()["error"], r.body
