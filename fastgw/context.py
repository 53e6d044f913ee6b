"""The per-request context that plugins see; created by the server only for routes with plugins.

Headers are kept as the server parsed them: a list of ``(name, value)`` byte pairs in
arrival order (names in their original case). The request list is forwarded to the
backend after the request phase, so a plugin changes what the backend sees by editing it
through the helpers below. The plain path (no plugins) never builds a context.
"""

from __future__ import annotations

from typing import Any

import orjson

from fastgw._core import find_header, remove_headers
from fastgw.plugins.base import ANSWERED

Header = tuple[bytes, bytes]


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


_CONTROL = dict.fromkeys([*range(0, 32), 127])


def _clean(value: str) -> bytes:
    return value.translate(_CONTROL).encode("utf-8")




class Consumer:
    """An authenticated caller: ``name`` and ``groups`` (from the config's ``consumers``)."""

    __slots__ = ("name", "groups", "data", "headers")

    def __init__(self, name: str, groups: tuple[str, ...] = (), data: dict[str, Any] | None = None) -> None:
        self.name = name
        self.groups = groups
        self.data = data or {}
        # PERF: the identity headers for the backend are built once per consumer.
        # SECURITY: control characters are dropped (a name may come from a token claim).
        self.headers: tuple[Header, ...] = (
            (b"X-Consumer-Name", _clean(name)),
            (b"X-Consumer-Groups", _clean(",".join(groups))),
        )

    def __repr__(self) -> str:
        return f"Consumer({self.name!r}, groups={self.groups!r})"


class RequestContext:
    """One request's view for plugins: request data, the answer, and the response."""

    __slots__ = (
        "method", "path", "query", "headers", "client_ip", "peer_ip", "scheme", "route",
        "values", "request_id", "http_version", "consumer", "upstream_path", "answer_status",
        "answer_headers", "answer_body", "status", "response_headers", "response_headers_add",
        "bytes_in", "bytes_out", "start_time", "upstream_time", "vars", "_params", "_query_args",
        "body_size", "body",
    )

    def __init__(self, method: str, path: str, query: bytes, headers: list[Header],
                 client_ip: str, scheme: str, route: Any, values: tuple[bytes, ...],
                 request_id: str, http_version: str = "1.1", peer_ip: str | None = None) -> None:
        self.method = method
        self.path = path                    # normalized path as routed (no query)
        self.query = query                  # raw query string bytes, without '?'
        self.headers = headers              # request headers forwarded to the backend
        self.client_ip = client_ip          # the caller (peer, or from trusted X-Forwarded-For)
        self.peer_ip = peer_ip or client_ip  # the TCP peer
        self.scheme = scheme
        self.route = route
        self.values = values                # path-variable values (bytes) in route.param_names order
        self.request_id = request_id
        self.http_version = http_version
        self.consumer: Consumer | None = None
        self.upstream_path: bytes | None = None   # set to override the backend path (+query)
        self.answer_status = 0               # > 0 once a plugin answered
        self.answer_headers: list[Header] = []
        self.answer_body = b""
        self.status = 0                      # response status (backend's or the answer's)
        self.response_headers: list[Header] = []   # backend response headers (response phase)
        self.response_headers_add: list[Header] = []  # headers added to whatever answer goes out
        self.bytes_in = 0
        self.bytes_out = 0
        self.start_time = 0.0
        self.upstream_time = 0.0
        self.body_size = -1                  # Content-Length of the request, -1 if unknown/chunked
        self.body: bytes | None = None       # buffered request body, only when pipeline.needs_body
        self.vars: dict[str, Any] = {}       # scratch space shared by this request's plugins
        self._params: dict[str, str] | None = None
        self._query_args: dict[str, str] | None = None

    # -- request data -------------------------------------------------------------------
    @property
    def params(self) -> dict[str, str]:
        """Path variables by name (decoded lazily, once)."""
        if self._params is None:
            from urllib.parse import unquote
            names = self.route.param_names
            self._params = {n: unquote(v.decode("latin-1")) for n, v in zip(names, self.values, strict=False)}
        return self._params

    @property
    def query_args(self) -> dict[str, str]:
        """Query arguments (first value wins), parsed lazily, once."""
        if self._query_args is None:
            from urllib.parse import parse_qsl
            self._query_args = dict(reversed(parse_qsl(self.query.decode("latin-1"), keep_blank_values=True)))
        return self._query_args

    def get_header(self, name: str) -> str | None:
        value = find_header(self.headers, name.lower().encode("latin-1"))
        return None if value is None else value.decode("latin-1")

    def get_headers(self, name: str) -> list[str]:
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == key]

    def set_header(self, name: str, value: str | bytes) -> None:
        """Replace every copy of request header ``name`` with one value."""
        self.remove_header(name)
        self.headers.append((_b(name), _b(value)))

    def add_header(self, name: str, value: str | bytes) -> None:
        self.headers.append((_b(name), _b(value)))

    def remove_header(self, name: str) -> None:
        remove_headers(self.headers, (name.lower().encode("latin-1"),))

    def remove_query_arg(self, name: str) -> None:
        """Drop ``name`` from the query string forwarded to the backend (other bytes kept)."""
        from urllib.parse import unquote_plus
        parts = [p for p in self.query.split(b"&")
                 if p and unquote_plus(p.split(b"=", 1)[0].decode("latin-1")) != name]
        self.query = b"&".join(parts)
        self._query_args = None

    # -- answers ------------------------------------------------------------------------
    def answer(self, status: int, body: bytes | str = b"", headers: list[Header] | None = None,
               content_type: str | None = None) -> int:
        """Answer the request at the gateway; returns ANSWERED for ``on_request``."""
        self.answer_status = status
        self.answer_body = _b(body) if isinstance(body, str) else body
        hdrs = list(headers or [])
        if content_type is not None:
            hdrs.append((b"Content-Type", _b(content_type)))
        self.answer_headers = hdrs
        return ANSWERED

    def error(self, status: int, message: str, headers: list[Header] | None = None) -> int:
        """Answer with fastgw's JSON error body ``{"error", "status", "request_id"}``."""
        body = orjson.dumps({"error": message, "status": status, "request_id": self.request_id})
        return self.answer(status, body, headers, "application/json")

    # -- response -----------------------------------------------------------------------
    def add_response_header(self, name: str, value: str | bytes) -> None:
        """Add a header to whatever answer goes out (backend response or gateway answer)."""
        self.response_headers_add.append((_b(name), _b(value)))

    def get_response_header(self, name: str) -> str | None:
        value = find_header(self.response_headers, name.lower().encode("latin-1"))
        return None if value is None else value.decode("latin-1")

    def set_response_header(self, name: str, value: str | bytes) -> None:
        self.remove_response_header(name)
        self.response_headers.append((_b(name), _b(value)))

    def remove_response_header(self, name: str) -> None:
        remove_headers(self.response_headers, (name.lower().encode("latin-1"),))
