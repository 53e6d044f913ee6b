"""Pure-Python reference of the hot-path router (``fastgw._core``: ``_router.pxi``).

Role in the flow: nothing at run time uses this module. It states the semantics of
``normalize_path`` and ``Router`` in plain Python so that property tests can assert that
the compiled twin agrees with it, and the config validator uses :func:`parse_template`
to explain template errors with exact places.

Semantics (shared with ``_router.pxi``):

- ``normalize_path``: unreserved characters are decoded, everything else that is
  percent-encoded stays encoded with upper-case hex, raw bytes that may not appear in a
  path (space, ``"<>\\^`{|}``, bytes >= 0x80) are encoded, ``.``/``..`` segments are
  resolved (also when spelled ``%2e``), ``//`` collapses, ``%2F`` stays encoded. A path
  that ends in ``/``, ``/.`` or ``/..`` keeps one trailing ``/``. ``None`` means 400.
- ``Router.match``: one trailing ``/`` is ignored for matching (``/orders/`` is
  ``/orders``), so it cannot reach a catch-all that skips ``/orders``'s plugins.
  Precedence per segment: static > ``{var}`` > ``{var*}``, with backtracking; the first
  node (in that order) that matches the path *and* accepts the method wins. Method per
  node: exact > ``HEAD``→``GET`` > ``ANY``; ``TRACE`` and ``CONNECT`` match no route
  (405). ``{rest*}`` matches one or more segments (never the empty rest); its value is
  the rest of the path, trailing ``/`` included.
"""

from __future__ import annotations

import re
from typing import Any

UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Kept literal when raw (sub-delims, ":" and "@"), kept encoded when percent-encoded.
KEEP_RAW = UNRESERVED | frozenset(b"!$&'()*+,;=:@")
HEX = b"0123456789ABCDEF"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY")
# Methods no route takes, ANY included (their answer is the path's 405): TRACE echoes the
# request, credentials included; a 2xx to CONNECT would announce a tunnel never opened.
UNROUTED_METHODS = frozenset(("TRACE", "CONNECT"))
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class RouteConflict(ValueError):
    """A route that duplicates another one (same host, shape and method)."""


def _hexval(c: int) -> int:
    if 48 <= c <= 57:
        return c - 48
    if 65 <= c <= 70:
        return c - 55
    if 97 <= c <= 102:
        return c - 87
    return -1


def normalize_path(raw: bytes) -> bytes | None:
    """Canonical spelling of a request path, or None when invalid (see _router.pxi)."""
    out = _normalize(raw)
    if out is not None and _hidden_dot_segment(out):
        return None
    return out


def _hidden_dot_segment(path: bytes) -> bool:
    """An encoded separator (%2F, %5C) that hides a dot segment: refused (400)."""
    for seg in path.split(b"/"):
        if b"%2F" in seg or b"%5C" in seg:
            if any(part in (b".", b"..") for part in seg.replace(b"%5C", b"%2F").split(b"%2F")):
                return True
    return False


def _normalize(raw: bytes) -> bytes | None:
    """Canonical spelling of a request path, or None (400).

    >>> normalize_path(b"/a/%2e%2E/b//c%7e")
    b'/b/c~'
    """
    if not raw or raw[0] != 0x2F:
        return None
    segs: list[bytearray] = []
    cur = bytearray()
    i, n = 1, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x2F:
            segs.append(cur)
            cur = bytearray()
        elif c == 0x25:
            if i + 2 >= n:
                return None
            hi, lo = _hexval(raw[i + 1]), _hexval(raw[i + 2])
            if hi < 0 or lo < 0:
                return None
            v = hi * 16 + lo
            if v in UNRESERVED:
                cur.append(v)
            else:
                cur += b"%" + HEX[hi : hi + 1] + HEX[lo : lo + 1]
            i += 2
        elif c < 0x20 or c == 0x7F:
            return None
        elif c in KEEP_RAW:
            cur.append(c)
        else:
            cur += b"%" + HEX[c >> 4 : (c >> 4) + 1] + HEX[c & 15 : (c & 15) + 1]
        i += 1
    segs.append(cur)
    stack: list[bytes] = []
    trailing = False
    for idx, s in enumerate(segs):
        last = idx == len(segs) - 1
        if s in (b"", b".", b".."):
            if s == b"..":
                if not stack:
                    return None
                stack.pop()
            trailing = last
            continue
        stack.append(bytes(s))
    out = b"/" + b"/".join(stack)
    if trailing and stack:
        out += b"/"
    return out


def parse_template(prefix: str, template: str) -> tuple[list[tuple[int, bytes]], tuple[str, ...]]:
    """Split ``prefix + template`` into (kind, key) segments; kind 0 static, 1 var, 2 rest.

    Raises ValueError naming the bad segment. ``"/"`` is the root (no segments).
    """
    segs: list[tuple[int, bytes]] = []
    names: list[str] = []
    for part, is_prefix in ((prefix, True), (template, False)):
        if part == "" and is_prefix:
            continue
        if not part.startswith("/"):
            raise ValueError(f"{part!r} must start with '/'")
        if part == "/" and not is_prefix:
            continue
        for seg in part[1:].split("/"):
            if segs and segs[-1][0] == 2:
                raise ValueError(f"{{{names[-1]}*}} must be the last segment of {part!r}")
            if seg == "":
                raise ValueError(f"empty segment in {part!r}")
            if seg.startswith("{") and seg.endswith("}") and not is_prefix:
                name = seg[1:-1]
                kind = 1
                if name.endswith("*"):
                    name, kind = name[:-1], 2
                if not _NAME.match(name):
                    raise ValueError(f"bad variable name {seg!r} in {part!r}")
                if name in names:
                    raise ValueError(f"variable {{{name}}} used twice in {part!r}")
                names.append(name)
                segs.append((kind, name.encode()))
                continue
            if "{" in seg or "}" in seg:
                raise ValueError(f"'{{' or '}}' inside static segment {seg!r} of {part!r}")
            if seg in (".", ".."):
                raise ValueError(f"dot segment {seg!r} in {part!r}")
            if "%2f" in seg.lower():
                raise ValueError(f"encoded '/' (%2F) in segment {seg!r} of {part!r}")
            key = normalize_path(b"/" + seg.encode())
            if key is None or key.count(b"/") != 1 or key == b"/":
                raise ValueError(f"bad static segment {seg!r} in {part!r}")
            segs.append((0, key[1:]))
    return segs, tuple(names)


