"""The header-list helpers plugins use (fastgw._core.find_header / pop_header /
remove_headers) against plain-Python oracles, on random header lists."""

from __future__ import annotations

from fastgw._core import build_answer, find_header, pop_header, remove_headers
from hypothesis import given, settings
from hypothesis import strategies as st

NAMES = st.sampled_from([b"Host", b"host", b"X-Key", b"x-key", b"X-KEY", b"Accept", b"x-k", b"X-Keys"])
HEADERS = st.lists(st.tuples(NAMES, st.binary(max_size=8)), max_size=12)
LNAMES = st.sampled_from([b"host", b"x-key", b"accept", b"x-k", b"absent"])


@settings(max_examples=300, deadline=None)
@given(headers=HEADERS, lname=LNAMES)
def test_find_and_pop_header(headers: list[tuple[bytes, bytes]], lname: bytes) -> None:
    matches = [v for k, v in headers if k.lower() == lname]
    assert find_header(list(headers), lname) == (matches[0] if matches else None)
    work = list(headers)
    same = work
    assert pop_header(work, lname) == (matches[0] if matches else None)
    assert work is same                                   # edited in place
    assert work == [(k, v) for k, v in headers if k.lower() != lname]


@settings(max_examples=300, deadline=None)
@given(headers=HEADERS, lnames=st.lists(LNAMES, max_size=3))
def test_remove_headers(headers: list[tuple[bytes, bytes]], lnames: list[bytes]) -> None:
    work = list(headers)
    kept = [(k, v) for k, v in headers if k.lower() not in lnames]
    assert remove_headers(work, tuple(lnames)) == len(headers) - len(kept)
    assert work == kept


def test_forward_headers_reuses_equal_pairs_of_the_previous_request_on_a_head() -> None:
    """A connection scans each request into the same RequestHead; a (name, value) pair
    equal to the previous request's at the same place is the same immutable tuple, any
    other pair is new, and each request gets its own list."""
    from fastgw._core import parse_request_head

    first = parse_request_head(b"GET /a HTTP/1.1\r\nHost: h\r\nUser-Agent: ua/1\r\nApikey: k1\r\nConnection: keep-alive\r\n\r\n")
    one = first.forward_headers()
    assert one == [(b"Host", b"h"), (b"User-Agent", b"ua/1"), (b"Apikey", b"k1")]
    one.append((b"X-Added", b"by a plugin"))                 # plugins edit their list
    again = parse_request_head(b"GET /b HTTP/1.1\r\nHost: h\r\nUser-Agent: ua/2\r\nApikey: k1\r\n\r\n", first)
    assert again is first
    two = again.forward_headers()
    assert two == [(b"Host", b"h"), (b"User-Agent", b"ua/2"), (b"Apikey", b"k1")]
    assert two is not one and two[0] is one[0] and two[2] is one[2]
    assert two[1] is not one[1]
    # A shorter or reordered head never takes a pair from the wrong place.
    third = parse_request_head(b"GET /c HTTP/1.1\r\nApikey: k1\r\nHost: h\r\n\r\n", first).forward_headers()
    assert third == [(b"Apikey", b"k1"), (b"Host", b"h")]
    assert third[0] is not two[2]


def field_ok(b: bytes) -> bool:
    """Bytes a field value may hold (RFC 9110 5.5): visible ASCII, space, tab, obs-text."""
    return all(c == 9 or 32 <= c < 127 or c >= 128 for c in b)


@settings(max_examples=400, deadline=None)
@given(fields=st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=20)), max_size=4))
def test_a_field_goes_out_whole_or_not_at_all(fields: list[tuple[bytes, bytes]]) -> None:
    """Every head the gateway writes takes plugin/config fields through one writer: a
    field whose name or value holds CR, LF, NUL or another control byte (not a tab) is
    dropped, any other goes out as ``name: value``, so no value can split the head."""
    head = build_answer(200, list(fields), b"", 0, False).split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")[1:]
    want = [n + b": " + v for n, v in fields if field_ok(n) and field_ok(v)]
    assert lines == want + [b"Content-Length: 0"]


def test_a_field_without_a_value_is_dropped() -> None:
    """A plugin's pair with None for a name or value is left out (it cannot be written),
    and the fields around it go out."""
    head = build_answer(200, [(b"X-A", b"1"), (b"X-B", None), (None, b"v"), (b"X-C", b"3")], b"", 0, False)
    assert head.split(b"\r\n")[1:4] == [b"X-A: 1", b"X-C: 3", b"Content-Length: 0"]
