"""The trie router (fastgw._core.Router) and its pure-Python twin (fastgw.router_ref.Router).

Every example runs on both; hypothesis asserts that they agree on random route sets and
that every configured path is found with the right variables.
"""

from __future__ import annotations

import functools
import gc
import random
import weakref
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw import _core, router_ref

IMPLS = [pytest.param(_core, id="cython"), pytest.param(router_ref, id="reference")]


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> Any:
    return request.param


def make(impl: Any, routes: list[tuple[Any, ...]]) -> Any:
    r = impl.Router()
    for hosts, prefix, template, method, name in routes:
        r.add(hosts, prefix, template, method, name)
    return r


def test_precedence_and_backtracking(impl: Any) -> None:
    r = make(impl, [(["*"], "", "/a/b/c", "GET", "abc"), (["*"], "", "/{x}/b/d", "GET", "xbd")])
    assert r.match(b"h", b"GET", b"/a/b/c") == (200, "abc", ())
    assert r.match(b"h", b"GET", b"/a/b/d") == (200, "xbd", (b"a",))
    assert r.match(b"h", b"GET", b"/z/b/c") == (404, None, None)
    # depth first: the deepest static-first candidate wins (/a/{rest*} before the root's {x})
    for route in [(["*"], "", "/a/{y}", "GET", "ay"), (["*"], "", "/a/{rest*}", "GET", "arest"),
                  (["*"], "", "/a/static", "GET", "astatic")]:
        r.add(*route)
    assert r.match(b"h", b"GET", b"/a/b/d") == (200, "arest", (b"b/d",))
    assert r.match(b"h", b"GET", b"/a/static") == (200, "astatic", ())
    assert r.match(b"h", b"GET", b"/a/other") == (200, "ay", (b"other",))
    assert r.match(b"h", b"GET", b"/a/b/e/f") == (200, "arest", (b"b/e/f",))
    assert r.match(b"h", b"GET", b"/z/b/d") == (200, "xbd", (b"z",))


def test_rest_needs_one_segment_and_trailing_slash(impl: Any) -> None:
    r = make(impl, [([], "", "/static/{path*}", "GET", "s"), ([], "", "/orders", "GET", "o")])
    assert r.match(b"h", b"GET", b"/static") == (404, None, None)
    assert r.match(b"h", b"GET", b"/static/") == (404, None, None)
    assert r.match(b"h", b"GET", b"/static/a") == (200, "s", (b"a",))
    assert r.match(b"h", b"GET", b"/static/a/b/") == (200, "s", (b"a/b/",))
    assert r.match(b"h", b"GET", b"/static/a%2Fb") == (200, "s", (b"a%2Fb",))
    # one trailing "/" is the same resource (it cannot reach another route, e.g. a catch-all)
    assert r.match(b"h", b"GET", b"/orders/") == (200, "o", ())
    assert r.match(b"h", b"GET", b"/") == (404, None, None)


def test_root_route(impl: Any) -> None:
    r = make(impl, [([], "", "/", "GET", "root"), ([], "/alpha", "/", "GET", "aroot")])
    assert r.match(b"h", b"GET", b"/") == (200, "root", ())
    assert r.match(b"h", b"GET", b"/alpha") == (200, "aroot", ())


