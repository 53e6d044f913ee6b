# part of fastgw/_core.pyx (see its docstring)
#
# HTTP/1.1 on the hot path: one-pass head scanners (request and response), chunked
# framing, the head builders, and the client/upstream connection state machines.
#
# httptools (llhttp) is the reference parser: tests/test_http_scan.py asserts that the
# scanner here gives llhttp's verdict on malformed and ambiguous input.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdint cimport uint64_t
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.list cimport PyList_AsTuple
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy

import asyncio as _asyncio
import os as _os
import socket as _socket
import ssl as _ssl

import orjson as _orjson

cdef object _json_dumps = _orjson.dumps

DEF MAX_HEADERS = 128

# Header classes (what the proxy does with a header).
DEF H_KEEP = 0        # forwarded as is
DEF H_DROP = 1        # hop-by-hop, or named in Connection: never forwarded
DEF H_HOST = 2
DEF H_CL = 3
DEF H_TE = 4
DEF H_CONNECTION = 5
DEF H_XFF = 6
DEF H_XFP = 7         # X-Forwarded-Proto / -Host / -Port: replaced by the gateway's own
DEF H_VIA = 8
DEF H_EXPECT = 9
DEF H_UPGRADE = 10
DEF H_CONSUMER = 11   # X-Consumer-* & co: only the gateway may set these (SECURITY): a client's
                      # copies are dropped; the pipeline's (after authentication) are forwarded

# Scan results.
DEF SCAN_MORE = 0
DEF SCAN_OK = 1

# Token characters (RFC 9110 5.6.2).
cdef unsigned char TCHAR[256]
cdef int _i
for _i in range(256):
    TCHAR[_i] = 0
cdef bytes _TCHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
for _i in range(len(_TCHARS)):
    TCHAR[<unsigned char>_TCHARS[_i]] = 1

# Bytes allowed in a field value (RFC 9110 5.5: VCHAR, SP, HTAB, obs-text). PERF: a table
# lookup per byte in the scanners' value loops (was a call and two compares).
cdef unsigned char VALUE_OK[256]
for _i in range(256):
    VALUE_OK[_i] = 1 if _i == 9 or (32 <= _i < 127) or _i >= 128 else 0


cdef extern from *:
    """
    #define FG_ONES  0x0101010101010101ULL
    #define FG_HIGHS 0x8080808080808080ULL
    #define FG_LITTLE_ENDIAN (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
    """
    const uint64_t ONES "FG_ONES"
    const uint64_t HIGHS "FG_HIGHS"
    int _ctz64 "__builtin_ctzll" (uint64_t) nogil
    bint LITTLE_ENDIAN "FG_LITTLE_ENDIAN"


cdef inline Py_ssize_t _value_end(const char* p, Py_ssize_t i, Py_ssize_t end) noexcept nogil:
    """The first index from ``i`` whose byte is not allowed in a field value (VALUE_OK:
    the CR that ends a valid value). PERF: eight bytes per step; a step's mask marks its
    bytes below 0x20 or equal to 0x7F, and its lowest mark is exact (a borrow only runs
    upward, and bytes >= 0x80 are never marked), so the first such byte is found without
    a byte loop: a tab is allowed and the scan goes on after it, anything else ends it."""
    cdef uint64_t x, y, m
    while LITTLE_ENDIAN and i + 8 <= end:       # (the lowest mark is the first byte)
        memcpy(&x, p + i, 8)
        y = x ^ (ONES * 0x7F)
        m = ((x - ONES * 0x20) & ~x & HIGHS) | ((y - ONES) & ~y & HIGHS)
        if m == 0:
            i += 8
            continue
        i += _ctz64(m) >> 3
        if p[i] != 9:
            return i
        i += 1
    while VALUE_OK[<unsigned char>p[i]]:
        i += 1
    return i


cdef inline unsigned char _lower(unsigned char c) noexcept nogil:
    if c >= 65 and c <= 90:
        return c + 32
    return c


cdef inline bint _ieq(const char* p, Py_ssize_t n, const char* lit, Py_ssize_t ln) noexcept nogil:
    """Case-insensitive compare of p[:n] with a lower-case literal."""
    cdef Py_ssize_t i
    if n != ln:
        return False
    for i in range(n):
        if _lower(<unsigned char>p[i]) != <unsigned char>lit[i]:
            return False
    return True


