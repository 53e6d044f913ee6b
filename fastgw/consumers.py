"""Consumers: the callers a config knows, with their credentials indexed for O(1) lookup.

``ConsumerTable(config.consumers)`` is built once per config load and shared by every
route's auth plugins (``PluginScope.consumers``). Credentials per plugin::

    "credentials": {
      "key-auth":   ["alice-key-1", {"key": "alice-key-2"}],
      "jwt":        [{"iss": "alice", "secret": "..."},                       # HS256 by default
                     {"key": "alice-rsa", "algorithm": "RS256", "public_key": "-----BEGIN ..."}],
      "basic-auth": [{"username": "alice", "password": "$2b$12$..."}],        # bcrypt or scrypt hash
      "hmac-auth":  [{"username": "alice", "secret": "..."}]
    }

Each built-in credential kind has a JSON Schema in :data:`CREDENTIAL_SCHEMAS` (the config
validator checks ``consumers[i].credentials.<plugin>`` against it; plain-text passwords
are refused there). :func:`strip_identity_headers` removes client-supplied identity
headers; the pipeline calls it on every route with plugins, and the server calls it (or
does the same in the head builder) on the plain path.
"""

from __future__ import annotations

from typing import Any

from fastgw._core import IDENTITY_HEADER_NAMES, KeyIndex, strip_identity
from fastgw.context import Consumer, Header

# SECURITY: headers that carry the gateway's word about the caller. A client's copies are
# always removed, on every route, so a backend can trust them (the list lives in
# fastgw/_plugins.pxi, where the compiled plugin chain strips them).
IDENTITY_HEADERS: frozenset[bytes] = frozenset(IDENTITY_HEADER_NAMES)


def strip_identity_headers(headers: list[Header]) -> list[Header]:
    """Remove client-supplied ``X-Consumer-*`` identity headers in place; returns the list.

    >>> strip_identity_headers([(b"Host", b"a"), (b"X-Consumer-Name", b"admin")])
    [(b'Host', b'a')]
    """
    strip_identity(headers)     # the compiled chain's own rule (fastgw/_plugins.pxi)
    return headers


# SECURITY: a password field must hold a bcrypt or scrypt hash, never the password.
BCRYPT_RE = r"^\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}$"
SCRYPT_RE = r"^scrypt\$[0-9]+\$[0-9]+\$[0-9]+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$"

CREDENTIAL_SCHEMAS: dict[str, dict[str, Any]] = {
    "key-auth": {
        "type": "array", "description": "API keys of this consumer.",
        "items": {"oneOf": [
            {"type": "string", "minLength": 8, "description": "An API key (at least 8 characters)."},
            {"type": "object", "additionalProperties": False, "required": ["key"],
             "properties": {"key": {"type": "string", "minLength": 8, "description": "An API key."}}},
        ]},
    },
    "jwt": {
        "type": "array", "description": "JWT signing keys of this consumer.",
        "items": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "key": {"type": "string", "description": "Identifier matched against the token's key claim (default claim: iss)."},
                "iss": {"type": "string", "description": "Same as key (the issuer this consumer signs as)."},
                "algorithm": {"type": "string", "default": "HS256",
                              "enum": ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "EdDSA"],
                              "description": "The only algorithm accepted for this key."},
                "secret": {"type": "string", "minLength": 32,
                           "description": "Shared secret (HS algorithms; at least 32/48/64 bytes for HS256/384/512)."},
                "public_key": {"type": "string", "description": "PEM public key (RS/ES/EdDSA)."},
                "public_key_file": {"type": "string", "description": "Path of a PEM public key file."},
            },
            "anyOf": [{"required": ["key"]}, {"required": ["iss"]}],
        },
    },
    "basic-auth": {
        "type": "array", "description": "Username and password hash pairs.",
        "items": {
            "type": "object", "additionalProperties": False, "required": ["username", "password"],
            "properties": {
                "username": {"type": "string", "minLength": 1, "pattern": "^[^:]+$",
                             "description": "User name (no colon)."},
                "password": {"type": "string", "pattern": f"{BCRYPT_RE}|{SCRYPT_RE}",
                             "description": "bcrypt hash ($2b$...) or scrypt$N$r$p$salt_b64$hash_b64; plain text is refused."},
            },
        },
    },
    "hmac-auth": {
        "type": "array", "description": "HMAC signing credentials.",
        "items": {
            "type": "object", "additionalProperties": False, "required": ["username", "secret"],
            "properties": {
                "username": {"type": "string", "minLength": 1, "description": "Name sent in the signature."},
                "secret": {"type": "string", "minLength": 16, "description": "Shared signing secret."},
            },
        },
    },
}


