"""End-to-end: the backend sees the request as request-transformer reshaped it (headers and
query), with and without a backend_path template, and the body untouched."""

from __future__ import annotations

from typing import Any

from tests.helpers import Backend, gateway_config, request

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
