"""ip-restriction: allow or deny callers by IPv4/IPv6 CIDR lists.

The caller is the TCP peer (``ctx.peer_ip``), unless the peer is a trusted proxy: then
``X-Forwarded-For`` is read right to left, skipping trusted proxies, and the first
untrusted address is the caller (the left-most one if all are trusted). The result is
also stored in ``ctx.client_ip``. Deny wins over allow; with an allow list, anything not
in it is refused (403). SECURITY: an unparsable address is never allowed.
"""

from __future__ import annotations

import ipaddress
import types
from typing import Any

from fastgw._core import ForwardedVerdictStep, PeerVerdictStep
from fastgw.plugins.base import CONTINUE, PluginScope
from fastgw.plugins.base import Plugin as BasePlugin

NAME = "ip-restriction"
PRIORITY = 990

_CIDRS = {"type": "array", "default": [], "items": {"type": "string", "minLength": 2}}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "allow": dict(_CIDRS, description="Addresses or CIDRs allowed (empty: all not denied)."),
        "deny": dict(_CIDRS, description="Addresses or CIDRs refused (checked first)."),
        "trusted_proxies": dict(_CIDRS, description="Proxies whose X-Forwarded-For is believed."),
        "status": {"type": "integer", "minimum": 400, "maximum": 499, "default": 403,
                   "description": "Status of the refusal."},
        "message": {"type": "string", "default": "Your IP address is not allowed",
                    "description": "Error message of the refusal."},
    },
    "anyOf": [
        {"properties": {"allow": {"minItems": 1}}, "required": ["allow"]},
        {"properties": {"deny": {"minItems": 1}}, "required": ["deny"]},
    ],
}

_MEMO_MAX = 4096    # callers' verdicts kept (then all forgotten at once)

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Addr = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_nets(values: list[str], field: str) -> tuple[Net, ...]:
    nets = []
    for i, v in enumerate(values):
        try:
            nets.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{field}[{i}]: {exc}") from None
    return tuple(nets)


def parse_ip(text: str | None) -> Addr | None:
    """An address (IPv4-mapped IPv6 turned into IPv4), or None if unparsable (or none)."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[::1]:port"
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # "1.2.3.4:port"
        text = text.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _in(addr: Addr, nets: tuple[Net, ...]) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


def client_address(peer: str, xff: list[str], trusted: tuple[Net, ...]) -> Addr | None:
    """The caller: ``peer`` unless trusted, then X-Forwarded-For right to left past trusted proxies.

    >>> nets = (ipaddress.ip_network("10.0.0.0/8"),)
    >>> str(client_address("10.0.0.1", ["6.6.6.6, 1.2.3.4, 10.0.0.2"], nets))
    '1.2.3.4'
    """
    addr = parse_ip(peer)
    if addr is None or not trusted or not _in(addr, trusted):
        return addr
    hops = [h for value in xff for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        addr = parse_ip(hop)
        if addr is None or not _in(addr, trusted):
            return addr
    return addr


class Plugin(BasePlugin):
    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        super().__init__(config, scope)
        self.allow = parse_nets(config["allow"], "allow")
        self.deny = parse_nets(config["deny"], "deny")
        self.trusted = parse_nets(config["trusted_proxies"], "trusted_proxies")
        self.status = config["status"]
        self.message = config["message"]
        # PERF: verdicts for recent callers (bounded); addresses repeat a lot. The key is
        # the peer (-> allowed), and with trusted proxies (peer, X-Forwarded-For values as
        # bytes) (-> (allowed, the caller's address or None)). A caller judged before is
        # answered in C (PeerVerdictStep, ForwardedVerdictStep: they read ``_verdicts``,
        # which is cleared when full, never replaced).
        self._verdicts: dict[Any, Any] = {}
        fallback = types.MethodType(Plugin.on_request, self)
        self.on_request = (ForwardedVerdictStep if self.trusted else PeerVerdictStep)(
            fallback, self._verdicts, self.status, self.message)

    def allowed(self, addr: Addr | None) -> bool:
        if addr is None:
            return False
        if self.deny and _in(addr, self.deny):
            return False
        return not self.allow or _in(addr, self.allow)

    def on_request(self, ctx: Any) -> int:
        peer = ctx.peer_ip
        if self.trusted:
            xff = tuple(v.encode("latin-1") for v in ctx.get_headers("x-forwarded-for"))
            key: Any = (peer, xff)
            found = self._verdicts.get(key)
            if found is None:
                addr = client_address(peer, [v.decode("latin-1") for v in xff], self.trusted)
                found = (self.allowed(addr), str(addr) if addr is not None and xff else None)
                self._remember(key, found)
            verdict, client = found
            if client is not None:
                ctx.client_ip = client
        else:
            verdict = self._verdicts.get(peer)
            if verdict is None:
                verdict = self.allowed(client_address(peer, [], ()))
                self._remember(peer, verdict)
        if not verdict:
            return ctx.error(self.status, self.message)
        return CONTINUE

    def _remember(self, key: Any, verdict: Any) -> None:
        if len(self._verdicts) >= _MEMO_MAX:
            self._verdicts.clear()
        self._verdicts[key] = verdict
