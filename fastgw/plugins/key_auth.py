"""key-auth: authenticate a consumer by an API key in a header or the query string (as Kong).

Defaults follow Kong: the key is read from header ``apikey`` first, then query argument
``apikey``. Unlike Kong, the key is hidden from the backend by default
(``hide_credentials: true``). Missing or wrong key: 401 with ``WWW-Authenticate``.
The key lookup is timing-safe (see :meth:`fastgw.consumers.ConsumerTable.key_lookup`).
"""

from __future__ import annotations

from typing import Any

from fastgw._core import find_header, remove_headers
from fastgw.consumers import ConsumerTable
from fastgw.plugins.base import CONTINUE, PluginScope
from fastgw.plugins.base import Plugin as BasePlugin

NAME = "key-auth"
PRIORITY = 1250

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "key_names": {
            "type": "array", "minItems": 1, "default": ["apikey"],
            "items": {"type": "string", "minLength": 1, "pattern": "^[A-Za-z0-9_.-]+$"},
            "description": "Header and query-argument names that may carry the key.",
        },
        "key_in_header": {"type": "boolean", "default": True, "description": "Read the key from request headers."},
        "key_in_query": {"type": "boolean", "default": True, "description": "Read the key from the query string."},
        "hide_credentials": {"type": "boolean", "default": True,
                             "description": "Remove the key (header and query argument) before forwarding."},
        "realm": {"type": "string", "default": "fastgw", "pattern": "^[^\"\\r\\n]*$",
                  "description": "Realm in the WWW-Authenticate header of a 401."},
    },
}


class Plugin(BasePlugin):
    """Key lookup in headers, then query; the consumer goes to ``ctx.consumer``."""

    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        super().__init__(config, scope)
        self.table: ConsumerTable = scope.consumers or ConsumerTable()
        self.names = tuple(config["key_names"])
        self.header_names = tuple(dict.fromkeys(n.lower().encode("latin-1") for n in self.names)) \
            if config["key_in_header"] else ()
        self.query_names = tuple((n, n.encode("latin-1") + b"=") for n in self.names) if config["key_in_query"] else ()
        self.hide = config["hide_credentials"]
        self.challenge = [(b"WWW-Authenticate", f'Key realm="{config["realm"]}"'.encode("latin-1"))]

    def on_request(self, ctx: Any) -> int:
        key: bytes | None = None
        in_query: str | None = None
        if self.header_names:
            for lname in self.header_names:
                key = find_header(ctx.headers, lname)
                if key is not None:
                    break
        if key is None and ctx.query:
            query = ctx.query
            for name, probe in self.query_names:
                if probe in query:  # PERF: parse the query only when the name appears in it
                    found = ctx.query_args.get(name)
                    if found is not None:
                        key, in_query = found.encode("utf-8"), name
                        break
        if not key:
            return ctx.error(401, "No API key found in request", self.challenge)
        consumer = self.table.key_lookup(key.strip())
        if consumer is None:
            return ctx.error(401, "Invalid authentication credentials", self.challenge)
        ctx.consumer = consumer
        if self.hide:
            if self.header_names:
                remove_headers(ctx.headers, self.header_names)
            if in_query is not None or ctx.query:
                for name, probe in self.query_names:
                    if probe in ctx.query:
                        ctx.remove_query_arg(name)
        return CONTINUE
