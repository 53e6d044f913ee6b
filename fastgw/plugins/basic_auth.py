"""basic-auth: HTTP Basic authentication against bcrypt or scrypt password hashes.

Consumer credentials hold hashes only (the credential schema refuses plain text):
``$2b$12$...`` (bcrypt) or ``scrypt$N$r$p$<salt b64>$<hash b64>`` (see :func:`scrypt_hash`).
Failure: 401 with ``WWW-Authenticate: Basic realm="..."``. The ``Authorization`` header is
removed before forwarding by default.

PERF/SECURITY: a bcrypt/scrypt check costs milliseconds of CPU (~250 ms at bcrypt cost
12), so it runs on a small thread pool, never on the event loop, with at most
``MAX_PENDING_CHECKS`` waiting per route (then 429); verified credentials are remembered
by a keyed digest (never the password) for ``cache_ttl`` seconds, and then cost no check
at all: such a request is answered in C (``BasicAuthStep``), every other one reaches
``on_request`` here; an unknown user is checked against a dummy
hash made with the parameters most of the configured hashes use (bcrypt cost, scrypt N, r,
p), so the answer time does not reveal which user names exist.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import types
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bcrypt

from fastgw._core import BasicAuthStep
from fastgw.consumers import ConsumerTable
from fastgw.plugins.base import CONTINUE, PluginScope
from fastgw.plugins.base import Plugin as BasePlugin

NAME = "basic-auth"
PRIORITY = 1100

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "hide_credentials": {"type": "boolean", "default": True,
                             "description": "Remove the Authorization header before forwarding."},
        "realm": {"type": "string", "default": "fastgw", "pattern": "^[^\"\\r\\n]*$",
                  "description": "Realm in the WWW-Authenticate header of a 401."},
        "cache_ttl": {"type": "number", "minimum": 0, "default": 60,
                      "description": "Seconds a verified password is remembered (0: verify every time)."},
    },
}

_DUMMY_BCRYPT = bcrypt.hashpw(b"fastgw-dummy", bcrypt.gensalt(4)).decode("ascii")


def _hash_params(stored: str) -> str:
    """What decides the cost of checking ``stored``: ``$2b$12$`` or ``scrypt$N$r$p$<dklen>``."""
    if stored.startswith("scrypt$"):
        _, n, r, p, _salt, want = stored.split("$")
        return f"scrypt${n}${r}${p}${len(base64.b64decode(want))}"
    return stored[:7]


def dummy_hash_like(stored: list[str]) -> str:
    """A hash no password matches that costs what the most common of ``stored`` costs to
    check (SECURITY: the check an unknown user name gets; a cheaper one would tell apart
    the names that exist). A cost-4 bcrypt hash when ``stored`` is empty."""
    if not stored:
        return _DUMMY_BCRYPT
    params = Counter(_hash_params(h) for h in stored).most_common(1)[0][0]
    if params.startswith("scrypt$"):
        _, n, r, p, dklen = params.split("$")
        salt = base64.b64encode(os.urandom(16)).decode()
        want = base64.b64encode(os.urandom(int(dklen))).decode()
        return f"scrypt${n}${r}${p}${salt}${want}"
    return params + _DUMMY_BCRYPT[7:]      # the same cost, a salt and digest of no password


def scrypt_hash(password: str, n: int = 2 ** 14, r: int = 8, p: int = 1) -> str:
    """The ``scrypt$N$r$p$salt$hash`` form for consumer credentials."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: bytes, stored: str) -> bool:
    """Check ``password`` against a bcrypt or scrypt hash (constant-time compare)."""
    if stored.startswith("scrypt$"):
        _, n, r, p, salt, want = stored.split("$")
        got = hashlib.scrypt(password, salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(base64.b64decode(want)), maxmem=2 ** 27)
        return hmac.compare_digest(got, base64.b64decode(want))
    return bcrypt.checkpw(password, stored.encode("ascii"))


_ASCII_WS = " \t\n\r\x0b\x0c"

