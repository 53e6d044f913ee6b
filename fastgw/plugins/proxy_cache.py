"""proxy-cache: answer repeated GET/HEAD requests from the node's memory (or Redis).

A fresh stored answer is sent by the gateway itself (with ``Age`` and
``X-Cache-Status: Hit``), without calling the backend; otherwise the request goes to the
backend (``X-Cache-Status: Miss``) and its answer is stored on the way out when it may
be. The key is the route (one store per route and stage), the normalized path, the raw
query, the consumer (an authenticated caller never gets another's answer) and the values
of ``vary_headers``.

What is stored (RFC 9111, as a shared cache), with ``cache_control`` on (the default):
a status in ``statuses``; a body of at most ``max_body`` bytes, framed by Content-Length or
chunked (stored decoded and answered with a Content-Length; not with trailer fields, which
would be lost); no ``Set-Cookie``; no ``Vary`` other than names in ``vary_headers`` (``Vary: *`` never);
not ``no-store``, ``no-cache`` or ``private``; kept for ``s-maxage``, else ``max-age``,
else ``Expires`` less ``Date`` (an invalid Expires is in the past), else ``ttl`` seconds.
A request with ``Cache-Control: no-store`` neither reads nor writes the cache, one with
``no-cache`` or ``max-age=0`` (or ``Pragma: no-cache`` alone) skips the stored answer and
refreshes it; one with ``Range`` goes to the backend untouched. With ``cache_control``
off, both sides' Cache-Control are ignored and every answer is kept ``ttl`` seconds. A
request carrying ``Authorization`` with no consumer authenticated at the gateway is never
served from nor stored in the cache (the backend checks that caller itself). A hit answers
``If-None-Match`` with 304 when the stored ``ETag`` matches.

With ``stale_if_error`` (seconds, default 0) an answer is kept that long past its
freshness: a request then is a miss, but when the backend gives no answer at all (refused,
closed, timed out) or an error (500, 502, 503, 504: RFC 5861's "error"; its body is read
and dropped), the kept answer stands in (``X-Cache-Status: Stale``, as nginx's
``proxy_cache_use_stale error timeout http_500 http_502 http_503 http_504``). An answer's
own ``stale-if-error=N`` sets its window, and ``must-revalidate`` or ``proxy-revalidate``
rule it out (RFC 9111 5.2.2.2).

With ``stale_while_revalidate`` (seconds, default 0) an answer is also kept that long past
its freshness to answer while one request asks the backend for a new one: the first
request to find it stale takes the fill lock and goes to the backend (a miss), and every
request for it meanwhile, of any worker (with ``policy: redis``, of any node), is answered
at once with the stale one (``X-Cache-Status: Updating``, as nginx's ``proxy_cache_use_stale
updating``) instead of waiting for the new answer (RFC 5861 3). It works through the fill
lock, so not with ``lock_timeout: 0``. An answer's own ``stale-while-revalidate=N`` sets its
window, and ``must-revalidate`` or ``proxy-revalidate`` rule it out.

With ``policy: memory`` (the default) the answers are the node's: every worker reads and
writes one shared-memory store (fastgw/cache_region.py), bounded by ``max_memory`` bytes
(the largest setting of the memory-policy routes; the oldest stored out first, and an answer
in use is kept), which outlives a reload unless the reload changes that size. A worker run
without the supervisor, or restarted when the store's file is gone, keeps its own store
(least recently used out first). With ``policy:
redis`` the answers live in the top-level ``redis`` section's Redis, shared by every worker
and node (each entry expires with its freshness; Redis's own ``maxmemory`` bounds the
whole); a lookup there takes the request off the synchronous chain, and when Redis can't
answer in its ``timeout`` the request simply goes to the backend (a miss, logged).

Requests for an answer that another request is already asking the backend for wait for
that answer (at most ``lock_timeout`` seconds from when it was asked, as nginx's
``proxy_cache_lock``) and are answered from it as hits: a popular answer that expires costs
the backend one request, not one per waiting caller. When that answer is not stored
(refused by the rules above, a failure, or the gateway answered instead), or the time is
up, they go to the backend themselves. Within a worker they wait on the asking request
itself; across the node's workers the lock is a slot in the shared store, and across nodes
(``policy: redis``) a key in Redis (``SET NX``, expiring after ``lock_timeout``); requests
of other workers look for the answer meanwhile (every 10 ms in the node, every 50 ms in
Redis), going to the backend themselves when the holder gives up or the time is up; Redis
unavailable, everyone asks the backend.

``POST /cache/purge`` on the admin API (``?service=`` and ``&stage=`` to narrow it) drops
stored answers at once: the supervisor clears them from the node's store (a worker on its
own store forgets its answers on its next cache lookup, through the shared region), and
with ``policy: redis`` the entries go from Redis (so from every node). An answer asked of the backend before the purge and
arriving after it is not stored.

It runs after authentication, acl and rate limiting (priority 100, as Kong's
proxy-cache), so only callers who pass them see a stored answer.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import itertools
import logging
import time
import types
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgpack

from fastgw._core import CacheEntry, CacheHitStep, CacheLogStep
from fastgw.cache_region import UNKNOWN, digest, tag
from fastgw.plugins.base import CONTINUE, HEADER_NAME, PluginScope
from fastgw.plugins.base import Plugin as BasePlugin
from fastgw.resp import reply_error, settle
from fastgw.sparselog import SparseLog

log = logging.getLogger("fastgw.proxy_cache")

NAME = "proxy-cache"
PRIORITY = 100

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "ttl": {"type": "number", "exclusiveMinimum": 0, "default": 60,
                "description": "Seconds an answer stays fresh when its Cache-Control sets no lifetime "
                               "(always, with cache_control off)."},
        "cache_control": {"type": "boolean", "default": True,
                          "description": "Honour Cache-Control of requests and answers (RFC 9111)."},
        "statuses": {"type": "array", "default": [200, 301, 404], "minItems": 1, "uniqueItems": True,
                     "items": {"type": "integer", "minimum": 200, "maximum": 599, "not": {"enum": [206, 304]}},
                     "description": "Answer statuses that may be stored (not 206 or 304: they answer "
                                    "one request's Range or validators, not the resource)."},
        "vary_headers": {"type": "array", "default": [], "uniqueItems": True,
                         "items": {"type": "string", "pattern": HEADER_NAME},
                         "description": "Request headers whose values are part of the key."},
        "max_body": {"type": "integer", "minimum": 0, "default": 1 << 20,
                     "description": "Largest body stored, in bytes."},
        "max_memory": {"type": "integer", "minimum": 1024, "default": 16 << 20,
                       "description": "Bytes of stored answers on the node, all cached routes together "
                                      "(the largest setting applies; policy memory)."},
        "policy": {"enum": ["memory", "redis"], "default": "memory",
                   "description": "Keep answers in the node's shared memory or in the top-level redis "
                                  "(every node)."},
        "stale_if_error": {"type": "number", "minimum": 0, "default": 0,
                           "description": "Seconds past its freshness a stored answer is kept to answer "
                                          "when the backend gives none (refused, closed, timed out) or "
                                          "an error (500, 502, 503, 504): X-Cache-Status: Stale (0: "
                                          "never; an answer's own stale-if-error, must-revalidate or "
                                          "proxy-revalidate wins)."},
        "stale_while_revalidate": {"type": "number", "minimum": 0, "default": 0,
                                   "description": "Seconds past its freshness a stored answer is kept to answer "
                                                  "while one request asks the backend for a new one: "
                                                  "X-Cache-Status: Updating for the others, who do not wait "
                                                  "(0: never; needs lock_timeout above 0; an answer's own "
                                                  "stale-while-revalidate, must-revalidate or proxy-revalidate "
                                                  "wins)."},
        "lock_timeout": {"type": "number", "minimum": 0, "default": 5,
                         "description": "Seconds a request for an answer another request of the node (with "
                                        "policy redis: of any node) is already asking the backend for "
                                        "waits for that answer before going to the backend itself (0: "
                                        "never waits; nginx's proxy_cache_lock)."},
    },
}

_HIT = (b"X-Cache-Status", b"Hit")
_STALE = (b"X-Cache-Status", b"Stale")
_UPDATING = (b"X-Cache-Status", b"Updating")
_LOCK_SUFFIX = b":fill"        # policy redis: the fill lock's key, beside the answer's
_POLL = 0.05                   # seconds between looks at Redis while another request fills
_NODE_POLL = 0.01              # seconds between looks at the node's store while another worker fills
_OWNERS = itertools.count(1)   # a key's first item: which route's plugin stored the answer
_NAMES_MAX = 8192              # keys whose node-store digest a route remembers (then starts over)


def cache_directives(value: str | None) -> dict[str, str | None]:
    """The directives of a Cache-Control value: lower-case names to their argument (or None)."""
    out: dict[str, str | None] = {}
    if not value:
        return out
    for part in value.split(","):
        name, eq, arg = part.strip().partition("=")
        name = name.strip().lower()
        if name:
            out[name] = arg.strip().strip('"') if eq else None
    return out


def _http_date(value: bytes) -> float:
    """An HTTP date as a POSIX time; 0 (long past) when it is not one."""
    try:
        return email.utils.parsedate_to_datetime(value.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return 0.0


def _seconds(arg: str | None) -> int | None:
    """A delta-seconds argument, or None when it is not one (RFC 9111 1.2.2)."""
    if arg is None or not arg.isdigit():
        return None
    return int(arg)


# One stored answer: status, headers, body, etag, stored, expires, age0, stale_until,
# updating_until (and kept_until, the later of the two, and size, what it is counted as), a C
# class so the request path's CacheHitStep reads it directly.
Entry = CacheEntry


def _fresh(entry: Entry | None, now: float) -> Entry | None:
    """``entry`` while fresh at ``now`` (on its clock), else None."""
    return entry if entry is not None and entry.expires > now else None


def node_memory(routes: Any) -> int:
    """Bytes the node's store needs for these routes (RouteSpec): the largest ``max_memory``
    of their memory-policy proxy-cache settings; 0 when no route caches in memory."""
    sizes = [int(p["config"]["max_memory"]) for r in routes for p in (r.plugins or ())
             if p.get("name") == NAME and p.get("enabled", True) and p["config"].get("policy") == "memory"]
    return max(sizes, default=0)


def _route_prefix(spec: Any, settings: bytes) -> str:
    """What every stored answer's key starts with: the route and a digest of the settings
    that decide what is stored (changed settings never serve what the old ones stored)."""
    return f"{spec.key}|{hashlib.sha256(settings).hexdigest()[:12]}|"


def _pack(entry: Entry) -> bytes:
    return msgpack.packb([entry.status, entry.headers, entry.body, entry.etag, entry.stored, entry.age0,
                          entry.expires, entry.stale_until, entry.updating_until])


def _unpack(raw: bytes) -> Entry | None:
    try:
        fields = msgpack.unpackb(raw)
        status, headers, body, etag, stored, age0, expires, stale_until = fields[:8]
        updating_until = fields[8] if len(fields) > 8 else 0.0    # (stored by a version without it)
        return Entry(status, [tuple(h) for h in headers], body, etag, stored, expires, age0, stale_until,
                     updating_until)
    except Exception:  # noqa: BLE001 - not an entry of this version: a miss
        return None


class Store:
    """Stored answers by key, least recently used dropped first past ``max_memory`` bytes."""

    def __init__(self, max_memory: int) -> None:
        self.max_memory = max_memory
        self.used = 0
        self._items: OrderedDict[tuple, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple, now: float) -> Entry | None:
        """The entry while fresh, or while kept past its freshness for its stale windows (the
        caller tells them apart by ``expires``)."""
        entry = self._items.get(key)
        if entry is None:
            return None
        if entry.kept_until <= now:
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return entry

    def put(self, key: tuple, entry: Entry) -> None:
        if key in self._items:
            self._drop(key)
        if entry.size > self.max_memory:
            return
        self._items[key] = entry
        self.used += entry.size
        while self.used > self.max_memory:
            self._drop(next(iter(self._items)))

    def _drop(self, key: tuple) -> None:
        self.used -= self._items.pop(key).size

    def purge(self, owners: frozenset[int] | None) -> int:
        """Drop the answers stored by these owners (None: all). Returns how many."""
        if owners is None:
            n = len(self._items)
            self._items.clear()
            self.used = 0
            return n
        gone = [k for k in self._items if k[0] in owners]
        for k in gone:
            self._drop(k)
        return len(gone)


# The worker's store (see Plugin.__init__): its bound is raised by each route's max_memory.
_MEMORY = Store(0)
# Which service and stage each owner (a route's plugin) caches for: what a purge matches.
_SCOPES: dict[int, tuple[str, str]] = {}
# The node's purge record (fastgw.shared.PurgeWatch); None without a supervisor.
_WATCH: Any = None
# Misses being asked of the backend, by (owner, key): the future of their Entry (None: not
# stored) that requests for the same answer wait on, and when it was asked (monotonic).
_INFLIGHT: dict[tuple, tuple[asyncio.Future[Entry | None], float]] = {}
_INFLIGHT_SWEEP = 4096         # at this many, entries nobody can wait on any more are dropped
_LOCK_MAX = 0.0                # the largest lock_timeout of the worker's routes


class Decoded:
    """The node store's answers this worker decoded, by key: (their position in the ring,
    the Entry). A position names one record for the store's life, so a hit on the same one
    reuses the Entry. Bounded by ``max_bytes`` of bodies and headers (oldest out first)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.items: OrderedDict[bytes, tuple[int, Entry]] = OrderedDict()

    def get(self, key: bytes) -> tuple[int, Entry] | None:
        return self.items.get(key)

    def remember(self, key: bytes, pos: int, entry: Entry) -> None:
        old = self.items.pop(key, None)
        if old is not None:
            self.used -= old[1].size
        if entry.size > self.max_bytes:
            return
        self.items[key] = (pos, entry)
        self.used += entry.size
        while self.used > self.max_bytes:
            self.used -= self.items.popitem(last=False)[1][1].size


