"""End-to-end: response-transformer edits JSON answer bodies, holding each until whole and
sending it with its own Content-Length; other answers pass as they were, unheld."""

from __future__ import annotations

import socket
import threading
from typing import Any

from tests.helpers import Backend, RawClient, free_port, gateway_config, recv_head, request

EDITS = {"remove": ["raw_headers", "body", "/headers/x-m"], "rename": {"path": "route"}, "replace": {"method": "was-${header.x-m}"},
         "add": {"gateway": {"by": "fastgw", "id": "{id}"}, "method": "never"}, "append": {"tags": "t-{id}"}}


def transforming_gateway(gateway: Any, backend: Backend, port: int, **settings: Any) -> Any:
    plugin = {"name": "response-transformer", "config": {"json": EDITS, **settings}}
    return gateway(gateway_config(port, backend.url, {
        "/items/{id}": {"ANY": {"plugins": [plugin]}},
        "/mocked/{id}": {"GET": {"plugins": [plugin, {"name": "mock", "config": {"json": {"path": "/m", "tags": "x"}}}]}},
        "/cached/{id}": {"GET": {"plugins": [plugin, {"name": "proxy-cache"}]}},
        "/{path*}": {"ANY": {"plugins": [
            {"name": "response-transformer", "config": {"json": {"add": {"gateway": {"by": "fastgw"}}}, **settings}}]}},
    }))


def check_edited(body: dict[str, Any], route: str, id_: str, method: str) -> None:
    assert "raw_headers" not in body and "body" not in body and "path" not in body
    assert body["route"] == route and body["method"] == method
    assert body["gateway"] == {"by": "fastgw", "id": id_} and body["tags"] == [f"t-{id_}"]


def test_json_answers_are_edited_and_framed_anew(backend: Backend, port: int, gateway: Any) -> None:
    g = transforming_gateway(gateway, backend, port)
    with RawClient(g.port) as c:
        r = c.request("GET", "/items/7", {"X-M": "get"})
        assert r.status == 200 and int(r.headers["content-length"]) == len(r.body)
        assert "x-m" not in r.json()["headers"] and "host" in r.json()["headers"]   # a nested key
        check_edited(r.json(), "/items/7", "7", "was-get")
        # a body read in many pieces (the backend echoes 300 KB), on the same connection
        big = c.request("POST", "/items/8", {"X-M": "post"}, b"y" * 300_000)
        assert int(big.headers["content-length"]) == len(big.body) < 300_000
        check_edited(big.json(), "/items/8", "8", "was-post")
        head = c.request("HEAD", "/items/9")                  # never held: the backend's framing
        assert head.status == 200 and head.body == b""
        after = c.request("GET", "/items/10", {"X-M": "again"})
        check_edited(after.json(), "/items/10", "10", "was-again")


def test_chunked_json_answers_are_edited_and_framed_anew(backend: Backend, port: int, gateway: Any) -> None:
    g = transforming_gateway(gateway, backend, port, max_body=100_000)
    with RawClient(g.port) as c:
        for _ in range(2):                               # the connection goes on after each
            r = c.request("GET", "/chunked?json=1&n=30&size=1000")
            assert r.status == 200 and not r.chunked and int(r.headers["content-length"]) == len(r.body)
            assert r.json() == {"data": "x" * 30_000, "gateway": {"by": "fastgw"}}
        # Outgrowing max_body once decoded: sent unchanged after all, framed in chunks by the
        # gateway (the backend's can't be passed on from the middle of one).
        big = c.request("GET", "/chunked?json=1&n=50&size=3000")
        assert big.chunked and big.json() == {"data": "x" * 150_000}
        small = c.request("GET", "/chunked?json=1&n=1&size=10")
        assert small.json() == {"data": "x" * 10, "gateway": {"by": "fastgw"}}
    # The same for an HTTP/1.0 caller, who gets the payload decoded and the connection closed.
    for n, edited in ((3, True), (50, False)):
        with RawClient(g.port) as c:
            c.send(f"GET /chunked?json=1&n={n}&size=3000 HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            r = c.read_response()
            assert not r.chunked and ("gateway" in r.json()) is edited and len(r.json()["data"]) == n * 3000
    # Over max_body in the very first read, and the whole answer in it (the last chunk too).
    tiny = transforming_gateway(gateway, backend, free_port(), max_body=5)
    r = request(tiny.port, "GET", "/chunked?json=1&n=1&size=10")
    assert r.chunked and r.json() == {"data": "x" * 10}


def test_other_answers_pass_as_they_were(backend: Backend, port: int, gateway: Any) -> None:
    g = transforming_gateway(gateway, backend, port, max_body=100_000)
    raw = request(g.port, "GET", "/bytes/50")                  # not JSON
    assert raw.body == b"x" * 50 and raw.headers["content-type"] == "application/octet-stream"
    chunked = request(g.port, "GET", "/chunked?n=2&size=3")    # chunked, not JSON: streamed as it was
    assert chunked.body == b"aaabbb" and chunked.chunked
    big = request(g.port, "POST", "/items/1", body=b"z" * 200_000)   # over max_body
    assert "raw_headers" in big.json() and big.json()["path"] == "/items/1"
    err = request(g.port, "GET", "/status/404")                # JSON: edited whatever the status
    assert err.status == 404 and err.json()["status"] == 404 and err.json()["gateway"]["by"] == "fastgw"


def test_gateway_answers_are_edited_too(backend: Backend, port: int, gateway: Any) -> None:
    g = transforming_gateway(gateway, backend, port)
    m = request(g.port, "GET", "/mocked/3")
    assert m.json() == {"route": "/m", "tags": ["x", "t-3"], "gateway": {"by": "fastgw", "id": "3"},
                        "method": "never"}
    first = request(g.port, "GET", "/cached/4", headers={"X-M": "a"})
    hit = request(g.port, "GET", "/cached/4", headers={"X-M": "b"})
    assert first.headers["x-cache-status"] == "Miss" and hit.headers["x-cache-status"] == "Hit"
    check_edited(first.json(), "/cached/4", "4", "was-a")
    check_edited(hit.json(), "/cached/4", "4", "was-b")         # the stored answer, edited for this request
    assert int(hit.headers["content-length"]) == len(hit.body)


def test_a_backend_failing_in_a_held_body_gets_a_502_and_the_connection_goes_on(port: int, gateway: Any) -> None:
    # A backend that cuts /broken's JSON body short and closes; anything else it answers whole.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def serve(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data, _ = recv_head(conn)
                except ConnectionError:
                    return
                if b" /broken " in data.split(b"\r\n", 1)[0]:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                                 b'{"a": "')
                    return
                text = b" /text " in data.split(b"\r\n", 1)[0]
                body = b"plain words" if text else b'{"ok": true}'
                kind = b"text/plain" if text else b"application/json"
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
                             % (kind, len(body), body))

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        g = gateway(gateway_config(port, f"http://127.0.0.1:{srv.getsockname()[1]}", {"/{p*}": {"GET": {"plugins": [
            {"name": "response-transformer", "config": {"json": {"add": {"edited": True}}}}]}}}))
        with RawClient(g.port) as c:
            r = c.request("GET", "/broken")
            assert r.status == 502 and r.json()["status"] == 502     # nothing was sent before: a clean 502
            for _ in range(2):                                       # the same connection, whole answers
                text = c.request("GET", "/text")                     # not held: nothing left of /broken
                assert text.status == 200 and text.body == b"plain words"
                ok = c.request("GET", "/fine")
                assert ok.status == 200 and ok.json() == {"ok": True, "edited": True}
    finally:
        srv.close()