def test_methods_and_405(impl: Any) -> None:
    r = make(impl, [
        ([], "", "/o", "GET", "get"), ([], "", "/o", "POST", "post"),
        ([], "", "/o/{id}", "DELETE", "del"), ([], "", "/{x}/{y}", "PUT", "put"),
        ([], "", "/any", "ANY", "any"), ([], "", "/any", "HEAD", "head"),
    ])
    assert r.match(b"h", b"HEAD", b"/o") == (200, "get", ())
    assert r.match(b"h", b"POST", b"/o") == (200, "post", ())
    st_, pm, vals = r.match(b"h", b"PATCH", b"/o")
    assert (st_, pm.allow, vals) == (405, b"GET, HEAD, POST", ())
    assert pm.routes == {"GET": "get", "POST": "post"}
    # The path alone picks the resource: a broader route that has the method never takes
    # over (SECURITY: the method can't be used to skip the more specific path's plugins).
    st_, pm, vals = r.match(b"h", b"PUT", b"/o/1")
    assert (st_, pm.allow, vals) == (405, b"DELETE", (b"1",))
    assert r.match(b"h", b"PUT", b"/p/1") == (200, "put", (b"p", b"1"))
    st_, pm, vals = r.match(b"h", b"GET", b"/o/1")
    assert (st_, pm.allow, vals) == (405, b"DELETE", (b"1",))
    assert r.match(b"h", b"HEAD", b"/any") == (200, "head", ())
    assert r.match(b"h", b"GET", b"/any") == (200, "any", ())
    assert r.match(b"h", b"BREW", b"/any") == (200, "any", ())
    # TRACE and CONNECT: no route takes them, ANY included; the 405's Allow spells out
    # what ANY stands for (an Allow value can't say "any method").
    for method in (b"TRACE", b"CONNECT"):
        st_, pm, vals = r.match(b"h", method, b"/any")
        assert (st_, pm.allow) == (405, b"DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT")
        assert r.match(b"h", method, b"/o")[1].allow == b"GET, HEAD, POST"
        assert r.match(b"h", method, b"/nothing")[0] == 404


def test_host_choice_without_fall_through(impl: Any) -> None:
    r = make(impl, [
        (["api.example.com"], "", "/a", "GET", "exact"),
        (["*.example.com"], "", "/b", "GET", "wild"),
        (["*.eu.example.com"], "", "/c", "GET", "longer"),
        (["*"], "", "/d", "GET", "default"),
        (["Other.COM", "*"], "/p", "/e", "GET", "multi"),
    ])
    assert r.match(b"api.example.com", b"GET", b"/a")[1] == "exact"
    assert r.match(b"api.example.com", b"GET", b"/b")[0] == 404  # no fall-through to the wildcard
    assert r.match(b"x.example.com", b"GET", b"/b")[1] == "wild"
    assert r.match(b"a.b.example.com", b"GET", b"/b")[1] == "wild"
    assert r.match(b"x.eu.example.com", b"GET", b"/c")[1] == "longer"
    assert r.match(b"x.eu.example.com", b"GET", b"/b")[0] == 404
    assert r.match(b"example.com", b"GET", b"/d")[1] == "default"
    assert r.match(b"other.com", b"GET", b"/p/e")[1] == "multi"
    assert r.match(b"zzz", b"GET", b"/p/e")[1] == "multi"
    assert r.match(b"zzz", b"GET", b"/e")[0] == 404


def test_host_answer_follows_each_request_and_new_routes(impl: Any) -> None:
    # The compiled router remembers the last host's root: alternating hosts, equal hosts
    # in new objects, and a host gaining its own routes after a lookup must all be seen.
    r = make(impl, [(["*"], "", "/d", "GET", "default"), (["a.test"], "", "/a", "GET", "a")])
    for _ in range(2):
        assert r.match(b"a.test", b"GET", b"/a")[1] == "a"
        assert r.match(b"b.test", b"GET", b"/a")[0] == 404
        assert r.match(bytes(bytearray(b"a.test")), b"GET", b"/a")[1] == "a"
        assert r.match(b"a.tesx", b"GET", b"/d")[1] == "default"
    assert r.match(b"b.test", b"GET", b"/d")[1] == "default"
    r.add(["b.test"], "", "/b", "GET", "b")
    assert r.match(b"b.test", b"GET", b"/b")[1] == "b"
    assert r.match(b"b.test", b"GET", b"/d")[0] == 404     # b.test has its own tree now