cdef inline uint64_t _ld8(const char* p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef inline bint _name_eq(const char* p, Py_ssize_t n, const char* lit) noexcept nogil:
    """A scanned field name p[:n] equals ``lit`` (n bytes of [a-z0-9-]) ignoring case.

    PERF: 8 bytes per compare. OR-ing 0x20 folds A-Z onto a-z and maps no other token
    character onto a byte of [a-z0-9-] (only CR and control bytes would, and a name has
    none), so this is exact for names the scanner accepted."""
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        if (_ld8(p + i) | <uint64_t>0x2020202020202020) != _ld8(lit + i):
            return False
        i += 8
    while i < n:
        if (<unsigned char>p[i] | 0x20) != <unsigned char>lit[i]:
            return False
        i += 1
    return True


cdef inline int _classify(const char* p, Py_ssize_t n) noexcept nogil:
    """The class of any header name (e.g. one a plugin made). A name holding a CR is no
    known name (_name_eq would read CR as "-"); the scanner refuses such names, and the
    head builders drop them."""
    if memchr(p, 13, n) != NULL:
        return H_KEEP
    return _classify_name(p, n)


cdef int _classify_name(const char* p, Py_ssize_t n) noexcept nogil:
    """The class of a field name the scanner accepted (token characters only).
    PERF: dispatch on length first; most headers fall through after one compare."""
    if n == 4:
        if _name_eq(p, n, b"host"):
            return H_HOST
    elif n == 2:
        if _name_eq(p, n, b"te"):
            return H_DROP
    elif n == 3:
        if _name_eq(p, n, b"via"):
            return H_VIA
    elif n == 6:
        if _name_eq(p, n, b"expect"):
            return H_EXPECT
    elif n == 7:
        if _name_eq(p, n, b"trailer"):
            return H_DROP
        if _name_eq(p, n, b"upgrade"):
            return H_UPGRADE
    elif n == 10:
        if _name_eq(p, n, b"connection"):
            return H_CONNECTION
        if _name_eq(p, n, b"keep-alive"):
            return H_DROP
    elif n == 13:
        if _name_eq(p, n, b"x-consumer-id"):
            return H_CONSUMER
    elif n == 14:
        if _name_eq(p, n, b"content-length"):
            return H_CL
    elif n == 15:
        if _name_eq(p, n, b"x-forwarded-for"):
            return H_XFF
        if _name_eq(p, n, b"x-consumer-name"):
            return H_CONSUMER
    elif n == 16:
        if _name_eq(p, n, b"x-forwarded-host"):
            return H_XFP
        if _name_eq(p, n, b"x-forwarded-port"):
            return H_XFP
        if _name_eq(p, n, b"proxy-connection"):
            return H_DROP
    elif n == 17:
        if _name_eq(p, n, b"transfer-encoding"):
            return H_TE
        if _name_eq(p, n, b"x-forwarded-proto"):
            return H_XFP
        if _name_eq(p, n, b"x-consumer-groups"):
            return H_CONSUMER
    elif n == 19:
        if _name_eq(p, n, b"x-consumer-username"):
            return H_CONSUMER
    elif n == 20:
        if _name_eq(p, n, b"x-consumer-custom-id") or _name_eq(p, n, b"x-anonymous-consumer"):
            return H_CONSUMER
    elif n == 23:
        if _name_eq(p, n, b"x-credential-identifier"):
            return H_CONSUMER
    return H_KEEP


class HttpError(Exception):
    """A request the gateway refuses: ``status`` (400, 431, 501, 505) and a message."""

    def __init__(self, int status, str message):
        Exception.__init__(self, message)
        self.status = status
        self.message = message


cdef inline bint _bytes_is(bytes b, const char* s, Py_ssize_t n) noexcept:
    """``b`` holds exactly the n bytes at s."""
    return PyBytes_GET_SIZE(b) == n and memcmp(PyBytes_AS_STRING(b), s, n) == 0


cdef inline bytes _bslice(bytes b, Py_ssize_t s, Py_ssize_t e):
    """``b[s:e]`` for 0 <= s, clamped as Python clamps. PERF: Cython slices bytes through
    PySequence_GetSlice (a slice object and a generic call, ~180 instructions); this is
    one PyBytes_FromStringAndSize, and ``b`` itself when the slice is all of it."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    if e > n:
        e = n
    if s >= e:
        return b""
    if s == 0 and e == n:
        return b
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(b) + s, e - s)


cdef bytes _chunk(bytes data):
    """``data`` framed as one chunk (RFC 9112 7.1); nothing for no data (an empty chunk
    would end the body)."""
    if PyBytes_GET_SIZE(data) == 0:
        return b""
    return b"%x\r\n" % PyBytes_GET_SIZE(data) + data + b"\r\n"


cdef inline bytes _bslice_same(bytes old, bytes b, Py_ssize_t s, Py_ssize_t e):
    """``b[s:e]``, or ``old`` when it holds those very bytes. PERF: a keep-alive client sends
    the same target and Host request after request (and a connection's head is scanned
    into again): a compare instead of a new object and its free."""
    if old is not None and e <= PyBytes_GET_SIZE(b) and _bytes_is(old, PyBytes_AS_STRING(b) + s, e - s):
        return old
    return _bslice(b, s, e)


# PERF: deliberately not @cython.final. Final, its small ``inline`` methods are inlined at
# every call site, and the head builders got slower: 2026-11-27, plain 8 691 -> 8 846 and
# gateway 19 040 -> 19 386 instructions per request (bench/instructions.py), a browser-like
# request head rewritten in 202-209 -> 231-263 ns and a response head in 57-58 -> 61-77 ns
# (bench/micro.py). Through the vtable, each add is one compact out-of-line body.
cdef class _Buf:
    """A growable C buffer; one per process is reused for every head (PERF: no malloc per request)."""
    cdef char* p
    cdef Py_ssize_t n
    cdef Py_ssize_t cap

    def __cinit__(self):
        self.cap = 4096
        self.p = <char*>malloc(self.cap)
        self.n = 0
        if self.p == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.p != NULL:
            free(self.p)

    cdef inline void reset(self) noexcept:
        self.n = 0

    cdef int _grow(self, Py_ssize_t need) except -1:
        cdef Py_ssize_t cap = self.cap
        cdef char* q
        while cap < self.n + need:
            cap *= 2
        q = <char*>realloc(self.p, cap)
        if q == NULL:
            raise MemoryError()
        self.p = q
        self.cap = cap
        return 0

    cdef inline int add(self, const char* s, Py_ssize_t k) except -1:
        if self.n + k > self.cap:
            self._grow(k)
        memcpy(self.p + self.n, s, k)
        self.n += k
        return 0

    cdef inline int reserve(self, Py_ssize_t k) except -1:
        """Room for ``k`` more bytes, for the unchecked ``put``s that follow."""
        if self.n + k > self.cap:
            self._grow(k)
        return 0

    cdef inline void put(self, const char* s, Py_ssize_t k) noexcept:
        """Append without a capacity check: only after ``reserve`` covered it."""
        memcpy(self.p + self.n, s, k)
        self.n += k

    cdef inline void put_int(self, long long v) noexcept:
        """``add_int`` without a capacity check (needs 20 bytes reserved)."""
        cdef char tmp[24]
        cdef int i = 23
        if v == 0:
            self.p[self.n] = 48
            self.n += 1
            return
        while v > 0 and i > 0:
            tmp[i] = <char>(48 + v % 10)
            v //= 10
            i -= 1
        self.put(tmp + i + 1, 23 - i)

    cdef inline int add_b(self, bytes b) except -1:
        return self.add(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))

    cdef int add_int(self, long long v) except -1:
        self.reserve(20)
        self.put_int(v)
        return 0

    cdef int add_field(self, bytes name, bytes value) except -1:
        """Append ``name: value\r\n``, or nothing when the name or the value holds a byte
        no field value may hold (CR, LF, NUL, another control; a tab is allowed: RFC 9110
        5.5). SECURITY: a plugin's or a config's value can never split the head or smuggle
        a header line. PERF: one word-wise scan each and one capacity check (was two
        memchr each and four appends)."""
        cdef const char* np
        cdef const char* vp
        cdef Py_ssize_t nn, vn
        if name is None or value is None:    # (a plugin's pair with no value: dropped too)
            return 0
        np = PyBytes_AS_STRING(name)
        vp = PyBytes_AS_STRING(value)
        nn = PyBytes_GET_SIZE(name)
        vn = PyBytes_GET_SIZE(value)
        # (a bytes object's buffer ends with a NUL, which stops _value_end's byte loop)
        if _value_end(np, 0, nn) != nn or _value_end(vp, 0, vn) != vn:
            return 0
        self.reserve(nn + vn + 4)
        self.put(np, nn)
        self.put(b": ", 2)
        self.put(vp, vn)
        self.put(b"\r\n", 2)
        return 0

    cdef inline bytes take(self):
        return PyBytes_FromStringAndSize(self.p, self.n)


cdef _Buf _buf = _Buf()


# ---------------------------------------------------------------------------------------
# Head scanning
# ---------------------------------------------------------------------------------------

cdef Py_ssize_t find_head_end(bytes data, Py_ssize_t start, Py_ssize_t* bad_lf) except -2:
    """Index just past the CRLFCRLF that ends a head, or -1; a bare LF sets bad_lf to its index.

    ``start`` resumes an earlier partial scan. Leading empty lines (RFC 9112 2.2) are not
    allowed here: the caller strips them before the first scan.
    """
    cdef const char* p = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef const char* q
    cdef Py_ssize_t i = start
    while i < n:
        q = <const char*>memchr(p + i, 10, n - i)
        if q == NULL:
            return -1
        i = q - p
        if i == 0 or p[i - 1] != 13:
            bad_lf[0] = i
            return -1
        # A CRLF at i-1; the head ends if the previous line was empty.
        if i >= 3 and p[i - 2] == 10 and p[i - 3] == 13:
            return i + 1
        i += 1
    return -1


cdef inline bint _listed_cls(unsigned char c) noexcept:
    """Whether a request header of class ``c`` is in a plugin's view of the headers: the
    end-to-end ones, and Host, X-Forwarded-For and Via for reading (forward_headers and
    the lazy view on the scan must agree on this)."""
    return c == H_KEEP or c == H_HOST or c == H_XFF or c == H_VIA


@cython.final  # PERF: its methods are called directly (no vtable)
cdef class RequestHead:
    """One parsed request head: offsets into ``buf`` and the framing facts the proxy needs."""
    cdef readonly bytes buf
    cdef readonly bytes method
    cdef readonly bytes target
    cdef readonly bytes path        # the raw path part of the target (before '?')
    cdef readonly bytes query       # raw query bytes after '?', b'' when none
    cdef readonly bint has_query
    cdef readonly int version       # 10 or 11
    cdef readonly long long content_length   # -1 when absent
    cdef readonly bint chunked
    cdef readonly bint keep_alive
    cdef readonly bint expect_continue
    cdef readonly bint upgrade      # Upgrade + Connection: upgrade (a WebSocket handshake)
    cdef int upgrade_idx
    cdef readonly bytes host        # lower-cased, without port ('' when absent)
    cdef readonly bytes host_raw    # the Host value as sent (with port)
    cdef readonly Py_ssize_t head_len   # the head is buf[:head_len]; buf may hold body bytes after it
    cdef int n
    cdef int name_s[MAX_HEADERS]
    cdef int name_e[MAX_HEADERS]
    cdef int val_s[MAX_HEADERS]
    cdef int val_e[MAX_HEADERS]
    cdef unsigned char cls[MAX_HEADERS]
    cdef tuple prev_pairs           # forward_headers' pairs of the request before (see there)
    # PERF: the last Host value found valid (the object) and its key. The scanner hands
    # back the previous request's Host object when the bytes are equal (_bslice_same), so
    # a keep-alive client's Host is checked and keyed once, not per request.
    cdef bytes hk_src
    cdef bytes hk

    def header_count(self):
        return self.n

    cpdef list headers(self):
        """All headers as (name, value) byte pairs, in order (for tests and tools)."""
        cdef int i
        cdef const char* p = PyBytes_AS_STRING(self.buf)
        return [(p[self.name_s[i]:self.name_e[i]], p[self.val_s[i]:self.val_e[i]]) for i in range(self.n)]

    cpdef list forward_headers(self):
        """The end-to-end headers a plugin may read and change (hop-by-hop and
        gateway-owned ones removed; Host, X-Forwarded-For and Via kept for reading)."""
        # PERF: a keep-alive client sends the same headers request after request (User-Agent,
        # Accept, an API key, ...). A (name, value) pair equal to the one at the same place
        # in the previous request on this head is that same immutable tuple again: a compare
        # instead of two bytes objects and a tuple made and freed per header.
        cdef int i
        cdef Py_ssize_t j = 0, nprev = 0
        cdef const char* p = PyBytes_AS_STRING(self.buf)
        cdef list out = []
        cdef tuple prev = self.prev_pairs
        cdef tuple old
        cdef object pair
        if prev is not None:
            nprev = PyTuple_GET_SIZE(prev)
        for i in range(self.n):
            if _listed_cls(self.cls[i]):
                pair = None
                if j < nprev:
                    old = <tuple>PyTuple_GET_ITEM(prev, j)
                    if _bytes_is(<bytes>PyTuple_GET_ITEM(old, 0), p + self.name_s[i], self.name_e[i] - self.name_s[i]) \
                            and _bytes_is(<bytes>PyTuple_GET_ITEM(old, 1), p + self.val_s[i], self.val_e[i] - self.val_s[i]):
                        pair = old
                if pair is None:
                    pair = (p[self.name_s[i]:self.name_e[i]], p[self.val_s[i]:self.val_e[i]])
                out.append(pair)
                j += 1
        self.prev_pairs = PyList_AsTuple(out)
        return out

    # The plugin view of the headers straight on the scan (a RequestContext in lazy mode,
    # see _context.pxi): the headers forward_headers() would list, found and removed in
    # place. A removed header is marked H_DROP, so neither build_upstream_head nor a later
    # forward_headers() sees it. PERF: no list of pairs for a chain of built-in steps.
    cdef inline bint _listed_named(self, int i, const char* p, bytes lname):
        return _listed_cls(self.cls[i]) and _ieq(
            p + self.name_s[i], self.name_e[i] - self.name_s[i],
            PyBytes_AS_STRING(lname), PyBytes_GET_SIZE(lname))

    cdef bytes view_find(self, bytes lname):
        """First value of listed header ``lname`` (lower-case), or None."""
        cdef const char* p = PyBytes_AS_STRING(self.buf)
        cdef int i
        for i in range(self.n):
            if self._listed_named(i, p, lname):
                return _bslice(self.buf, self.val_s[i], self.val_e[i])
        return None

    cdef tuple view_find_all(self, bytes lname):
        """Every value of listed header ``lname`` (lower-case), in order."""
        cdef const char* p = PyBytes_AS_STRING(self.buf)
        cdef list out = None
        cdef int i
        for i in range(self.n):
            if self._listed_named(i, p, lname):
                if out is None:
                    out = []
                out.append(_bslice(self.buf, self.val_s[i], self.val_e[i]))
        return () if out is None else PyList_AsTuple(out)

    cdef bytes view_pop(self, bytes lname):
        """Remove every listed ``lname`` header; the first value, or None."""
        cdef const char* p = PyBytes_AS_STRING(self.buf)
        cdef bytes first = None
        cdef int i
        for i in range(self.n):
            if self._listed_named(i, p, lname):
                if first is None:
                    first = _bslice(self.buf, self.val_s[i], self.val_e[i])
                self.cls[i] = H_DROP
        return first

    cdef int view_remove(self, tuple lnames):
        """Remove every listed header named in ``lnames``; how many."""
        cdef const char* p = PyBytes_AS_STRING(self.buf)
        cdef int i, removed = 0
        for i in range(self.n):
            for lname in lnames:
                if self._listed_named(i, p, <bytes>lname):
                    self.cls[i] = H_DROP
                    removed += 1
                    break
        return removed

    cpdef bytes get(self, bytes lname):
        """First value of a header by lower-case name, or None."""
        cdef int i
        cdef const char* p = PyBytes_AS_STRING(self.buf)
        cdef const char* ln = PyBytes_AS_STRING(lname)
        cdef Py_ssize_t k = PyBytes_GET_SIZE(lname)
        for i in range(self.n):
            if _ieq(p + self.name_s[i], self.name_e[i] - self.name_s[i], ln, k):
                return p[self.val_s[i]:self.val_e[i]]
        return None


cdef int _parse_cl(const char* p, int s, int e, long long* out) noexcept nogil:
    cdef long long v = 0
    cdef int i
    if e <= s or e - s > 18:
        return -1
    for i in range(s, e):
        if p[i] < 48 or p[i] > 57:
            return -1
        v = v * 10 + (p[i] - 48)
    out[0] = v
    return 0


cdef int _te_is_chunked(const char* p, int s, int e) noexcept nogil:
    """1 when the list value is exactly one 'chunked' token, 0 otherwise."""
    while s < e and (p[s] == 32 or p[s] == 9):
        s += 1
    while e > s and (p[e - 1] == 32 or p[e - 1] == 9):
        e -= 1
    return 1 if _ieq(p + s, e - s, b"chunked", 7) else 0


cdef bytes M_GET = b"GET"
cdef bytes M_POST = b"POST"
cdef bytes M_HEAD = b"HEAD"
cdef bytes M_PUT = b"PUT"
cdef bytes M_DELETE = b"DELETE"
cdef bytes M_PATCH = b"PATCH"
cdef bytes M_OPTIONS = b"OPTIONS"


cdef str S_GET = "GET"
cdef str S_POST = "POST"


cdef inline str method_str(bytes method):
    """The method as str (PERF: the two common ones are constants, not decoded per request)."""
    if method is M_GET:
        return S_GET
    if method is M_POST:
        return S_POST
    return method.decode("latin-1")


cdef inline bytes _method_bytes(bytes buf, const char* m, Py_ssize_t n):
    """PERF: the common methods are shared constants, not a new object per request."""
    if n == 3 and m[0] == 71 and m[1] == 69 and m[2] == 84:
        return M_GET
    if n == 4 and m[0] == 80 and m[1] == 79 and m[2] == 83 and m[3] == 84:
        return M_POST
    if n == 4 and m[0] == 72 and m[1] == 69 and m[2] == 65 and m[3] == 68:
        return M_HEAD
    if n == 3 and m[0] == 80 and m[1] == 85 and m[2] == 84:
        return M_PUT
    if n == 6 and memcmp(m, b"DELETE", 6) == 0:
        return M_DELETE
    if n == 5 and memcmp(m, b"PATCH", 5) == 0:
        return M_PATCH
    if n == 7 and memcmp(m, b"OPTIONS", 7) == 0:
        return M_OPTIONS
    return PyBytes_FromStringAndSize(m, n)


cdef int _conn_simple(const char* p, Py_ssize_t s, Py_ssize_t e) noexcept nogil:
    """1 for exactly 'close', 2 for exactly 'keep-alive' (case-insensitive), 0 otherwise."""
    if _ieq(p + s, e - s, b"close", 5):
        return 1
    if _ieq(p + s, e - s, b"keep-alive", 10):
        return 2
    return 0


cdef RequestHead scan_request(bytes buf, Py_ssize_t end, RequestHead h):
    """Parse the request head buf[:end] (end is just past CRLFCRLF). Raises HttpError.

    PERF: ``h`` is the connection's own head object, reused request after request (a
    fresh one is ~3 KB to allocate and zero); None makes a new one."""
    if h is None:
        h = RequestHead.__new__(RequestHead)
    cdef const char* p = PyBytes_AS_STRING(buf)
    cdef Py_ssize_t i = 0, s, e, ms, me, ts, te
    cdef unsigned char c
    cdef int n = 0, k, te_count = 0, host_count = 0, cls
    cdef long long cl = -1, v
    cdef bint have_cl = False, close = False, ka = False, conn_close = False, conn_ka = False
    cdef list tokens = None
    cdef bytes prev_host = h.host_raw
    h.buf = buf
    h.head_len = end
    h.content_length = -1
    h.host = b""
    h.host_raw = b""
    h.expect_continue = False
    h.upgrade = False
    h.upgrade_idx = -1
    h.has_query = False
    h.chunked = False
    h.n = 0
    # request-line: method SP target SP version CRLF
    ms = 0
    while i < end and TCHAR[<unsigned char>p[i]]:
        i += 1
    if i == ms or p[i] != 32:
        raise HttpError(400, "bad request line")
    me = i
    i += 1
    ts = i
    while i < end:
        c = <unsigned char>p[i]
        if c <= 32 or c == 127 or c >= 128:
            break
        i += 1
    te = i
    if te == ts or p[i] != 32:
        raise HttpError(400, "bad request target")
    i += 1
    if end - i < 10 or p[i] != 72 or p[i + 1] != 84 or p[i + 2] != 84 or p[i + 3] != 80 or p[i + 4] != 47:
        raise HttpError(400, "bad HTTP version")
    if not (p[i + 5] >= 48 and p[i + 5] <= 57 and p[i + 6] == 46 and p[i + 7] >= 48 and p[i + 7] <= 57):
        raise HttpError(400, "bad HTTP version")
    if p[i + 8] != 13 or p[i + 9] != 10:
        raise HttpError(400, "bad request line")
    if p[i + 5] == 49 and p[i + 7] == 49:
        h.version = 11
    elif p[i + 5] == 49 and p[i + 7] == 48:
        h.version = 10
    else:
        raise HttpError(505, "HTTP version not supported")
    i += 10
    h.method = _method_bytes(buf, p + ms, me - ms)
    h.target = _bslice_same(h.target, buf, ts, te)
    # header lines
    while True:
        if p[i] == 13:       # the empty line that ends the head
            if p[i + 1] != 10:
                raise HttpError(400, "bare CR in head")   # SECURITY: a lone CR never ends a head
            break
        if n >= MAX_HEADERS:
            raise HttpError(431, "too many header fields")
        s = i
        while TCHAR[<unsigned char>p[i]]:
            i += 1
        if i == s:
            if p[i] == 32 or p[i] == 9:
                raise HttpError(400, "obsolete line folding is not accepted")
            raise HttpError(400, "bad header name")
        if p[i] != 58:       # ':' right after the name (no space before the colon)
            raise HttpError(400, "bad header name")
        h.name_s[n] = s
        h.name_e[n] = i
        i += 1
        while p[i] == 32 or p[i] == 9:
            i += 1
        s = i
        i = _value_end(p, i, end)
        if p[i] != 13:
            raise HttpError(400, "bad character in header value")
        if p[i + 1] != 10:
            raise HttpError(400, "bad line ending")
        e = i
        while e > s and (p[e - 1] == 32 or p[e - 1] == 9):
            e -= 1
        h.val_s[n] = s
        h.val_e[n] = e
        i += 2
        cls = _classify_name(p + h.name_s[n], h.name_e[n] - h.name_s[n])
        h.cls[n] = cls
        if cls != H_KEEP:
            if cls == H_CL:
                if _parse_cl(p, s, e, &v) != 0:
                    raise HttpError(400, "bad Content-Length")
                if have_cl:
                    # SECURITY: a repeated Content-Length is refused even when the copies
                    # agree (as nginx and llhttp do): no proxy downstream can read it otherwise.
                    raise HttpError(400, "repeated Content-Length")
                have_cl = True
                cl = v
            elif cls == H_TE:
                te_count += 1
                if not _te_is_chunked(p, s, e):
                    raise HttpError(400, "unsupported Transfer-Encoding")
            elif cls == H_HOST:
                host_count += 1
                if host_count == 1:
                    h.host_raw = _bslice_same(prev_host, buf, s, e)
            elif cls == H_CONNECTION:
                k = _conn_simple(p, s, e)
                if k == 1:
                    conn_close = True
                elif k == 2:
                    conn_ka = True
                else:
                    tokens = _connection_tokens(_bslice(buf, s, e), tokens)
            elif cls == H_EXPECT:
                if _ieq(p + s, e - s, b"100-continue", 12):
                    h.expect_continue = True
                else:
                    raise HttpError(417, "unsupported Expect")
            elif cls == H_UPGRADE:
                h.cls[n] = H_DROP
                h.upgrade_idx = n
        n += 1
    h.n = n
    if te_count > 1:
        raise HttpError(400, "repeated Transfer-Encoding")
    if te_count and have_cl:
        raise HttpError(400, "both Content-Length and Transfer-Encoding")
    if te_count and h.version == 10:
        raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
    if host_count > 1:
        raise HttpError(400, "repeated Host")
    if host_count == 0 and h.version == 11:
        raise HttpError(400, "missing Host")
    h.chunked = te_count == 1
    h.content_length = cl
    close = conn_close
    ka = conn_ka
    if tokens is not None:
        close = close or b"close" in tokens
        ka = ka or b"keep-alive" in tokens
        # Headers named in Connection are hop-by-hop too (RFC 9110 7.6.1).
        for k in range(n):
            if h.cls[k] == H_KEEP and buf[h.name_s[k]:h.name_e[k]].lower() in tokens:
                h.cls[k] = H_DROP
    h.keep_alive = (not close) if h.version == 11 else ka
    # A protocol upgrade (RFC 9110 7.8) is honoured for HTTP/1.1 requests without a body,
    # to WebSocket only. SECURITY: any other (h2c above all) would turn the tunnel into a
    # channel for requests the route's plugins never see ("h2c smuggling"); such a request
    # goes on as a plain one, its Upgrade dropped as a hop-by-hop field.
    h.upgrade = (h.upgrade_idx >= 0 and tokens is not None and b"upgrade" in tokens
                 and h.version == 11 and cl <= 0 and te_count == 0
                 and _is_websocket(p, h.val_s[h.upgrade_idx], h.val_e[h.upgrade_idx]))
    _split_target(h)
    return h


cdef bint _is_websocket(const char* p, Py_ssize_t s, Py_ssize_t e) noexcept nogil:
    """The Upgrade value is the one token ``websocket`` (any case, RFC 6455 4.2.1)."""
    return _ieq(p + s, e - s, b"websocket", 9)


cdef list _connection_tokens(bytes value, list tokens):
    if tokens is None:
        tokens = []
    for t in value.lower().split(b","):
        t = t.strip()
        if t:
            tokens.append(t)
    return tokens


cdef int _split_target(RequestHead h) except -1:
    cdef bytes t = h.target
    cdef const char* p = PyBytes_AS_STRING(t)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(t)
    cdef const char* q
    cdef Py_ssize_t slash
    if p[0] != 47:    # not origin-form
        lt = t.lower()
        if lt.startswith(b"http://") or lt.startswith(b"https://"):
            # absolute-form (RFC 9112 3.2.2): the authority replaces Host
            rest = t[t.index(b"//") + 2:]
            slash = rest.find(b"/")
            qm = rest.find(b"?")
            if slash < 0 or (qm >= 0 and qm < slash):
                slash = qm
            auth = rest if slash < 0 else rest[:slash]
            if not auth or b"@" in auth:
                raise HttpError(400, "bad request target")
            h.host_raw = auth
            t = b"/" if slash < 0 else rest[slash:]
            if t[0] == 63:
                t = b"/" + t
        elif t == b"*" and h.method == b"OPTIONS":
            t = b"*"
        else:
            raise HttpError(400, "bad request target")
        p = PyBytes_AS_STRING(t)
        n = PyBytes_GET_SIZE(t)
    if memchr(p, 35, n) != NULL:      # '#'
        raise HttpError(400, "fragment in request target")
    q = <const char*>memchr(p, 63, n)  # '?'
    if q != NULL:
        h.path = PyBytes_FromStringAndSize(p, q - p)
        h.query = PyBytes_FromStringAndSize(q + 1, n - (q - p) - 1)
        h.has_query = True
    else:
        h.path = t
        h.query = b""
    if h.host_raw is h.hk_src:
        h.host = h.hk
        return 0
    host = _host_key(h.host_raw)
    if host is None:
        raise HttpError(400, "invalid Host")
    h.host = <bytes>host
    h.hk_src = h.host_raw
    h.hk = h.host
    return 0


# Bytes of a Host value (RFC 9110 7.2: uri-host [":" port], RFC 3986 3.2.2): 1 for the
# bytes of a reg-name (unreserved, sub-delims; '%' is checked apart, for its two hex
# digits). An IP literal's brackets hold these and ':' (IPv6 and IPvFuture).
cdef unsigned char _HOST_CHR[256]
_HOST_REG_NAME = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;="
for _c in range(256):
    _HOST_CHR[_c] = 1 if _c in _HOST_REG_NAME else 0


cdef bint _host_valid(const unsigned char* p, Py_ssize_t n, Py_ssize_t* host_end) noexcept nogil:
    """Whether p[:n] is a valid Host value; host_end gets where the port part starts (n
    when none). SECURITY: a Host the backend would read otherwise than the router (a '/',
    '@', '\\', a space, a second ':') is refused (RFC 9112 3.2: 400 for an invalid Host)."""
    cdef Py_ssize_t i = 0, j
    cdef unsigned char c
    if n > 0 and p[0] == 91:                      # '[' IP-literal ']'
        i = 1
        while i < n and p[i] != 93:
            c = p[i]
            if not (_HOST_CHR[c] or c == 58):
                return False
            i += 1
        if i >= n or i == 1:
            return False
        i += 1
    else:
        while i < n:
            c = p[i]
            if c == 58:
                break
            if not _HOST_CHR[c]:
                if c != 37 or i + 2 >= n or _rt_hexv[p[i + 1]] < 0 or _rt_hexv[p[i + 2]] < 0:
                    return False
                i += 2
            i += 1
    host_end[0] = i
    if i < n:
        if p[i] != 58:
            return False
        for j in range(i + 1, n):
            if not (48 <= p[j] <= 57):
                return False
    return True


cdef object _host_key(bytes raw):
    """Lower-case host without port (IPv6 literals keep their brackets); None when the
    value is not a valid Host.

    PERF: C passes over the value (the check, then the case up to the port); the Host
    value itself is returned when it is already the key, and the scanner keys a keep-alive
    client's Host once (RequestHead.hk)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t end = n, i
    cdef bint upper = False
    cdef bytes out
    cdef char* o
    if n == 0:
        return b""
    if not _host_valid(p, n, &end):
        return None
    for i in range(end):
        if 65 <= p[i] <= 90:
            upper = True
            break
    if end == n and not upper:
        return raw
    if not upper:
        return PyBytes_FromStringAndSize(<const char*>p, end)
    # SECURITY: a fresh object to write into. PyBytes_FromStringAndSize(p, 1) returns
    # CPython's shared one-byte bytes object, and lower-casing it in place changed b"F"
    # (say) for the whole process: after a client's "Host: F", every one-letter b"F" the
    # worker sliced out later (a path variable, a header value) read b"f".
    out = PyBytes_FromStringAndSize(NULL, end)
    o = PyBytes_AS_STRING(out)
    for i in range(end):
        o[i] = <char>_lower(p[i])
    return out


