# part of fastgw/_core.pyx (see its docstring)
#
# proxy-cache's node store, the reading side (the region and its layout:
# fastgw/cache_region.py). A cache hit looks its answer up here without a system call: the
# writers, one at a time under the file's flock, count a sequence word up before and after
# they change the index or the ring (odd while they write), and a reader takes what it read
# only when the word was even and unchanged around its reading (a sequence lock). A reader
# that keeps meeting a writer says so (CACHE_BUSY) and the caller reads under the flock.
#
# What a reader sees mid-write may be garbage: every position and length is checked to lie
# inside the ring before a byte is copied, and the copy is thrown away unless the sequence
# word says nothing changed.

from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

cdef extern from *:
    """
    static inline uint64_t fgw_cr_load_acquire(uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline uint64_t fgw_cr_load_relaxed(uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline void fgw_cr_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
    static inline void fgw_cr_begin(uint64_t *p) {
        /* odd (still odd when a writer died at work), then a release fence: the writer's
           stores after this are seen after it */
        __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) | 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_RELEASE);
    }
    static inline void fgw_cr_end(uint64_t *p) {
        __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + 1, __ATOMIC_RELEASE);
    }
    """
    uint64_t fgw_cr_load_acquire(uint64_t *p) nogil
    uint64_t fgw_cr_load_relaxed(uint64_t *p) nogil
    void fgw_cr_fence_acquire() nogil
    void fgw_cr_begin(uint64_t *p) nogil
    void fgw_cr_end(uint64_t *p) nogil

DEF _CR_SLOT = 48              # key digest 16, position u64, length u32, tags 3 x u32, expires f64
DEF _CR_RECORD_HEAD = 20       # key digest 16, payload length u32
DEF _CR_TRIES = 16

CACHE_BUSY = False             # lookup(): a writer was at work every time it looked
CACHE_UNKNOWN = 0xFFFFFFFFFFFFFFFF   # lookup()'s known_pos when the caller has no record decoded