class PathMethods:
    """What a path offers when the method is not there (405): ``allow`` and ``routes``."""

    __slots__ = ("allow", "routes")

    def __init__(self, routes: dict[str, Any]) -> None:
        self.routes = routes
        names = set(routes)
        if "GET" in names:
            names.add("HEAD")
        if "ANY" in names:
            # An Allow value can't say "any method": ANY stands for the ones routes name.
            names.discard("ANY")
            names.update(m for m in METHODS if m != "ANY")
        self.allow = ", ".join(sorted(names)).encode()


class _Node:
    __slots__ = ("static", "var", "rest", "methods")

    def __init__(self) -> None:
        self.static: dict[bytes, _Node] = {}
        self.var: _Node | None = None
        self.rest: _Node | None = None
        self.methods: dict[str, Any] = {}

    def pick(self, method: str) -> Any:
        if method in UNROUTED_METHODS:
            return None
        r = self.methods.get(method)
        if r is None and method == "HEAD":
            r = self.methods.get("GET")
        if r is None:
            r = self.methods.get("ANY")
        return r


class Router:
    """Reference router: a trie per host (see the module docstring for the rules)."""

    def __init__(self) -> None:
        self.exact: dict[bytes, _Node] = {}
        self.wild: dict[bytes, _Node] = {}  # b".example.com" -> root
        self.default: _Node | None = None

    def _root(self, host: str, create: bool) -> _Node | None:
        h = host.lower().encode()
        if h == b"*":
            if self.default is None and create:
                self.default = _Node()
            return self.default
        table, key = (self.wild, h[1:]) if h.startswith(b"*.") else (self.exact, h)
        node = table.get(key)
        if node is None and create:
            node = table[key] = _Node()
        return node

    def add(self, hosts: Any, prefix: str, template: str, method: str, route: Any) -> tuple[str, ...]:
        segs, names = parse_template(prefix, template)
        method = method.upper()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}")
        hosts = list(hosts) or ["*"]
        for create in (False, True):
            for host in hosts:
                node = self._root(host, create)
                for kind, key in segs:
                    if node is None:
                        break
                    if kind == 0:
                        nxt = node.static.get(key)
                        if nxt is None and create:
                            nxt = node.static[key] = _Node()
                    elif kind == 1:
                        if node.var is None and create:
                            node.var = _Node()
                        nxt = node.var
                    else:
                        if node.rest is None and create:
                            node.rest = _Node()
                        nxt = node.rest
                    node = nxt
                if node is None:
                    continue
                if not create and method in node.methods:
                    raise RouteConflict(f"{method} {prefix}{template} on host {host!r} duplicates a route")
                if create:
                    node.methods[method] = route
        return names

    def root_for(self, host: bytes) -> _Node | None:
        node = self.exact.get(host)
        if node is not None:
            return node
        if self.wild:
            i = host.find(b".")
            while i >= 0:
                node = self.wild.get(host[i:])
                if node is not None:
                    return node
                i = host.find(b".", i + 1)
        return self.default

    def match(self, host: bytes, method: bytes, path: bytes) -> tuple:
        root = self.root_for(host)
        if root is None:
            return (404, None, None)
        starts: list[int] = []
        ends: list[int] = []
        i = 1
        n = len(path)
        while i < n:
            j = path.find(b"/", i)
            if j < 0:
                j = n
            starts.append(i)
            ends.append(j)
            i = j + 1
        if starts and starts[-1] == ends[-1]:  # trailing "/" (or an empty segment)
            starts.pop()
            ends.pop()
        m = method.decode("latin-1")
        found: list[tuple[_Node, tuple[bytes, ...]]] = []

        # The path alone picks the resource (first match, static > var > rest, with
        # backtracking); the method then decides 200 or 405.
        def walk(node: _Node, k: int, vals: tuple[bytes, ...]) -> bool:
            if k == len(starts):
                if node.methods:
                    found.append((node, vals))
                    return True
                return False
            seg = path[starts[k] : ends[k]]
            nxt = node.static.get(seg)
            if nxt is not None and walk(nxt, k + 1, vals):
                return True
            if node.var is not None and seg and walk(node.var, k + 1, vals + (seg,)):
                return True
            r = node.rest
            if r is not None and r.methods:
                found.append((r, vals + (path[starts[k] :],)))
                return True
            return False

        if not walk(root, 0, ()):
            return (404, None, None)
        node, vals = found[0]
        route = node.pick(m)
        if route is not None:
            return (200, route, vals)
        return (405, PathMethods(dict(node.methods)), vals)
