"""request-id: a request id (``X-Request-Id``) and a W3C ``traceparent`` on every request.

A client's ``X-Request-Id`` is kept when it is valid (1–128 characters of
``A-Z a-z 0-9 - _ . : + / =``), otherwise the gateway's own id is used. The id becomes
``ctx.request_id`` (so it is in error bodies and the access log), goes to the backend and,
by default, back to the client. A valid ``traceparent`` is propagated unchanged; a
missing or invalid one is replaced by a new one (random trace id and parent id).
"""

from __future__ import annotations

import itertools
import os
import random
import re
from typing import Any

from fastgw._core import pop_header
from fastgw.plugins.base import CONTINUE, PluginScope
from fastgw.plugins.base import Plugin as BasePlugin

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

# SECURITY: an id from the client ends up in logs and headers: bounded and a safe charset.
_VALID_ID = re.compile(rb"[A-Za-z0-9._:+/=-]{1,128}").fullmatch
_VALID_TP = re.compile(rb"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}").fullmatch
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16

_prefix = os.urandom(4).hex()
_counter = itertools.count(1)


def new_request_id() -> str:
    """A process-unique id (random prefix + counter); PERF: no syscall per request."""
    return f"{_prefix}-{next(_counter):x}"


def new_traceparent() -> bytes:
    """A fresh sampled traceparent (random trace id and parent id; all-zero odds: 2^-128)."""
    h = random.randbytes(24).hex().encode("ascii")  # PERF: not a secret; no syscall
    return b"00-" + h[:32] + b"-" + h[32:] + b"-01"


class Plugin(BasePlugin):
    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        super().__init__(config, scope)
        self.header = config["header_name"].encode("latin-1")
        self.header_lc = self.header.lower()
        self.trust = config["trust_incoming"]
        self.echo = config["echo_downstream"]
        self.trace = config["traceparent"]

    def on_request(self, ctx: Any) -> int:
        keep = ctx.headers
        # PERF: C scans; the list is only rebuilt when the client sent these headers.
        incoming = pop_header(keep, self.header_lc)
        trace = pop_header(keep, b"traceparent")
        if incoming is not None and self.trust and _VALID_ID(incoming):
            rid = incoming.decode("ascii")
            ctx.request_id = rid
        else:
            rid = ctx.request_id or new_request_id()
            ctx.request_id = rid
        rid_b = rid.encode("ascii") if isinstance(rid, str) else rid
        keep.append((self.header, rid_b))
        if self.trace:
            m = _VALID_TP(trace) if trace is not None else None
            if m is None or m.group(1) == _ZERO_TRACE or m.group(2) == _ZERO_SPAN or trace[:2] == b"ff":
                trace = new_traceparent()
            keep.append((b"traceparent", trace))
        elif trace is not None:
            keep.append((b"traceparent", trace))
        if self.echo:
            ctx.response_headers_add.append((self.header, rid_b))
        return CONTINUE
