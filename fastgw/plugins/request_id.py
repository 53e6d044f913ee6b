"""request-id: a request id (``X-Request-Id``) and a W3C ``traceparent`` on every request.

A client's ``X-Request-Id`` is kept when it is valid (1–128 characters of
``A-Z a-z 0-9 - _ . : + / =``), otherwise the gateway's own id is used. The id becomes
``ctx.request_id`` (so it is in error bodies and the access log), goes to the backend and,
by default, back to the client. A valid ``traceparent`` is propagated unchanged; a
missing or invalid one is replaced by a new one (random trace id and parent id).
The per-request work runs in C (``RequestIdStep`` in fastgw/_plugins.pxi).
"""

from __future__ import annotations

from typing import Any

from fastgw._core import RequestIdStep
from fastgw.plugins.base import Plugin as BasePlugin
from fastgw.plugins.base import PluginScope

NAME = "request-id"
PRIORITY = 100000  # first: every answer, also a 401 from an auth plugin, carries the id

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "header_name": {"type": "string", "default": "X-Request-Id", "pattern": "^[A-Za-z0-9-]+$",
                        "description": "Header carrying the request id."},
        "trust_incoming": {"type": "boolean", "default": True,
                           "description": "Keep a valid id sent by the client."},
        "echo_downstream": {"type": "boolean", "default": True,
                            "description": "Send the id back to the client in the response."},
        "traceparent": {"type": "boolean", "default": True,
                        "description": "Propagate or create a W3C traceparent header."},
    },
}


class Plugin(BasePlugin):
    """Request id and traceparent on the way up; the id echoed down."""

    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        super().__init__(config, scope)
        self.header = config["header_name"].encode("latin-1")
        self.header_lc = self.header.lower()
        self.trust = config["trust_incoming"]
        self.echo = config["echo_downstream"]
        self.trace = config["traceparent"]
        self.native = RequestIdStep(self.header, self.trust, self.echo, self.trace)

    def on_request(self, ctx: Any) -> int:
        return self.native.on_request(ctx)