_DECODED = Decoded(4 << 20)


def _sweep_inflight(now: float) -> None:
    """Drop the misses nobody can wait on any more (an exchange that never reached its log
    phase would otherwise leave its entry behind)."""
    global _INFLIGHT_SWEEP
    for k, (fut, asked) in list(_INFLIGHT.items()):
        if fut.done() or now - asked >= _LOCK_MAX:
            del _INFLIGHT[k]
    # That many misses really in flight: look again only when there are twice as many.
    _INFLIGHT_SWEEP = max(4096, 2 * len(_INFLIGHT))


def purge_scope(service: str | None, stage: str | None) -> str:
    """How a purge's scope reads in the log: ``all``, ``service s`` or ``service s, stage t``."""
    return "all" if service is None else f"service {service}" + (f", stage {stage}" if stage else "")


def _purge_seen() -> int:
    """Apply a purge the admin API published since the last look, if any (one 8-byte read
    of the shared region when there is none); the purge count seen so far."""
    if _WATCH is None:
        return 0
    scope = _WATCH.poll()
    if scope is not None:
        service, stage = scope.get("service"), scope.get("stage")
        if service is None:
            n = _MEMORY.purge(None)
        else:
            n = _MEMORY.purge(frozenset(o for o, (sv, st) in _SCOPES.items()
                                        if sv == service and (stage is None or st == stage)))
        log.info("proxy-cache: purged %d stored answers (%s)", n, purge_scope(service, stage))
    return _WATCH.seen


