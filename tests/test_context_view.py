"""A RequestContext in lazy mode (headers kept on the scanned head, edits marked on it) and
one in list mode (the plugin's list of pairs) give the same answers and the same backend
head, for random requests and random edits by the built-in steps (find, pop, remove,
add, and reading ``ctx.headers`` part way)."""

from __future__ import annotations

import pytest
from fastgw._core import _context_view_check
from hypothesis import given, settings
from hypothesis import strategies as st

# Names the steps edit, hop-by-hop and gateway-owned names, and names in other cases.
NAMES = [b"Accept", b"apikey", b"ApiKey", b"X-Api-Key", b"x-request-id", b"X-Request-ID",
         b"traceparent", b"X-Forwarded-For", b"x-forwarded-for", b"Via", b"X-Consumer-Name",
         b"Keep-Alive", b"X-Forwarded-Proto", b"x-k"]
LNAMES = st.sampled_from(sorted({n.lower() for n in NAMES} | {b"host", b"absent"}))
VALUES = st.sampled_from([b"a", b"b", b"k1", b"10.1.1.1", b"1.0 p", b""])
HEADERS = st.lists(st.tuples(st.sampled_from(NAMES), VALUES), max_size=10)
OPS = st.lists(st.one_of(
    st.tuples(st.just("find"), LNAMES),
    st.tuples(st.just("findall"), LNAMES),
    st.tuples(st.just("pop"), LNAMES),
    st.tuples(st.just("remove"), st.lists(LNAMES, min_size=1, max_size=3).map(tuple)),
    st.tuples(st.just("add"), st.tuples(st.sampled_from(NAMES), VALUES)),
    st.tuples(st.just("list")),
), max_size=8)


def head(headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    return b"GET /p?q=1 HTTP/1.1\r\nHost: api.example\r\n" + lines + b"\r\n"


@settings(max_examples=400, deadline=None)
@given(headers=HEADERS, ops=OPS)
def test_lazy_and_list_modes_agree(headers: list[tuple[bytes, bytes]], ops: list[tuple]) -> None:
    raw = head(headers)
    assert _context_view_check(raw, ops, True) == _context_view_check(raw, ops, False)


def test_key_removed_and_pairs_added_reach_the_backend_as_in_list_mode() -> None:
    raw = head([(b"Accept", b"*/*"), (b"apikey", b"k1"), (b"X-Forwarded-For", b"1.1.1.1"),
                (b"X-Consumer-Name", b"mallory"), (b"x-forwarded-for", b"2.2.2.2")])
    ops = [("find", b"apikey"), ("remove", (b"apikey",)), ("find", b"apikey"),
           ("add", (b"X-Consumer-Name", b"alice")), ("pop", b"x-request-id"),
           ("add", (b"X-Request-Id", b"r1"))]
    results, up = _context_view_check(raw, ops, True)
    assert results == [b"k1", 1, None, 0, None, 0]
    assert b"apikey" not in up.lower()
    assert b"mallory" not in up                 # the client's identity header never goes up
    assert b"\r\nX-Consumer-Name: alice\r\n" in up and b"\r\nX-Request-Id: r1\r\n" in up
    # Both X-Forwarded-For lines, in order, then this hop's client.
    assert b"\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.0.0.1\r\n" in up
    assert up == _context_view_check(raw, ops, False)[1]


def test_reading_headers_sees_the_edits_then_works_on_the_list() -> None:
    raw = head([(b"apikey", b"k1"), (b"Accept", b"*/*")])
    ops = [("remove", (b"apikey",)), ("add", (b"X-Request-Id", b"r1")), ("list",),
           ("add", (b"X-B", b"2")), ("find", b"x-b")]
    results, up = _context_view_check(raw, ops, True)
    assert results[2] == [(b"Host", b"api.example"), (b"Accept", b"*/*"), (b"X-Request-Id", b"r1")]
    assert results[4] == b"2"
    assert b"\r\nX-B: 2\r\n" in up and b"apikey" not in up


@pytest.mark.parametrize("lazy", [True, False])
def test_header_named_in_connection_is_not_seen_by_steps(lazy: bool) -> None:
    raw = (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\nX-Secret: s\r\n\r\n")
    results, up = _context_view_check(raw, [("find", b"x-secret")], lazy)
    assert results == [None] and b"x-secret: s" not in up.lower()


def test_a_request_id_is_made_when_first_asked_for_and_then_kept() -> None:
    """The server makes no id for a request nothing asks about (PERF); asked, it is the
    gateway's kind of id, the same on every read; one set by a plugin wins."""
    from types import SimpleNamespace

    from fastgw._core import RequestContext

    ctx = RequestContext("GET", "/a", b"", [], "127.0.0.1", "http", SimpleNamespace(param_names=()), (), None)
    first = ctx.request_id
    assert isinstance(first, str) and first and ctx.request_id == first
    assert ctx.error(404, "nothing") and first.encode() in bytes(ctx.answer_body)
    other = RequestContext("GET", "/a", b"", [], "127.0.0.1", "http", SimpleNamespace(param_names=()), (), None)
    assert other.request_id != first
    other.request_id = "from-a-plugin"
    assert other.request_id == "from-a-plugin"
    other.request_id = 7                    # whatever a plugin sets is kept as it was
    assert other.request_id == 7