def parse_request_head(bytes data, RequestHead into=None):
    """Parse one complete request head (tests and tools): returns a RequestHead or raises
    HttpError. ``into``: a RequestHead to scan into, as a connection reuses its own."""
    cdef Py_ssize_t bad = -1
    cdef Py_ssize_t end = find_head_end(data, 0, &bad)
    if bad >= 0:
        raise HttpError(400, "bare LF in head")
    if end < 0:
        raise HttpError(400, "incomplete head")
    return scan_request(_bslice(data, 0, end), end, into)


@cython.final  # PERF: its methods are called directly (no vtable)
cdef class ResponseHead:
    """One parsed upstream response head."""
    cdef readonly bytes buf
    cdef readonly int status
    cdef readonly int version
    cdef readonly long long content_length
    cdef readonly bint chunked
    cdef readonly bint keep_alive
    cdef readonly bint until_close
    cdef int line_e              # end of the status line (before CRLF)
    cdef int cl_idx              # the Content-Length header (-1: none)
    cdef int upgrade_idx         # the Upgrade header (-1: none), for a 101
    cdef int reason_s
    cdef int n
    cdef int name_s[MAX_HEADERS]
    cdef int name_e[MAX_HEADERS]
    cdef int val_s[MAX_HEADERS]
    cdef int val_e[MAX_HEADERS]
    cdef unsigned char cls[MAX_HEADERS]

    cpdef list forward_headers(self):
        cdef int i
        cdef const char* p = PyBytes_AS_STRING(self.buf)
        return [(p[self.name_s[i]:self.name_e[i]], p[self.val_s[i]:self.val_e[i]])
                for i in range(self.n) if self.cls[i] == H_KEEP or self.cls[i] == H_VIA]

    @property
    def reason(self):
        return self.buf[self.reason_s:self.line_e]

    # The response-header edits of built-in plugins, straight on the scan (PERF: no list of
    # header tuples when no Python plugin needs one). Only forwarded end-to-end headers
    # count; framing (Content-Length) is never touched.
    cdef inline bint _forwarded_named(self, int i, const char* p, bytes lname):
        return (self.cls[i] == H_KEEP or self.cls[i] == H_VIA) and _ieq(
            p + self.name_s[i], self.name_e[i] - self.name_s[i],
            PyBytes_AS_STRING(lname), PyBytes_GET_SIZE(lname))

    cdef bint has_header(self, bytes lname):
        cdef const char* p = PyBytes_AS_STRING(self.buf)
        cdef int i
        for i in range(self.n):
            if self._forwarded_named(i, p, lname):
                return True
        return False

    cdef void drop_headers(self, tuple lnames):
        cdef const char* p = PyBytes_AS_STRING(self.buf)
        cdef int i
        for i in range(self.n):
            for lname in lnames:
                if self._forwarded_named(i, p, <bytes>lname):
                    self.cls[i] = H_DROP
                    break