class RedisStore:
    """Stored answers in Redis: one key per answer (a digest of the route's prefix and the
    cache key), msgpack-encoded, expiring with the answer's freshness. Ages use the wall
    clock, since every node reads them. ``client``: the worker's fastgw.resp client."""

    def __init__(self, client: Any, prefix: bytes) -> None:
        self._client = client
        self._prefix = prefix
        self._down = SparseLog(log)
        self._keys: dict[tuple, bytes] = {}

    def _key(self, key: tuple) -> bytes:
        """``key``'s name in Redis (remembered, at most _NAMES_MAX: PERF: the digest of its
        repr costs more than the rest of a hit's lookup)."""
        name = self._keys.get(key)
        if name is None:
            if len(self._keys) >= _NAMES_MAX:
                self._keys.clear()
            name = self._keys[key] = \
                self._prefix + hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest().encode()
        return name

    async def lock(self, key: tuple, ttl: float) -> bool:
        """Take the fill lock of ``key`` for ``ttl`` seconds: True when this request is the one
        to ask the backend (also when Redis can't say: then every request asks)."""
        try:
            return await self._client.call(b"SET", self._key(key) + _LOCK_SUFFIX, b"1", b"NX",
                                           b"PX", max(1, int(ttl * 1000))) is not None
        except Exception as exc:  # noqa: BLE001 - no lock: the backend is asked, as without one
            self._down.error("proxy-cache: Redis unavailable (%s: %s); answers come from the backend",
                             type(exc).__name__, exc)
            return True

    def unlock(self, key: tuple) -> None:
        """Give the fill lock up (the answer was not stored): the waiters stop waiting."""
        self._client.call(b"DEL", self._key(key) + _LOCK_SUFFIX).add_done_callback(_unheard)

    async def wait_filled(self, key: tuple, timeout: float) -> Entry | None:
        """The answer another worker or node is asking the backend for, once stored; None when
        it gives up (its lock is gone and nothing was stored) or ``timeout`` passes."""
        rlock = self._key(key) + _LOCK_SUFFIX
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))
            entry = _fresh(await self.get(key), time.time())
            if entry is not None:
                return entry
            try:
                if not await self._client.call(b"EXISTS", rlock):
                    # stored just before the lock went, or not at all
                    return _fresh(await self.get(key), time.time())
            except Exception:  # noqa: BLE001 - Redis gone: ask the backend
                return None
        return None

    def get(self, key: tuple, then: Callable[[Entry | None], Any] | None = None) -> asyncio.Future[Any]:
        """A future of the answer stored under ``key`` (None: none, or Redis failed: any
        failure of the store is a miss), or of what ``then`` makes of it (PERF: the
        lookup's verdict, with no second future and no task)."""
        done = self._client.loop().create_future()
        self._client.call(b"GET", self._key(key)).add_done_callback(lambda reply: self._got(reply, done, then))
        return done

    def _got(self, reply: asyncio.Future[Any], done: asyncio.Future[Any],
             then: Callable[[Entry | None], Any] | None) -> None:
        if done.done():             # cancelled: the request went away
            return
        entry = None
        exc = reply_error(reply)
        if exc is not None:
            self._down.error("proxy-cache: Redis unavailable (%s: %s); answers come from the backend",
                             type(exc).__name__, exc)
        elif reply.result() is not None:
            entry = _unpack(reply.result())
        settle(done, entry, then)

    def put(self, key: tuple, entry: Entry, lifetime: float, unlock: bool = False) -> None:
        """Store ``entry`` for ``lifetime`` seconds (its freshness and its stale_if_error
        window); ``unlock``: then give up the fill lock. One connection carries both in that
        order, so a waiter that sees the lock gone finds the answer. Nothing waits for them."""
        rkey = self._key(key)
        self._client.call(b"SET", rkey, _pack(entry), b"PX", max(1, int(lifetime * 1000))) \
            .add_done_callback(self._stored)
        if unlock:
            self._client.call(b"DEL", rkey + _LOCK_SUFFIX).add_done_callback(_unheard)

    def _stored(self, reply: asyncio.Future[Any]) -> None:
        exc = reply_error(reply)
        if exc is not None:     # not stored: the next request is a miss
            self._down.error("proxy-cache: Redis unavailable (%s: %s); answers come from the backend",
                             type(exc).__name__, exc)


