# part of fastgw/_core.pyx (see its docstring)
#
# Routing on the hot path: path normalization, the per-host trie router and the
# backend-path templates. fastgw/router_ref.py is the pure-Python twin that states the
# same semantics; tests/test_router.py and tests/test_normalize.py assert both agree.
#
# Rules (see router_ref's docstring for the full list):
#   - normalize_path: decode unreserved, keep the rest encoded (upper-case hex), encode raw
#     bytes that may not appear in a path, resolve ./.. (also %2e), collapse //, keep %2F.
#   - match: one trailing "/" is ignored; static > {var} > {var*} with backtracking; the
#     first node that matches the path AND accepts the method wins; per node exact >
#     HEAD->GET > ANY; {rest*} matches one or more segments, never the empty rest.
#
# Router structure: all nodes of all hosts live in ONE open-addressed C table (Router._tab,
# linear probing, load <= 0.7, capacity a power of two, doubled and rehashed as nodes are
# added) of 32-byte entries, 2 per cache line. A node's key is (parent uid, kind, segment);
# its home slot comes from its 32-bit path hash, phash = mix(parent's phash, hash(segment))
# (mix(parent's phash, VAR / REST) for a {var} / {rest*} child). An entry holds the phash
# (compared first), the parent's uid, the node's own uid, the segment (packed inline when
# <= 8 bytes, else an offset into one byte pool where each distinct segment is stored once),
# flags (kind, has static / var / rest children, terminal, ...), a one-byte filter of the
# static children's segment hashes, and `fast`, the node's
# answer (the route, a ready (200, route, ()) tuple when the path has no variables, or an
# _RTerm when methods lead to different routes). Roots (one per host) are entries too; the
# Router's dicts own every Python object, the table only borrows them. Hash collisions
# (phash or slot) cost probes, never correctness: a hit needs the same parent uid, kind,
# length and bytes.
#
# Two entries share a cache line, and a child is put in its parent's partner slot (its
# "buddy", slot ^ 1) when that is free at insertion (and again after a rehash): the first
# child of a node usually gets it, so a walk from parent to child costs one line, not two.
# Lookups try the buddy slot, then the child's home probe run. The filter (`sfilter`) has
# one of 8 bits set per static child; a segment whose bit is clear is no static child of
# the node, which spares the probe — in a large table a random line, a cache miss — that
# an id under /users/{id} would otherwise cost to learn that /users/ has no static child
# of that name.
#
# Matching creates no Python object per segment: segments are hashed straight from the
# path's bytes and compared in place. Since a slot depends only on path hashes, the slots
# of the all-static chain (and of its {var} children) are known before any is read, and
# are prefetched together when the table is larger than the caches.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcmp, memcpy, memset

cimport cython

import os as _rt_os
import re as _rt_re

# Byte classes for normalize_path.
DEF RT_ENCODE = 0     # raw byte that must be percent-encoded
DEF RT_RAW = 1        # sub-delims, ':' and '@': literal when raw, encoded when encoded
DEF RT_UNRES = 2      # unreserved: always literal
DEF RT_CTRL = 3       # control byte: the path is invalid
DEF RT_PCT = 4
DEF RT_SLASH = 5
DEF RT_STACK_SEGS = 64

cdef unsigned char _rt_cls[256]
cdef signed char _rt_hexv[256]
cdef const char* _rt_HEX = b"0123456789ABCDEF"


cdef void _rt_init_tables():
    cdef int c
    for c in range(256):
        _rt_cls[c] = RT_ENCODE
        _rt_hexv[c] = -1
    for c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~":
        _rt_cls[c] = RT_UNRES
    for c in b"!$&'()*+,;=:@":
        _rt_cls[c] = RT_RAW
    for c in range(32):
        _rt_cls[c] = RT_CTRL
    _rt_cls[127] = RT_CTRL
    _rt_cls[37] = RT_PCT
    _rt_cls[47] = RT_SLASH
    for c in range(10):
        _rt_hexv[48 + c] = c
    for c in range(6):
        _rt_hexv[65 + c] = 10 + c
        _rt_hexv[97 + c] = 10 + c


_rt_init_tables()

cdef tuple _rt_EMPTY = ()
_RT_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY")
_rt_NAME = _rt_re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class RouteConflict(ValueError):
    """A route that duplicates another one (same host, shape and method)."""


def normalize_path(raw):
    """Canonical spelling of a request path (bytes), or None when it is invalid (400)."""
    if type(raw) is not bytes:
        raw = bytes(raw)
    return _rt_normalize(<bytes>raw)


cdef object _rt_normalize(bytes raw):
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t i
    cdef unsigned char c, k, prev = 47
    cdef int v
    cdef bint dirty = False, sep = False
    if n == 0 or p[0] != 47:
        return None
    # PERF: one scan decides; a path that is already canonical (the common case) is
    # returned as the same object, with no allocation. A '.' right after '/' sends the
    # path to the slow path even when it is not a dot segment (e.g. /.well-known). An
    # escape is canonical when its hex is upper-case and it encodes a byte that must stay
    # encoded (%20, %C3%A9, %2F ...): browsers and clients send those, and they keep the
    # fast path.
    i = 1
    while i < n:
        c = p[i]
        k = _rt_cls[c]
        if k == RT_UNRES or k == RT_RAW:
            if c == 46 and prev == 47:
                dirty = True
                break
        elif k == RT_SLASH:
            if prev == 47:
                dirty = True
                break
        elif k == RT_CTRL:
            return None
        elif k == RT_PCT and i + 2 < n and _rt_upper_hex(p[i + 1]) and _rt_upper_hex(p[i + 2]):
            v = _rt_hexv[p[i + 1]] * 16 + _rt_hexv[p[i + 2]]
            if _rt_cls[v] == RT_UNRES:
                dirty = True        # decoded in the canonical spelling
                break
            if v == 47 or v == 92:
                sep = True          # %2F or %5C: see _rt_hidden_dot_segment
            prev = 37
            i += 3
            continue
        else:
            dirty = True
            break
        prev = c
        i += 1
    if not dirty:
        if sep and _rt_hidden_dot_segment(p, n):
            return None
        return raw
    out = _rt_normalize_slow(p, n)
    if out is not None and _rt_hidden_dot_segment(<const unsigned char*>PyBytes_AS_STRING(out),
                                                   PyBytes_GET_SIZE(out)):
        return None
    return out


cdef inline bint _rt_upper_hex(unsigned char c) noexcept:
    return (48 <= c <= 57) or (65 <= c <= 70)


cdef inline bint _rt_dot_part(const unsigned char* p, Py_ssize_t s, Py_ssize_t e) noexcept:
    return (e - s == 1 and p[s] == 46) or (e - s == 2 and p[s] == 46 and p[s + 1] == 46)