cdef ResponseHead scan_response(bytes buf, Py_ssize_t end, bint head_request, ResponseHead h):
    """Parse an upstream response head buf[:end]; raises HttpError(502) when it is not valid
    HTTP. ``h`` is reused per upstream connection (None: a new one)."""
    if h is None:
        h = ResponseHead.__new__(ResponseHead)
    cdef const char* p = PyBytes_AS_STRING(buf)
    cdef Py_ssize_t i, s, e
    cdef int n = 0, cls, k
    cdef long long v, cl = -1
    cdef bint have_cl = False, te = False, te_bad = False, close = False, ka = False
    cdef list tokens = None
    h.buf = buf
    h.cl_idx = -1
    h.upgrade_idx = -1
    h.chunked = False
    h.until_close = False
    h.n = 0
    if end < 14 or p[0] != 72 or p[1] != 84 or p[2] != 84 or p[3] != 80 or p[4] != 47 or p[5] != 49 or p[6] != 46:
        raise HttpError(502, "bad status line from upstream")
    h.version = 11 if p[7] == 49 else 10
    if p[8] != 32:
        raise HttpError(502, "bad status line from upstream")
    v = 0
    for i in range(9, 12):
        if p[i] < 48 or p[i] > 57:
            raise HttpError(502, "bad status code from upstream")
        v = v * 10 + (p[i] - 48)
    h.status = <int>v
    if h.status < 100:
        raise HttpError(502, "bad status code from upstream")
    i = 12
    h.reason_s = 13 if p[12] == 32 else 12
    while p[i] != 13:
        i += 1
    h.line_e = <int>i
    i += 2
    while p[i] != 13 or p[i + 1] != 10:
        if p[i] == 13:
            raise HttpError(502, "bare CR in response head from upstream")
        if n >= MAX_HEADERS:
            raise HttpError(502, "too many header fields from upstream")
        s = i
        while TCHAR[<unsigned char>p[i]]:
            i += 1
        if i == s or p[i] != 58:
            raise HttpError(502, "bad header from upstream")
        h.name_s[n] = <int>s
        h.name_e[n] = <int>i
        i += 1
        while p[i] == 32 or p[i] == 9:
            i += 1
        s = i
        i = _value_end(p, i, end)
        if p[i] != 13:
            raise HttpError(502, "bad header value from upstream")
        e = i
        while e > s and (p[e - 1] == 32 or p[e - 1] == 9):
            e -= 1
        h.val_s[n] = <int>s
        h.val_e[n] = <int>e
        i += 2
        cls = _classify_name(p + h.name_s[n], h.name_e[n] - h.name_s[n])
        if cls == H_CL:
            if _parse_cl(p, s, e, &v) != 0 or (have_cl and v != cl):
                raise HttpError(502, "bad Content-Length from upstream")
            have_cl = True
            cl = v
            h.cl_idx = n
        elif cls == H_TE:
            if te or not _te_is_chunked(p, s, e):
                te_bad = True
            te = True
        elif cls == H_CONNECTION:
            k = _conn_simple(p, s, e)
            if k == 1:
                close = True
            elif k == 2:
                ka = True
            else:
                tokens = _connection_tokens(buf[s:e], tokens)
        elif cls == H_HOST or cls == H_XFF or cls == H_XFP or cls == H_EXPECT or cls == H_CONSUMER:
            cls = H_KEEP
        elif cls == H_UPGRADE:
            cls = H_DROP
            h.upgrade_idx = n
        h.cls[n] = cls
        n += 1
    h.n = n
    if tokens is not None:
        close = close or b"close" in tokens
        ka = ka or b"keep-alive" in tokens
        for k in range(n):
            if h.cls[k] == H_KEEP and buf[h.name_s[k]:h.name_e[k]].lower() in tokens:
                h.cls[k] = H_DROP
    h.keep_alive = (not close) if h.version == 11 else ka
    h.content_length = -1
    if head_request or h.status < 200 or h.status == 204 or h.status == 304:
        h.content_length = 0
    elif te:
        if te_bad:
            h.until_close = True      # RFC 9112 6.3: read until the connection closes
            h.keep_alive = False
        else:
            h.chunked = True
    elif have_cl:
        h.content_length = cl
    else:
        h.until_close = True
        h.keep_alive = False
    return h


