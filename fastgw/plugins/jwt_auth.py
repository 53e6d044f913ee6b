"""jwt: verify a JSON Web Token (``Authorization: Bearer``) and map its claims.

Keys come from the plugin config (``keys``: inline secret or PEM, or a PEM file;
``jwks_file``; ``jwks_url``, fetched on the event loop, cached and refreshed; only a
request that has to wait for a fetch leaves the sync chain) and from the
consumers' ``jwt`` credentials (matched by the token's ``key_claim_name`` claim, ``iss``
by default, and then the consumer is that credential's owner). Algorithms: HS256/384/512,
RS256/384/512, ES256, EdDSA.

SECURITY: every key has exactly one algorithm, fixed at config load; the token's ``alg``
only selects among keys and must equal the key's algorithm, and the algorithm list given to
the verifier comes from the key, never from the token. So ``alg: none`` and
HS-against-an-RSA-public-key confusion cannot verify. ``exp`` (required by default) and
``nbf`` are checked with ``leeway``; ``iss``/``aud`` when configured. Claim values mapped
to request headers (``claims_to_headers``) replace any client-sent copy, which is always
stripped, also when the token is missing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import time
import types
import weakref
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import get_default_algorithms
from jwt.utils import base64url_decode

from fastgw._core import JwtHitStep
from fastgw.consumers import ConsumerTable
from fastgw.context import Consumer
from fastgw.plugins.base import CONTINUE, PluginScope
from fastgw.plugins.base import Plugin as BasePlugin

NAME = "jwt"
PRIORITY = 1450

log = logging.getLogger("fastgw.plugins.jwt")

ALGORITHMS = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "EdDSA"]
_KEY_TYPES: dict[str, tuple[type, ...]] = {
    "RS": (rsa.RSAPublicKey,), "ES": (ec.EllipticCurvePublicKey,),
    "Ed": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey),
}
_ALGS = get_default_algorithms()

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "algorithms": {"type": "array", "minItems": 1, "default": ALGORITHMS,
                       "items": {"type": "string", "enum": ALGORITHMS},
                       "description": "Token algorithms accepted at all ('none' never is)."},
        "keys": {
            "type": "array", "default": [], "description": "Verification keys.",
            "items": {
                "type": "object", "additionalProperties": False, "required": ["algorithm"],
                "properties": {
                    "kid": {"type": "string", "description": "Key id matched against the token's kid."},
                    "algorithm": {"type": "string", "enum": ALGORITHMS,
                                  "description": "The only algorithm this key verifies."},
                    "secret": {"type": "string", "minLength": 32,
                               "description": "HS shared secret (at least 32/48/64 bytes for HS256/384/512)."},
                    "public_key": {"type": "string", "description": "PEM public key (RS/ES/EdDSA)."},
                    "public_key_file": {"type": "string", "description": "Path of a PEM public key."},
                },
                "oneOf": [{"required": ["secret"]}, {"required": ["public_key"]}, {"required": ["public_key_file"]}],
            },
        },
        "jwks_file": {"type": ["string", "null"], "default": None, "description": "Path of a JWKS JSON file."},
        "jwks_url": {"type": ["string", "null"], "default": None, "pattern": "^https?://",
                     "description": "URL of a JWKS document (fetched asynchronously, cached)."},
        "jwks_cache_ttl": {"type": "number", "minimum": 1, "default": 300,
                           "description": "Seconds before the JWKS is fetched again."},
        "jwks_min_refresh": {"type": "number", "minimum": 0, "default": 10,
                             "description": "Least seconds between fetches caused by an unknown kid."},
        "consumer_credentials": {"type": "boolean", "default": True,
                                 "description": "Also verify with consumers' jwt credentials."},
        "key_claim_name": {"type": "string", "default": "iss",
                           "description": "Claim that names the consumer credential (its key/iss)."},
        "consumer_claim": {"type": ["string", "null"], "default": None,
                           "description": "Claim naming the consumer for tokens verified by plugin keys."},
        "groups_claim": {"type": ["string", "null"], "default": None,
                         "description": "Claim with the groups of a consumer not in the config."},
        "header_names": {"type": "array", "default": ["authorization"],
                         "items": {"type": "string", "pattern": "^[A-Za-z0-9-]+$"},
                         "description": "Headers carrying the token ('Bearer ' prefix optional)."},
        "uri_param_names": {"type": "array", "default": ["jwt"], "items": {"type": "string", "minLength": 1},
                            "description": "Query arguments carrying the token."},
        "claims_to_verify": {"type": "array", "default": ["exp"], "items": {"type": "string", "enum": ["exp", "nbf"]},
                             "description": "Claims that must be present (and are then checked)."},
        "leeway": {"type": "number", "minimum": 0, "default": 0, "description": "Seconds of clock leeway for exp/nbf."},
        "maximum_expiration": {"type": "number", "minimum": 0, "default": 0,
                               "description": "Largest allowed exp - now in seconds (0: no limit)."},
        "issuers": {"type": "array", "default": [], "items": {"type": "string"},
                    "description": "Accepted iss values (empty: not checked)."},
        "audiences": {"type": "array", "default": [], "items": {"type": "string"},
                      "description": "Accepted aud values (empty: not checked)."},
        "claims_to_headers": {"type": "object", "default": {},
                              "additionalProperties": {"type": "string", "pattern": "^[A-Za-z0-9-]+$"},
                              "description": "Claim name -> request header sent to the backend."},
        "hide_credentials": {"type": "boolean", "default": True,
                             "description": "Remove the token before forwarding."},
        "realm": {"type": "string", "default": "fastgw", "pattern": "^[^\"\\r\\n]*$",
                  "description": "Realm in the WWW-Authenticate header of a 401."},
        "cache_size": {"type": "integer", "minimum": 0, "default": 4096,
                       "description": "Verified tokens each worker remembers, so that a token sent again "
                                      "skips the signature check (exp is still checked on every request); "
                                      "0: verify every request."},
    },
}

_CONTROL = dict.fromkeys([*range(0, 32), 127])


class Key:
    """One verification key with its single algorithm."""

    __slots__ = ("kid", "alg", "key", "consumer")

    def __init__(self, kid: str | None, alg: str, key: Any, consumer: Consumer | None = None) -> None:
        self.kid, self.alg, self.key, self.consumer = kid, alg, key, consumer


def prepare_key(alg: str, material: str | bytes | Any) -> Any:
    """The verification key object for ``alg``; ValueError for a key of the wrong kind.

    SECURITY: an HS key must not be a PEM/public key, an RS/ES/EdDSA key must be of its type.
    """
    if alg.startswith("HS"):
        if not isinstance(material, str | bytes):
            raise ValueError(f"{alg} needs a secret")
        need = int(alg[2:]) // 8
        if len(material.encode("utf-8") if isinstance(material, str) else material) < need:
            # SECURITY: RFC 7518 §3.2: an HMAC key must be at least as long as the hash.
            raise ValueError(f"{alg} needs a secret of at least {need} bytes (RFC 7518 section 3.2)")
    try:
        key = _ALGS[alg].prepare_key(material)
    except Exception as exc:  # PyJWT raises several types for unusable keys
        raise ValueError(f"unusable {alg} key: {exc}") from None
    if not alg.startswith("HS"):
        if hasattr(key, "public_key") and not isinstance(key, _KEY_TYPES[alg[:2]]):
            key = key.public_key()
        if not isinstance(key, _KEY_TYPES[alg[:2]]):
            raise ValueError(f"a {type(key).__name__} cannot verify {alg}")
        if alg == "ES256" and key.curve.name != "secp256r1":
            raise ValueError("ES256 needs a P-256 key")
    return key


def keys_from_jwks(doc: dict[str, Any], allowed: frozenset[str]) -> dict[str | None, list[Key]]:
    """Keys of a JWKS document by kid (each with its one algorithm); unusable keys are skipped."""
    out: dict[str | None, list[Key]] = {}
    for jwk in doc.get("keys", ()):
        if jwk.get("use", "sig") != "sig":
            continue
        try:
            pyjwk = jwt.PyJWK(jwk)
        except jwt.PyJWTError as exc:
            log.warning("JWKS key %s skipped: %s", jwk.get("kid"), exc)
            continue
        alg = pyjwk.algorithm_name
        if alg not in allowed:
            continue
        out.setdefault(jwk.get("kid"), []).append(Key(jwk.get("kid"), alg, pyjwk.key))
    return out


async def http_get(url: str, timeout: float = 5.0, limit: int = 1 << 20) -> bytes:
    """GET ``url`` on the running loop (HTTP/1.0, so no chunked framing); body bytes or OSError."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    host = parts.hostname or ""
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    async def fetch() -> bytes:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl.create_default_context() if https else None)
        try:
            writer.write(f"GET {target} HTTP/1.0\r\nHost: {parts.netloc}\r\nAccept: application/json\r\n"
                         "Connection: close\r\n\r\n".encode("latin-1"))
            data = await reader.read(limit + 65536)
            while True:
                more = await reader.read(65536)
                if not more:
                    break
                data += more
                if len(data) > limit + 65536:
                    raise OSError("JWKS document too large")
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1] if head.startswith(b"HTTP/") else b""
        if status != b"200":
            raise OSError(f"JWKS fetch {url}: status {status.decode('latin-1') or '?'}")
        return body

    return await asyncio.wait_for(fetch(), timeout)


