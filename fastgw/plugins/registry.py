"""Finds a plugin module by name: built-ins by their short name, a user's plugin by dotted import path."""

from __future__ import annotations

import importlib
from types import ModuleType

# Built-in plugin name -> module. Keep in step with the modules in this package.
BUILTIN: dict[str, str] = {
    "key-auth": "fastgw.plugins.key_auth",
    "jwt": "fastgw.plugins.jwt_auth",
    "basic-auth": "fastgw.plugins.basic_auth",
    "hmac-auth": "fastgw.plugins.hmac_auth",
    "acl": "fastgw.plugins.acl",
    "ip-restriction": "fastgw.plugins.ip_restriction",
    "cors": "fastgw.plugins.cors",
    "request-size-limit": "fastgw.plugins.request_size_limit",
    "request-id": "fastgw.plugins.request_id",
    "response-headers": "fastgw.plugins.response_headers",
    "rate-limiting": "fastgw.plugins.rate_limiting",
    "mock": "fastgw.plugins.mock",
    "request-transformer": "fastgw.plugins.request_transformer",
    "proxy-cache": "fastgw.plugins.proxy_cache",
    "aggregate": "fastgw.plugins.aggregate",
    "response-transformer": "fastgw.plugins.response_transformer",
}

REQUIRED = ("NAME", "PRIORITY", "SCHEMA", "Plugin")
_cache: dict[str, ModuleType] = {}


def find(name: str) -> ModuleType:
    """Return the plugin module for ``name``; LookupError names what is wrong."""
    mod = _cache.get(name)
    if mod is not None:
        return mod
    modname = BUILTIN.get(name)
    if modname is None:
        if "." not in name:
            raise LookupError(f"unknown plugin {name!r} (built-ins: {', '.join(sorted(BUILTIN))})")
        modname = name
    try:
        mod = importlib.import_module(modname)
    except ImportError as exc:
        raise LookupError(f"plugin {name!r} cannot be imported: {exc}") from None
    missing = [attr for attr in REQUIRED if not hasattr(mod, attr)]
    if missing:
        raise LookupError(f"plugin {name!r} ({modname}) lacks {', '.join(missing)}")
    _cache[name] = mod
    return mod