def parse_response_head(bytes data, bint head_request=False):
    """Parse one complete response head (tests and tools)."""
    cdef Py_ssize_t bad = -1
    cdef Py_ssize_t end = find_head_end(data, 0, &bad)
    if bad >= 0 or end < 0:
        raise HttpError(502, "bad response head")
    return scan_response(data[:end], end, head_request, None)


# ---------------------------------------------------------------------------------------
# Chunked framing (RFC 9112 7.1): validates and finds the end; the bytes pass through raw.
# ---------------------------------------------------------------------------------------

DEF CH_SIZE = 0
DEF CH_EXT = 1
DEF CH_SIZE_LF = 2
DEF CH_DATA = 3
DEF CH_DATA_CR = 4
DEF CH_DATA_LF = 5
DEF CH_TRAILER_START = 6
DEF CH_TRAILER_LINE = 7
DEF CH_TRAILER_LF = 8
DEF CH_FINAL_LF = 9
DEF CH_DONE = 10

@cython.final  # PERF: its methods are called directly (no vtable)
cdef class ChunkedScanner:
    """Incremental chunked-body scanner. ``feed`` returns how many bytes of ``data`` belong
    to the body (the rest is the next message), -1 on bad framing; ``done`` once complete.
    With ``out`` given, the decoded payload slices are appended to it."""
    cdef int state
    cdef long long remaining
    cdef int digits
    cdef int trailer_bytes
    cdef public bint done

    def __cinit__(self):
        self.state = CH_SIZE
        self.remaining = 0
        self.digits = 0

    cpdef Py_ssize_t feed(self, bytes data, list out=None) except -2:
        cdef const char* p = PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t i = 0, take
        cdef unsigned char c
        cdef int d
        while i < n:
            c = <unsigned char>p[i]
            if self.state == CH_DATA:
                take = n - i
                if take > self.remaining:
                    take = self.remaining
                if out is not None:
                    out.append(data[i:i + take])
                i += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = CH_DATA_CR
                continue
            if self.state == CH_SIZE:
                if c >= 48 and c <= 57:
                    d = c - 48
                elif c >= 97 and c <= 102:
                    d = c - 87
                elif c >= 65 and c <= 70:
                    d = c - 55
                else:
                    d = -1
                if d >= 0:
                    if self.digits >= 15:
                        return -1
                    self.remaining = self.remaining * 16 + d
                    self.digits += 1
                elif self.digits == 0:
                    return -1
                elif c == 13:
                    self.state = CH_SIZE_LF
                elif c == 59:        # ';' chunk extension
                    self.state = CH_EXT
                elif c == 32 or c == 9:
                    self.state = CH_EXT   # BWS before ';' (RFC 9112 7.1.1)
                else:
                    return -1
            elif self.state == CH_EXT:
                if c == 13:
                    self.state = CH_SIZE_LF
                elif c == 10 or (c < 32 and c != 9) or c == 127:
                    return -1
            elif self.state == CH_SIZE_LF:
                if c != 10:
                    return -1
                self.digits = 0
                if self.remaining == 0:
                    self.state = CH_TRAILER_START
                else:
                    self.state = CH_DATA
            elif self.state == CH_DATA_CR:
                if c != 13:
                    return -1
                self.state = CH_DATA_LF
            elif self.state == CH_DATA_LF:
                if c != 10:
                    return -1
                self.state = CH_SIZE
                self.remaining = 0
            elif self.state == CH_TRAILER_START:
                if c == 13:
                    self.state = CH_FINAL_LF
                elif TCHAR[c]:
                    self.state = CH_TRAILER_LINE
                else:
                    return -1
            elif self.state == CH_TRAILER_LINE:
                self.trailer_bytes += 1
                if self.trailer_bytes > 16384:
                    return -1
                if c == 13:
                    self.state = CH_TRAILER_LF
                elif c == 10 or (c < 32 and c != 9) or c == 127:
                    return -1
            elif self.state == CH_TRAILER_LF:
                if c != 10:
                    return -1
                self.state = CH_TRAILER_START
            elif self.state == CH_FINAL_LF:
                if c != 10:
                    return -1
                self.state = CH_DONE
                self.done = True
                return i + 1
            i += 1
        return n