def _unheard(reply: asyncio.Future[Any]) -> None:
    """A command whose failure changes nothing (a lock that expires on its own)."""
    reply_error(reply)


class _Fill:
    """The response tap of a miss: decides whether the backend's answer may be stored, and
    stores it once its whole body has been passed on to the client (RequestContext.response_tap)."""

    __slots__ = ("plugin", "key", "purges", "waiters", "locked", "stale", "status", "headers", "etag",
                 "lifetime", "grace", "updating", "age0")

    def __init__(self, plugin: Plugin, key: tuple, purges: int,
                 waiters: asyncio.Future[Entry | None] | None = None, locked: bool = False,
                 stale: Entry | None = None) -> None:
        self.plugin = plugin
        self.key = key
        self.purges = purges     # purges seen when the request came: one since, and it is not stored
        self.waiters = waiters   # what requests for the same answer wait on (None: nobody can)
        self.locked = locked     # holds the answer's fill lock (the node's, or in Redis)
        self.stale = stale       # the stored answer past its freshness, for upstream_failed

    def upstream_failed(self, ctx: Any) -> bool:
        """The backend gave no answer (refused, closed, timed out) or an error one (500, 502,
        503, 504): answer with the stale stored one while its stale_if_error window lasts
        (``X-Cache-Status: Stale``); False when there is none, and the backend's error or the
        gateway's 502/504 goes out as usual."""
        stale = self.stale
        if stale is None:
            return False
        now = self.plugin.now()
        if stale.stale_until <= now:
            return False
        ctx.response_headers_add[:] = [(n, v) for n, v in ctx.response_headers_add if n.lower() != b"x-cache-status"]
        ctx.answer(stale.status, stale.body, stale.headers + [(b"Age", _age(stale, now)), _STALE])
        return True

    @property
    def max_answer(self) -> int:
        """The most body bytes collected of a chunked answer (its length is known at the end)."""
        return self.plugin.max_answer

    def release(self, entry: Entry | None) -> None:
        """Hand the stored answer (None: there is none) to the requests waiting for it."""
        if self.locked:
            self.locked = False
            self.plugin.unlock(self.key)
        fut, self.waiters = self.waiters, None
        if fut is None:
            return
        k = (self.plugin.owner, self.key)
        if _INFLIGHT.get(k, (None,))[0] is fut:
            del _INFLIGHT[k]
        if not fut.done():
            fut.set_result(entry)

    def start(self, status: int, headers: list[tuple[bytes, bytes]], content_length: int) -> bool:
        if self._start(status, headers, content_length):
            return True
        self.release(None)
        return False

    def _start(self, status: int, headers: list[tuple[bytes, bytes]], content_length: int) -> bool:
        p = self.plugin
        if status not in p.statuses or content_length > p.max_answer:
            return False
        lifetime: float = p.ttl
        grace: float = p.stale_if_error
        updating: float = p.stale_while_revalidate
        max_age: float | None = None
        expires = date = None
        etag = None
        age0 = 0
        kept: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            lname = name.lower()
            if lname == b"set-cookie":
                return False                     # a caller's session must never be replayed
            if lname == b"vary":
                for v in value.split(b","):
                    v = v.strip().lower()
                    if v and v not in p.vary_set:
                        return False             # includes Vary: * (never in vary_set)
            elif lname == b"cache-control" and p.cache_control:
                d = cache_directives(value.decode("latin-1"))
                if "no-store" in d or "no-cache" in d or "private" in d:
                    return False
                if "must-revalidate" in d or "proxy-revalidate" in d:
                    grace = updating = 0.0       # RFC 9111 5.2.2.2: never served stale
                else:                            # RFC 5861 3 and 4: the origin's word
                    if "stale-if-error" in d:
                        grace = float(_seconds(d.get("stale-if-error")) or 0)
                    if "stale-while-revalidate" in d:
                        updating = float(_seconds(d.get("stale-while-revalidate")) or 0)
                s = _seconds(d.get("s-maxage")) if "s-maxage" in d else _seconds(d.get("max-age"))
                if s is not None:
                    if s == 0:
                        return False
                    max_age = s
            elif lname == b"expires":
                expires = value
            elif lname == b"date":
                date = value
            elif lname == b"age":
                age0 = _seconds(value.decode("latin-1").strip()) or 0
                continue                         # recomputed on every hit
            elif lname == b"etag":
                etag = value
            kept.append((name, value))
        if p.cache_control:
            if max_age is not None:
                lifetime = max_age
            elif expires is not None:
                # RFC 9111 5.3 / 4.2.1: Expires less Date; an invalid Expires ("0") is in the past.
                lifetime = _http_date(expires) - (_http_date(date) if date is not None else time.time())
            lifetime -= age0
        self.status = status
        self.headers = kept
        self.etag = etag
        self.lifetime = lifetime
        self.grace = grace
        self.updating = updating
        self.age0 = age0
        return self.lifetime > 0

    def _entry(self, body: bytes) -> Entry:
        """The answer to store, its times on its store's clock (Plugin.now)."""
        now = self.plugin.now()
        return Entry(self.status, self.headers, body, self.etag, now, now + self.lifetime, self.age0,
                     now + self.lifetime + self.grace, now + self.lifetime + self.updating)

    def finish(self, body: bytes) -> None:
        p = self.plugin
        if p.node is not None:
            entry = self._entry(body)
            pos = p.node.put(self.key, _pack(entry), entry.kept_until, p.tags[0], p.tags[1], self.purges,
                             unlock=self.locked)
            self.locked = False  # given up with the answer stored (or not: a purge came)
            if pos is not None:
                _DECODED.remember(self.key, pos, entry)   # this worker's next hit: no decoding
            self.release(entry if pos is not None else None)
            return
        if _purge_seen() != self.purges:
            self.release(None)
            return               # asked for before a purge: the purge must not be undone
        entry = self._entry(body)
        if p.remote is not None:
            p.remote.put(self.key, entry, self.lifetime + max(self.grace, self.updating), unlock=self.locked)
            self.locked = False  # given up after the answer is stored
        else:
            p.store.put((p.owner, self.key), entry)
        self.release(entry)


