"""The header-list helpers plugins use (fastgw._core.find_header / pop_header /
remove_headers) against plain-Python oracles, on random header lists."""

from __future__ import annotations

from fastgw._core import find_header, pop_header, remove_headers
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