def test_add_returns_names_and_rejects_conflicts(impl: Any) -> None:
    r = impl.Router()
    assert r.add(["h"], "/v1", "/o/{orderId}/items/{rest*}", "get", 1) == ("orderId", "rest")
    with pytest.raises(impl.RouteConflict):
        r.add(["other", "h"], "", "/v1/o/{x}/items/{y*}", "GET", 2)
    # nothing was added on the host that had no conflict
    assert r.match(b"other", b"GET", b"/v1/o/1/items/2")[0] == 404
    r.add(["h"], "", "/v1/o/{x}/items/{y*}", "POST", 3)
    assert r.match(b"h", b"POST", b"/v1/o/1/items/2/3") == (200, 3, (b"1", b"2/3"))
    for bad in ("/a/{r*}/b", "a", "/a//b", "/a/../b", "/{x", "/a%2fb", "/{x}/{x}"):
        with pytest.raises(ValueError):
            r.add(["h"], "", bad, "GET", 0)
    with pytest.raises(ValueError):
        r.add(["h"], "", "/ok", "BREW", 0)


def test_static_segments_are_normalized(impl: Any) -> None:
    r = make(impl, [([], "", "/%7Euser/caf\u00e9", "GET", "u")])
    assert r.match(b"h", b"GET", _core.normalize_path(b"/~user/caf\xc3\xa9")) == (200, "u", ())
    assert r.match(b"h", b"GET", _core.normalize_path(b"/%7euser/caf%c3%a9")) == (200, "u", ())


