"""aggregate: answer with one JSON object built from several backend calls made at once.

``calls`` names each call and its path (with an optional query) on the stage's backend,
or a whole ``http(s)://host:port/path`` URL for another service:
``{"user": "/users/{id}", "orders": "http://orders:8000/orders?customer={id}"}`` answers
``{"user": <the JSON of /users/17>, "orders": <the JSON of …/orders?customer=17>}``. Paths
are templates (never the scheme, host or port) (``{id}``, ``${stage.x}``, ``${header.x}``, ``${query.x}``,
``${consumer.name}``, ``${request_id}``); path variables go in as routed, every other
request value percent-encoded, so no request can add a segment or a query to a call.

The calls are GETs made in parallel to the stage's targets (in turn), over kept-alive
connections (fastgw.backend_client), each carrying the request id (``X-Request-Id``),
``X-Forwarded-For``, the authenticated consumer's identity headers and the request
headers named in ``forward_headers``. A call succeeds with a 2xx JSON answer. When one
fails (an error status, a body that is not JSON, no answer within ``timeout`` seconds for
the whole fan-out), ``on_error: "fail"`` (the default) answers 502 naming the call, and
``on_error: "null"`` puts ``null`` in its place and lists the failed calls in
``X-Aggregate-Failed``. A call may be ``{"url": ..., "timeout": s, "on_error": ...}``
to have its own: an optional call that must not hold the answer up
(``{"url": "/recs/{id}", "timeout": 0.3, "on_error": "null"}``) beside required ones. The
route's other plugins (authentication, limits …) run first.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import orjson

from fastgw.backend_client import BackendClient, BackendError
from fastgw.plugins.base import HEADER_NAME, PluginScope
from fastgw.plugins.base import Plugin as BasePlugin
from fastgw.plugins.template import compile_template, param_names

NAME = "aggregate"
PRIORITY = 2          # in the request phase after every other plugin but mock

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["calls"],
    "properties": {
        "calls": {"type": "object", "minProperties": 1, "maxProperties": 32,
                  "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"},
                  "additionalProperties": {"oneOf": [
                      {"$ref": "#/$defs/where"},
                      {"type": "object", "additionalProperties": False, "required": ["url"],
                       "properties": {
                           "url": {"$ref": "#/$defs/where"},
                           "timeout": {"type": "number", "exclusiveMinimum": 0,
                                       "description": "Seconds for this call (at most the plugin's timeout)."},
                           "on_error": {"enum": ["fail", "null"],
                                        "description": "This call's on_error (default: the plugin's)."}}}]},
                  "description": "Name -> path (and query) on the stage's backend, or a whole "
                                 "http(s):// URL; templates allowed in the path. Or "
                                 "{\"url\": ..., \"timeout\": s, \"on_error\": ...} for a call of its own."},
        "forward_headers": {"type": "array", "default": [], "uniqueItems": True,
                            "items": {"type": "string", "pattern": HEADER_NAME},
                            "description": "Request headers passed on to every call."},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "default": 10,
                    "description": "Seconds for all the calls together."},
        "on_error": {"enum": ["fail", "null"], "default": "fail",
                     "description": "A failed call fails the request (502) or becomes null."},
    },
    "$defs": {
        "where": {"type": "string", "pattern": "^(https?://[^/\\s{}$]+)?/[^\\s#]*$"},
    },
}

# One client per worker: its kept-alive connections serve every aggregate route.
_CLIENT = BackendClient()


class CallFailed(Exception):
    """One call gave no usable answer (message says why)."""


class _Call:
    """One call as configured: its name, where it goes, its own timeout and on_error."""

    __slots__ = ("name", "base", "template", "timeout", "fail")

    def __init__(self, name: str, base: str | None, template: Any, timeout: float, fail: bool) -> None:
        self.name = name
        self.base = base            # scheme://authority, or None: the stage's backend
        self.template = template
        self.timeout = timeout
        self.fail = fail            # its failure fails the request (else it becomes null)


def _split_url(where: str) -> tuple[str | None, str]:
    """(``scheme://authority`` or None for the stage's backend, the path and query)."""
    if where.startswith("/"):
        return None, where
    slash = where.index("/", where.index("://") + 3)
    return where[:slash], where[slash:]


class Plugin(BasePlugin):
    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        super().__init__(config, scope)
        spec = scope.spec
        if not spec.targets:
            raise ValueError("aggregate needs the stage's backend targets")
        params = param_names(spec.resource)
        self.timeout = float(config["timeout"])
        calls = []
        for name, where in config["calls"].items():
            call = where if isinstance(where, dict) else {"url": where}
            base, path = _split_url(call["url"])
            calls.append(_Call(name, base, compile_template(path, params, scope.variables),
                               min(float(call.get("timeout", self.timeout)), self.timeout),
                               call.get("on_error", config["on_error"]) == "fail"))
        self.calls = tuple(calls)
        self.forward = tuple(name.lower() for name in config["forward_headers"])
        for name in self.forward:
            if name in ("host", "content-length", "transfer-encoding", "connection"):
                raise ValueError(f"forward_headers: {name} is set by the gateway")
        # Targets in turn, each as often as its weight.
        weights = spec.weights or (1,) * len(spec.targets)
        self._targets = itertools.cycle([t for t, w in zip(spec.targets, weights, strict=True) for _ in range(w)])

    def on_request(self, ctx: Any) -> Any:
        return self._aggregate(ctx)

    def _headers(self, ctx: Any) -> list[tuple[bytes, bytes]]:
        headers = [(b"Accept", b"application/json"),
                   (b"X-Request-Id", str(ctx.request_id or "").encode("latin-1")),
                   (b"X-Forwarded-For", str(ctx.client_ip).encode("latin-1"))]
        consumer = ctx.consumer
        if consumer is not None and getattr(consumer, "headers", None):
            headers.extend(consumer.headers)
        for name in self.forward:
            for value in ctx.get_headers(name):
                headers.append((name.encode("latin-1"), value.encode("latin-1")))
        return headers

    async def _call(self, call: _Call, path: str, headers: list[tuple[bytes, bytes]]) -> Any:
        name = call.name
        try:
            answer = await _CLIENT.request(call.base or next(self._targets), "GET", path, headers, call.timeout)
        except BackendError as exc:
            raise CallFailed(f"call {name!r} failed: {exc}") from None
        if not 200 <= answer.status < 300:
            raise CallFailed(f"call {name!r} answered {answer.status}")
        try:
            return orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            raise CallFailed(f"call {name!r} did not answer JSON") from None

    async def _aggregate(self, ctx: Any) -> int:
        headers = self._headers(ctx)
        # (the loop asked once: PERF: asyncio.ensure_future asks for it per call, and on
        # Python 3.11 each ask is a getpid system call)
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._call(c, c.template.render_url(ctx), headers)) for c in self.calls]
        fails = {task: c.fail for c, task in zip(self.calls, tasks, strict=True)}
        deadline = loop.time() + self.timeout
        pending = set(tasks)
        # PERF: the first failure of a call that fails the request ends the wait (the rest
        # are cancelled); a failed call that becomes null does not.
        while pending:
            done, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()),
                                               return_when=asyncio.FIRST_EXCEPTION)
            if not done or any(fails[t] and t.exception() is not None for t in done):
                break
        for task in pending:
            task.cancel()
        result: dict[str, Any] = {}
        failed: list[str] = []
        errors: list[tuple[bool, str]] = []     # (the call ended, why it failed) of calls that fail the request
        for call, task in zip(self.calls, tasks, strict=True):
            ended = task.done() and not task.cancelled()
            exc = task.exception() if ended else CallFailed(
                f"call {call.name!r} failed: no answer within {call.timeout:g} s")
            if exc is None:
                result[call.name] = task.result()
                continue
            result[call.name] = None
            failed.append(call.name)
            if call.fail:
                errors.append((ended, str(exc) if isinstance(exc, CallFailed) else f"call {call.name!r} failed: {exc!r}"))
        if errors:
            return ctx.error(502, max(errors, key=lambda e: e[0])[1])   # a call that failed, else a late one
        extra = [(b"X-Aggregate-Failed", ",".join(failed).encode("ascii"))] if failed else []
        return ctx.answer(200, orjson.dumps(result), extra, "application/json")