def _etag_matches(if_none_match: str, etag: bytes) -> bool:
    """RFC 9110 13.1.2: weak comparison against a list of entity tags, or ``*``."""
    tag = etag.decode("latin-1").strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    for candidate in if_none_match.split(","):
        c = candidate.strip()
        if c == "*":
            return True
        if c.startswith("W/"):
            c = c[2:]
        if c == tag:
            return True
    return False


class Plugin(BasePlugin):
    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        super().__init__(config, scope)
        self.ttl = float(config["ttl"])
        self.cache_control = bool(config["cache_control"])
        self.statuses = frozenset(config["statuses"])
        self.vary = tuple(name.lower() for name in config["vary_headers"])
        self.vary_names = tuple(name.encode("latin-1") for name in self.vary)
        self.vary_set = frozenset(self.vary_names)
        self.max_answer = int(config["max_body"])
        self.lock_timeout = float(config["lock_timeout"])
        self.stale_if_error = float(config["stale_if_error"])
        self.stale_while_revalidate = float(config["stale_while_revalidate"])
        global _LOCK_MAX
        _LOCK_MAX = max(_LOCK_MAX, self.lock_timeout)
        settings = repr((sorted(self.statuses), self.vary, self.cache_control)).encode()
        # policy memory: the node's store (fastgw/cache_region.py) when the supervisor made one.
        self.node: Any = scope.services.get("cache_region") if config["policy"] == "memory" else None
        self.node_prefix = _route_prefix(scope.spec, settings).encode() if self.node is not None else b""
        self.tags = (tag(scope.spec.service), tag(scope.spec.stage)) if self.node is not None else (0, 0)
        self._names: dict[tuple, bytes] = {}
        if self.node is not None:
            # PERF: the common hit is answered in C; every other request reaches on_request
            # below (the step falls back to it), which also fills the memos the step reads.
            self.on_request = CacheHitStep(types.MethodType(Plugin.on_request, self), self.node.reader,
                                           self._names, _DECODED.items, self.vary_names)
        self.on_log = CacheLogStep(_Fill)
        # Else one store per worker for every route (not one each: N routes would mean N bounds).
        self.store = _MEMORY
        if self.node is None:
            _MEMORY.max_memory = max(_MEMORY.max_memory, int(config["max_memory"]))
        self.owner = next(_OWNERS)
        _SCOPES[self.owner] = (scope.spec.service, scope.spec.stage)
        global _WATCH
        if _WATCH is None:
            _WATCH = scope.services.get("cache_purge")
        self.remote: RedisStore | None = None
        if config["policy"] == "redis":
            client = scope.services.get("redis")
            if client is None and scope.services:
                raise ValueError("policy 'redis' needs the top-level redis section")
            if client is not None:
                prefix = f"{scope.services.get('redis_prefix', 'fastgw:')}pc:{_route_prefix(scope.spec, settings)}"
                self.remote = RedisStore(client, prefix.encode())

    def on_request(self, ctx: Any) -> Any:
        if ctx.method != "GET" and ctx.method != "HEAD":
            return CONTINUE
        lookup = True
        if self.cache_control:
            d = cache_directives(ctx.get_header("cache-control"))
            if "no-store" in d:
                ctx.add_response_header("X-Cache-Status", "Bypass")
                return CONTINUE
            lookup = "no-cache" not in d and d.get("max-age", "") != "0"
            if not d and ctx.get_header("pragma") == "no-cache":
                lookup = False                   # HTTP/1.0's way (RFC 9111 5.4), without Cache-Control
        consumer = ctx.consumer
        if ctx.get_header("range") is not None or (
                consumer is None and ctx.get_header("authorization") is not None):
            ctx.add_response_header("X-Cache-Status", "Bypass")
            return CONTINUE
        key: Any = (ctx.path, ctx.query, getattr(consumer, "name", consumer),
                    tuple(ctx.get_header(name) for name in self.vary))
        # An answer found past its freshness (kept for its stale windows) is a miss, but goes
        # with the request: it answers if the backend fails (_Fill.upstream_failed), or at once
        # while another request asks the backend for a new one (_updating).
        if self.node is not None:
            key = self._name(key)                   # the answer's name in the node's store
        else:
            purges = _purge_seen()                  # first: applies a purge to this worker's store
            if self.remote is not None and lookup:
                return self.remote.get(key, lambda stale: self._looked_up(ctx, key, purges, stale))
        now = time.monotonic()
        entry = self._stored(key, now) if lookup else None
        if entry is not None and entry.expires > now:
            return _answer_hit(ctx, entry, now)
        if self.node is not None:
            # Purges are counted from here: the supervisor clears the node's store itself.
            purges = self.node.purges
        if not lookup:
            return self._miss(ctx, key, False, purges)
        return self._miss_or_wait(ctx, key, purges, now, stale=entry)

    def _name(self, key: tuple) -> bytes:
        """``key``'s digest in the node's store (remembered: a digest costs more than the rest
        of a hit's lookup)."""
        name = self._names.get(key)
        if name is None:
            if len(self._names) >= _NAMES_MAX:
                self._names.clear()
            name = self._names[key] = digest(self.node_prefix, key)
        return name

    def now(self) -> float:
        """The clock of this route's stored answers: the wall clock in Redis (every node
        reads them), else the system-wide monotonic one."""
        return time.time() if self.remote is not None else time.monotonic()

    def _purges(self) -> int:
        """The purges seen so far, by the count the answers' store compares (see _Fill.finish)."""
        return self.node.purges if self.node is not None else _purge_seen()

    def _stored(self, key: Any, now: float) -> Entry | None:
        """The answer stored under ``key`` (memory policies) while fresh or kept for its
        stale windows (``expires`` tells), or None."""
        if self.node is None:
            return self.store.get((self.owner, key), now)
        known = _DECODED.get(key)
        found = self.node.lookup(key, now, known[0] if known is not None else UNKNOWN)
        if found is None:
            return None
        pos, raw, old = found
        if raw is None:
            assert known is not None
            entry: Entry | None = known[1]      # the record this worker decoded before
        else:
            entry = _unpack(raw)
            if entry is not None:
                _DECODED.remember(key, pos, entry)
        if old:
            self.node.keep(key)         # in use: not among the next to go
        return entry

    def unlock(self, key: Any) -> None:
        """Give up the fill lock this worker holds for ``key`` (the node's, or in Redis)."""
        if self.node is not None:
            self.node.unlock(key)
        elif self.remote is not None:
            self.remote.unlock(key)

    def _looked_up(self, ctx: Any, key: tuple, purges: int, stale: Entry | None) -> Any:
        """What Redis had for ``key`` came back: a fresh answer is the verdict at once (no
        task); else ask the backend, or wait for whoever does (a coroutine the request then
        waits on, or the miss's verdict)."""
        now = time.time()
        if _fresh(stale, now) is not None:
            return _answer_hit(ctx, stale, now)
        if self.lock_timeout > 0 and ctx.method == "GET" and self._in_flight(key, time.monotonic()) is None:
            # No request of this worker is asking: is one of another worker or node?
            return self._remote_fill_or_wait(ctx, key, purges, stale)
        return self._miss_or_wait(ctx, key, purges, time.monotonic(), False, stale)

    async def _remote_fill_or_wait(self, ctx: Any, key: tuple, purges: int, stale: Entry | None) -> int:
        """Take the fill lock in Redis and ask the backend, or wait for the worker or node
        that holds it to store the answer."""
        assert self.remote is not None
        if await self.remote.lock(key, self.lock_timeout):
            # Another request may have stored the answer and given the lock up since our
            # first look: look once more before asking the backend.
            entry = _fresh(await self.remote.get(key), time.time())
            if entry is not None:
                self.remote.unlock(key)
                return _answer_hit(ctx, entry, time.time())
            result = self._miss_or_wait(ctx, key, purges, time.monotonic(), True, stale)
            return await result if asyncio.iscoroutine(result) else result
        if self._updating(stale, purges):
            return _answer_stored(ctx, stale, time.time(), _UPDATING)
        entry = await self.remote.wait_filled(key, self.lock_timeout)
        if entry is not None and self._purges() == purges:
            return _answer_hit(ctx, entry, time.time())
        return self._miss(ctx, key, True, purges, stale=stale)     # not stored, or too slow: ask

    def _in_flight(self, key: tuple, now: float) -> tuple[asyncio.Future[Entry | None], float] | None:
        """(what to wait on, when it was asked) of the request of this worker already asking
        the backend for ``key``'s answer, while its lock holds; None when there is none."""
        pending = _INFLIGHT.get((self.owner, key))
        if pending is not None and not pending[0].done() and now - pending[1] < self.lock_timeout:
            return pending
        return None

    def _updating(self, stale: Entry | None, purges: int) -> bool:
        """``stale`` may answer while another request asks the backend for a new one: within
        its stale-while-revalidate window (RFC 5861 3), and no purge since it was read."""
        return stale is not None and stale.updating_until > self.now() and self._purges() == purges

    def _miss_or_wait(self, ctx: Any, key: tuple, purges: int, now: float, locked: bool = False,
                      stale: Entry | None = None) -> Any:
        """Not stored (or only ``stale``): wait for the answer another request is already
        asking the backend for (at most lock_timeout from when it asked), or ask the backend
        (and let others wait)."""
        pending = self._in_flight(key, now)
        if pending is not None:
            if locked:                  # another request of this worker fills: it needs no lock of ours
                self.unlock(key)
            if self._updating(stale, purges):
                return _answer_stored(ctx, stale, self.now(), _UPDATING)
            return self._wait(ctx, key, purges, pending[0], pending[1] + self.lock_timeout - now, stale)
        waiters = None
        if self.lock_timeout > 0 and ctx.method == "GET":     # (a HEAD's answer has no body to store)
            if self.node is not None:
                if not self.node.lock(key, now + self.lock_timeout, now):
                    if self._updating(stale, purges):
                        return _answer_stored(ctx, stale, now, _UPDATING)
                    return self._node_wait(ctx, key, purges, now + self.lock_timeout, stale)
                # Another worker may have stored the answer and given the lock up since our
                # first look: look once more before asking the backend.
                entry = _fresh(self._stored(key, now), now)
                if entry is not None:
                    self.node.unlock(key)
                    return _answer_hit(ctx, entry, now)
                locked = True
            if len(_INFLIGHT) >= _INFLIGHT_SWEEP:
                _sweep_inflight(now)
            waiters = asyncio.get_running_loop().create_future()
            _INFLIGHT[(self.owner, key)] = (waiters, now)
        return self._miss(ctx, key, True, purges, waiters, locked, stale)

    async def _node_wait(self, ctx: Any, key: bytes, purges: int, deadline: float, stale: Entry | None) -> int:
        """Another worker of the node asks the backend for ``key``'s answer: look for it in the
        node's store until it is there, the worker gives up (its lock is gone), or ``deadline``."""
        assert self.node is not None
        while (now := time.monotonic()) < deadline:
            await asyncio.sleep(min(_NODE_POLL, deadline - now))
            now = time.monotonic()
            entry = _fresh(self._stored(key, now), now)
            if entry is None and not self.node.locked(key, now):
                # stored just before the lock went, or not at all
                entry = _fresh(self._stored(key, now), now)
                if entry is None:
                    break
            if entry is not None:
                if self.node.purges != purges:
                    break
                return _answer_hit(ctx, entry, now)
        return self._miss(ctx, key, True, purges, stale=stale)     # not stored, or too slow: ask

    async def _wait(self, ctx: Any, key: tuple, purges: int, fut: asyncio.Future[Entry | None],
                    timeout: float, stale: Entry | None) -> int:
        try:
            entry = await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            entry = None
        if entry is not None and self._purges() == purges:
            return _answer_hit(ctx, entry, self.now())
        return self._miss(ctx, key, True, purges, stale=stale)     # not stored, or too slow: ask

    def _miss(self, ctx: Any, key: tuple, lookup: bool, purges: int,
              waiters: asyncio.Future[Entry | None] | None = None, locked: bool = False,
              stale: Entry | None = None) -> int:
        ctx.add_response_header("X-Cache-Status", "Miss" if lookup else "Refresh")
        ctx.response_tap = _Fill(self, key, purges, waiters, locked, stale)
        return CONTINUE


