"""The one-pass Cython head scanner against httptools (llhttp), the reference parser.

fastgw parses request heads with its own scanner (``fastgw._core``), so httptools is kept
as the oracle: on any input llhttp refuses, the scanner refuses too (it is deliberately
stricter in places: any Transfer-Encoding but ``chunked``, obs-fold, a missing Host), and
on well-formed requests both read the same method, target, headers and body framing.
"""

from __future__ import annotations

import re
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw import _core


class _Collect:
    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.headers_done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_message_complete(self) -> None:
        self.complete = True


def llhttp(data: bytes) -> tuple[bool, Any]:
    """(accepted, (parser, collected)) for the head in ``data`` per llhttp."""
    c = _Collect()
    p = httptools.HttpRequestParser(c)
    try:
        p.feed_data(data)
    except httptools.HttpParserUpgrade:
        return True, (p, c)
    except httptools.HttpParserError:
        return False, None
    return c.headers_done, (p, c)


def _ows_stripped(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    # RFC 9110 5.5: a field value excludes leading and trailing whitespace; llhttp keeps
    # the trailing part, fastgw drops it. Same value, so compare without it.
    return [(k, v.strip(b" \t")) for k, v in headers]


def ours(data: bytes) -> tuple[bool, Any]:
    try:
        return True, _core.parse_request_head(data)
    except _core.HttpError:
        return False, None


# ------------------------------------------------------------------------------ corpus

VALID = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a/b?x=1&y=%2F HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"DELETE /x HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Spaces:   v  \r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://h.example/p?q HTTP/1.1\r\nHost: other\r\n\r\n",
]

# Every one of these is refused by both (the request-smuggling and malformed classics).
INVALID_BOTH = [
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHo\x00st: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: -1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 1x\r\nHost: a\r\n\r\n",
    b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\n: empty-name\r\n\r\n",
    b"GET / XTTP/1.1\r\nHost: a\r\n\r\n",
]

# Refused by fastgw on purpose although llhttp (in its default mode) lets them through.
STRICTER = [
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",   # only 'chunked'
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",                                                            # no Host
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",                                      # two Hosts
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\n",                          # CL list
    b"GET /#frag HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r x: y\r\n\r\n",                                 # lone CR
    # a Host that is no uri-host [":" port] (RFC 9112 3.2: 400)
    b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a:x\r\n\r\n", b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a%g0\r\n\r\n", b"GET / HTTP/1.1\r\nHost: \xc3\xa9\r\n\r\n",
]


@pytest.mark.parametrize("data", VALID)
def test_valid_requests_read_the_same(data: bytes) -> None:
    ok, ref = llhttp(data)
    mine_ok, head = ours(data)
    assert ok and mine_ok
    parser, collected = ref
    assert head.method.decode() == parser.get_method().decode()
    assert head.target == collected.url
    assert head.headers() == _ows_stripped(collected.headers)
    version = parser.get_http_version()
    assert head.version == (11 if version == "1.1" else 10)
    assert head.keep_alive == parser.should_keep_alive()


@pytest.mark.parametrize("data", INVALID_BOTH)
def test_malformed_is_refused_by_both(data: bytes) -> None:
    assert not llhttp(data)[0]
    assert not ours(data)[0]


@pytest.mark.parametrize("data", STRICTER)
def test_stricter_than_llhttp_on_purpose(data: bytes) -> None:
    assert not ours(data)[0]


# ------------------------------------------------------------------------------ properties

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~",
                min_size=1, max_size=12)
VALUE = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
PATH = st.text(alphabet="abcxyz0123/-._~%?=&", min_size=0, max_size=20).map(lambda s: "/" + s)
NOISE = st.sampled_from([b"\r", b"\n", b"\x00", b" ", b"\t", b":", b"\x7f", b"\xff", b"\r\n", b"\r\n\r\n",
                         b"\r\n ", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 3\r\n",
                         b"Content-Length: 3\r\nContent-Length: 4\r\n", b"Content-Length: +3\r\n"])