# Hash checks run on a few threads of their own (bcrypt and hashlib.scrypt release the GIL),
# made on first use in each worker process (threads do not survive a fork).
CHECK_THREADS = 2
MAX_PENDING_CHECKS = 64       # beyond this, 429 at once: a flood of guesses can't queue forever
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0


def _check_pool() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        _pool = ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="fastgw-basic-auth")
        _pool_pid = os.getpid()
    return _pool


class Plugin(BasePlugin):
    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        super().__init__(config, scope)
        self.table: ConsumerTable = scope.consumers or ConsumerTable()
        self.hide = config["hide_credentials"]
        self.ttl = float(config["cache_ttl"])
        self.challenge = [(b"WWW-Authenticate", f'Basic realm="{config["realm"]}"'.encode("latin-1"))]
        self._dummy = dummy_hash_like([stored for _c, stored in self.table.basic.values()])
        self._inflight: dict[bytes, asyncio.Future[bool]] = {}
        self.pending = 0          # hash checks queued or running for this route
        # The verified credentials, and the requests that carry them, in C; the rest here.
        self.native = BasicAuthStep(types.MethodType(Plugin.on_request, self), self.ttl, self.hide)

    def _start_check(self, mark: bytes, password: bytes, stored: str, consumer: Any) -> asyncio.Future[bool]:
        """``verify_password`` on the check threads (PERF: a cost-12 bcrypt check is ~250 ms of
        CPU; on the loop, every request of the worker would wait for it). Requests with the
        same credentials while it runs share it (one check, not one per request, when many
        connections of one client arrive at once); a success is remembered when it ends."""
        fut = asyncio.get_running_loop().run_in_executor(_check_pool(), verify_password, password, stored)
        self.pending += 1
        self._inflight[mark] = fut

        def done(f: asyncio.Future[bool]) -> None:
            self.pending -= 1
            self._inflight.pop(mark, None)
            if consumer is not None and not f.cancelled() and f.exception() is None and f.result():
                self.native.remember(mark, consumer)

        fut.add_done_callback(done)
        return fut

    def on_request(self, ctx: Any) -> Any:
        """ANSWERED at once when the header is bad (or too many checks wait), CONTINUE when
        the credentials were verified lately; else a coroutine that waits for the hash check
        (the chain goes on after it)."""
        auth = ctx.get_header("authorization")
        if auth is None or auth[:6].lower() != "basic ":
            return ctx.error(401, "Unauthorized", self.challenge)
        token = auth[6:].strip(_ASCII_WS).encode("latin-1")    # (as BasicAuthStep reads it)
        try:
            raw = base64.b64decode(token, validate=True)
        except (binascii.Error, ValueError):
            return ctx.error(401, "Invalid authentication credentials", self.challenge)
        user_b, sep, password = raw.partition(b":")
        if not sep:
            return ctx.error(401, "Invalid authentication credentials", self.challenge)
        hit = self.table.basic.get(user_b.decode("utf-8", "replace"))
        mark = self.native.mark(token)
        if hit is not None:
            consumer = self.native.recall(mark)
            if consumer is not None:
                return self._pass(ctx, consumer)
        fut = self._inflight.get(mark)
        if fut is None:
            if self.pending >= MAX_PENDING_CHECKS:
                return ctx.error(429, "Too many password checks in progress", [(b"Retry-After", b"1")])
            # SECURITY: an unknown user gets the same work (a dummy hash of the same cost).
            fut = self._start_check(mark, password, self._dummy if hit is None else hit[1],
                                    None if hit is None else hit[0])
        return self._after_check(ctx, fut, None if hit is None else hit[0])

    async def _after_check(self, ctx: Any, fut: asyncio.Future[bool], consumer: Any) -> int:
        # shield: a waiter that goes away (its client closed) does not cancel the others' check
        if await asyncio.shield(fut) and consumer is not None:
            return self._pass(ctx, consumer)
        return ctx.error(401, "Invalid authentication credentials", self.challenge)

    def _pass(self, ctx: Any, consumer: Any) -> int:
        ctx.consumer = consumer
        if self.hide:
            ctx.remove_header("authorization")
        return CONTINUE
