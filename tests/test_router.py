"""The trie router (fastgw._core.Router) and its pure-Python twin (fastgw.router_ref.Router).

Every example runs on both; hypothesis asserts that they agree on random route sets and
that every configured path is found with the right variables.
"""

from __future__ import annotations

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


def build_both(routes: list[tuple[str, str]]) -> tuple[Any, Any, list[tuple[str, str, int]]]:
    c, ref = _core.Router(), router_ref.Router()
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