# ---------------------------------------------------------------------------------------
# Head builders
# ---------------------------------------------------------------------------------------

@cython.final  # PERF: its methods are called directly (no vtable)
cdef class ForwardInfo:
    """Per-listener facts the request builder needs: scheme and port as seen by clients."""
    cdef readonly bytes proto
    cdef readonly bytes port
    cdef readonly str scheme      # proto as str, for the plugins' RequestContext

    def __init__(self, bytes proto=b"http", bytes port=b"80"):
        self.proto = proto
        self.port = port
        self.scheme = proto.decode("latin-1")


cdef inline bytes _comma_join(bytes acc, bytes value):
    """One more field line of a list-valued header (RFC 9110 5.3): ``acc, value``."""
    return value if acc is None else acc + b", " + value


cdef bytes build_upstream_head(RequestHead h, bytes method, bytes path_query, bytes host_value,
                               bytes client_ip, ForwardInfo fwd, list headers, list extra,
                               bint chunked, long long content_length):
    """The request head sent to the backend, in one buffer.

    ``headers`` None: forward the client's end-to-end headers straight from the scan offsets
    (the plain path, and a chain of built-in steps: they mark what they remove H_DROP),
    then ``extra`` (None or the pairs those steps added); otherwise forward that list (a
    plugin's view of the headers, which may still hold Host, X-Forwarded-For and Via for
    reading: those are rebuilt here). Several X-Forwarded-For (Via) lines are one list
    (RFC 9110 5.3), in order, with the client's address (our hop) after it.
    """
    cdef _Buf b = _buf
    cdef const char* p = PyBytes_AS_STRING(h.buf)
    cdef int i
    cdef unsigned char c
    cdef bytes xff = None, via = None, name, value
    b.reset()
    b.add_b(method)
    b.add(b" ", 1)
    b.add_b(path_query)
    b.add(b" HTTP/1.1\r\nHost: ", 17)
    b.add_b(host_value)
    b.add(b"\r\n", 2)
    if headers is None:
        for i in range(h.n):
            c = h.cls[i]
            if c == H_KEEP:
                b.add(p + h.name_s[i], h.val_e[i] - h.name_s[i])
                b.add(b"\r\n", 2)
            elif c == H_XFF:
                xff = _comma_join(xff, _bslice(h.buf, h.val_s[i], h.val_e[i]))
            elif c == H_VIA:
                via = _comma_join(via, _bslice(h.buf, h.val_s[i], h.val_e[i]))
        headers = extra
    if headers is not None:
        for name, value in headers:
            c = _classify(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))
            if c == H_KEEP or c == H_CONSUMER:
                b.add_field(name, value)   # SECURITY: a plugin value can never inject a header line
            elif c == H_XFF:
                xff = _comma_join(xff, value)
            elif c == H_VIA:
                via = _comma_join(via, value)
    b.add(b"X-Forwarded-For: ", 17)
    if xff is not None:
        b.add_b(xff)
        b.add(b", ", 2)
    b.add_b(client_ip)
    b.add(b"\r\nX-Forwarded-Proto: ", 21)
    b.add_b(fwd.proto)
    if h.host_raw:
        b.add(b"\r\nX-Forwarded-Host: ", 20)
        b.add_b(h.host_raw)
    b.add(b"\r\nX-Forwarded-Port: ", 20)
    b.add_b(fwd.port)
    b.add(b"\r\nVia: ", 7)
    if via is not None:
        b.add_b(via)
        b.add(b", ", 2)
    b.add(b"1.1 fastgw\r\n", 12)
    if h.upgrade:
        b.add(b"Connection: upgrade\r\nUpgrade: ", 30)
        b.add(p + h.val_s[h.upgrade_idx], h.val_e[h.upgrade_idx] - h.val_s[h.upgrade_idx])
        b.add(b"\r\n", 2)
    if chunked:
        b.add(b"Transfer-Encoding: chunked\r\n", 28)
    elif content_length >= 0:
        if content_length > 0 or method not in (b"GET", b"HEAD"):
            b.add(b"Content-Length: ", 16)
            b.add_int(content_length)
            b.add(b"\r\n", 2)
    b.add(b"\r\n", 2)
    return b.take()