def _age(entry: Entry, now: float) -> bytes:
    """The ``Age`` of a stored answer at ``now`` (on its clock): the one it came with, and
    the whole seconds since (CacheHitStep computes the same in C)."""
    return str(entry.age0 + max(0, int(now - entry.stored))).encode("ascii")


def _answer_hit(ctx: Any, entry: Entry, now: float) -> int:
    """Answer with a fresh stored entry (``now`` on the clock its ``stored`` was read from)."""
    return _answer_stored(ctx, entry, now, _HIT)


def _answer_stored(ctx: Any, entry: Entry, now: float, status: tuple[bytes, bytes]) -> int:
    """Answer with a stored entry, ``status`` its X-Cache-Status field."""
    age = _age(entry, now)
    inm = ctx.get_header("if-none-match")
    if inm is not None and entry.etag is not None and entry.status == 200 and _etag_matches(inm, entry.etag):
        # RFC 9110 15.4.5: the fields a 200 would carry that describe the validator.
        keep = [(n, v) for n, v in entry.headers
                if n.lower() in (b"etag", b"cache-control", b"expires", b"date", b"vary", b"content-location")]
        return ctx.answer(304, b"", keep + [(b"Age", age), status])
    return ctx.answer(entry.status, entry.body, entry.headers + [(b"Age", age), status])
