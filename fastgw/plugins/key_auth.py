"""key-auth: authenticate a consumer by an API key in a header or the query string (as Kong).

Defaults follow Kong: the key is read from header ``apikey`` first, then query argument
``apikey``. Unlike Kong, the key is hidden from the backend by default
(``hide_credentials: true``). Missing or wrong key: 401 with ``WWW-Authenticate``.
The key lookup is timing-safe (see ``KeyIndex`` in fastgw/_plugins.pxi). The per-request
work runs in C (``KeyAuthStep``); this module holds the schema and builds the step.
"""

from __future__ import annotations

from typing import Any

from fastgw._core import KeyAuthStep
from fastgw.consumers import ConsumerTable
from fastgw.plugins.base import Plugin as BasePlugin
from fastgw.plugins.base import PluginScope

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
        self.native = KeyAuthStep(self.table.keys, self.header_names, self.query_names, self.hide,
                                  self.challenge)

    def on_request(self, ctx: Any) -> int:
        return self.native.on_request(ctx)
