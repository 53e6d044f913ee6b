"""cors: Cross-Origin Resource Sharing, with preflights answered at the gateway.

``origins`` entries: ``*`` (any), an exact origin (``https://app.example.com``), a
wildcard (``https://*.example.com``: one or more labels) or a regular expression
prefixed with ``~`` (``~^https://[a-z]+\\.example\\.com$``, matched in full). A preflight
(``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered 204
without calling the backend; the server calls :meth:`Plugin.preflight` (exposed as
``Pipeline.preflight``) for a preflight on a path that has no OPTIONS method. Actual
requests get ``Access-Control-Allow-Origin`` (and the other headers) on whatever answer
goes out, including a gateway's own 401/403. ``Vary: Origin`` is sent whenever the
answer depends on the Origin.

SECURITY: ``credentials: true`` with origin ``*`` is refused at config load: it would let
every web site read credentialed responses.
"""

from __future__ import annotations

import re
import types
from typing import Any

from fastgw._core import CorsStep
from fastgw.plugins.base import ANSWERED, CONTINUE, HEADER_NAME, PluginScope
from fastgw.plugins.base import Plugin as BasePlugin

NAME = "cors"
PRIORITY = 2000

_METHODS = ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT"]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "origins": {"type": "array", "default": ["*"], "minItems": 1,
                    "items": {"type": "string", "minLength": 1},
                    "description": "Allowed origins: '*', exact, wildcard 'https://*.example.com', or '~regex'."},
        "methods": {"type": "array", "default": ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"],
                    "items": {"type": "string", "enum": _METHODS},
                    "description": "Methods allowed in Access-Control-Allow-Methods."},
        "headers": {"type": "array", "default": [], "items": {"type": "string", "pattern": HEADER_NAME},
                    "description": "Allowed request headers (empty: echo Access-Control-Request-Headers)."},
        "exposed_headers": {"type": "array", "default": [], "items": {"type": "string", "pattern": HEADER_NAME},
                            "description": "Response headers the browser may read (Access-Control-Expose-Headers)."},
        "credentials": {"type": "boolean", "default": False,
                        "description": "Send Access-Control-Allow-Credentials: true."},
        "max_age": {"type": "integer", "minimum": 0, "default": 3600,
                    "description": "Seconds a preflight answer may be cached (Access-Control-Max-Age)."},
        "preflight_continue": {"type": "boolean", "default": False,
                               "description": "Forward preflights to the backend instead of answering them."},
    },
}

_HEADER_SAFE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z, -]*").fullmatch


def compile_origin(entry: str) -> re.Pattern[str] | str:
    """An exact origin (lower-cased str) or a compiled pattern for wildcard / '~regex' entries."""
    if entry.startswith("~"):
        return re.compile(entry[1:])
    if "*" in entry:
        parts = [re.escape(p) for p in entry.lower().split("*")]
        return re.compile("(?:[a-z0-9-]+\\.)*[a-z0-9-]+".join(parts))
    return entry.lower().rstrip("/")


class Plugin(BasePlugin):
    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        super().__init__(config, scope)
        origins = config["origins"]
        self.any_origin = "*" in origins
        if self.any_origin and config["credentials"]:
            raise ValueError("credentials: true cannot be combined with origin '*' (list the origins)")
        self.exact = frozenset(o for o in (compile_origin(e) for e in origins if e != "*") if isinstance(o, str))
        try:
            self.patterns = tuple(p for p in (compile_origin(e) for e in origins if e != "*")
                                  if not isinstance(p, str))
        except re.error as exc:
            raise ValueError(f"origins: bad regular expression: {exc}") from None
        self.vary = not self.any_origin
        self.credentials = config["credentials"]
        self.preflight_continue = config["preflight_continue"]
        methods = ",".join(config["methods"]).encode("latin-1")
        allow_headers = ",".join(config["headers"]).encode("latin-1")
        self.allow_headers = allow_headers or None
        common: list[tuple[bytes, bytes]] = []
        if self.credentials:
            common.append((b"Access-Control-Allow-Credentials", b"true"))
        self.actual_extra = list(common)
        if config["exposed_headers"]:
            self.actual_extra.append((b"Access-Control-Expose-Headers",
                                      ",".join(config["exposed_headers"]).encode("latin-1")))
        self.preflight_extra = [*common, (b"Access-Control-Allow-Methods", methods),
                                (b"Access-Control-Max-Age", str(config["max_age"]).encode("latin-1"))]
        self._seen: dict[bytes, bool] = {}       # Origin -> allowed (cleared, never replaced, when full)
        # PERF: a request from no origin or from one judged before is answered in C; a
        # preflight or a new origin reaches on_request below, which fills _seen.
        self.on_request = CorsStep(types.MethodType(Plugin.on_request, self), self._seen, self.vary,
                                   self.any_origin and not self.credentials, self.actual_extra)

    def origin_allowed(self, origin: bytes) -> bool:
        verdict = self._seen.get(origin)
        if verdict is None:
            text = origin.decode("latin-1").lower()
            verdict = (self.any_origin or text in self.exact
                       or any(p.fullmatch(text) for p in self.patterns))
            if len(self._seen) > 1024:
                self._seen.clear()
            self._seen[origin] = verdict
        return verdict

    def _allow_origin(self, origin: bytes) -> bytes:
        return b"*" if self.any_origin and not self.credentials else origin

    def preflight(self, ctx: Any) -> int:
        """Answer a CORS preflight (204); CONTINUE if ``ctx`` is not one."""
        origin = ctx.get_header("origin")
        if origin is None or ctx.get_header("access-control-request-method") is None:
            return CONTINUE
        origin_b = origin.encode("latin-1")
        headers: list[tuple[bytes, bytes]] = []
        if self.vary:
            headers.append((b"Vary", b"Origin"))
        if self.origin_allowed(origin_b):
            headers.append((b"Access-Control-Allow-Origin", self._allow_origin(origin_b)))
            headers.extend(self.preflight_extra)
            requested = self.allow_headers
            if requested is None:
                asked = ctx.get_header("access-control-request-headers")
                requested = asked.encode("latin-1") if asked and _HEADER_SAFE(asked.encode("latin-1")) else None
            if requested:
                headers.append((b"Access-Control-Allow-Headers", requested))
        ctx.answer(204, b"", headers)
        return ANSWERED

    def on_request(self, ctx: Any) -> int:
        if ctx.method == "OPTIONS" and not self.preflight_continue and self.preflight(ctx):
            return ANSWERED
        origin = None
        for name, value in ctx.headers:
            if len(name) == 6 and name.lower() == b"origin":
                origin = value
                break
        add = ctx.response_headers_add
        if self.vary:
            add.append((b"Vary", b"Origin"))
        if origin is not None and self.origin_allowed(origin):
            add.append((b"Access-Control-Allow-Origin", self._allow_origin(origin)))
            add.extend(self.actual_extra)
        return CONTINUE
