"""End-to-end: the backend sees the request as request-transformer reshaped it (headers,
query and JSON body), with and without a backend_path template; other bodies untouched."""

from __future__ import annotations

import json
from typing import Any

from tests.helpers import Backend, RawClient, gateway_config, request

CONFIG = {
    "remove": {"headers": ["X-Debug"], "query": ["debug"]},
    "rename": {"headers": {"X-Old": "X-New"}},
    "add": {"headers": {"X-Order": "{id}", "X-Caller": "${header.x-user}"}, "query": {"v": "2"}},
    "replace": {"query": {"page": "1"}},
}


def test_the_backend_sees_the_reshaped_request(backend: Backend, port: int, gateway: Any) -> None:
    plugins = [{"name": "request-transformer", "config": CONFIG}]
    cfg = gateway_config(port, backend.url, {
        "/orders/{id}": {"POST": {"plugins": plugins}},
        "/v/{id}": {"GET": {"plugins": plugins, "backend_path": "/inner/{id}"}},
    })
    g = gateway(cfg)
    for method, path, seen_path in (("POST", "/orders/9", "/orders/9"), ("GET", "/v/9", "/inner/9")):
        r = request(g.port, method, f"{path}?debug=1&page=5&q=x", body=b"payload" if method == "POST" else b"",
                    headers={"X-Debug": "1", "X-Old": "o", "X-User": "ada"})
        assert r.status == 200, r.body
        seen = r.json()
        assert seen["path"] == seen_path
        assert seen["query"] == {"page": "1", "q": "x", "v": "2"}
        h = seen["headers"]
        assert "x-debug" not in h and "x-old" not in h and h["x-new"] == "o"
        assert h["x-order"] == "9" and h["x-caller"] == "ada"
        if method == "POST":
            assert seen["body"] == "payload"


def test_json_body_edits_reach_the_backend_with_their_own_length(backend: Backend, port: int, gateway: Any) -> None:
    edits = {"remove": {"body": ["/card/number"]}, "add": {"body": {"order": "{id}", "/card/masked": True}}}
    cfg = gateway_config(port, backend.url, {"/orders/{id}": {"POST": {"plugins": [
        {"name": "request-transformer", "config": {**edits, "max_body": 10_000}}]}}})
    g = gateway(cfg)
    sent = json.dumps({"card": {"number": "4111111111111111", "exp": "12/30"}, "qty": 2}).encode()
    json_ct = {"Content-Type": "application/json"}
    with RawClient(g.port) as c:
        r = c.request("POST", "/orders/7", json_ct, sent)
        seen = r.json()
        assert json.loads(seen["body"]) == {"card": {"exp": "12/30", "masked": True}, "qty": 2, "order": "7"}
        assert int(seen["headers"]["content-length"]) == len(seen["body"].encode())
        # A chunked body is read whole, edited and sent with a Content-Length.
        c.send(b"POST /orders/8 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(sent) + sent + b"\r\n0\r\n\r\n")
        seen = c.read_response().json()
        assert json.loads(seen["body"])["order"] == "8" and "transfer-encoding" not in seen["headers"]
        assert int(seen["headers"]["content-length"]) == len(seen["body"].encode())
        # Not JSON: passed on as it was, framing included; the connection goes on.
        c.send(b"POST /orders/9 HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        seen = c.read_response().json()
        assert seen["body"] == "hello" and seen["headers"]["transfer-encoding"] == "chunked"
    # Larger than max_body: 413, before the backend sees anything.
    calls = len(backend.requests)
    r = request(g.port, "POST", "/orders/1", headers=json_ct, body=b'{"x": "' + b"y" * 20_000 + b'"}')
    assert r.status == 413 and len(backend.requests) == calls


def test_fixed_header_edits_on_the_lazy_path(backend: Backend, port: int, gateway: Any) -> None:
    """Fixed header edits run in C (HeaderEditsStep): with only C steps on the route the
    request's headers stay on the scanned head, and the backend sees the edits, in Kong's
    order, on every request (a POST's body untouched)."""
    edits = {"remove": {"headers": ["X-Debug"]}, "replace": {"headers": {"X-Env": "prod"}},
             "add": {"headers": {"X-Tenant": "acme", "X-Env": "never"}}, "append": {"headers": {"X-Via": "gw"}}}
    g = gateway(gateway_config(port, backend.url, {
        "/edit/{id}": {"GET": {"plugins": [{"name": "request-transformer", "config": edits}]},
                       "POST": {"plugins": [{"name": "request-transformer", "config": edits}]}},
    }))
    for method, extra in (("GET", {"X-Env": "dev"}), ("GET", {}), ("POST", {"X-Tenant": "other"})):
        r = request(g.port, method, "/edit/1", body=b"payload" if method == "POST" else b"",
                    headers={"X-Debug": "1", "X-Via": "client", **extra})
        assert r.status == 200, r.body
        seen = r.json()
        h = seen["headers"]
        assert "x-debug" not in h
        assert h.get("x-env") == ("prod" if "X-Env" in extra else "never")
        assert h["x-tenant"] == extra.get("X-Tenant", "acme")
        assert [v for k, v in seen["raw_headers"] if k.lower() == "x-via"] == ["client", "gw"]
        if method == "POST":
            assert seen["body"] == "payload"


def test_query_values_from_templates_reach_the_backend_as_the_client_sent_them(
        backend: Backend, port: int, gateway: Any) -> None:
    """A path variable's '&' stays inside its value, and a Latin-1 form's %E9 stays %E9."""
    plugins = [{"name": "request-transformer",
                "config": {"add": {"query": {"who": "{id}", "q2": "${query.q}"}}}}]
    g = gateway(gateway_config(port, backend.url, {"/files/{id}": {"GET": {"plugins": plugins}}}))
    r = request(g.port, "GET", "/files/a%26b?q=%E9t%E9")
    assert r.status == 200, r.body
    assert r.json()["target"] == "/files/a%26b?q=%E9t%E9&who=a%26b&q2=%E9t%E9"
