"""normalize_path (fastgw._core) and its reference twin: canonical spellings, and no spelling
of a path can reach a route other than the one its canonical spelling reaches."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw import _core, router_ref

IMPLS = [pytest.param(_core.normalize_path, id="cython"), pytest.param(router_ref.normalize_path, id="reference")]


@pytest.mark.parametrize("norm", IMPLS)
@pytest.mark.parametrize(("raw", "want"), [
    (b"/", b"/"),
    (b"/orders/1", b"/orders/1"),
    (b"//orders//1", b"/orders/1"),
    (b"/a/./b/.", b"/a/b/"),
    (b"/a/b/../c", b"/a/c"),
    (b"/a/%2e%2E/c", b"/c"),
    (b"/a/.%2e/c", b"/c"),
    (b"/a/%2e/c", b"/a/c"),
    (b"/a/..", b"/"),
    (b"/a/", b"/a/"),
    (b"/%7euser/%41%62", b"/~user/Ab"),
    (b"/a%2fb/c", b"/a%2Fb/c"),
    (b"/a%2Fb", b"/a%2Fb"),
    (b"/%252e%252e/x", b"/%252e%252e/x"),
    (b"/%25", b"/%25"),
    (b"/a%3ab%3A", b"/a%3Ab%3A"),
    (b"/a:b@c!$&'()*+,;=", b"/a:b@c!$&'()*+,;="),
    (b"/caf\xc3\xa9 x", b"/caf%C3%A9%20x"),
    (b"/a{b}", b"/a%7Bb%7D"),
    (b"/.well-known/x", b"/.well-known/x"),
    (b"/...", b"/..."),
])
def test_examples(norm: Any, raw: bytes, want: bytes) -> None:
    assert norm(raw) == want


@pytest.mark.parametrize("norm", IMPLS)
@pytest.mark.parametrize("raw", [
    b"", b"orders", b"/..", b"/a/../..", b"/%2e%2e", b"/a/%2E%2e/%2e%2e/x", b"/a%", b"/a%2", b"/a%zz",
    b"/a%2g", b"/a\x00b", b"/a\r\nb", b"/a\x7f", b"/a\tb",
])
def test_invalid(norm: Any, raw: bytes) -> None:
    assert norm(raw) is None


def test_canonical_path_is_returned_as_is() -> None:
    raw = b"/orders/12345/items"
    assert _core.normalize_path(raw) is raw
    # upper-case escapes of bytes that stay encoded are canonical too
    for raw in (b"/files/My%20Documents/caf%C3%A9.pdf", b"/a/b%2Fc", b"/x%3Ay/%25/%00"):
        assert _core.normalize_path(raw) is raw
        assert router_ref.normalize_path(raw) == raw


PATH_BYTES = st.lists(
    st.one_of(
        st.sampled_from([b"/", b".", b"..", b"%2e", b"%2E", b"%2f", b"%25", b"%", b"%7e", b"%41", b"a", b"~",
                         b"\xc3\xa9", b" ", b"%zz", b":", b"+", b"{",
                         # canonical escapes (the fast path keeps them) and near misses
                         b"%2F", b"%5C", b"%5c", b"%20", b"%C3%A9", b"%c3", b"%3A", b"%00", b"%7E", b"%2"]),
        st.binary(min_size=1, max_size=2),
    ),
    max_size=12,
).map(lambda parts: b"/" + b"".join(parts))


@settings(max_examples=1500, deadline=None)
@given(PATH_BYTES)
def test_agrees_with_reference_and_is_idempotent(raw: bytes) -> None:
    got = _core.normalize_path(raw)
    assert got == router_ref.normalize_path(raw)
    if got is not None:
        assert _core.normalize_path(got) == got
        assert router_ref.normalize_path(got) == got


UNRES = "abcxyzABC019-._~"


@st.composite
def respell(draw: Any, path: bytes) -> bytes:
    """Another spelling of a canonical path: encoded unreserved bytes (any hex case),
    extra "/" and "/./", detours "seg/../", and "." spelled %2e."""
    out = bytearray()
    for seg in path[1:].split(b"/"):
        out += b"/"
        for _ in range(draw(st.integers(0, 2))):
            out += draw(st.sampled_from([b"/", b"./", b"%2e/", b"%2E/", b"zz/../", b"q/.%2e/", b"w/%2E%2e/"]))
        for c in seg:
            if chr(c) in UNRES and draw(st.booleans()):
                hx = f"%{c:02X}"
                out += (hx.lower() if draw(st.booleans()) else hx).encode()
            else:
                out.append(c)
    return bytes(out)


ROUTES = [
    ("/admin", "GET"), ("/admin/users/{id}", "GET"), ("/{any}", "GET"), ("/{any}/users/{x}", "GET"),
    ("/files/{p*}", "GET"), ("/~me/a.b", "GET"), ("/{top}/{rest*}", "GET"),
]


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_no_spelling_reaches_another_route(data: Any) -> None:
    r = _core.Router()
    for i, (template, method) in enumerate(ROUTES):
        r.add(["*"], "", template, method, i)
    segs = data.draw(st.lists(st.sampled_from(["admin", "users", "files", "~me", "a.b", "7", "x-y_z"]),
                              min_size=1, max_size=4))
    canonical = ("/" + "/".join(segs)).encode()
    assert _core.normalize_path(canonical) == canonical
    want = r.match(b"h", b"GET", canonical)
    spelled = data.draw(respell(canonical))
    norm = _core.normalize_path(spelled)
    assert norm == canonical, spelled
    assert r.match(b"h", b"GET", norm) == want


@pytest.mark.parametrize("path", [
    b"/public/..%2Fadmin", b"/public/..%2fadmin", b"/a/%2e%2e%2Fb", b"/a/.%5Cb", b"/a/..\\b",
    b"/a/x%2F..%2Fy", b"/a/x%5C.",
])
def test_encoded_separator_hiding_a_dot_segment_is_refused(path: bytes) -> None:
    # SECURITY: a backend that decodes %2F (or treats \ as /) would resolve these dot segments.
    assert _core.normalize_path(path) is None
    assert router_ref.normalize_path(path) is None


@pytest.mark.parametrize("path", [b"/a/b%2Fc", b"/files/x..%2Fy", b"/a/%2F", b"/a/...%2Fb"])
def test_encoded_separator_without_dot_segment_is_kept(path: bytes) -> None:
    assert _core.normalize_path(path) is not None