@st.composite
def requests(draw: Any) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"]))
    version = draw(st.sampled_from(["1.1", "1.0"]))
    headers = draw(st.lists(st.tuples(TOKEN, VALUE), max_size=6))
    lines = [f"{method} {draw(PATH)} HTTP/{version}", "Host: example.com"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@settings(max_examples=400, deadline=None)
@given(requests())
def test_well_formed_requests_agree(data: bytes) -> None:
    ok, ref = llhttp(data)
    mine_ok, head = ours(data)
    if not ok:
        assert not mine_ok, data
        return
    if mine_ok:
        parser, collected = ref
        assert head.target == collected.url
        assert head.headers() == _ows_stripped(collected.headers)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.lists(st.tuples(st.integers(min_value=0, max_value=200), NOISE), min_size=1, max_size=3))
def test_whatever_llhttp_refuses_fastgw_refuses(data: bytes, edits: list[tuple[int, bytes]]) -> None:
    # Splice noise into a valid head (inside the head, before its final CRLFCRLF).
    head = data[:-4]
    for pos, noise in edits:
        pos = min(pos, len(head))
        head = head[:pos] + noise + head[pos:]
    mutated = head + b"\r\n\r\n"
    # Both judge the first head only (bytes after it would be the next pipelined request).
    mutated = mutated[:mutated.index(b"\r\n\r\n") + 4]
    ref_ok, _ = llhttp(mutated)
    mine_ok, _ = ours(mutated)
    if not ref_ok:
        assert not mine_ok, mutated


# RFC 9110 7.2 / RFC 3986 3.2.2: Host = uri-host [":" port]; an IP literal in brackets, or
# a reg-name (unreserved, sub-delims, %XX); port = *DIGIT. The empty value is valid.
_REG = rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})"
HOST_GRAMMAR = re.compile(rb"(?:\[(?:" + _REG + rb"|:)+\]|" + _REG + rb"*)(?::[0-9]*)?\Z")
HOST_TEXT = st.text(alphabet="aZ09-._~!$&'()*+,;=:%[]@/?#\\\"<>{}|^`\u00e9fF", max_size=12)