def test_large_route_table_matches_exactly() -> None:
    # Match cost across table sizes is measured in bench/micro.py (speed targets live in
    # benchmarks, not in unit tests); here: a 100 000-route table answers correctly.
    r = _core.Router()
    n = 100_000
    for i in range(n):
        r.add(["*"], "", f"/svc{i}/items/{{id}}", "GET", i)
    for k in (0, 1, n // 2, n - 1):
        assert r.match(b"h", b"GET", f"/svc{k}/items/42".encode()) == (200, k, (b"42",))
    assert r.match(b"h", b"GET", f"/svc{n}/items/42".encode()) == (404, None, None)
    assert r.match(b"h", b"POST", b"/svc7/items/1")[0] == 405


# ---------------------------------------------------------------------- properties

SEG = st.sampled_from(["a", "b", "c", "orders", "x1"])
NODE = st.one_of(SEG, st.just("{v}"))
METHOD = st.sampled_from(["GET", "POST", "HEAD", "ANY"])


@st.composite
def route_sets(draw: Any) -> list[tuple[str, str]]:
    out = []
    for _ in range(draw(st.integers(1, 12))):
        segs = draw(st.lists(NODE, min_size=0, max_size=4))
        names = iter(f"v{i}" for i in range(10))
        segs = [f"{{{next(names)}}}" if s == "{v}" else s for s in segs]
        if draw(st.booleans()) and draw(st.integers(0, 3)) == 0:
            segs.append(f"{{{next(names)}*}}")
        out.append(("/" + "/".join(segs), draw(METHOD)))
    return out


def build_both(routes: list[tuple[str, str]],
               hash_mask: int | None = None) -> tuple[Any, Any, list[tuple[str, str, int]]]:
    """Both routers with ``routes`` ((template, method), route = index) and the routes kept
    (duplicates skipped); ``hash_mask`` forces hash collisions in the Cython table."""
    c, ref = _core.Router(), router_ref.Router()
    if hash_mask is not None:
        c._debug_set_hash(hash_mask)
    kept = []
    for i, (template, method) in enumerate(routes):
        try:
            ref.add(["*"], "", template, method, i)
        except router_ref.RouteConflict:
            with pytest.raises(_core.RouteConflict):
                c.add(["*"], "", template, method, i)
            continue
        c.add(["*"], "", template, method, i)
        kept.append((template, method, i))
    return c, ref, kept


def canon(result: tuple[Any, ...]) -> tuple[Any, ...]:
    status, what, vals = result
    if status == 405:
        return (405, what.allow, dict(what.routes), vals)
    return result


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(route_sets(), st.lists(st.lists(st.one_of(SEG, st.just("zz")), max_size=5), min_size=1, max_size=8),
       st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT"]), st.booleans())
def test_compiled_agrees_with_reference(routes: Any, paths: Any, method: bytes, slash: bool) -> None:
    c, ref, _ = build_both(routes)
    for segs in paths:
        path = ("/" + "/".join(segs) + ("/" if slash and segs else "")).encode()
        assert canon(c.match(b"h", method, path)) == canon(ref.match(b"h", method, path))


@settings(max_examples=300, deadline=None)
@given(route_sets(), st.data())
def test_every_route_is_found_with_its_values(routes: Any, data: Any) -> None:
    c, ref, kept = build_both(routes)
    value = st.text(alphabet="abcxyz019-_~!$", min_size=1, max_size=6).filter(lambda v: v.strip(".") != "")
    for template, method, i in kept:
        vals = []
        parts = []
        for seg in template.split("/")[1:]:
            if seg.startswith("{"):
                if seg.endswith("*}"):
                    v = "/".join(data.draw(st.lists(value, min_size=1, max_size=3)))
                else:
                    v = data.draw(value)
                vals.append(v.encode())
                parts.append(v)
            elif seg:
                parts.append(seg)
        path = ("/" + "/".join(parts)).encode()
        m = b"GET" if method in ("ANY", "HEAD") else method.encode()
        m = b"HEAD" if method == "HEAD" else m
        for router in (c, ref):
            status, route, got = router.match(b"h", m, path)
            # The path always finds a resource. A more specific resource may legitimately win
            # (e.g. /a over /{v0}) and answer 405 if it lacks the method; if the resource is
            # this route's own, it answers 200 with exactly the values put into the path.
            assert status in (200, 405)
            if status == 405:
                assert i not in route.routes.values()
            elif route == i:
                assert got == tuple(vals)
        assert canon(c.match(b"h", m, path)) == canon(ref.match(b"h", m, path))


# ------------------------------------------------------- the compiled router's flat table
# _core.Router keeps every node in one open-addressed hash table (see _router.pxi): the
# tests below aim at what that adds risk to (growth, collisions, inline vs pooled segments,
# many routes), always against the reference router or an exact expectation.

ALL_METHODS = [b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS", b"ANY", b"BREW", b"get",
               b"TRACE", b"CONNECT"]


def build_pair(routes: list[tuple[str, str]], hash_mask: int | None = None) -> tuple[Any, Any]:
    """Both routers with ``routes`` (see build_both)."""
    c, ref, _kept = build_both(routes, hash_mask)
    return c, ref


@functools.cache
def many_routes(n: int) -> list[tuple[str, str]]:
    """n routes of mixed shapes: shared and unique prefixes, {var}, {rest*}, long segments."""
    out = []
    for i in range(n):
        shape = i % 6
        if shape == 0:
            out.append((f"/api/v{i % 3}/res{i}/{{id}}", "GET"))
        elif shape == 1:
            out.append((f"/res{i}/items", "GET"))
            out.append((f"/res{i}/items", "POST"))
        elif shape == 2:
            out.append((f"/res{i}/{{x}}/sub", "ANY"))
        elif shape == 3:
            out.append((f"/files{i}/{{p*}}", "GET"))
        elif shape == 4:
            out.append((f"/{{a}}/fixed{i}", "PUT"))
        else:
            out.append((f"/a-rather-long-static-segment-{i:06d}/x", "DELETE"))
    return out


N_MANY = 20_000
_many_cache: dict[str, Any] = {}


def many_pair() -> tuple[Any, Any]:
    if "pair" not in _many_cache:
        _many_cache["pair"] = build_pair(many_routes(N_MANY))
    return _many_cache["pair"]


@st.composite
def many_lookups(draw: Any) -> bytes:
    template, _ = many_routes(N_MANY)[draw(st.integers(0, len(many_routes(N_MANY)) - 1))]
    parts = []
    for seg in template.split("/")[1:]:
        if seg.startswith("{"):
            parts.append(draw(st.sampled_from(["1", "abc", "fixed3", "items", "res7", "x"])))
        else:
            parts.append(seg)
    mutation = draw(st.integers(0, 5))
    if mutation == 1 and parts:
        k = draw(st.integers(0, len(parts) - 1))
        s = parts[k]
        j = draw(st.integers(0, len(s) - 1))
        parts[k] = s[:j] + draw(st.sampled_from("0z-")) + s[j + 1:]  # one byte changed
    elif mutation == 2:
        parts.append(draw(st.sampled_from(["sub", "x", "1"])))
    elif mutation == 3 and parts:
        parts.pop()
    path = "/" + "/".join(parts)
    if mutation == 4:
        path += "/"
    return path.encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(many_lookups(), min_size=1, max_size=20), st.sampled_from(ALL_METHODS))
def test_many_routes_agree_with_reference(paths: list[bytes], method: bytes) -> None:
    c, ref = many_pair()
    for path in paths:
        assert canon(c.match(b"h", method, path)) == canon(ref.match(b"h", method, path)), path


def test_many_routes_every_route_answers() -> None:
    # Oracle: each route's own path (variables filled in) answers 200 with that route and
    # exactly those values; no two of these shapes overlap.
    c, _ = many_pair()
    for idx, (template, method) in enumerate(many_routes(N_MANY)):
        parts, vals = [], []
        for seg in template.split("/")[1:]:
            if seg.startswith("{"):
                v = "q1/q2" if seg.endswith("*}") else "q1"
                parts.append(v)
                vals.append(v.encode())
            else:
                parts.append(seg)
        m = b"GET" if method == "ANY" else method.encode()
        assert c.match(b"h", m, ("/" + "/".join(parts)).encode()) == (200, idx, tuple(vals)), template
    stats = c._debug_stats()
    assert stats["used"] * 10 <= stats["capacity"] * 7


@pytest.mark.parametrize("mask", [None, 0])
def test_table_growth_keeps_every_route(mask: int | None) -> None:
    # mask 0: every node in one probe run, and each rehash moves the nodes that sat in
    # their parent's buddy slot after all the others.
    r = _core.Router()
    count = 3_000 if mask is None else 600
    if mask is not None:
        r._debug_set_hash(mask)
    caps = [r._debug_stats()["capacity"]]
    added: list[tuple[bytes, Any]] = []
    for i in range(count):
        r.add(["*"], "", f"/g{i}/{{v}}/t{i % 7}", "GET", i)
        added.append((f"/g{i}/x/t{i % 7}".encode(), i))
        cap = r._debug_stats()["capacity"]
        if cap != caps[-1]:
            caps.append(cap)
            for path, route in added:  # right after each rehash: everything still found
                assert r.match(b"h", b"GET", path) == (200, route, (b"x",))
    assert len(caps) >= 5 and caps == sorted(caps)
    stats = r._debug_stats()
    assert stats["used"] == 1 + 3 * count and stats["used"] * 10 <= stats["capacity"] * 7
    assert stats["entry_bytes"] == 32  # two entries per cache line
    assert stats["buddies"] >= count // 4  # a child shares its parent's line, after rehashes too


def test_buddy_slots_and_static_filter_with_many_siblings() -> None:
    # A node with one static child and a {var} (the common /users/me + /users/{id}), and a
    # node with 300 static children (its 8-bit filter full) beside a {var}: every static
    # child is found wherever it sits (buddy slot or home run), every other segment is the var.
    r, ref = build_pair([("/users/me", "GET"), ("/users/{id}", "GET"), ("/users/{id}/orders", "GET")]
                        + [(f"/wide/c{i}", "GET") for i in range(300)] + [("/wide/{v}", "GET")])
    assert r._debug_stats()["buddies"] > 0
    for router in (r, ref):
        assert router.match(b"h", b"GET", b"/users/me") == (200, 0, ())
        assert router.match(b"h", b"GET", b"/users/mf") == (200, 1, (b"mf",))
        assert router.match(b"h", b"GET", b"/users/7/orders") == (200, 2, (b"7",))
        assert router.match(b"h", b"GET", b"/users/me/orders") == (200, 2, (b"me",))
        for i in range(300):
            assert router.match(b"h", b"GET", f"/wide/c{i}".encode()) == (200, 3 + i, ())
            assert router.match(b"h", b"GET", f"/wide/d{i}".encode()) == (200, 303, (f"d{i}".encode(),))


@pytest.mark.parametrize("mask", [0, 1, 0xF])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(routes=route_sets(), paths=st.lists(st.lists(st.one_of(SEG, st.just("zz")), max_size=5), min_size=1, max_size=8),
       method=st.sampled_from(ALL_METHODS), slash=st.booleans())
def test_hash_collisions_change_nothing(mask: int, routes: Any, paths: Any, method: bytes, slash: bool) -> None:
    # mask 0: every node has the same path hash, so all of them sit in one probe run and
    # every lookup compares against every node; only parent, kind and bytes tell them apart.
    c, ref = build_pair(routes, hash_mask=mask)
    for segs in paths:
        path = ("/" + "/".join(segs) + ("/" if slash and segs else "")).encode()
        assert canon(c.match(b"h", method, path)) == canon(ref.match(b"h", method, path))


def test_full_collisions_with_many_nodes_and_hosts() -> None:
    r = _core.Router()
    r._debug_set_hash(0)
    for i in range(300):
        r.add(["*"], "", f"/p{i % 10}/q{i}", "GET", ("q", i))
        r.add(["*"], "", f"/p{i % 10}/q{i}/{{v}}", "POST", ("v", i))
        r.add([f"h{i % 3}.example"], "", f"/p{i % 10}/q{i}", "GET", ("host", i))
    assert r._debug_stats()["longest_probe"] > 500  # they really all collide
    for i in range(300):
        assert r.match(b"x", b"GET", f"/p{i % 10}/q{i}".encode()) == (200, ("q", i), ())
        assert r.match(b"x", b"POST", f"/p{i % 10}/q{i}/9".encode()) == (200, ("v", i), (b"9",))
        assert r.match(f"h{i % 3}.example".encode(), b"GET", f"/p{i % 10}/q{i}".encode()) == (200, ("host", i), ())
        assert r.match(b"x", b"GET", f"/p{(i + 1) % 10}/q{i}".encode()) == (404, None, None)
    with pytest.raises(ValueError):
        r._debug_set_hash(0xFFFFFFFF)  # only on an empty router


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33, 100, 254, 255, 256, 70_000])
def test_segment_lengths_inline_pool_and_long(n: int) -> None:
    # <= 8 bytes are packed in the entry, longer ones are in the pool, >= 255 have their
    # length in the pool too: a segment differing in any single byte must not match.
    rng = random.Random(n)
    seg = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(n))
    r, ref = build_pair([(f"/{seg}", "GET"), (f"/{seg}/{{v}}", "GET"), (f"/x/{seg}", "GET")])
    for router in (r, ref):
        assert router.match(b"h", b"GET", f"/{seg}".encode()) == (200, 0, ())
        assert router.match(b"h", b"GET", f"/{seg}/1".encode()) == (200, 1, (b"1",))
        assert router.match(b"h", b"GET", f"/x/{seg}/".encode()) == (200, 2, ())
    positions = range(n) if n <= 40 else [0, 1, 7, 8, 9, n // 2, n - 9, n - 8, n - 2, n - 1]
    for j in positions:
        other = seg[:j] + ("_" if seg[j] != "_" else "-") + seg[j + 1:]
        assert r.match(b"h", b"GET", f"/{other}".encode()) == (404, None, None)
        assert r.match(b"h", b"GET", f"/x/{other}".encode()) == (404, None, None)
    for other in (seg[:-1], seg + "a", "a" + seg):
        assert r.match(b"h", b"GET", f"/{other}".encode()) == (404, None, None)


def test_long_segments_are_stored_once() -> None:
    r = _core.Router()
    long = "shared-long-segment-name"
    for i in range(100):
        r.add(["*"], "", f"/p{i}/{long}", "GET", i)
    assert r._debug_stats()["pool_bytes"] == len(long)
    assert r.match(b"h", b"GET", f"/p42/{long}".encode()) == (200, 42, ())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=12).filter(lambda b: b"/" not in b), max_size=6),
       st.sampled_from(ALL_METHODS))