cdef inline uint64_t _cr_le64(const unsigned char* p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(7, -1, -1):
        v = (v << 8) | p[i]
    return v


@cython.final
cdef class CacheReader:
    """Lock-free lookups in a cache region's index and ring, and the sequence word its
    writers count up around their changes (``write_begin``/``write_end``)."""

    cdef unsigned char[::1] _mv            # keeps the mapping exported while we point into it
    cdef unsigned char* _base
    cdef uint64_t* _seq
    cdef uint64_t* _head
    cdef Py_ssize_t _index
    cdef Py_ssize_t _data
    cdef uint64_t _mask
    cdef int _ways
    cdef uint64_t _cap

    def __cinit__(self, object buffer, Py_ssize_t seq_at, Py_ssize_t head_at, Py_ssize_t index,
                  Py_ssize_t buckets, int ways, Py_ssize_t data, Py_ssize_t capacity):
        self._mv = buffer
        cdef Py_ssize_t size = self._mv.shape[0]
        if buckets < 1 or buckets & (buckets - 1) or ways < 1 or capacity < 1024:
            raise ValueError("cache reader: bad geometry")
        if (seq_at % 8 or head_at % 8 or seq_at + 8 > index or head_at + 8 > index or index % 8
                or index + buckets * ways * _CR_SLOT > data or data + capacity > size):
            raise ValueError("cache reader: tables outside the region")
        self._base = &self._mv[0]
        self._seq = <uint64_t*>(self._base + seq_at)
        self._head = <uint64_t*>(self._base + head_at)
        self._index = index
        self._data = data
        self._mask = <uint64_t>buckets - 1
        self._ways = ways
        self._cap = <uint64_t>capacity

    cpdef object lookup(self, bytes key, double now, uint64_t known_pos, bint held=False):
        """``key``'s (16-byte digest) fresh record at ``now`` (monotonic): ``(position,
        payload, older half)``, the payload None when the record is the one at ``known_pos``
        (the caller decoded it already); None when there is none; CACHE_BUSY when writers
        kept changing the store while it looked. ``held``: the caller holds the file's
        flock, so no writer is at work (the word may be odd: one died at work)."""
        if PyBytes_GET_SIZE(key) != 16:
            raise ValueError("cache reader: a key is 16 bytes")
        cdef const unsigned char* k = <const unsigned char*>PyBytes_AS_STRING(key)
        cdef const unsigned char* bucket = self._base + self._index + (_cr_le64(k) & self._mask) * self._ways * _CR_SLOT
        cdef const unsigned char* slot
        cdef const unsigned char* rec
        cdef uint64_t s1, head, pos, off
        cdef uint32_t length, n
        cdef double expires
        cdef int w, attempt
        cdef object result
        for attempt in range(_CR_TRIES):
            s1 = fgw_cr_load_acquire(self._seq)
            if s1 & 1 and not held:
                continue
            result = None
            head = self._head[0]
            for w in range(self._ways):
                slot = bucket + w * _CR_SLOT
                if memcmp(slot, k, 16) == 0:
                    memcpy(&pos, slot + 16, 8)
                    memcpy(&length, slot + 24, 4)
                    memcpy(&expires, slot + 40, 8)
                    if length < _CR_RECORD_HEAD or expires <= now or pos > head or head - pos > self._cap:
                        break
                    if pos == known_pos:
                        result = (pos, None, head - pos > self._cap // 2)
                        break
                    off = pos % self._cap
                    if off + length > self._cap:
                        break
                    rec = self._base + self._data + off
                    memcpy(&n, rec + 16, 4)
                    if memcmp(rec, k, 16) != 0 or <uint64_t>n + _CR_RECORD_HEAD != length:
                        break
                    result = (pos, PyBytes_FromStringAndSize(<const char*>rec + _CR_RECORD_HEAD, n),
                              head - pos > self._cap // 2)
                    break
            fgw_cr_fence_acquire()
            if held or fgw_cr_load_relaxed(self._seq) == s1:
                return result
        return CACHE_BUSY

    def write_begin(self) -> None:
        """A writer (holding the file's exclusive flock) starts changing index or ring."""
        fgw_cr_begin(self._seq)

    def write_end(self) -> None:
        """... and is done: readers may take what they read from here on."""
        fgw_cr_end(self._seq)

    def writing(self) -> bool:
        """The sequence word is odd (a writer is at work, or died at work)."""
        return bool(fgw_cr_load_relaxed(self._seq) & 1)


DEF _CE_OVERHEAD = 256         # bytes counted per entry beyond its body and headers


@cython.final
cdef class CacheEntry:
    """One stored answer of proxy-cache (``fastgw.plugins.proxy_cache.Entry``): its status,
    header fields, body, ETag, when stored, until when fresh, until when it may stand in
    for a backend that fails (``stale_until``) and answer while another request asks the
    backend for a new one (``updating_until``), until when it is kept (the later of the
    two; all on one clock), the Age it came with, and the bytes it is counted as."""

    cdef public int status
    cdef public list headers
    cdef public bytes body
    cdef public object etag
    cdef public double stored
    cdef public double expires
    cdef public double stale_until
    cdef public double updating_until
    cdef public double kept_until
    cdef public long long age0
    cdef public Py_ssize_t size

    def __init__(self, int status, list headers, bytes body, etag, double stored, double expires, long long age0,
                 double stale_until=0.0, double updating_until=0.0):
        self.status = status
        self.headers = headers
        self.body = body
        self.etag = etag
        self.stored = stored
        self.expires = expires
        self.stale_until = stale_until if stale_until > expires else expires
        self.updating_until = updating_until if updating_until > expires else expires
        self.kept_until = self.stale_until if self.stale_until > self.updating_until else self.updating_until
        self.age0 = age0
        cdef Py_ssize_t n = PyBytes_GET_SIZE(body) + _CE_OVERHEAD
        for pair in headers:
            n += len((<tuple>pair)[0]) + len((<tuple>pair)[1])
        self.size = n


cdef tuple _CH_HIT = (b"X-Cache-Status", b"Hit")
cdef bytes _CH_AGE = b"Age"


@cython.final
cdef class CacheHitStep:
    """proxy-cache's request phase on a route whose answers are in the node's store: answers
    the common hit in C (no request header that changes what is looked up or how it is
    answered, the answer decoded by this worker before and still the key's record in the
    store, not in the ring's older half) and hands every other request to the plugin's
    Python ``on_request`` (``fallback``), which does the same and everything else. Both
    compute the same key, so which one answers a given request changes nothing but the cost."""

    cdef object fallback       # the plugin's on_request (bound)
    cdef CacheReader reader
    cdef dict names            # the plugin's key -> digest memo (filled by the fallback)
    cdef object decoded        # the worker's digest -> (position, Entry) memo (an OrderedDict: filled by the fallback)
    cdef tuple vary            # request header names in the key, lower-case bytes

    def __init__(self, fallback, CacheReader reader, dict names, decoded, tuple vary):
        if not isinstance(decoded, dict):
            raise TypeError("cache hit step: decoded must be a dict (or an OrderedDict)")
        self.fallback = fallback
        self.reader = reader
        self.names = names
        self.decoded = decoded
        self.vary = vary

    def __call__(self, RequestContext ctx):
        cdef object method = ctx.method
        if method != "GET" and method != "HEAD":
            return self.fallback(ctx)
        if (ctx.find_req_header(b"cache-control") is not None or ctx.find_req_header(b"pragma") is not None
                or ctx.find_req_header(b"range") is not None or ctx.find_req_header(b"if-none-match") is not None):
            return self.fallback(ctx)
        consumer = ctx.consumer
        if consumer is None:
            if ctx.find_req_header(b"authorization") is not None:
                return self.fallback(ctx)
            who = None
        else:
            who = getattr(consumer, "name", consumer)
        cdef list values = []
        cdef bytes v
        for lname in self.vary:
            v = ctx.find_req_header(<bytes>lname)
            values.append(None if v is None else v.decode("latin-1"))
        name = self.names.get((ctx.path, ctx.query, who, tuple(values)))
        if name is None:
            return self.fallback(ctx)
        known = (<dict>self.decoded).get(name)     # PERF: the dict API (an OrderedDict is one)
        if known is None:
            return self.fallback(ctx)
        cdef double now = _mono()
        found = self.reader.lookup(<bytes>name, now, <uint64_t>(<tuple>known)[0], False)
        if found is None or found is CACHE_BUSY or (<tuple>found)[1] is not None or (<tuple>found)[2]:
            return self.fallback(ctx)     # gone, a new record, or one to keep: the plugin does it
        cdef CacheEntry entry = <CacheEntry>(<tuple>known)[1]
        if entry.expires <= now:
            return self.fallback(ctx)     # kept past its freshness (stale windows): not a hit
        cdef double age = now - entry.stored
        cdef list headers = list(entry.headers)
        headers.append((_CH_AGE, str(entry.age0 + (<long long>age if age > 0 else 0)).encode("ascii")))
        headers.append(_CH_HIT)
        ctx.answer_status = entry.status          # ctx.answer, without copying the list again
        ctx.answer_body = entry.body
        ctx._answer_headers = headers
        return CTX_ANSWERED


@cython.final
cdef class CacheLogStep:
    """proxy-cache's log phase in C: an exchange whose answer was to be stored and was not
    (it broke off, or the gateway answered instead) lets the requests waiting on it go
    (``release(None)`` on the tap). A hit has no tap: nothing to do."""

    cdef object fill_type

    def __init__(self, fill_type):
        self.fill_type = fill_type

    def __call__(self, RequestContext ctx):
        tap = ctx.response_tap
        if tap is not None and type(tap) is self.fill_type:
            tap.release(None)