class JwksCache:
    """A JWKS URL's keys, shared by every route using it; fetched on the loop, one fetch at a time."""

    def __init__(self, url: str, ttl: float, min_refresh: float, allowed: frozenset[str]) -> None:
        self.url, self.ttl, self.min_refresh, self.allowed = url, ttl, min_refresh, allowed
        self.keys: dict[str | None, list[Key]] = {}
        self.generation = 0     # counted up when the keys are replaced: tokens verified before are checked again
        self.fetched_at = -1e18
        self.attempt_at = -1e18
        self._inflight: asyncio.Future[None] | None = None
        self._later: asyncio.Task[None] | None = None     # the background refresh, if any

    async def refresh(self) -> None:
        if self._inflight is not None:
            return await asyncio.shield(self._inflight)
        loop = asyncio.get_running_loop()
        self._inflight = fut = loop.create_future()
        self.attempt_at = time.monotonic()
        try:
            body = await http_get(self.url)
            self.keys = keys_from_jwks(json.loads(body), self.allowed)
            self.generation += 1
            self.fetched_at = time.monotonic()
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            log.warning("JWKS %s not refreshed: %s", self.url, exc)
        finally:
            self._inflight = None
            fut.set_result(None)

    def lookup(self, kid: str | None) -> list[Key] | None:
        """The keys for ``kid`` when they can be had without waiting, else None (then
        ``get``). PERF: a token whose kid is known is checked on the sync chain, no task;
        stale keys still serve while a refresh runs in the background."""
        now = time.monotonic()
        if not self.keys and now - self.attempt_at >= self.min_refresh:
            return None                             # nothing fetched yet: wait for it
        found = self.keys.get(kid)
        if found is None and kid is not None and now - self.attempt_at >= self.min_refresh:
            return None                             # a new kid: wait for a refetch
        self.keep_fresh(now)
        return self._keys_for(kid, found)

    def keep_fresh(self, now: float) -> None:
        """Past ``ttl``, start one background refresh (the keys in hand serve meanwhile)."""
        if now - self.fetched_at > self.ttl and self._inflight is None:
            self._refresh_later()

    def _keys_for(self, kid: str | None, found: list[Key] | None) -> list[Key]:
        """``found`` (the keys filed under ``kid``), every key for a token without a kid."""
        if found is None and kid is None:
            return [k for ks in self.keys.values() for k in ks]
        return found or []

    def _refresh_later(self) -> None:
        if self._later is None or self._later.done():
            self._later = asyncio.get_running_loop().create_task(self.refresh())
            _background.add(self._later)
            self._later.add_done_callback(_background.discard)

    async def get(self, kid: str | None) -> list[Key]:
        """The keys for ``kid``, fetching them first when ``lookup`` can't answer (nothing
        fetched yet, or a new kid past ``min_refresh``: the issuer may have rotated keys)."""
        keys = self.lookup(kid)
        if keys is None:
            await self.refresh()
            keys = self._keys_for(kid, self.keys.get(kid))
        return keys