def test_raw_bytes_and_empty_segments_agree(segs: list[bytes], method: bytes) -> None:
    # match() takes any bytes (normally normalized): empty segments, NUL, bytes >= 0x80.
    c, ref = raw_pair()
    path = b"/" + b"/".join(segs)
    assert canon(c.match(b"h", method, path)) == canon(ref.match(b"h", method, path))


def raw_pair() -> tuple[Any, Any]:
    if "raw" not in _many_cache:
        _many_cache["raw"] = build_pair([
            ("/caf\u00e9/{x}", "GET"), ("/%00/{x}/{r*}", "GET"), ("/{a}/{b}", "POST"),
            ("/a/{r*}", "ANY"), ("/{a}/b/{c}", "GET"), ("/a//".rstrip("/"), "GET"), ("/\u00e9\u00e9\u00e9\u00e9\u00e9", "GET"),
        ])
    return _many_cache["raw"]


def test_empty_and_non_ascii_segments() -> None:
    c, ref = raw_pair()
    for router in (c, ref):
        assert router.match(b"h", b"GET", b"/caf%C3%A9/1") == (200, 0, (b"1",))
        # raw bytes are not normalized: not the static caf%C3%A9, but /{a}/{b} (POST only)
        assert router.match(b"h", b"POST", b"/caf\xc3\xa9/1") == (200, 2, (b"caf\xc3\xa9", b"1"))
        assert router.match(b"h", b"GET", b"/caf\xc3\xa9/1")[0] == 405
        assert router.match(b"h", b"GET", b"/%00/v/w/z") == (200, 1, (b"v", b"w/z"))
        assert router.match(b"h", b"GET", b"/a//b") == (200, 3, (b"/b",))   # {r*} takes the empty segment
        assert router.match(b"h", b"POST", b"/x//") == (404, None, None)    # {b} never matches ""
        assert router.match(b"h", b"GET", b"//b/c")[0] == 404               # {a} never matches ""
        assert router.match(b"h", b"GET", b"/%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9") == (200, 6, ())