def check_consumers(consumers: list[dict[str, Any]] | None) -> list[str]:
    """Error lines (``"consumers[i].credentials.<plugin>[j]...: message"``) for the config validator.

    Checks each built-in credential kind against :data:`CREDENTIAL_SCHEMAS` (so a plain-text
    password is refused with its place), then duplicates (names, keys, user names).
    """
    from jsonschema import Draft202012Validator

    errors: list[str] = []
    for i, entry in enumerate(consumers or ()):
        creds = entry.get("credentials") or {}
        if not isinstance(creds, dict):
            continue
        for kind, value in creds.items():
            schema = CREDENTIAL_SCHEMAS.get(kind)
            if schema is None:
                continue
            for err in Draft202012Validator(schema).iter_errors(value):
                where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
                msg = err.message
                if "password" in where:  # SECURITY: never echo a (plain-text) password into logs
                    msg = "must be a bcrypt ($2b$...) or scrypt$N$r$p$salt$hash hash, not a plain password"
                errors.append(f"consumers[{i}].credentials.{kind}{where}: {msg}")
    if not errors:
        try:
            ConsumerTable(consumers)
        except (CredentialError, KeyError, TypeError) as exc:
            errors.append(str(exc))
    return errors


class CredentialError(ValueError):
    """A consumer credential is unusable; the message starts with its place."""


class ConsumerTable:
    """Consumers by name, and each plugin's credentials indexed for O(1) lookup."""

    def __init__(self, consumers: list[dict[str, Any]] | None = None) -> None:
        self.by_name: dict[str, Consumer] = {}
        # SECURITY: looked up by a keyed hash, confirmed in constant time (see KeyIndex).
        self.keys = KeyIndex()
        self.jwt: dict[str, tuple[Consumer, dict[str, Any]]] = {}
        self.basic: dict[str, tuple[Consumer, str]] = {}
        self.hmac: dict[str, tuple[Consumer, bytes]] = {}
        for i, entry in enumerate(consumers or ()):
            self._add(i, entry)

    def _add(self, i: int, entry: dict[str, Any]) -> None:
        place = f"consumers[{i}]"
        name = entry["name"]
        if name in self.by_name:
            raise CredentialError(f"{place}.name: duplicate consumer {name!r}")
        consumer = Consumer(name, tuple(entry.get("groups", ())), {"custom_id": entry.get("custom_id")})
        self.by_name[name] = consumer
        creds = entry.get("credentials", {}) or {}
        for j, item in enumerate(creds.get("key-auth", ())):
            key = (item if isinstance(item, str) else item["key"]).encode("utf-8")
            if not self.keys.add(key, consumer):
                raise CredentialError(f"{place}.credentials.key-auth[{j}]: key already used by another credential")
        for j, item in enumerate(creds.get("jwt", ())):
            ident = item.get("key") or item.get("iss")
            if ident in self.jwt:
                raise CredentialError(f"{place}.credentials.jwt[{j}].key: {ident!r} already used")
            self.jwt[ident] = (consumer, dict(item, _place=f"{place}.credentials.jwt[{j}]"))
        for j, item in enumerate(creds.get("basic-auth", ())):
            if item["username"] in self.basic:
                raise CredentialError(f"{place}.credentials.basic-auth[{j}].username: already used")
            self.basic[item["username"]] = (consumer, item["password"])
        for j, item in enumerate(creds.get("hmac-auth", ())):
            if item["username"] in self.hmac:
                raise CredentialError(f"{place}.credentials.hmac-auth[{j}].username: already used")
            self.hmac[item["username"]] = (consumer, item["secret"].encode("utf-8"))

    def key_lookup(self, presented: bytes) -> Consumer | None:
        """The consumer owning API key ``presented``, or None (timing-safe: see KeyIndex)."""
        return self.keys.lookup(presented)

    def get(self, name: str) -> Consumer | None:
        return self.by_name.get(name)

    def __len__(self) -> int:
        return len(self.by_name)