def unverified_part(segment: str) -> dict[str, Any] | None:
    """One base64url segment of a compact JWS read as a JSON object, unverified (None: not
    one). Only to choose the key: PyJWT's decode then checks the whole token, as it does
    anyway. PERF: PyJWT's own unverified reads cost 14 µs (header) and 30 µs (claims); this
    is the same decoding (its base64url_decode, json.loads) without the rest."""
    try:
        value = json.loads(base64url_decode(segment))
    except (ValueError, RecursionError):      # binascii.Error and UnicodeDecodeError are ValueErrors
        return None
    return value if isinstance(value, dict) else None


class Verified:
    """What a verified token gives each request that carries it: its claims, its consumer,
    the claim headers for the backend, and the wall-clock second it expires at."""

    __slots__ = ("claims", "consumer", "headers", "expires", "generation")

    def __init__(self, claims: dict[str, Any], consumer: Consumer | None,
                 headers: list[tuple[bytes, bytes]], expires: float, generation: int) -> None:
        self.claims, self.consumer, self.headers = claims, consumer, headers
        self.expires, self.generation = expires, generation


class VerifiedTokens:
    """Tokens a worker verified for the jwt plugins of one setup (same settings, same
    consumers: a service's plugin on all its routes), at most ``size``, the oldest stored
    out first.

    PERF: a token's signature check costs 40-110 µs in PyJWT (HS256 to ES256), several times
    a whole proxied request; a client sends the same token until it expires, so each worker
    checks it once (as Envoy's jwt_authn with ``jwt_cache_config``).
    SECURITY: the key is the whole token, signature included: only the exact string that
    verified hits. ``exp`` is compared with the clock on every hit, so a token expires here
    as it would outside. A JWKS refresh starts a new generation and the tokens verified
    before are checked again, so a key the issuer withdrew stops verifying. The other checks
    cannot turn a verified token invalid later: ``nbf`` and ``maximum_expiration`` only get
    easier as time goes on, and ``iss``, ``aud`` and the keys are fixed with the settings
    (a reload builds new plugins, and with them new tables)."""

    __slots__ = ("size", "items")

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: dict[str, Verified] = {}

    def get(self, token: str, now: float, generation: int) -> Verified | None:
        found = self.items.get(token)
        if found is None:
            return None
        if found.expires <= now or found.generation != generation:
            del self.items[token]
            return None
        return found

    def put(self, token: str, verified: Verified) -> None:
        items = self.items
        if token not in items and len(items) >= self.size:
            del items[next(iter(items))]
        items[token] = verified


