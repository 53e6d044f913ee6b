"""The test harness itself: what keeps the e2e tests from failing for reasons of their own."""

from __future__ import annotations

import socket

from tests.helpers import Gateway, free_port, gateway_config, request


def test_a_gateway_whose_admin_port_was_taken_meanwhile_starts_on_another() -> None:
    """``free_port`` hands out a port that something else may take before the supervisor
    binds it (an outgoing connection's local port): the start is tried again with another
    admin port, written into the caller's config."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        taken = blocker.getsockname()[1]
        cfg = gateway_config(free_port(), "http://127.0.0.1:9")
        cfg["admin"]["port"] = taken
        with Gateway(cfg) as g:
            assert cfg["admin"]["port"] != taken
            assert request(cfg["admin"]["port"], "GET", "/health").status == 200
            assert g.proc is not None and g.proc.poll() is None
