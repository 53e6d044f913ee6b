"""hmac-auth: requests signed with a shared secret (HTTP Signatures, as Kong's hmac-auth).

The client sends::

    Date: Tue, 07 Jun 2024 20:51:35 GMT
    Digest: SHA-256=<base64 of the body's SHA-256>        (or Content-Digest: sha-256=:<b64>:)
    Authorization: hmac username="alice", algorithm="hmac-sha256",
                   headers="date request-line digest", signature="<base64>"

The signature is the HMAC of the listed items joined by ``\\n``: ``request-line`` is
``"<METHOD> <path>[?query] HTTP/<version>"`` (the path as routed), any other name is
``"<name>: <value>"`` of that request header. ``enforce_headers`` must all be signed; the
``Date`` (or ``X-Date``) must lie within ``clock_skew`` seconds of the gateway's clock; a
signature is accepted once per node (replay guard, ``fastgw.replay``: a used signature is
kept in shared memory until its Date leaves the window, and every worker checks the same
table; with a top-level ``redis``, all the nodes check one set there). When the guard can't
record a signature (its table is full, Redis is down or slow) the request gets 503: it is
never let through unchecked.

PERF: a request signed in the plain form is checked in C (``HmacAuthStep`` in
fastgw/_plugins.pxi, which follows ``on_request`` below step by step); everything else,
and any request the step would refuse but for a replay, reaches ``on_request``. With
``redis`` the step's request waits on the guard's answer in Redis, as on_request's does;
with ``validate_request_body`` the step checks the signed body digest too
(``body_digest_ok``).

Body digest: with ``validate_request_body`` the digest header must be signed and the
pipeline declares ``needs_body``: the server buffers the body (up to the pipeline's
``max_body``) into ``ctx.body`` before the request phase, and the digest is checked
against it. SECURITY: if the server supplied no body for a request that has one, the
request is refused (fail closed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
import types
from email.utils import parsedate_to_datetime
from typing import Any

from fastgw._core import HmacAuthStep
from fastgw.consumers import ConsumerTable
from fastgw.plugins.base import CONTINUE, PluginScope
from fastgw.plugins.base import Plugin as BasePlugin
from fastgw.replay import LOCAL_GUARD, RedisReplayGuard

NAME = "hmac-auth"
PRIORITY = 1030

_ALGS = {"hmac-sha256": hashlib.sha256, "hmac-sha384": hashlib.sha384, "hmac-sha512": hashlib.sha512}
_DIGESTS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "clock_skew": {"type": "integer", "minimum": 1, "maximum": 86400, "default": 300,
                       "description": "Seconds the Date header may differ from the gateway clock."},
        "algorithms": {"type": "array", "minItems": 1, "default": list(_ALGS),
                       "items": {"type": "string", "enum": list(_ALGS)},
                       "description": "Accepted signature algorithms."},
        "enforce_headers": {"type": "array", "default": ["date", "request-line"],
                            "items": {"type": "string", "pattern": "^[a-z0-9-]+$"},
                            "description": "Items that must be part of the signature (lower case)."},
        "validate_request_body": {"type": "boolean", "default": False,
                                  "description": "Require a signed Digest/Content-Digest and check it against the body."},
        "hide_credentials": {"type": "boolean", "default": True,
                             "description": "Remove the Authorization header before forwarding."},
        "realm": {"type": "string", "default": "fastgw", "pattern": "^[^\"\\r\\n]*$",
                  "description": "Realm in the WWW-Authenticate header of a 401."},
    },
}

_PARAM = re.compile(r'\s*([a-zA-Z]+)\s*=\s*"([^"]*)"\s*(?:,|$)')
_DATES_MAX = 256
_dates: dict[str, float | None] = {}
_UNSEEN = object()


def date_seconds(value: str) -> float | None:
    """The HTTP date ``value`` as POSIX seconds; None when it is no date. PERF: clients
    sign each request with the Date of its second, so the same few strings come request
    after request, and email.utils parses one in ~6 µs (a third of this plugin's cost):
    the last ones are remembered (at most _DATES_MAX, then forgotten at once)."""
    found = _dates.get(value, _UNSEEN)
    if found is _UNSEEN:
        try:
            found = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            found = None
        if len(_dates) >= _DATES_MAX:
            _dates.clear()
        _dates[value] = found
    return found  # type: ignore[return-value]


def hmac_pads(secret: bytes, alg: Any) -> tuple[Any, Any]:
    """Hash states of ``alg`` (a hashlib constructor) that have taken in the HMAC key's
    inner and outer pads (RFC 2104): HMAC(secret, m) is then a copy of the outer one fed
    the digest of a copy of the inner one fed m (HmacAuthStep's way: the key is set up
    once, not per request)."""
    inner, outer = alg(), alg()
    block = inner.block_size
    if len(secret) > block:
        secret = alg(secret).digest()
    secret = secret.ljust(block, b"\0")
    inner.update(bytes(c ^ 0x36 for c in secret))
    outer.update(bytes(c ^ 0x5C for c in secret))
    return inner, outer


def parse_authorization(value: str) -> dict[str, str] | None:
    """Parameters of ``hmac k="v", ...``, or None if it is not an hmac header."""
    if value[:5].lower() != "hmac ":
        return None
    params = dict(_PARAM.findall(value[5:]))
    return params if {"username", "signature"} <= params.keys() else None


def signing_string(ctx: Any, names: list[str]) -> str | None:
    """The string a client signs for ``names``; None if a named header is missing."""
    out = []
    for name in names:
        if name == "request-line":
            target = ctx.path + ("?" + ctx.query.decode("latin-1") if ctx.query else "")
            out.append(f"{ctx.method} {target} HTTP/{ctx.http_version}")
        else:
            value = ctx.get_header(name)
            if value is None:
                return None
            out.append(f"{name}: {value}")
    return "\n".join(out)


def body_digest_ok(ctx: Any, body: bytes) -> bool:
    """Check ``Content-Digest`` (RFC 9530) or ``Digest`` (RFC 3230) against ``body``."""
    value = ctx.get_header("content-digest")
    if value is not None:
        m = re.match(r"\s*([a-z0-9-]+)=:([A-Za-z0-9+/=]+):", value)
    else:
        value = ctx.get_header("digest")
        m = re.match(r"\s*([A-Za-z0-9-]+)=([A-Za-z0-9+/=]+)", value or "")
    if m is None or m.group(1).lower() not in _DIGESTS:
        return False
    want = base64.b64encode(_DIGESTS[m.group(1).lower()](body).digest()).decode()
    return hmac.compare_digest(want, m.group(2))


class Plugin(BasePlugin):
    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        super().__init__(config, scope)
        self.table: ConsumerTable = scope.consumers or ConsumerTable()
        self.skew = config["clock_skew"]
        self.algs = {a: _ALGS[a] for a in config["algorithms"]}
        self.enforce = tuple(config["enforce_headers"])
        self.check_body = config["validate_request_body"]
        self.needs_body = self.check_body
        self.hide = config["hide_credentials"]
        self.challenge = [(b"WWW-Authenticate",
                           f'hmac realm="{config["realm"]}", headers="{" ".join(self.enforce)}"'.encode("latin-1"))]
        self.replay = scope.services.get("replay") or LOCAL_GUARD
        self.replay_waits = isinstance(self.replay, RedisReplayGuard)
        # PERF: a request signed in the plain form is checked in C (HmacAuthStep), its body's
        # digest too, and with the guard in Redis it waits on its answer from there; every
        # other one, and every one it would refuse, reaches on_request below.
        self.native = HmacAuthStep(types.MethodType(Plugin.on_request, self), self.table.hmac, self.algs,
                                   self.enforce, float(self.skew), self.hide, self.challenge, self.replay,
                                   date_seconds, hmac_pads, self.replay_waits,
                                   body_digest_ok if self.check_body else None)

    def _deny(self, ctx: Any, message: str) -> int:
        return ctx.error(401, message, self.challenge)

    def on_request(self, ctx: Any) -> int:
        auth = ctx.get_header("authorization")
        params = parse_authorization(auth) if auth else None
        if params is None:
            return self._deny(ctx, "Unauthorized")
        hit = self.table.hmac.get(params["username"])
        alg = self.algs.get(params.get("algorithm", "hmac-sha256"))
        if hit is None or alg is None:
            return self._deny(ctx, "Invalid signature")
        names = params.get("headers", "date").lower().split()
        if any(n not in names for n in self.enforce):
            return self._deny(ctx, "Signature does not cover " + ", ".join(n for n in self.enforce if n not in names))
        date = ctx.get_header("x-date") or ctx.get_header("date")
        if date is None or ("date" not in names and "x-date" not in names):
            return self._deny(ctx, "Signed Date header required")
        sent = date_seconds(date)
        if sent is None:
            return self._deny(ctx, "Invalid Date header")
        now = time.time()
        if abs(now - sent) > self.skew:
            return self._deny(ctx, "Date is outside the allowed clock skew")
        text = signing_string(ctx, names)
        if text is None:
            return self._deny(ctx, "A signed header is missing")
        consumer, secret = hit
        expected = base64.b64encode(hmac.digest(secret, text.encode("utf-8"), alg)).decode()
        if not hmac.compare_digest(expected, params["signature"]):
            return self._deny(ctx, "Invalid signature")
        if self.check_body:
            if "digest" not in names and "content-digest" not in names:
                return self._deny(ctx, "Signature does not cover the body digest")
            body = ctx.body
            if body is None:
                has_body = ctx.body_size > 0 or ctx.get_header("transfer-encoding") is not None
                if has_body:  # SECURITY: the server did not buffer the body; never skip the check
                    return ctx.error(500, "request body not available for digest check")
                body = b""
            if not body_digest_ok(ctx, body):
                return self._deny(ctx, "Body digest does not match")
        # The signature stays usable until its Date leaves the window: remember it that long.
        token, ttl = params["signature"].encode("latin-1"), sent + self.skew - now + 1
        if self.replay_waits:
            # Redis: the request waits on a future whose result is the verdict.
            return self.replay.first_use(token, ttl, lambda first: self._after_replay_check(ctx, first, consumer))
        return self._after_replay_check(ctx, self.replay.first_use(token, ttl), consumer)

    def _after_replay_check(self, ctx: Any, first: bool | None, consumer: Any) -> int:
        if first is None:           # SECURITY: no room / no store to record it: refuse
            return ctx.error(503, "replay guard unavailable")
        if not first:
            return self._deny(ctx, "Signature already used")
        ctx.consumer = consumer
        if self.hide:
            ctx.remove_header("authorization")
        return CONTINUE
