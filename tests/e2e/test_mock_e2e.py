"""End-to-end: a mocked resource answers at the gateway (the backend never sees it), after
the route's other plugins, with HEAD and 204 framed as for any answer."""

from __future__ import annotations

from typing import Any

from tests.helpers import Backend, RawClient, gateway_config, request


def test_a_mocked_resource_never_reaches_the_backend(backend: Backend, port: int, gateway: Any) -> None:
    cfg = gateway_config(port, backend.url, {
        "/orders/{id}": {
            "GET": {"plugins": [{"name": "mock", "config": {"json": {"id": "{id}", "state": "shipped"},
                                                            "headers": {"X-Mock": "1"}}}]},
            "DELETE": {"plugins": [{"name": "mock", "config": {"status": 204}}]},
        },
        "/private": {"GET": {"plugins": [
            {"name": "key-auth"}, {"name": "mock", "config": {"body": "hello ${consumer.name}"}}]}},
        "/real": {"GET": {}},
    })
    cfg["consumers"] = [{"name": "ada", "credentials": {"key-auth": ["ada-key-0123456789abcdef"]}}]
    g = gateway(cfg)
    r = request(g.port, "GET", "/orders/17")
    assert r.status == 200 and r.json() == {"id": "17", "state": "shipped"} and r.headers["x-mock"] == "1"
    assert request(g.port, "GET", "/private").status == 401              # key-auth ran first
    r = request(g.port, "GET", "/private", headers={"apikey": "ada-key-0123456789abcdef"})
    assert r.status == 200 and r.body == b"hello ada"
    with RawClient(g.port) as c:
        head = c.request("HEAD", "/orders/5")
        assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 0
        gone = c.request("DELETE", "/orders/5")
        assert gone.status == 204 and gone.body == b""
        assert c.request("GET", "/real").json()["path"] == "/real"       # the connection goes on
    assert [q["path"] for q in backend.requests] == ["/real"]