DEF CLOSE_NO = 0
DEF CLOSE_YES = 1
DEF KEEP_10 = 2        # HTTP/1.0 client that asked for keep-alive


def upstream_head_for(RequestHead h, bytes client_ip=b"10.0.0.1", ForwardInfo fwd=None,
                      list headers=None):
    """The head the backend gets for the scanned request ``h`` as the plain path builds it
    (``headers``: a plugin's header list instead of the scan), for benchmarks and tools."""
    return build_upstream_head(h, h.method, h.target, h.host_raw, client_ip,
                               fwd if fwd is not None else ForwardInfo(), headers, None,
                               h.chunked, h.content_length)


def client_head_for(ResponseHead r, bint close=False, bytes body=b""):
    """The head the client gets for the backend's scanned head ``r`` (then ``body``), as
    the plain path builds it, for benchmarks and tools."""
    return build_response_head(r, None, None, r.status, r.chunked, CLOSE_YES if close else CLOSE_NO, body)


cdef inline bint forwardable_response_header(bytes name):
    """Whether build_response_head keeps a plugin's header ``name`` (framing and hop-by-hop
    names are the gateway's)."""
    cdef int c = _classify(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))
    return c == H_KEEP or c == H_VIA or c == H_XFF or c == H_XFP or c == H_HOST or c == H_EXPECT \
        or c == H_CONSUMER


cdef bytes build_response_head(ResponseHead r, list headers, list add, int status, bint chunked_out,
                               int conn_mode, bytes body):
    """The response head sent to the client, followed by ``body``, as bytes."""
    fill_response_head(r, headers, add, status, chunked_out, conn_mode,
                       PyBytes_AS_STRING(body) if body is not None else NULL,
                       PyBytes_GET_SIZE(body) if body is not None else 0)
    return _buf.take()


