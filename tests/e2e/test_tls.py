"""End-to-end: TLS termination on a listener (``listen[].tls``), with a throwaway certificate."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

from tests.helpers import Backend, gateway_config, make_cert, recv_sized


def test_tls_termination(tmp_path: Path, backend: Backend, port: int, gateway: Any) -> None:
    cert, key = make_cert(tmp_path)
    cfg = gateway_config(port, backend.url)
    cfg["listen"][0]["tls"] = {"cert": str(cert), "key": str(key)}
    g = gateway(cfg)
    ctx = ssl.create_default_context(cafile=str(cert))
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            for i in range(3):   # keep-alive over TLS
                tls.sendall(f"GET /secure/{i} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
                head, _ = recv_sized(tls)
                assert head.startswith(b"HTTP/1.1 200")
    sent = backend.requests[-1]
    assert sent["path"] == "/secure/2"
    assert sent["headers"]["x-forwarded-proto"] == "https"
    # plain HTTP on the TLS port is refused, not served
    with socket.create_connection(("127.0.0.1", g.port), timeout=5) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        plain.settimeout(5)
        try:
            answer = plain.recv(100)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"HTTP/1.1 200")