cdef bint _rt_hidden_dot_segment(const unsigned char* p, Py_ssize_t n) noexcept:
    """True when an encoded separator hides a dot segment (``..%2F``, ``.%5C``) in the
    canonical path p[:n] (upper-case escapes).

    SECURITY: ``%2F`` stays encoded and never splits a segment here, but a backend that
    decodes it (or treats ``\\`` as ``/``) and then resolves dot segments would reach a
    path this router never saw. Such a path is refused (400) rather than forwarded. Each
    segment holding ``%2F`` or ``%5C`` is cut at them; no part may be ``.`` or ``..``."""
    cdef Py_ssize_t i = 0, part = 0
    cdef bint sep = False
    while i <= n:
        if i == n or p[i] == 47:
            if sep and _rt_dot_part(p, part, i):
                return True
            sep = False
            i += 1
            part = i
            continue
        if p[i] == 37 and i + 2 < n and (
                (p[i + 1] == 50 and p[i + 2] == 70) or (p[i + 1] == 53 and p[i + 2] == 67)):
            if _rt_dot_part(p, part, i):
                return True
            sep = True
            i += 3
            part = i
            continue
        i += 1
    return False


cdef object _rt_normalize_slow(const unsigned char* p, Py_ssize_t n):
    # out holds "/" seg "/" seg ...; before a segment is written, out ends with "/".
    cdef unsigned char* out = <unsigned char*>PyMem_Malloc(3 * n + 1)
    cdef Py_ssize_t* starts = <Py_ssize_t*>PyMem_Malloc(sizeof(Py_ssize_t) * (n + 1))
    cdef Py_ssize_t i = 1, o = 1, seg_start = 1, d = 0, seglen
    cdef unsigned char c, k, v
    cdef int hi, lo
    cdef bint last
    if out == NULL or starts == NULL:
        PyMem_Free(out)
        PyMem_Free(starts)
        raise MemoryError()
    try:
        out[0] = 47
        while True:
            if i == n or p[i] == 47:
                last = i == n
                seglen = o - seg_start
                if seglen == 0:
                    pass
                elif seglen == 1 and out[seg_start] == 46:
                    o = seg_start
                elif seglen == 2 and out[seg_start] == 46 and out[seg_start + 1] == 46:
                    if d == 0:
                        return None  # SECURITY: ".." above the root
                    d -= 1
                    o = starts[d]
                else:
                    starts[d] = seg_start
                    d += 1
                    if not last:
                        out[o] = 47
                        o += 1
                if last:
                    break
                i += 1
                seg_start = o
                continue
            c = p[i]
            k = _rt_cls[c]
            if k == RT_UNRES or k == RT_RAW:
                out[o] = c
                o += 1
                i += 1
            elif k == RT_PCT:
                if i + 2 >= n:
                    return None
                hi = _rt_hexv[p[i + 1]]
                lo = _rt_hexv[p[i + 2]]
                if hi < 0 or lo < 0:
                    return None
                v = <unsigned char>(hi * 16 + lo)
                if _rt_cls[v] == RT_UNRES:
                    out[o] = v
                    o += 1
                else:
                    # SECURITY: %2F, %25 ... stay encoded, so nothing is decoded twice.
                    out[o] = 37
                    out[o + 1] = _rt_HEX[hi]
                    out[o + 2] = _rt_HEX[lo]
                    o += 3
                i += 3
            elif k == RT_CTRL:
                return None
            else:
                out[o] = 37
                out[o + 1] = _rt_HEX[c >> 4]
                out[o + 2] = _rt_HEX[c & 15]
                o += 3
                i += 1
        return PyBytes_FromStringAndSize(<char*>out, o)
    finally:
        PyMem_Free(out)
        PyMem_Free(starts)


@cython.wraparound(True)
def _rt_parse_template(str prefix, str template):
    """(segments, names): segments are (kind, key) with kind 0 static, 1 {var}, 2 {var*}."""
    cdef list segs = []
    cdef list names = []
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
                if not _rt_NAME.match(name):
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
            key = _rt_normalize(b"/" + seg.encode())
            if key is None or (<bytes>key).count(b"/") != 1 or key == b"/":
                raise ValueError(f"bad static segment {seg!r} in {part!r}")
            segs.append((0, key[1:]))
    return segs, tuple(names)


cdef class PathMethods:
    """What a path offers when the method is not there (405): ``allow`` and ``routes``."""

    cdef readonly bytes allow
    cdef readonly dict routes

    def __init__(self, dict routes):
        self.routes = routes
        names = set(routes)
        if "GET" in names:
            names.add("HEAD")
        if "ANY" in names:
            # An Allow value can't say "any method": ANY stands for the ones routes name.
            names.discard("ANY")
            names.update(_RT_MINDEX)
        self.allow = ", ".join(sorted(names)).encode()

    def __repr__(self):
        return f"PathMethods(allow={self.allow!r})"


# ---------------------------------------------------------------------------------------
# The router's table (see the note at the top of this file).

cdef extern from *:
    """
    #include <stdint.h>
    #include <stdlib.h>
    #include <string.h>
    #if defined(__linux__)
    #include <sys/mman.h>
    #endif

    static const uint64_t __pyx_rt_P0 = 0xa0761d6478bd642fULL;
    static const uint64_t __pyx_rt_P1 = 0xe7037ed1a0b428dbULL;
    static const uint64_t __pyx_rt_P2 = 0x8ebc6af09c88c6e3ULL;
    static const uint64_t __pyx_rt_P3 = 0x589965cc75374cc3ULL;

    /* 64x64 -> 128-bit multiply folded to 64 bits (wyhash's mixer). */
    static inline uint64_t __pyx_rt_mum(uint64_t a, uint64_t b) {
    #if defined(__SIZEOF_INT128__)
        __uint128_t r = (__uint128_t)a * b;
        return (uint64_t)(r >> 64) ^ (uint64_t)r;
    #else
        uint64_t ha = a >> 32, hb = b >> 32, la = (uint32_t)a, lb = (uint32_t)b;
        uint64_t rh = ha * hb, rm0 = ha * lb, rm1 = hb * la, rl = la * lb;
        uint64_t t = rl + (rm0 << 32), c = t < rl;
        uint64_t lo = t + (rm1 << 32);
        c += lo < t;
        return (rh + (rm0 >> 32) + (rm1 >> 32) + c) ^ lo;
    #endif
    }
    static inline uint64_t __pyx_rt_r8(const unsigned char* p) { uint64_t v; memcpy(&v, p, 8); return v; }
    static inline uint64_t __pyx_rt_r4(const unsigned char* p) { uint32_t v; memcpy(&v, p, 4); return v; }
    static inline void __pyx_rt_prefetch(const void* p) {
    #if defined(__GNUC__)
        __builtin_prefetch(p, 0, 3);
    #endif
    }
    /* Zeroed and cache-line aligned; a large table is 2 MB aligned and asks for transparent
       huge pages: random probes over many MB would otherwise miss the TLB too (and a TLB
       miss costs a two-level page walk under a hypervisor). */
    static void* __pyx_rt_table_alloc(size_t nbytes) {
        void* p = NULL;
        size_t align = nbytes >= ((size_t)2 << 20) ? ((size_t)2 << 20) : 64;
        if (posix_memalign(&p, align, nbytes) != 0) return NULL;
    #if defined(MADV_HUGEPAGE)
        if (align > 64) madvise(p, nbytes, MADV_HUGEPAGE);
    #endif
        memset(p, 0, nbytes);
        return p;
    }
    """
    const uint64_t RT_P0 "__pyx_rt_P0"
    const uint64_t RT_P1 "__pyx_rt_P1"
    const uint64_t RT_P2 "__pyx_rt_P2"
    const uint64_t RT_P3 "__pyx_rt_P3"
    uint64_t _rt_mum "__pyx_rt_mum"(uint64_t a, uint64_t b) nogil
    uint64_t _rt_r8 "__pyx_rt_r8"(const unsigned char* p) nogil
    uint64_t _rt_r4 "__pyx_rt_r4"(const unsigned char* p) nogil
    void _rt_prefetch "__pyx_rt_prefetch"(const void* p) nogil
    void* _rt_table_alloc "__pyx_rt_table_alloc"(size_t nbytes) nogil