# Per config load (its ConsumerTable), per plugin settings: one table for the plugins of a
# service's routes. Weak, so a reload's old tables go with the old config's plugins.
_verified_tables: weakref.WeakKeyDictionary[ConsumerTable, dict[str, VerifiedTokens]] = weakref.WeakKeyDictionary()


def verified_tokens(table: ConsumerTable, config: dict[str, Any]) -> VerifiedTokens | None:
    """The table of tokens verified under ``config`` with ``table``'s consumers (None: off)."""
    size = int(config["cache_size"])
    if size <= 0:
        return None
    tables = _verified_tables.setdefault(table, {})
    setup = json.dumps(config, sort_keys=True, default=repr)
    found = tables.get(setup)
    if found is None:
        found = tables[setup] = VerifiedTokens(size)
    return found


_background: set[asyncio.Task[Any]] = set()
_jwks_caches: dict[tuple[str, float, float, frozenset[str]], JwksCache] = {}


class Plugin(BasePlugin):
    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        super().__init__(config, scope)
        self.table: ConsumerTable = scope.consumers or ConsumerTable()
        self.allowed = frozenset(config["algorithms"])
        self.by_kid: dict[str | None, list[Key]] = {}
        for i, item in enumerate(config["keys"]):
            alg = item["algorithm"]
            if alg not in self.allowed:
                raise ValueError(f"keys[{i}].algorithm: {alg} is not in algorithms")
            material = item.get("secret") or item.get("public_key")
            if material is None:
                with open(item["public_key_file"], "rb") as fh:
                    material = fh.read()
            try:
                key = prepare_key(alg, material)
            except ValueError as exc:
                raise ValueError(f"keys[{i}]: {exc}") from None
            self.by_kid.setdefault(item.get("kid"), []).append(Key(item.get("kid"), alg, key))
        if config["jwks_file"]:
            with open(config["jwks_file"], "rb") as fh:
                for kid, ks in keys_from_jwks(json.load(fh), self.allowed).items():
                    self.by_kid.setdefault(kid, []).extend(ks)
        self.all_keys = [k for ks in self.by_kid.values() for k in ks]
        self.cred_keys: dict[str, Key] = {}
        if config["consumer_credentials"]:
            for ident, (consumer, cred) in self.table.jwt.items():
                alg = cred.get("algorithm", "HS256")
                if alg not in self.allowed:
                    continue
                material = cred.get("secret") or cred.get("public_key")
                if material is None and cred.get("public_key_file"):
                    with open(cred["public_key_file"], "rb") as fh:
                        material = fh.read()
                try:
                    self.cred_keys[ident] = Key(None, alg, prepare_key(alg, material), consumer)
                except ValueError as exc:
                    raise ValueError(f"{cred.get('_place', 'consumer jwt credential')}: {exc}") from None
        self.jwks: JwksCache | None = None
        if config["jwks_url"]:
            ck = (config["jwks_url"], float(config["jwks_cache_ttl"]), float(config["jwks_min_refresh"]), self.allowed)
            self.jwks = _jwks_caches.get(ck) or _jwks_caches.setdefault(ck, JwksCache(*ck))
        elif not self.all_keys and not self.cred_keys:
            raise ValueError("no verification key: give keys, jwks_file, jwks_url or consumer jwt credentials")
        self.key_claim = config["key_claim_name"]
        self.consumer_claim = config["consumer_claim"]
        self.groups_claim = config["groups_claim"]
        self.header_names = tuple(n.lower() for n in config["header_names"])
        self.params = tuple(config["uri_param_names"])
        self.hide = config["hide_credentials"]
        self.options = {"require": list(config["claims_to_verify"]),
                        "verify_aud": bool(config["audiences"]), "verify_iss": bool(config["issuers"])}
        self.leeway = float(config["leeway"])
        self.max_exp = float(config["maximum_expiration"])
        self.issuers = list(config["issuers"]) or None
        self.audiences = list(config["audiences"]) or None
        self.claim_headers = tuple((c, h.encode("latin-1")) for c, h in config["claims_to_headers"].items())
        self.claim_header_lc = frozenset(h.lower() for _, h in self.claim_headers)
        self.verified = verified_tokens(self.table, config)
        self.challenge = [(b"WWW-Authenticate", f'Bearer realm="{config["realm"]}"'.encode("latin-1"))]
        self.challenge_bad = [(b"WWW-Authenticate",
                               f'Bearer realm="{config["realm"]}", error="invalid_token"'.encode("latin-1"))]
        first = self.header_names[0].encode("latin-1") if self.header_names else b""
        if self.verified is not None and first and first not in self.claim_header_lc:
            # PERF: a token sent again is answered in C (JwtHitStep); every other request
            # reaches on_request below, which verifies it and files it for the step.
            self.on_request = JwtHitStep(types.MethodType(Plugin.on_request, self), self.verified.items,
                                         first, self.hide, tuple(sorted(self.claim_header_lc)), self.jwks)

    # -- token ------------------------------------------------------------------------
    def _token(self, ctx: Any) -> tuple[str | None, str | None, str | None]:
        """(token, header it came from, query argument it came from)."""
        for name in self.header_names:
            value = ctx.get_header(name)
            if value:
                if value[:7].lower() == "bearer ":
                    return value[7:].strip(), name, None
                if name != "authorization":
                    return value.strip(), name, None
        if ctx.query:
            for name in self.params:
                value = ctx.query_args.get(name)
                if value:
                    return value, None, name
        return None, None, None

    def _candidates(self, header: dict[str, Any], token: str, extra: list[Key] | None) -> list[Key]:
        kid = header.get("kid")
        if kid is not None and kid in self.by_kid:
            return self.by_kid[kid]
        if self.cred_keys:
            claims = unverified_part(token.split(".")[1]) or {}
            ident = claims.get(self.key_claim)
            if isinstance(ident, str) and ident in self.cred_keys:
                return [self.cred_keys[ident]]
        if extra:
            return extra
        return self.by_kid.get(None, []) if kid is not None else self.all_keys

    def _verify(self, ctx: Any, token: str, header: dict[str, Any], extra: list[Key] | None) -> int:
        alg = header.get("alg")
        candidates = [k for k in self._candidates(header, token, extra) if k.alg == alg]
        if not candidates:
            return ctx.error(401, "No key can verify this token", self.challenge_bad)
        claims = None
        key = candidates[0]
        for key in candidates:
            try:
                # SECURITY: algorithms=[key.alg]: fixed by the key, never read from the token.
                claims = jwt.decode(token, key.key, algorithms=[key.alg], options=self.options,
                                    leeway=self.leeway, issuer=self.issuers, audience=self.audiences)
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                return ctx.error(401, "Token has expired", self.challenge_bad)
            except jwt.ImmatureSignatureError:
                return ctx.error(401, "Token is not valid yet", self.challenge_bad)
            except jwt.MissingRequiredClaimError as exc:
                return ctx.error(401, f"Token lacks the {exc.claim} claim", self.challenge_bad)
            except (jwt.InvalidIssuerError, jwt.InvalidAudienceError) as exc:
                return ctx.error(401, str(exc), self.challenge_bad)
            except jwt.PyJWTError:
                return ctx.error(401, "Invalid token", self.challenge_bad)
        if claims is None:
            return ctx.error(401, "Invalid signature", self.challenge_bad)
        if self.max_exp and "exp" in claims:
            if float(claims["exp"]) - time.time() > self.max_exp:
                return ctx.error(401, "Token expiration is too far in the future", self.challenge_bad)
        consumer = key.consumer
        if consumer is None and self.consumer_claim:
            value = claims.get(self.consumer_claim)
            if isinstance(value, str) and value:
                consumer = self.table.get(value)
                if consumer is None:
                    groups = claims.get(self.groups_claim) if self.groups_claim else None
                    groups = tuple(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else ()
                    consumer = Consumer(value, groups)
        headers = []
        for claim, header_name in self.claim_headers:
            value = claims.get(claim)
            if value is not None:
                text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
                headers.append((header_name, text.translate(_CONTROL).encode("utf-8")))
        # PyJWT's rule: expired once now >= exp + leeway (exp is an integer it has checked).
        expires = float(claims["exp"]) + self.leeway if "exp" in claims else math.inf
        verified = Verified(claims, consumer, headers, expires, self._generation())
        if self.verified is not None:
            self.verified.put(token, verified)
        return self._admit(ctx, verified)

    def _generation(self) -> int:
        """The generation of the JWKS keys in hand (0 without ``jwks_url``)."""
        return self.jwks.generation if self.jwks is not None else 0

    @staticmethod
    def _admit(ctx: Any, verified: Verified) -> int:
        """Let the request on as the token's holder."""
        if verified.consumer is not None:
            ctx.consumer = verified.consumer
        ctx.vars["jwt_claims"] = dict(verified.claims)   # a plugin after this one may edit its copy
        if verified.headers:
            ctx.headers.extend(verified.headers)
        return CONTINUE

    def _prepare(self, ctx: Any) -> tuple[int, str]:
        """Strip spoofable headers, find the token and hide it: (status or -1, token)."""
        if self.claim_header_lc:  # SECURITY: the client never supplies the mapped claim headers
            lc = self.claim_header_lc
            ctx.headers[:] = [h for h in ctx.headers if h[0].lower() not in lc]
        token, from_header, from_query = self._token(ctx)
        if not token:
            return ctx.error(401, "Unauthorized", self.challenge), ""
        if self.hide:
            if from_header is not None:
                ctx.remove_header(from_header)
            if from_query is not None:
                ctx.remove_query_arg(from_query)
        return -1, token

    def _header(self, ctx: Any, token: str) -> tuple[int, dict[str, Any]]:
        """The token's JOSE header, pre-parsed: (status or -1, header)."""
        parts = token.split(".")
        header = unverified_part(parts[0]) if len(parts) == 3 else None
        kid = header.get("kid") if header is not None else None
        if header is None or not (kid is None or isinstance(kid, str)):
            return ctx.error(401, "Invalid token", self.challenge_bad), {}
        alg = header.get("alg")
        # SECURITY: 'none' (any spelling) and algorithms outside the allowed list end here.
        if not isinstance(alg, str) or alg not in self.allowed:
            return ctx.error(401, "Token algorithm not allowed", self.challenge_bad), {}
        return -1, header

    def on_request(self, ctx: Any) -> Any:
        """CONTINUE or ANSWERED; with ``jwks_url``, a coroutine when the keys must be fetched
        first (the first token, or a kid not seen yet): the chain goes on after it."""
        status, token = self._prepare(ctx)
        if status >= 0:
            return status
        if self.verified is not None:
            if self.jwks is not None:
                self.jwks.keep_fresh(time.monotonic())
            found = self.verified.get(token, time.time(), self._generation())
            if found is not None:
                return self._admit(ctx, found)
        status, header = self._header(ctx, token)
        if status >= 0:
            return status
        kid = header.get("kid")
        if self.jwks is None or (kid is not None and kid in self.by_kid):
            return self._verify(ctx, token, header, None)
        extra = self.jwks.lookup(kid)
        if extra is None:
            return self._verify_after_fetch(ctx, token, header, kid)
        return self._verify(ctx, token, header, extra)

    async def _verify_after_fetch(self, ctx: Any, token: str, header: dict[str, Any], kid: str | None) -> int:
        return self._verify(ctx, token, header, await self.jwks.get(kid))  # type: ignore[union-attr]