cdef int fill_response_head(ResponseHead r, list headers, list add, int status, bint chunked_out,
                            int conn_mode, const char* body, Py_ssize_t body_n) except -1:
    """The response head sent to the client, followed by ``body[:body_n]`` (the first body
    bytes), written into the shared buffer ``_buf`` (send it before anything else uses it).

    ``headers`` None: copy the backend's end-to-end headers from the scan offsets; else use
    that list (after a response plugin)."""
    cdef _Buf b = _buf
    cdef const char* p = PyBytes_AS_STRING(r.buf)
    cdef int i
    cdef unsigned char c
    cdef bytes name, value
    # RFC 9110 8.6: no Content-Length in a 1xx or 204 (a backend's is dropped; nginx does
    # the same); a 304's describes the representation and stays.
    cdef bint keep_cl = not r.chunked and r.status >= 200 and r.status != 204
    b.reset()
    if status == r.status:
        b.add(b"HTTP/1.1 ", 9)
        b.add(p + 9, r.line_e - 9)
        b.add(b"\r\n", 2)
    else:
        b.add(b"HTTP/1.1 ", 9)
        b.add_int(status)
        b.add(b" ", 1)
        b.add_b(_reason(status))
        b.add(b"\r\n", 2)
    if headers is None:
        for i in range(r.n):
            c = r.cls[i]
            if c == H_KEEP or c == H_VIA or (c == H_CL and keep_cl):
                b.add(p + r.name_s[i], r.val_e[i] - r.name_s[i])
                b.add(b"\r\n", 2)
    else:
        for name, value in headers:
            if forwardable_response_header(name):
                b.add_field(name, value)
        # The framing stays the backend's: plugins don't see or change Content-Length.
        if r.cl_idx >= 0 and keep_cl:
            b.add(p + r.name_s[r.cl_idx], r.val_e[r.cl_idx] - r.name_s[r.cl_idx])
            b.add(b"\r\n", 2)
    if add:
        for name, value in add:
            b.add_field(name, value)
    if chunked_out:
        b.add(b"Transfer-Encoding: chunked\r\n", 28)
    if status == 101 and r.upgrade_idx >= 0:
        b.add(b"Connection: upgrade\r\nUpgrade: ", 30)
        b.add(p + r.val_s[r.upgrade_idx], r.val_e[r.upgrade_idx] - r.val_s[r.upgrade_idx])
        b.add(b"\r\n", 2)
    elif conn_mode == CLOSE_YES:
        b.add(b"Connection: close\r\n", 19)
    elif conn_mode == KEEP_10:
        b.add(b"Connection: keep-alive\r\n", 24)
    b.add(b"\r\n", 2)
    if body_n:
        b.add(body, body_n)
    return 0


cdef dict _REASONS = {
    100: b"Continue", 200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content",
    206: b"Partial Content", 301: b"Moved Permanently", 302: b"Found", 304: b"Not Modified",
    307: b"Temporary Redirect", 308: b"Permanent Redirect", 400: b"Bad Request",
    401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 409: b"Conflict", 411: b"Length Required", 413: b"Content Too Large",
    414: b"URI Too Long", 415: b"Unsupported Media Type", 417: b"Expectation Failed",
    422: b"Unprocessable Content", 429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}


cdef bytes _reason(int status):
    r = _REASONS.get(status)
    return r if r is not None else b"Unknown"


cpdef bytes build_answer(int status, list headers, bytes body, int conn_mode, bint head_request):
    """A complete answer made by the gateway itself (errors, plugin answers), one buffer."""
    cdef _Buf b = _buf
    cdef bytes name, value
    cdef bint has_ct = False
    b.reset()
    b.add(b"HTTP/1.1 ", 9)
    b.add_int(status)
    b.add(b" ", 1)
    b.add_b(_reason(status))
    b.add(b"\r\n", 2)
    if headers:
        for name, value in headers:
            b.add_field(name, value)
    if status != 204 and status != 304 and status >= 200:
        b.add(b"Content-Length: ", 16)
        b.add_int(PyBytes_GET_SIZE(body))
        b.add(b"\r\n", 2)
    if conn_mode == CLOSE_YES:
        b.add(b"Connection: close\r\n", 19)
    elif conn_mode == KEEP_10:
        b.add(b"Connection: keep-alive\r\n", 24)
    b.add(b"\r\n", 2)
    if not head_request and status != 204 and status != 304:
        b.add_b(body)
    return b.take()


cpdef bytes error_body(int status, str message, str request_id):
    return _json_dumps({"error": message, "status": status, "request_id": request_id})


# ---------------------------------------------------------------------------------------
# Request ids: a counter after a per-process prefix (PERF: no uuid4 per request).
# ---------------------------------------------------------------------------------------

cdef unsigned long long _rid_counter = 0
cdef char _rid_buf[32]          # "<8 hex digits>-" then the counter in hex
DEF RID_PREFIX_LEN = 9


cdef void _rid_set_prefix():
    global _rid_counter
    memcpy(_rid_buf, PyBytes_AS_STRING(_os.urandom(4).hex().encode("ascii")), 8)
    _rid_buf[8] = 45  # "-"
    _rid_counter = 0


_rid_set_prefix()


def reset_request_id_prefix():
    """Called in each worker after start so that ids differ between processes."""
    _rid_set_prefix()


cpdef str next_request_id():
    """``<per-process random prefix>-<counter in hex>``, e.g. ``5f0c2a9e-1f``.

    PERF: hex digits written into a C buffer (was ``prefix + format(n, "x")``: a format
    spec parse, two str objects and a concat per request)."""
    global _rid_counter
    cdef unsigned long long n
    cdef char digits[16]
    cdef int k = 0
    _rid_counter += 1
    n = _rid_counter
    while True:
        digits[k] = b"0123456789abcdef"[n & 15]
        k += 1
        n >>= 4
        if n == 0:
            break
    cdef int i
    for i in range(k):
        _rid_buf[RID_PREFIX_LEN + i] = digits[k - 1 - i]
    return PyUnicode_DecodeASCII(_rid_buf, RID_PREFIX_LEN + k, NULL)


# ---------------------------------------------------------------------------------------
# Header-list helpers for plugins: (name, value) byte pairs, names compared without case.
# PERF: C compares, no .lower() copies; a list is rebuilt only when something matches.
# ---------------------------------------------------------------------------------------

cdef inline bint _name_is(object name, bytes lname):
    return _ieq(PyBytes_AS_STRING(<bytes>name), PyBytes_GET_SIZE(<bytes>name),
                PyBytes_AS_STRING(lname), PyBytes_GET_SIZE(lname))


cpdef bytes find_header(list headers, bytes lname):
    """First value of header ``lname`` (lower-case) in ``headers``, or None.

    >>> find_header([(b"Host", b"a"), (b"X-Key", b"k")], b"x-key")
    b'k'
    """
    cdef tuple pair
    for item in headers:
        pair = <tuple>item
        if _name_is(pair[0], lname):
            return pair[1]
    return None


cpdef bytes pop_header(list headers, bytes lname):
    """Remove every ``lname`` header from ``headers`` (in place); return the first value."""
    cdef bytes first = None
    cdef Py_ssize_t i = len(headers) - 1
    # PERF: deleted in place, back to front (no new list, no slices); the last match seen
    # is the first in order.
    while i >= 0:
        pair = <tuple>headers[i]
        if _name_is(pair[0], lname):
            first = pair[1]
            del headers[i]
        i -= 1
    return first


cpdef int remove_headers(list headers, tuple lnames) except -1:
    """Remove (in place) every header whose lower-case name is in ``lnames``; how many."""
    cdef Py_ssize_t removed = 0
    cdef Py_ssize_t i = len(headers) - 1
    cdef tuple pair
    while i >= 0:
        pair = <tuple>headers[i]
        for lname in lnames:
            if _name_is(pair[0], <bytes>lname):
                del headers[i]
                removed += 1
                break
        i -= 1
    return removed