ctypedef struct _RtEnt:
    uint32_t phash      # the node's path hash: home slot is phash & mask; compared first
    uint32_t parent     # the parent's uid (a root: its own uid)
    uint32_t uid        # 0: empty slot
    uint8_t seglen      # RT_LONGSEG: the real length is the uint32 before the bytes in the pool
    uint8_t sfilter     # one bit per static child, bit _rt_sbit(its segment hash): see _rt_walk
    uint8_t flags       # kind (RT_KIND bits) | RT_HAS_* | RT_TERMINAL | RT_MULTI | RT_NOVARS
    uint8_t fastmask    # method indexes (_rt_method_index) that `fast` answers
    uint64_t seg        # static: _rt_pack(segment) when seglen <= RT_INLINE, else a pool offset
    PyObject* fast      # borrowed (Router._objs owns it): see RT_MULTI / RT_NOVARS


cdef enum:
    RT_STATIC = 0
    RT_VAR = 1
    RT_REST = 2
    RT_ROOT = 3
    RT_KIND = 3
    RT_HAS_STATIC = 4   # == 4 << RT_STATIC; RT_HAS_VAR == 4 << RT_VAR, RT_HAS_REST == 4 << RT_REST
                        # (the walk reads sfilter, non-zero exactly when this bit is set)
    RT_HAS_VAR = 8
    RT_HAS_REST = 16
    RT_TERMINAL = 32    # the node has at least one route
    RT_MULTI = 64       # `fast` is an _RTerm: the node answers different methods with different routes
    RT_NOVARS = 128     # no variable on the way here: `fast`/_RTerm hold ready (200, route, ()) tuples
    RT_LONGSEG = 0xFF
    RT_INLINE = 8
    RT_MIN_CAP = 64
    # Grow (double) when used > cap * 7/10. PERF: the table's size is what decides how
    # often a probe leaves the cache (on the dev VM random loads cost ~20 ns within 4 MB,
    # ~110 ns from 8 MB on), so it is kept dense; 7/10 still bounds linear probe runs.
    RT_LOAD_NUM = 7
    RT_LOAD_DEN = 10
    RT_PREFETCH_DEPTH = 8
    RT_PREFETCH_MIN_CAP = 16384   # 512 KB of table: smaller tables stay in L2, prefetching only costs
    RT_NMETHODS = 8


# Method indexes: GET POST PUT PATCH DELETE HEAD OPTIONS, then 7 for ANY and any other method;
# -1 for TRACE and CONNECT, which no route takes: ANY does not cover them (SECURITY: TRACE
# echoes the request, credentials included, back to a script that sent it; a 2xx to CONNECT
# makes the client take the connection for a tunnel the gateway never opened). Their
# answer is the 405 of the path, as nginx's is.
_RT_MINDEX = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")

cdef uint64_t _rt_seed = <uint64_t>int.from_bytes(_rt_os.urandom(8), "little")


cdef inline int _rt_method_index(bytes method) noexcept:
    cdef const char* m = PyBytes_AS_STRING(method)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(method)
    if n == 3:
        if memcmp(m, b"GET", 3) == 0:
            return 0
        if memcmp(m, b"PUT", 3) == 0:
            return 2
    elif n == 4:
        if memcmp(m, b"POST", 4) == 0:
            return 1
        if memcmp(m, b"HEAD", 4) == 0:
            return 5
    elif n == 5:
        if memcmp(m, b"PATCH", 5) == 0:
            return 3
        if memcmp(m, b"TRACE", 5) == 0:
            return -1
    elif n == 6:
        if memcmp(m, b"DELETE", 6) == 0:
            return 4
    elif n == 7:
        if memcmp(m, b"OPTIONS", 7) == 0:
            return 6
        if memcmp(m, b"CONNECT", 7) == 0:
            return -1
    return 7