@settings(max_examples=600, deadline=None)
@given(HOST_TEXT)
def test_host_values_follow_the_uri_host_grammar(text: str) -> None:
    """The scanner's Host check against the RFC grammar as a regex, on values built from
    the bytes that matter (delimiters, brackets, '%' with and without hex)."""
    value = text.encode("utf-8")
    ok, head = ours(b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n")
    assert ok == bool(HOST_GRAMMAR.match(value)), value
    if ok:
        end = value.index(b"]") + 1 if value.startswith(b"[") else len(value.split(b":")[0])
        assert head.host == value[:end].lower() and head.host_raw == value


def test_lower_casing_a_host_leaves_shared_bytes_objects_alone() -> None:
    """A one-letter upper-case Host was lower-cased inside CPython's shared one-byte bytes
    object: after "Host: F" every one-byte b"F" in the process read b"f" (in the server:
    a one-letter path variable or header value of any later request)."""
    for letter in range(65, 91):
        for value in (bytes([letter]), bytes([letter]) + b":80"):
            head = _core.parse_request_head(b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n")
            assert head.host == bytes([letter + 32])
    assert [bytes([c])[0] for c in range(256)] == list(range(256))
    assert _core.normalize_path(b"/a%2fb") == b"/a%2Fb"


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_known_field_names_are_recognised_in_any_case_and_only_them(data) -> None:
    """The scanner compares names 8 bytes at a time with the case folded by OR 0x20: every
    spelling of a framing name is recognised, and a name one byte away (e.g. "_" for "-",
    which OR 0x20 does not fold) is not."""
    from fastgw._core import parse_request_head

    def spell(name: str) -> str:
        flips = data.draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
        return "".join(c.upper() if f else c for c, f in zip(name, flips, strict=True))

    cl, host, conn = spell("content-length"), spell("host"), spell("connection")
    head = parse_request_head(f"POST / HTTP/1.1\r\n{host}: a.example\r\n{cl}: 3\r\n{conn}: close\r\n\r\n".encode())
    assert head.content_length == 3 and head.host == b"a.example" and not head.keep_alive
    te = spell("transfer-encoding")
    assert parse_request_head(f"POST / HTTP/1.1\r\nHost: h\r\n{te}: chunked\r\n\r\n".encode()).chunked
    i = data.draw(st.integers(min_value=0, max_value=len("content-length") - 1))
    near = list("content-length")
    near[i] = {"-": "_", "c": "k"}.get(near[i], "x" if near[i] != "x" else "y")
    other = parse_request_head(f"GET / HTTP/1.1\r\nHost: h\r\n{''.join(near)}: 3\r\n\r\n".encode())
    assert other.content_length == -1


def _value_byte_ok(b: int) -> bool:
    # RFC 9110 5.5: field-vchar (VCHAR / obs-text), SP and HTAB
    return b == 9 or 32 <= b < 127 or b >= 128


@pytest.mark.parametrize("pos", [0, 1, 7, 8, 9, 15, 16, 23, 30])
def test_every_value_byte_at_every_word_position(pos: int) -> None:
    # The scanners read values eight bytes at a time: a forbidden byte must be caught in
    # any lane of a word, in the tail after the last whole word, and next to allowed
    # high (obs-text) bytes, in requests and in responses alike.
    base = bytearray(b"abcdefgh\x80ijklmnop qrs\xfftuvwxyz0123")
    for b in range(256):
        value = bytearray(base)
        value[pos] = b
        req = b"GET / HTTP/1.1\r\nHost: h\r\nX-V: " + bytes(value) + b"\r\nA: b\r\n\r\n"
        resp = b"HTTP/1.1 200 OK\r\nX-V: " + bytes(value) + b"\r\nContent-Length: 0\r\n\r\n"
        if _value_byte_ok(b):
            want = (b"X-V", bytes(value).strip(b" \t"))     # leading/trailing SP, HTAB dropped
            assert _core.parse_request_head(req).headers()[1] == want, b
            assert _core.parse_response_head(resp).forward_headers()[0] == want, b
        else:
            with pytest.raises(_core.HttpError):
                _core.parse_request_head(req)
            with pytest.raises(_core.HttpError):
                _core.parse_response_head(resp)


def test_a_head_scanned_again_keeps_equal_target_and_host_objects() -> None:
    """PERF: a connection's head is scanned into again; a target or Host equal to the last
    one's is that same bytes object (no new object), any other is read afresh."""
    from fastgw._core import parse_request_head

    h = parse_request_head(b"GET /a?x=1 HTTP/1.1\r\nHost: H.example:80\r\n\r\n")
    target, host, key = h.target, h.host_raw, h.host
    again = parse_request_head(b"GET /a?x=1 HTTP/1.1\r\nHost: H.example:80\r\nX: y\r\n\r\n", h)
    assert again.target is target and again.host_raw is host and again.host is key == b"h.example"
    other = parse_request_head(b"GET /b?x=1 HTTP/1.1\r\nHost: h.example:81\r\n\r\n", h)
    assert (other.target, other.path, other.query) == (b"/b?x=1", b"/b", b"x=1")
    assert (other.host_raw, other.host) == (b"h.example:81", b"h.example")
    # The key kept is only ever that of a Host found valid: an invalid one is refused on
    # the same head, again and again, and a valid one after it is keyed afresh.
    for _ in range(2):
        with pytest.raises(_core.HttpError):
            parse_request_head(b"GET / HTTP/1.1\r\nHost: a@b:81\r\n\r\n", h)
    assert parse_request_head(b"GET / HTTP/1.1\r\nHost: B:81\r\n\r\n", h).host == b"b"
    with pytest.raises(_core.HttpError):   # host_raw set, then a later check refuses the head
        parse_request_head(b"GET / HTTP/1.1\r\nHost: C\r\nHost: C\r\n\r\n", h)
    assert parse_request_head(b"GET / HTTP/1.1\r\nHost: C\r\n\r\n", h).host == b"c"


@pytest.mark.parametrize(("upgrade", "honoured"), [
    (b"websocket", True), (b"WebSocket", True), (b"h2c", False), (b"TLS/1.2", False),
    (b"websocket, h2c", False), (b"h2c, websocket", False),
])
def test_only_websocket_upgrades_are_honoured(upgrade: bytes, honoured: bool) -> None:
    """SECURITY: an h2c (or any other) upgrade is not tunnelled (h2c smuggling would reach the
    backend with requests no route plugin saw): the request goes on as a plain one."""
    head = _core.parse_request_head(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                                    b"Upgrade: " + upgrade + b"\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
    assert head.upgrade is honoured
    upstream = _core.upstream_head_for(head)
    assert (b"Upgrade: " + upgrade in upstream) is honoured
    assert b"HTTP2-Settings" not in upstream            # named in Connection: hop-by-hop