def test_method_answers_per_node() -> None:
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    r, ref = build_pair([("/m", m) for m in methods[:4]] + [("/m/{v}", m) for m in methods]
                        + [("/only", "POST"), ("/anyh", "ANY"), ("/anyh", "HEAD"), ("/g", "GET")])
    for path in (b"/m", b"/m/1", b"/only", b"/anyh", b"/g", b"/m/1/"):
        for method in ALL_METHODS:
            assert canon(r.match(b"h", method, path)) == canon(ref.match(b"h", method, path)), (path, method)
    assert r.match(b"h", b"GET", b"/m") is r.match(b"h", b"GET", b"/m")  # a static answer is one ready tuple


def test_router_in_a_reference_cycle_is_collected() -> None:
    class Route:
        router: Any = None

    r = _core.Router()
    route = Route()
    route.router = r
    r.add(["*"], "", "/c/{v}", "GET", route)
    assert r.match(b"h", b"GET", b"/c/1") == (200, route, (b"1",))
    ref = weakref.ref(route)
    del r, route
    gc.collect()
    assert ref() is None


def test_a_large_table_without_a_static_segment() -> None:
    # Large enough for the walk's prefetches, and no static segment anywhere: the likely
    # path is all {var}s (and the set of static segments is empty).
    r = _core.Router()
    for i in range(6_000):
        r.add([f"h{i}.example"], "", "/{a}/{b}", "GET", i)
    assert r._debug_stats()["capacity"] >= 16_384
    for i in range(0, 6_000, 7):
        assert r.match(f"h{i}.example".encode(), b"GET", b"/x/y") == (200, i, (b"x", b"y"))
        assert r.match(f"h{i}.example".encode(), b"GET", b"/x")[0] == 404