cdef inline uint64_t _rt_pack(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """The bytes of a segment of 1..8 bytes in one word; with n, it determines the segment.

    Reads stay inside p[0:n] (overlapping reads, as wyhash does): 4..8 bytes are the first
    and the last 4, 1..3 bytes are p[0], p[n // 2], p[n - 1]."""
    if n >= 4:
        return (_rt_r4(p) << 32) | _rt_r4(p + n - 4)
    if n > 0:
        return (<uint64_t>p[0] << 16) | (<uint64_t>p[n >> 1] << 8) | p[n - 1]
    return 0


cdef inline uint64_t _rt_hash(const unsigned char* p, Py_ssize_t n, uint64_t seed) noexcept nogil:
    """wyhash-style hash of a segment; every read stays inside p[0:n]."""
    cdef uint64_t a, b, h = seed ^ RT_P0
    cdef Py_ssize_t m = n
    if m <= 8:
        a = _rt_pack(p, m)
        b = 0
    elif m <= 16:
        a = _rt_r8(p)
        b = _rt_r8(p + m - 8)
    else:
        while m > 16:
            h = _rt_mum(_rt_r8(p) ^ RT_P1, _rt_r8(p + 8) ^ h)
            p += 16
            m -= 16
        # 1..16 bytes are left: read the last 16 (overlapping what the loop consumed).
        a = _rt_r8(p + m - 16)
        b = _rt_r8(p + m - 8)
    return _rt_mum(_rt_mum(a ^ RT_P1, b ^ h) ^ RT_P2, <uint64_t>n ^ RT_P3)


cdef inline void _rt_bit_set(uint64_t* bits, uint64_t i) noexcept nogil:
    bits[i >> 6] |= (<uint64_t>1) << (i & 63)


cdef inline bint _rt_bit(const uint64_t* bits, uint64_t i) noexcept nogil:
    return (bits[i >> 6] >> (i & 63)) & 1


cdef inline uint8_t _rt_sbit(uint64_t hs) noexcept nogil:
    """The bit a static child with segment hash hs sets in its parent's sfilter."""
    return <uint8_t>(1 << (hs >> 61))


cdef inline uint32_t _rt_child_ph(uint32_t ph, uint64_t hs) noexcept nogil:
    """Path hash of the static child (segment hash hs) of the node with path hash ph."""
    return <uint32_t>_rt_mum(ph ^ RT_P0, hs ^ RT_P2)


cdef inline uint32_t _rt_kind_ph(uint32_t ph, int kind) noexcept nogil:
    """Path hash of the {var} (kind RT_VAR) or {rest*} (RT_REST) child."""
    return <uint32_t>_rt_mum(ph ^ RT_P1, RT_P3 + <uint64_t>kind)


cdef inline bint _rt_seg_eq(const unsigned char* pool, const _RtEnt* x, const unsigned char* s,
                            Py_ssize_t n) noexcept nogil:
    cdef uint32_t w
    if n <= RT_INLINE:
        return x.seglen == n and x.seg == _rt_pack(s, n)
    if n < RT_LONGSEG:
        return x.seglen == n and memcmp(pool + x.seg, s, n) == 0
    if x.seglen != RT_LONGSEG:
        return False
    memcpy(&w, pool + x.seg, 4)
    return w == n and memcmp(pool + x.seg + 4, s, n) == 0


ctypedef struct _RtCtx:
    const _RtEnt* tab
    uint64_t mask
    uint32_t hmask
    const unsigned char* pool
    const unsigned char* p
    const Py_ssize_t* ss
    const Py_ssize_t* se
    const uint64_t* hs
    Py_ssize_t* vs
    Py_ssize_t* ve
    Py_ssize_t pend
    int nseg
    int k


cdef inline const _RtEnt* _rt_buddy(const _RtEnt* tab, const _RtEnt* e) noexcept nogil:
    """The entry sharing e's cache line (slot j ^ 1): where one child of e is put when free."""
    return tab + ((e - tab) ^ 1)


cdef inline bint _rt_is_buddy(const _RtEnt* tab, uint64_t j) noexcept nogil:
    """True when the node in slot j sits in its parent's buddy slot."""
    return (tab[j].flags & RT_KIND) != RT_ROOT and tab[j ^ 1].uid == tab[j].parent


cdef inline bint _rt_is_child(const unsigned char* pool, const _RtEnt* x, const _RtEnt* parent,
                              uint32_t ph, int kind, const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """x is parent's child of this kind with path hash ph (and, static, segment s[:n])."""
    return x.phash == ph and x.parent == parent.uid and (x.flags & RT_KIND) == kind and (
        kind != RT_STATIC or _rt_seg_eq(pool, x, s, n))


cdef inline const _RtEnt* _rt_find(const _RtEnt* tab, uint64_t mask, const unsigned char* pool,
                                   const _RtEnt* e, uint32_t ph, int kind,
                                   const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """e's child of this kind with path hash ph (static: segment s[:n]), or NULL: the buddy
    slot first, then the child's home probe run (the walk and Router._find alike)."""
    # SECURITY: the client picks the segment (and so its home slot), not the table's layout:
    # a probe ends at the first empty slot, so it is never longer than the longest run of
    # occupied slots, which the load factor (<= 0.7) and the per-process seed keep short.
    cdef uint64_t j = ph & mask
    cdef const _RtEnt* x = _rt_buddy(tab, e)
    if _rt_is_child(pool, x, e, ph, kind, s, n):
        return x
    while True:
        x = tab + j
        if x.uid == 0:
            return NULL
        if _rt_is_child(pool, x, e, ph, kind, s, n):
            return x
        j = (j + 1) & mask


cdef inline const _RtEnt* _rt_find_static(const _RtCtx* c, const _RtEnt* e, int i) noexcept nogil:
    return _rt_find(c.tab, c.mask, c.pool, e, _rt_child_ph(e.phash, c.hs[i]) & c.hmask, RT_STATIC,
                    c.p + c.ss[i], c.se[i] - c.ss[i])


cdef inline const _RtEnt* _rt_find_kind(const _RtCtx* c, const _RtEnt* e, int kind) noexcept nogil:
    return _rt_find(c.tab, c.mask, c.pool, e, _rt_kind_ph(e.phash, kind) & c.hmask, kind, NULL, 0)


cdef const _RtEnt* _rt_walk(_RtCtx* c, const _RtEnt* e, int i, int k) noexcept nogil:
    """First resource node (static > var > rest, backtracking) matching segments i.. of the path.

    SECURITY: the path alone picks the resource; the method only decides 200 or 405. A
    method a resource lacks never falls through to a broader route (a catch-all with other
    plugins), so a path's plugins can't be skipped by choosing another method."""
    cdef const _RtEnt* f
    cdef const _RtEnt* r
    if i == c.nseg:
        if e.flags & RT_TERMINAL:
            c.k = k
            return e
        return NULL
    # PERF: a static child is looked for only when the parent's filter has its bit: a segment
    # that is no static child (an id under /users/{id} beside /users/me) would otherwise
    # probe a slot of its own, a random line of a large table (a cache miss) to learn so.
    if (e.sfilter & _rt_sbit(c.hs[i])) and c.se[i] > c.ss[i]:
        f = _rt_find_static(c, e, i)
        if f != NULL:
            r = _rt_walk(c, f, i + 1, k)
            if r != NULL:
                return r
    if (e.flags & RT_HAS_VAR) and c.se[i] > c.ss[i]:
        f = _rt_find_kind(c, e, RT_VAR)
        if f != NULL:
            c.vs[k] = c.ss[i]
            c.ve[k] = c.se[i]
            r = _rt_walk(c, f, i + 1, k + 1)
            if r != NULL:
                return r
    if e.flags & RT_HAS_REST:
        f = _rt_find_kind(c, e, RT_REST)
        if f != NULL and (f.flags & RT_TERMINAL):
            c.vs[k] = c.ss[i]
            c.ve[k] = c.pend
            c.k = k + 1
            return f
    return NULL


cdef tuple _rt_values(bytes path, Py_ssize_t* vs, Py_ssize_t* ve, int k):
    cdef const char* p = PyBytes_AS_STRING(path)
    cdef tuple t
    cdef int j
    if k == 0:
        return _rt_EMPTY
    t = PyTuple_New(k)
    for j in range(k):
        v = PyBytes_FromStringAndSize(p + vs[j], ve[j] - vs[j])
        Py_INCREF(v)
        PyTuple_SET_ITEM(t, j, v)
    return t


cdef class _RTerm:
    """The answers of a node whose methods lead to different routes, by method index."""
    cdef PyObject* res[RT_NMETHODS]   # borrowed (Router._objs owns them); NULL: 405


cdef class _RtRoot:
    cdef uint32_t uid
    cdef uint32_t phash


@cython.no_gc_clear  # the table borrows the objects these dicts own: never drop them early
cdef class Router:
    """Host -> root; every node of every host in one flat hash table. Built once per config load."""

    cdef _RtEnt* _tab
    cdef uint64_t _mask          # capacity - 1 (a power of two, at most 2**32)
    cdef Py_ssize_t _used
    cdef uint32_t _next_uid
    cdef uint64_t _seed
    cdef uint32_t _hmask         # ANDed into every path hash: all ones, except in collision tests
    cdef unsigned char* _pool    # static segments longer than RT_INLINE, each stored once
    cdef Py_ssize_t _pool_len
    cdef Py_ssize_t _pool_cap
    cdef dict _pool_index        # segment bytes -> offset in the pool
    cdef uint64_t* _segbits      # one bit per static segment hash, over all nodes: see match
    cdef int _segshift           # a hash's bit is hs >> _segshift (64 - log2 of the bits)
    cdef set _seghashes          # the distinct static segments' hashes (to resize _segbits)
    cdef dict _byname            # uid -> {method str: route} (ANY included)
    cdef dict _pms               # uid -> PathMethods (405)
    cdef dict _objs              # uid -> what the node's `fast` points to
    cdef dict _exact             # host bytes -> _RtRoot
    cdef dict _wild              # b".example.com" -> _RtRoot (from "*.example.com")
    cdef _RtRoot _default        # "*" or no hosts
    cdef bytes _last_host        # the host looked up last (None: no cached answer) ...
    cdef _RtRoot _last_root      # ... and its root: most requests repeat the last host
    cdef readonly int count

    def __cinit__(self):
        self._tab = <_RtEnt*>_rt_table_alloc(RT_MIN_CAP * sizeof(_RtEnt))
        if self._tab == NULL:
            raise MemoryError()
        self._mask = RT_MIN_CAP - 1
        self._used = 0
        self._next_uid = 1
        self._seed = _rt_seed
        self._hmask = 0xFFFFFFFF
        self._pool = NULL
        self._pool_len = 0
        self._pool_cap = 0
        self._pool_index = {}
        self._segbits = NULL
        self._segshift = 64
        self._seghashes = set()
        self._byname = {}
        self._pms = {}
        self._objs = {}
        self._exact = {}
        self._wild = {}
        self._default = None
        self.count = 0

    def __dealloc__(self):
        free(self._tab)
        free(self._pool)
        PyMem_Free(self._segbits)

    # -- building ----------------------------------------------------------------------

    cdef Py_ssize_t _slot_of(self, uint32_t uid, uint32_t ph) noexcept:
        """Slot of a node sitting in its home probe run (a root always does), or -1."""
        cdef uint64_t j = ph & self._mask
        while self._tab[j].uid != uid:
            if self._tab[j].uid == 0:
                return -1
            j = (j + 1) & self._mask
        return <Py_ssize_t>j

    cdef uint32_t _edge_ph(self, uint32_t pph, int kind, bytes key) noexcept:
        if kind == RT_STATIC:
            return _rt_child_ph(pph, _rt_hash(<const unsigned char*>PyBytes_AS_STRING(key),
                                              PyBytes_GET_SIZE(key), self._seed)) & self._hmask
        return _rt_kind_ph(pph, kind) & self._hmask

    cdef Py_ssize_t _find(self, Py_ssize_t pj, int kind, bytes key):
        """Slot of the child of the node in slot pj of this kind (and static segment key), or -1
        (found as the walk finds it: _rt_find)."""
        cdef const _RtEnt* parent = self._tab + pj
        cdef const unsigned char* s = NULL
        cdef Py_ssize_t n = 0
        cdef const _RtEnt* x
        if kind == RT_STATIC:
            s, n = <const unsigned char*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)
        x = _rt_find(self._tab, self._mask, self._pool, parent,
                     self._edge_ph(parent.phash, kind, key), kind, s, n)
        return -1 if x == NULL else <Py_ssize_t>(x - self._tab)

    cdef int _add_segment(self, uint64_t hs) except -1:
        """Note a static segment in _segbits (8 bits or more per distinct segment, so about
        one in nine segments that are none reads as one)."""
        cdef Py_ssize_t nbits
        cdef int shift
        cdef uint64_t* bits
        if hs in self._seghashes:
            return 0
        self._seghashes.add(hs)
        if self._segbits == NULL or len(self._seghashes) * 8 > (<Py_ssize_t>1 << (64 - self._segshift)):
            shift = 64 - 12
            while len(self._seghashes) * 8 > (<Py_ssize_t>1 << (64 - shift)):
                shift -= 1
            nbits = <Py_ssize_t>1 << (64 - shift)
            bits = <uint64_t*>PyMem_Malloc(nbits // 8)
            if bits == NULL:
                raise MemoryError()
            memset(bits, 0, nbits // 8)
            PyMem_Free(self._segbits)
            self._segbits = bits
            self._segshift = shift
            for h in self._seghashes:
                _rt_bit_set(bits, <uint64_t>h >> shift)
            return 0
        _rt_bit_set(self._segbits, hs >> self._segshift)
        return 0

    cdef int _reserve(self, Py_ssize_t more) except -1:
        """Grow now so that ``more`` nodes fit: slots held by the caller stay valid meanwhile."""
        while (self._used + more) * RT_LOAD_DEN > <Py_ssize_t>(self._mask + 1) * RT_LOAD_NUM:
            self._grow()
        return 0

    cdef int _grow(self) except -1:
        """Double the table. Nodes go to their home probe runs first; then each node that sat
        in its parent's buddy slot goes to the parent's new buddy slot when it is free."""
        cdef uint64_t old_cap = self._mask + 1
        cdef uint64_t cap = old_cap * 2
        cdef uint64_t nm = cap - 1
        cdef uint64_t j, h
        cdef _RtEnt* old = self._tab
        cdef _RtEnt* new
        cdef uint64_t* moved
        cdef int npass
        if cap > (<uint64_t>1 << 32):
            raise MemoryError("router: too many nodes")
        new = <_RtEnt*>_rt_table_alloc(cap * sizeof(_RtEnt))
        moved = <uint64_t*>PyMem_Malloc(old_cap * sizeof(uint64_t))
        if new == NULL or moved == NULL:
            free(new)
            PyMem_Free(moved)
            raise MemoryError()
        for npass in range(2):
            for j in range(old_cap):
                if old[j].uid == 0 or _rt_is_buddy(old, j) != (npass == 1):
                    continue
                if npass == 1 and new[moved[j ^ 1] ^ 1].uid == 0:
                    h = moved[j ^ 1] ^ 1        # beside its parent, moved in the first pass
                else:
                    h = old[j].phash & nm
                    while new[h].uid != 0:
                        h = (h + 1) & nm
                new[h] = old[j]
                moved[j] = h
        PyMem_Free(moved)
        free(old)
        self._tab = new
        self._mask = nm
        return 0

    cdef Py_ssize_t _intern(self, bytes key) except -1:
        cdef object known = self._pool_index.get(key)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(key)
        cdef Py_ssize_t need = n + (4 if n >= RT_LONGSEG else 0)
        cdef Py_ssize_t off = self._pool_len, cap
        cdef uint32_t n32 = <uint32_t>n
        cdef unsigned char* grown
        if known is not None:
            return known
        if off + need > self._pool_cap:
            cap = max(self._pool_cap * 2, off + need, 256)
            grown = <unsigned char*>realloc(self._pool, cap)
            if grown == NULL:
                raise MemoryError()
            self._pool = grown
            self._pool_cap = cap
        if n >= RT_LONGSEG:
            memcpy(self._pool + off, &n32, 4)
            memcpy(self._pool + off + 4, PyBytes_AS_STRING(key), n)
        else:
            memcpy(self._pool + off, PyBytes_AS_STRING(key), n)
        self._pool_len = off + need
        self._pool_index[key] = off
        return off

    cdef Py_ssize_t _insert(self, Py_ssize_t pj, uint32_t root_uid, int kind, bytes key,
                            bint novars) except -1:
        """Add a child of the node in slot pj (or, with kind RT_ROOT, the root root_uid);
        returns its slot. The caller has reserved the room (_reserve): nothing moves here.

        PERF: a child goes to its parent's buddy slot (pj ^ 1, the same cache line) when that
        is free, so a walk reads parent and child with one miss; the first child of a node
        usually gets it. Lookups try that slot before the child's home probe run."""
        cdef uint64_t seg = 0, j, hs
        cdef Py_ssize_t n = 0
        cdef uint32_t ph, puid
        cdef _RtEnt* x
        if self._next_uid == 0xFFFFFFFF:
            raise MemoryError("router: too many nodes")
        if (self._used + 1) * RT_LOAD_DEN > <Py_ssize_t>(self._mask + 1) * RT_LOAD_NUM:
            raise AssertionError("router: _insert without _reserve")
        if kind == RT_STATIC:
            n = PyBytes_GET_SIZE(key)
            if n > RT_INLINE:
                seg = <uint64_t>self._intern(key)
            else:
                seg = _rt_pack(<const unsigned char*>PyBytes_AS_STRING(key), n)
        if kind == RT_ROOT:
            puid = root_uid
            ph = <uint32_t>_rt_mum(<uint64_t>puid ^ self._seed ^ RT_P2, RT_P0) & self._hmask
            j = ph & self._mask
        else:
            puid = self._tab[pj].uid
            self._tab[pj].flags |= <uint8_t>(RT_HAS_STATIC << kind)
            if kind == RT_STATIC:
                hs = _rt_hash(<const unsigned char*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), self._seed)
                ph = _rt_child_ph(self._tab[pj].phash, hs) & self._hmask     # as _edge_ph, hashed once
                self._tab[pj].sfilter |= _rt_sbit(hs)
                self._add_segment(hs)
            else:
                ph = _rt_kind_ph(self._tab[pj].phash, kind) & self._hmask
            j = (<uint64_t>pj) ^ 1
            if self._tab[j].uid != 0:
                j = ph & self._mask
        while self._tab[j].uid != 0:
            j = (j + 1) & self._mask
        x = self._tab + j
        x.phash = ph
        x.uid = puid if kind == RT_ROOT else self._next_uid
        x.parent = puid
        x.seg = seg
        x.seglen = <uint8_t>(n if n < RT_LONGSEG else RT_LONGSEG)
        x.sfilter = 0
        x.flags = <uint8_t>(kind | (RT_NOVARS if novars else 0))
        x.fastmask = 0
        x.fast = NULL
        self._used += 1
        if kind != RT_ROOT:
            self._next_uid += 1
        return <Py_ssize_t>j

    cdef _RtRoot _root(self, str host, bint create):
        cdef bytes h = host.lower().encode() if host.isascii() else host.lower().encode("idna")
        cdef _RtRoot root
        self._last_host = None      # a new root may change what a host maps to
        if h == b"*":
            if self._default is None and create:
                self._default = self._new_root()
            return self._default
        if h.startswith(b"*."):
            table, key = self._wild, h[1:]
        else:
            table, key = self._exact, h
        root = table.get(key)
        if root is None and create:
            root = self._new_root()
            table[key] = root
        return root

    cdef _RtRoot _new_root(self):
        cdef _RtRoot root = _RtRoot.__new__(_RtRoot)
        cdef Py_ssize_t j
        if self._next_uid == 0xFFFFFFFF:
            raise MemoryError("router: too many nodes")
        root.uid = self._next_uid
        self._reserve(1)
        j = self._insert(-1, root.uid, RT_ROOT, None, True)
        self._next_uid += 1
        root.phash = self._tab[j].phash
        return root

    cdef int _set_route(self, Py_ssize_t j, str method, object route) except -1:
        cdef uint32_t uid = self._tab[j].uid
        cdef dict by = self._byname.get(uid)
        cdef _RTerm term = None
        cdef _RtEnt* e
        cdef int mi
        cdef uint8_t mask = 0
        cdef bint novars
        if by is None:
            by = {}
            self._byname[uid] = by
        by[method] = route
        self._pms[uid] = PathMethods(dict(by))
        novars = (self._tab[j].flags & RT_NOVARS) != 0
        # Resolved once here, per method index: exact > HEAD->GET > ANY.
        anyr = by.get("ANY")
        res = []
        for name in _RT_MINDEX:
            r = by.get(name)
            if r is None and name == "HEAD":
                r = by.get("GET")
            res.append(anyr if r is None else r)
        res.append(anyr)
        answers = {}  # id(route) -> what match returns for it
        for r in res:
            if r is not None and id(r) not in answers:
                # PERF: a node without variables answers with one ready tuple, no allocation.
                answers[id(r)] = (200, r, _rt_EMPTY) if novars else r
        for mi in range(RT_NMETHODS):
            if res[mi] is not None:
                mask |= <uint8_t>(1 << mi)
        if len(answers) > 1:
            term = _RTerm.__new__(_RTerm)
            for mi in range(RT_NMETHODS):
                if res[mi] is not None:
                    term.res[mi] = <PyObject*>answers[id(res[mi])]
            fast = term
        else:
            fast = next(iter(answers.values()), None)
        e = self._tab + j
        e.fast = NULL if fast is None else <PyObject*>fast
        e.fastmask = mask
        e.flags = <uint8_t>((e.flags & ~RT_MULTI) | RT_TERMINAL | (RT_MULTI if term is not None else 0))
        self._objs[uid] = (fast, tuple(answers.values()))
        return 0

    def add(self, hosts, str prefix, str template, str method, route):
        """Add ``route`` for (each host, prefix + template, method); returns the variable names.

        Raises ValueError for a bad template and RouteConflict for a duplicate; nothing is
        added when it raises.
        """
        cdef _RtRoot root
        cdef Py_ssize_t j, child
        cdef int kind
        cdef bint novars
        cdef dict by
        segs, names = _rt_parse_template(prefix, template)
        method = method.upper()
        if method not in _RT_METHODS:
            raise ValueError(f"unknown method {method!r}")
        hosts = list(hosts) or ["*"]
        for host in hosts:
            root = self._root(host, False)
            if root is None:
                continue
            j = self._slot_of(root.uid, root.phash)
            for kind, key in segs:
                j = self._find(j, kind, key)
                if j < 0:
                    break
            if j < 0:
                continue
            by = self._byname.get(self._tab[j].uid)
            if by is not None and method in by:
                raise RouteConflict(
                    f"{method} {prefix}{template} on host {host!r} duplicates a route "
                    f"with the same shape and method")
        for host in hosts:
            root = self._root(host, True)
            self._reserve(len(segs))
            j = self._slot_of(root.uid, root.phash)
            novars = True
            for kind, key in segs:
                if kind != RT_STATIC:
                    novars = False
                child = self._find(j, kind, key)
                j = child if child >= 0 else self._insert(j, 0, kind, key, novars)
            self._set_route(j, method, route)
        self.count += 1
        return names

    # -- matching ----------------------------------------------------------------------

    cdef _RtRoot _root_for(self, bytes host):
        cdef bytes last = self._last_host
        cdef _RtRoot root
        # PERF: each request brings a new bytes object for its Host, so a dict lookup
        # hashes it (SipHash, ~160 instructions); comparing it with the last one is cheaper.
        if last is not None and (host is last or _bytes_is(host, PyBytes_AS_STRING(last), PyBytes_GET_SIZE(last))):
            return self._last_root
        root = self._lookup_root(host)
        self._last_host = host
        self._last_root = root
        return root

    cdef _RtRoot _lookup_root(self, bytes host):
        cdef PyObject* o = PyDict_GetItem(self._exact, host)
        cdef Py_ssize_t i
        if o != NULL:
            return <_RtRoot>o
        if self._wild:
            # Longest suffix first: try ".b.example.com", then ".example.com", ...
            i = host.find(b".")
            while i >= 0:
                o = PyDict_GetItem(self._wild, host[i:])
                if o != NULL:
                    return <_RtRoot>o
                i = host.find(b".", i + 1)
        return self._default

    cpdef tuple match(self, bytes host, bytes method, bytes path):
        """(200, route, values) | (404, None, None) | (405, PathMethods, values)."""
        if host is None or method is None or path is None:
            raise TypeError("match() takes bytes host, method and path")
        cdef _RtRoot root = self._root_for(host)
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(path)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(path)
        cdef Py_ssize_t i, j, cap
        cdef int nseg = 0, d, mi
        cdef uint32_t ph
        cdef Py_ssize_t stack_buf[4 * RT_STACK_SEGS]
        cdef uint64_t stack_hs[RT_STACK_SEGS]
        cdef Py_ssize_t* buf = stack_buf
        cdef uint64_t* hs = stack_hs
        cdef const _RtEnt* e
        cdef _RtCtx c
        cdef PyObject* o
        cdef tuple values = _rt_EMPTY
        if root is None:
            return (404, None, None)
        # PERF: segment offsets and hashes live in C stack arrays; the heap only for >64 segments.
        cap = 1
        for i in range(n):
            if p[i] == 47:
                cap += 1
        if cap > RT_STACK_SEGS:
            buf = <Py_ssize_t*>PyMem_Malloc(4 * cap * sizeof(Py_ssize_t))
            hs = <uint64_t*>PyMem_Malloc(cap * sizeof(uint64_t))
            if buf == NULL or hs == NULL:
                PyMem_Free(buf)
                PyMem_Free(hs)
                raise MemoryError()
        try:
            i = 1
            while i < n:
                j = i
                while j < n and p[j] != 47:
                    j += 1
                buf[nseg] = i
                buf[cap + nseg] = j
                nseg += 1
                i = j + 1
            if nseg > 0 and buf[nseg - 1] == buf[cap + nseg - 1]:
                nseg -= 1  # one trailing "/" is ignored for matching
            for d in range(nseg):
                hs[d] = _rt_hash(p + buf[d], buf[cap + d] - buf[d], self._seed)
            c.tab = self._tab
            c.mask = self._mask
            c.hmask = self._hmask
            c.pool = self._pool
            c.p = p
            c.ss = buf
            c.se = buf + cap
            c.hs = hs
            c.vs = buf + 2 * cap
            c.ve = buf + 3 * cap
            c.pend = n
            c.nseg = nseg
            c.k = 0
            if self._mask >= RT_PREFETCH_MIN_CAP:
                # PERF: a node's place follows from its parent's path hash and the segment
                # alone, so the slots of the nodes the walk will likely visit are known before
                # it reads any of them: fetch them all at once, and the walk waits for about
                # one memory latency instead of one per level. The likely path takes a
                # segment as static when some node anywhere has it as its segment
                # (_segbits), else as a {var}: /users/123/orders fetches users, {var} and
                # orders, not 123 and what would hang below it. A slot fetched for nothing
                # is a random line of the table pulled into L1 on every request.
                ph = root.phash
                for d in range(min(nseg, RT_PREFETCH_DEPTH)):
                    if self._segbits != NULL and _rt_bit(self._segbits, hs[d] >> self._segshift):
                        ph = _rt_child_ph(ph, hs[d]) & c.hmask
                    else:
                        ph = _rt_kind_ph(ph, RT_VAR) & c.hmask
                    _rt_prefetch(c.tab + (ph & c.mask))
            e = _rt_walk(&c, c.tab + self._slot_of(root.uid, root.phash), 0, 0)
            if e == NULL:
                return (404, None, None)
            if c.k:
                values = _rt_values(path, c.vs, c.ve, c.k)
        finally:
            if buf != stack_buf:
                PyMem_Free(buf)
                PyMem_Free(hs)
        mi = _rt_method_index(method)
        if mi < 0:
            o = NULL
        elif e.flags & RT_MULTI:
            o = (<_RTerm>e.fast).res[mi]
        elif (e.fastmask >> mi) & 1:
            o = e.fast
        else:
            o = NULL
        if o == NULL:
            return (405, self._pms[e.uid], values)
        if e.flags & RT_NOVARS:
            return <tuple>o
        return (200, <object>o, values)

    # -- tests -------------------------------------------------------------------------

    def _debug_set_hash(self, mask, seed=None):
        """Tests only: AND every path hash with ``mask`` (0 puts every node in one probe run)."""
        if self._used:
            raise ValueError("only on an empty Router")
        self._hmask = mask
        if seed is not None:
            self._seed = seed

    def _debug_stats(self):
        """Tests only: capacity, used slots, pool bytes, the longest probe distance (of the
        nodes in their home runs), entry size, nodes in their parent's buddy slot."""
        cdef uint64_t j, longest = 0, dist, buddies = 0
        for j in range(self._mask + 1):
            if self._tab[j].uid == 0:
                continue
            if _rt_is_buddy(self._tab, j):
                buddies += 1
                continue
            dist = (j - (self._tab[j].phash & self._mask)) & self._mask
            longest = max(longest, dist)
        return {"capacity": self._mask + 1, "used": self._used, "pool_bytes": self._pool_len,
                "longest_probe": longest, "entry_bytes": sizeof(_RtEnt), "buddies": buddies}


# ---------------------------------------------------------------------------------------
# Backend-path templates: parsed once per route at config load, rendered per request.

DEF TP_LIT = 0
DEF TP_VAR = 1
DEF TP_QUERY = 2
DEF TP_HEADER = 3

_rt_PLACEHOLDER = _rt_re.compile(r"\$\{([^{}]*)\}|\{([^{}]*)\}")


cdef bytes _rt_pct_decode(bytes s, bint plus):
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(s)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(s), i = 0
    cdef int hi, lo
    out = bytearray()
    while i < n:
        if p[i] == 37 and i + 2 < n:
            hi = _rt_hexv[p[i + 1]]
            lo = _rt_hexv[p[i + 2]]
            if hi >= 0 and lo >= 0:
                out.append(hi * 16 + lo)
                i += 3
                continue
        if plus and p[i] == 43:
            out.append(32)
        else:
            out.append(p[i])
        i += 1
    return bytes(out)


cdef bytes _rt_pct_encode_segment(bytes s):
    """Every byte but unreserved encoded; "." and ".." become empty (SECURITY: no dot segments)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(s)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(s), i
    if s == b"." or s == b"..":
        return b""
    out = bytearray()
    for i in range(n):
        if _rt_cls[p[i]] == RT_UNRES:
            out.append(p[i])
        else:
            out += b"%" + _rt_HEX[p[i] >> 4: (p[i] >> 4) + 1] + _rt_HEX[p[i] & 15: (p[i] & 15) + 1]
    return bytes(out)


cdef class Template:
    """A backend path with {var}, {var*}, ${stage.x} (resolved at compile), ${query.x}, ${header.x}."""

    cdef readonly bint is_static
    cdef readonly str source
    cdef bytes _static
    cdef tuple _kinds
    cdef tuple _args

    def render(self, tuple values, bytes query=b"", list headers=None):
        """Backend path bytes. ``headers`` is a list of (name, value) bytes pairs."""
        cdef Py_ssize_t j, n
        cdef int kind
        if self.is_static:
            return self._static
        n = len(self._kinds)
        parts = []
        for j in range(n):
            kind = self._kinds[j]
            arg = self._args[j]
            if kind == TP_LIT:
                parts.append(arg)
            elif kind == TP_VAR:
                parts.append(values[<Py_ssize_t>arg])
            elif kind == TP_QUERY:
                parts.append(_rt_pct_encode_segment(_rt_query_value(query, arg)))
            else:
                parts.append(_rt_pct_encode_segment(_rt_header_value(headers, arg)))
        return b"".join(parts)

    def __repr__(self):
        return f"Template({self.source!r})"


def query_value(query, bytes name):
    """The first value of query argument ``name`` (its bytes, percent-decoded, '+' a space)
    in the raw ``query``; b"" when absent. What backend_path's and header values'
    ``${query.x}`` take: the client's bytes, whatever their encoding."""
    return _rt_query_value(query if type(query) is bytes else b"", name)


cdef bytes _rt_query_value(bytes query, bytes name):
    if not query:
        return b""
    for pair in query.split(b"&"):
        k, sep, v = pair.partition(b"=")
        if _rt_pct_decode(k, True) == name:
            return _rt_pct_decode(v, True)
    return b""


cdef bytes _rt_header_value(list headers, bytes name):
    if not headers:
        return b""
    for item in headers:
        if (<bytes>item[0]).lower() == name:
            return item[1]
    return b""


@cython.wraparound(True)
def compile_template(str template, tuple param_names, dict stage_vars):
    """Parse a backend path once; ValueError names an unknown variable or a bad placeholder."""
    cdef Template t = Template.__new__(Template)
    kinds = []
    args = []
    pos = 0
    known = ", ".join(param_names) or "none"
    for m in _rt_PLACEHOLDER.finditer(template):
        lit = template[pos:m.start()]
        if "{" in lit or "}" in lit:
            raise ValueError(f"stray brace in {template!r}")
        if lit:
            kinds.append(TP_LIT)
            args.append(lit.encode())
        pos = m.end()
        if m.group(1) is not None:
            scope, dot, name = m.group(1).partition(".")
            if not dot or not name:
                raise ValueError(f"bad placeholder ${{{m.group(1)}}} (use stage.x, query.x or header.x)")
            if scope == "stage":
                if name not in stage_vars:
                    raise ValueError(f"unknown stage variable ${{stage.{name}}}")
                kinds.append(TP_LIT)
                args.append(str(stage_vars[name]).encode())
            elif scope == "query":
                kinds.append(TP_QUERY)
                args.append(name.encode())
            elif scope == "header":
                kinds.append(TP_HEADER)
                args.append(name.lower().encode())
            else:
                raise ValueError(f"bad placeholder ${{{m.group(1)}}} (use stage.x, query.x or header.x)")
        else:
            name = m.group(2)
            if name.endswith("*"):
                name = name[:-1]
            if name not in param_names:
                raise ValueError(f"unknown variable {{{m.group(2)}}} (known: {known})")
            kinds.append(TP_VAR)
            args.append(param_names.index(name))
    lit = template[pos:]
    if "{" in lit or "}" in lit:
        raise ValueError(f"stray brace in {template!r}")
    if lit:
        kinds.append(TP_LIT)
        args.append(lit.encode())
    # PERF: adjacent literals are merged so render joins as few pieces as possible.
    mk = []
    ma = []
    for kind, arg in zip(kinds, args):
        if kind == TP_LIT and mk and mk[-1] == TP_LIT:
            ma[-1] = ma[-1] + arg
        else:
            mk.append(kind)
            ma.append(arg)
    t._kinds = tuple(mk)
    t._args = tuple(ma)
    t.source = template
    t.is_static = all(k == TP_LIT for k in mk)
    t._static = b"".join(ma) if t.is_static else None
    return t

