# part of fastgw/_core.pyx (see its docstring)
#
# The compiled plugin chain of a route and the built-in plugins' per-request work in C.
#
# - StepChain: a route's plugins split by phase, run by a C loop. A step is either a
#   NativeStep (a built-in plugin's C part, called through its vtable) or any Python
#   callable (``plugin.on_request`` etc. of a custom plugin). fastgw.pipeline.Pipeline
#   builds one per route and the server calls it directly (``Route.chain``).
# - NativeStep subclasses: key-auth, basic-auth's verified credentials, hmac-auth's plainly
#   signed requests, acl, ip-restriction's judged callers, cors on requests from known
#   origins, request-transformer's header edits (templates rendered here), request-id,
#   request-size-limit,
#   response-headers. Their Python modules
#   (fastgw/plugins/*.py) keep the schema and settings; they build the step at config load
#   and delegate their phase methods to it, so each behaviour is written once, here.
# - KeyIndex: API keys -> consumers, looked up by a keyed SipHash-2-4 of the key.

from cpython.mem cimport PyMem_Calloc
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.math cimport fabs
from libc.stdint cimport uint8_t, uint64_t

import logging as _plogging

cdef object _plog = _plogging.getLogger("fastgw.pipeline")

# SECURITY: headers that carry the gateway's word about the caller. A client's copies are
# always removed, on every route with plugins, so a backend can trust them.
IDENTITY_HEADER_NAMES = (
    b"x-anonymous-consumer", b"x-consumer-custom-id", b"x-consumer-groups", b"x-consumer-id",
    b"x-consumer-name", b"x-consumer-username", b"x-credential-identifier",
)
cdef tuple _IDENTITY = IDENTITY_HEADER_NAMES


cdef inline bint _may_be_identity(object name):
    """PERF: every identity name starts with "x-" and has 13 to 23 bytes; most request
    headers fail this test, so the full comparison against seven names is skipped."""
    cdef const char* p = PyBytes_AS_STRING(<bytes>name)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(<bytes>name)
    return 13 <= n <= 23 and (p[0] == 120 or p[0] == 88) and p[1] == 45


cpdef int strip_identity(list headers) except -1:
    """Remove the identity headers (IDENTITY_HEADER_NAMES) from ``headers`` in place."""
    for item in headers:
        if _may_be_identity((<tuple>item)[0]):
            remove_headers(headers, _IDENTITY)
            break
    return 0


# ---------------------------------------------------------------------------------------
# The chain
# ---------------------------------------------------------------------------------------

DEF STEP_PYTHON = 2     # NativeStep.request: "not in C: run the plugin's Python phase (deferred)"
DEF STEP_WAIT = 3       # NativeStep.request: "the request waits on ctx._waiting (its result: the verdict)"


cdef class NativeStep:
    """A built-in plugin's per-request work in C (override the phases it implements).

    ``request`` returns 0 (pass) or 1 (answered), or STEP_PYTHON to hand the request to
    ``deferred``: ``fallback``, the plugin's Python phase (a step that answers only the
    requests its plugin has seen the like of: cors, ip-restriction, jwt), whose result may
    be an awaitable (the chain then waits for it, as for any Python step), or STEP_WAIT
    when it set ``ctx._waiting`` to an awaitable of its verdict itself (hmac-auth's replay
    check in Redis)."""

    cdef object fallback         # the plugin's Python on_request, for STEP_PYTHON (else None)

    cdef int request(self, RequestContext ctx) except -1:
        return 0

    cdef int response(self, RequestContext ctx) except -1:
        return 0

    cpdef object deferred(self, RequestContext ctx):
        if self.fallback is None:
            raise NotImplementedError("this step never hands a request on")
        return self.fallback(ctx)

    def on_request(self, RequestContext ctx):
        return self(ctx)

    def on_response(self, RequestContext ctx):
        self.response(ctx)

    def __call__(self, RequestContext ctx):
        """The request phase from Python (a step set as a plugin's ``on_request``)."""
        cdef int r = self.request(ctx)
        if r == STEP_WAIT:
            waiting, ctx._waiting = ctx._waiting, None
            return waiting
        return self.deferred(ctx) if r == STEP_PYTHON else r


@cython.final  # PERF: its methods are called directly (no vtable)
cdef class StepChain:
    """One route's phase steps in priority order (see fastgw/pipeline.py for the contract)."""

    cdef readonly tuple req      # request-phase steps
    cdef readonly tuple resp     # response-phase steps
    cdef readonly tuple logs     # log-phase callables
    cdef object log_task        # callable(coroutine): runs an async on_log step (set by Pipeline)
    # Every response step is a ResponseHeadersStep and nothing reads ctx.response_headers
    # later (no log step): the edits go straight onto the scanned head (apply_to_head).
    cdef readonly bint head_only_response
    # Every step is a built-in C step and there is no log step: no code keeps the request's
    # context past its exchange (what lets the server keep its headers on the scan,
    # Route.ctx_lazy; a settings template may still read them during the exchange).
    cdef readonly bint native_only

    def __init__(self, req, resp, logs, log_task=None):
        self.req = tuple(req)
        self.resp = tuple(resp)
        self.logs = tuple(logs)
        self.log_task = log_task
        self.native_only = not self.logs and all(isinstance(s, NativeStep) for s in self.req + self.resp)
        self.head_only_response = bool(self.resp) and not self.logs and all(
            isinstance(s, ResponseHeadersStep) for s in self.resp)

    cdef list apply_to_head(self, ResponseHead r, RequestContext ctx):
        """The response phase of a ``head_only_response`` chain on the backend's scanned head:
        drops are marked on ``r``; returns the headers to send after the backend's."""
        cdef list out = []
        try:
            for step in self.resp:
                (<ResponseHeadersStep>step).apply_head(r, ctx, out)
        except Exception:
            _plog.exception("response plugin error (request %s)", ctx.request_id)
        if ctx.response_headers_add:
            out.extend(ctx.response_headers_add)
        return out

    # The request phase's rules, one implementation for run_request and for the async path
    # (Pipeline.run_request_async): begin, then each step, then answered/crashed/passed.
    cpdef begin(self, RequestContext ctx):
        """SECURITY: identity headers from the client never reach the backend. (In lazy mode
        there is nothing to strip: the scan marks the client's copies H_CONSUMER, which are
        neither listed nor forwarded, and no step has added a header yet.)"""
        if ctx._head is None:
            strip_identity(ctx.headers)

    cpdef bint answered(self, RequestContext ctx):
        """A step answered: the answer is what the response phase sees."""
        ctx.status = ctx.answer_status
        ctx.response_headers = ctx.answer_headers
        return True

    cpdef bint crashed(self, RequestContext ctx):
        """SECURITY: a step that raised answers 500 (fail closed): a crashing auth plugin
        must never let the request through to the backend. Call from an except block."""
        _plog.exception("plugin error on %s %s (request %s)", ctx.method, ctx.path, ctx.request_id)
        ctx.error(500, "internal plugin error")
        return self.answered(ctx)

    cpdef bint passed(self, RequestContext ctx):
        """Every step let the request through: the authenticated caller's identity goes to
        the backend."""
        consumer = ctx.consumer
        if consumer is not None:
            if type(consumer) is Consumer:
                for pair in (<Consumer>consumer).headers:
                    ctx.add_req_header(<tuple>pair)
            else:
                for pair in consumer.headers:
                    ctx.add_req_header(tuple(pair))
        return False

    cpdef bint run_request(self, RequestContext ctx) except -1:
        """Run the request phase (sync steps); True when a step answered. A step that has to
        wait (it returned an awaitable) is an error here: the server and
        ``Pipeline.run_request_async`` use ``start_request``, which allows it."""
        cdef int state = self.start_request(ctx)
        if state == 2:
            ctx._drop_waiting()
            raise RuntimeError("a request step waits: run the request phase with start_request "
                               "(or Pipeline.run_request_async)")
        return state == 1

    cpdef int start_request(self, RequestContext ctx) except -1:
        """The server's request phase: 1 a step answered, 0 every step let the request
        through, 2 a step has to wait: ``ctx._waiting`` holds what it returned (an awaitable
        whose result is the step's: truthy when it answered) and ``Pipeline.finish_request``
        goes on from there. PERF: the steps that answer at once (a cache hit) keep the
        request on this path, with no task."""
        self.begin(ctx)
        return self.continue_request(ctx, 0)

    cpdef int resume_request(self, RequestContext ctx, object verdict) except -1:
        """A waiting step's result came (``verdict``, truthy: it answered): as
        ``start_request`` from there (1, 0, or 2: a later step waits in turn). A verdict
        that is itself awaitable is what the step waits on next (2 again): a future's
        callback can settle the common case at once and hand the rest to a coroutine (PERF:
        proxy-cache answers a Redis hit with no task)."""
        if verdict is not None and type(verdict) is not int and type(verdict) is not bool \
                and hasattr(verdict, "__await__"):
            ctx._waiting = verdict
            return 2
        if verdict:
            self.answered(ctx)
            return 1
        return self.continue_request(ctx, ctx._resume_at)

    cpdef int continue_request(self, RequestContext ctx, int start) except -1:
        """The steps from index ``start`` on (``start_request`` without ``begin``)."""
        cdef Py_ssize_t i, n = len(self.req)
        cdef int r
        try:
            for i in range(start, n):
                step = self.req[i]
                if isinstance(step, NativeStep):
                    r = (<NativeStep>step).request(ctx)
                    if r == STEP_WAIT:
                        ctx._resume_at = <int>(i + 1)
                        return 2
                    if r != STEP_PYTHON:
                        if r:
                            self.answered(ctx)
                            return 1
                        continue
                    result = (<NativeStep>step).deferred(ctx)
                else:
                    result = step(ctx)
                # PERF: the usual int answer is told apart without an attribute lookup.
                if not (result is None or type(result) is int or type(result) is bool) \
                        and hasattr(result, "__await__"):
                    ctx._waiting = result
                    ctx._resume_at = <int>(i + 1)
                    return 2
                if result:
                    self.answered(ctx)
                    return 1
        except Exception:
            self.crashed(ctx)
            return 1
        self.passed(ctx)
        return 0

    cpdef run_response(self, RequestContext ctx):
        """Run the response phase on ``ctx.status`` / ``ctx.response_headers``."""
        try:
            for step in self.resp:
                if isinstance(step, NativeStep):
                    (<NativeStep>step).response(ctx)
                else:
                    step(ctx)
        except Exception:
            _plog.exception("response plugin error (request %s)", ctx.request_id)

    cpdef run_log(self, RequestContext ctx):
        """Run the log phase; always called, also after an early answer."""
        for step in self.logs:
            try:
                result = step(ctx)
                if result is not None and self.log_task is not None:
                    self.log_task(result)
            except Exception:
                _plog.exception("log plugin error (request %s)", ctx.request_id)


# ---------------------------------------------------------------------------------------
# SipHash-2-4 (Aumasson & Bernstein): a fast keyed PRF for short inputs.
# ---------------------------------------------------------------------------------------

cdef inline uint64_t _rotl(uint64_t x, int b) noexcept nogil:
    return (x << b) | (x >> (64 - b))


cdef inline void _sipround(uint64_t* v, int n) noexcept nogil:
    cdef int r
    for r in range(n):
        v[0] += v[1]; v[1] = _rotl(v[1], 13); v[1] ^= v[0]; v[0] = _rotl(v[0], 32)
        v[2] += v[3]; v[3] = _rotl(v[3], 16); v[3] ^= v[2]
        v[0] += v[3]; v[3] = _rotl(v[3], 21); v[3] ^= v[0]
        v[2] += v[1]; v[1] = _rotl(v[1], 17); v[1] ^= v[2]; v[2] = _rotl(v[2], 32)


cdef uint64_t siphash24(uint64_t k0, uint64_t k1, const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t v[4]
    cdef uint64_t m, b = (<uint64_t>n) << 56
    cdef Py_ssize_t i, j, end = n - (n % 8)
    v[0] = k0 ^ 0x736f6d6570736575ULL
    v[1] = k1 ^ 0x646f72616e646f6dULL
    v[2] = k0 ^ 0x6c7967656e657261ULL
    v[3] = k1 ^ 0x7465646279746573ULL
    for i in range(0, end, 8):
        m = 0
        for j in range(8):
            m |= (<uint64_t>p[i + j]) << (8 * j)
        v[3] ^= m
        _sipround(v, 2)
        v[0] ^= m
    for j in range(n - end):
        b |= (<uint64_t>p[end + j]) << (8 * j)
    v[3] ^= b
    _sipround(v, 2)
    v[0] ^= b
    v[2] ^= 0xff
    _sipround(v, 4)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def siphash(bytes key, bytes data):
    """SipHash-2-4 of ``data`` under a 16-byte ``key`` (little-endian k0, k1), as an int."""
    if len(key) != 16:
        raise ValueError("siphash key must be 16 bytes")
    cdef const uint8_t* k = <const uint8_t*>PyBytes_AS_STRING(key)
    cdef uint64_t k0 = 0, k1 = 0
    cdef int j
    for j in range(8):
        k0 |= (<uint64_t>k[j]) << (8 * j)
        k1 |= (<uint64_t>k[8 + j]) << (8 * j)
    return siphash24(k0, k1, <const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


def constant_time_equal(bytes a, bytes b):
    """``a == b`` in time that depends on the lengths only (as hmac.compare_digest)."""
    return ct_equal(a, b)


cdef bint ct_equal(bytes a, bytes b):
    """Constant-time equality of two byte strings (time depends on the lengths only)."""
    cdef Py_ssize_t na = PyBytes_GET_SIZE(a), nb = PyBytes_GET_SIZE(b), i
    cdef const uint8_t* pa = <const uint8_t*>PyBytes_AS_STRING(a)
    cdef const uint8_t* pb = <const uint8_t*>PyBytes_AS_STRING(b)
    cdef uint8_t acc = 0
    if na != nb:
        return False
    for i in range(na):
        acc |= pa[i] ^ pb[i]
    return acc == 0


ctypedef struct _KeySlot:
    uint64_t digest
    PyObject* entry          # NULL: empty


@cython.final  # PERF: its methods are called directly (no vtable)
cdef class KeyIndex:
    """API key -> consumer, for key-auth (built once per config, shared by its routes).

    SECURITY: a dict lookup by the raw key is not constant-time (the hash bucket and the
    final ``==`` both depend on how much of the key an attacker guessed). The index is
    keyed by SipHash-2-4 of the key under a per-process random 128-bit secret, a PRF whose
    value an attacker cannot steer byte by byte; a hit is confirmed by a constant-time
    comparison with the stored key. (PERF: ~30 ns in C; the keyed BLAKE2b it replaces cost
    ~500 ns through hashlib.)
    """

    cdef uint64_t k0, k1
    cdef readonly dict table     # digest (int) -> (key bytes, consumer): owns the entries
    # PERF: lookups probe a C copy of ``table`` (open addressing, linear probing, at most
    # half full): no int object for the digest and no dict lookup per request.
    cdef _KeySlot* slots
    cdef uint64_t mask

    def __cinit__(self):
        # Built here, not in __init__: ``slots`` is never NULL, however the object is made.
        self.slots = NULL
        self.table = {}
        self._rekey()
        self._rebuild()

    def __dealloc__(self):
        PyMem_Free(self.slots)

    cdef void _rekey(self):
        cdef bytes seed = _os.urandom(16)
        cdef const uint8_t* s = <const uint8_t*>PyBytes_AS_STRING(seed)
        cdef int j
        self.k0 = 0
        self.k1 = 0
        for j in range(8):
            self.k0 |= (<uint64_t>s[j]) << (8 * j)
            self.k1 |= (<uint64_t>s[8 + j]) << (8 * j)

    cdef int _rebuild(self) except -1:
        """Refill the C table from ``table`` (after every change: keys are few and static)."""
        cdef uint64_t cap = 8, j, d
        cdef _KeySlot* slots
        while cap < 2 * <uint64_t>len(self.table) + 2:
            cap *= 2
        slots = <_KeySlot*>PyMem_Calloc(cap, sizeof(_KeySlot))
        if slots == NULL:
            raise MemoryError()
        for digest, entry in self.table.items():
            d = <uint64_t>digest
            j = d & (cap - 1)
            while slots[j].entry != NULL:
                j = (j + 1) & (cap - 1)
            slots[j].digest = d
            slots[j].entry = <PyObject*>entry       # borrowed: ``table`` holds it
        PyMem_Free(self.slots)
        self.slots = slots
        self.mask = cap - 1
        return 0

    cpdef object digest(self, bytes key):
        """The keyed digest that indexes ``key`` (an int below 2**64)."""
        return siphash24(self.k0, self.k1, <const uint8_t*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))

    def add(self, bytes key, consumer):
        """Index ``key`` for ``consumer``; False (nothing changed) if the key is already used."""
        cdef list items
        for stored, _c in self.table.values():
            if stored == key:
                return False
        while True:
            digest = self.digest(key)
            if digest not in self.table:
                self.table[digest] = (key, consumer)
                self._rebuild()
                return True
            # Two keys with one 64-bit digest (odds ~2^-64): draw a new secret, re-index.
            items = list(self.table.values())
            self._rekey()
            self.table = {self.digest(k): (k, c) for k, c in items}

    def _plant(self, digest, bytes key, consumer):
        """Tests only: file (key, consumer) under ``digest`` whatever the key's own digest."""
        self.table[digest] = (key, consumer)
        self._rebuild()

    cpdef object lookup(self, bytes presented):
        """The consumer owning API key ``presented``, or None."""
        cdef uint64_t d = siphash24(self.k0, self.k1, <const uint8_t*>PyBytes_AS_STRING(presented),
                                    PyBytes_GET_SIZE(presented))
        cdef uint64_t j = d & self.mask
        cdef tuple hit
        while self.slots[j].entry != NULL:
            if self.slots[j].digest == d:
                hit = <tuple>self.slots[j].entry
                if ct_equal(<bytes>hit[0], presented):
                    return hit[1]
                return None
            j = (j + 1) & self.mask
        return None

    def __len__(self):
        return len(self.table)


# ---------------------------------------------------------------------------------------
# key-auth
# ---------------------------------------------------------------------------------------

cdef inline bytes _strip_ws(bytes b):
    """``b.strip()``; PERF: ``b`` itself, without a method call, when it has no ASCII
    whitespace at either end (a header value never has: the scanner trims SP and HTAB)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(b)
    if n == 0 or (not _is_ascii_ws(p[0]) and not _is_ascii_ws(p[n - 1])):
        return b
    return b.strip()


cdef inline bint _is_ascii_ws(unsigned char c) noexcept:
    return c == 32 or (9 <= c <= 13)


cdef inline void _trim_ascii_ws(const char* p, Py_ssize_t* i, Py_ssize_t* n) noexcept:
    """Narrow p[i:n] to what lies between its leading and trailing ASCII white space (a
    credential after its scheme: basic-auth's and jwt's steps)."""
    while i[0] < n[0] and _is_ascii_ws(<unsigned char>p[i[0]]):
        i[0] += 1
    while n[0] > i[0] and _is_ascii_ws(<unsigned char>p[n[0] - 1]):
        n[0] -= 1


cdef class KeyAuthStep(NativeStep):
    """Key from a header (first of ``header_names``), else from the query; 401 if unknown."""

    cdef tuple header_names      # lower-case bytes, checked in order
    cdef tuple query_names       # (str name, bytes "name=") pairs
    cdef bint hide
    cdef list challenge
    cdef KeyIndex index

    def __init__(self, KeyIndex index, tuple header_names, tuple query_names, bint hide, list challenge):
        self.index = index
        self.header_names = header_names
        self.query_names = query_names
        self.hide = hide
        self.challenge = challenge

    cdef int request(self, RequestContext ctx) except -1:
        cdef bytes key = None
        cdef bint in_query = False
        for lname in self.header_names:
            key = ctx.find_req_header(<bytes>lname)
            if key is not None:
                break
        query = ctx.query
        if key is None and query:
            for name, probe in self.query_names:
                if probe in query:  # PERF: parse the query only when the name appears in it
                    found = ctx.query_args.get(name)
                    if found is not None:
                        key, in_query = (<str>found).encode("utf-8"), True
                        break
        if not key:
            return ctx.error(401, "No API key found in request", self.challenge)
        consumer = self.index.lookup(_strip_ws(key))
        if consumer is None:
            return ctx.error(401, "Invalid authentication credentials", self.challenge)
        ctx.consumer = consumer
        if self.hide:
            if self.header_names:
                ctx.remove_req_headers(self.header_names)
            if in_query or query:
                for name, probe in self.query_names:
                    if probe in ctx.query:
                        ctx.remove_query_arg(name)
        return 0


# ---------------------------------------------------------------------------------------
# basic-auth
# ---------------------------------------------------------------------------------------

DEF _BA_REMEMBERED_MAX = 10000      # verified credentials a route remembers (then starts over)
cdef tuple _AUTHORIZATION = (b"authorization",)   # (for remove_req_headers)


@cython.final  # PERF: its methods are called directly (no vtable)
cdef class BasicAuthStep(NativeStep):
    """basic-auth's request phase for credentials this worker has verified before: the
    consumer set and (``hide``) the header removed, in C. Every other request goes to
    ``fallback``, the plugin's on_request (no or bad header, credentials never verified or
    no longer remembered: a bcrypt/scrypt check on its threads, which ``remember``s a
    success for ``ttl`` seconds). PERF: ~3.5 µs a request less than that check's cached
    path in Python (a header list built, a base64 decode and an HMAC).

    The token is read as the plugin reads it: ``Basic `` in any case, then trimmed of
    ASCII white space. SECURITY: credentials are remembered by ``mark``, a 128-bit keyed
    digest of the token (two SipHash-2-4 under a random 256-bit key of this step's own),
    never as the password or its base64."""

    cdef uint64_t k0, k1, k2, k3
    cdef readonly dict remembered   # mark (16 bytes) -> (consumer, expiry on the monotonic clock)
    cdef double ttl
    cdef bint hide

    def __init__(self, fallback, double ttl, bint hide):
        cdef bytes seed = _os.urandom(32)
        cdef const uint8_t* s = <const uint8_t*>PyBytes_AS_STRING(seed)
        cdef uint64_t k[4]
        cdef int i, j
        for i in range(4):
            k[i] = 0
            for j in range(8):
                k[i] |= (<uint64_t>s[8 * i + j]) << (8 * j)
        self.k0, self.k1, self.k2, self.k3 = k[0], k[1], k[2], k[3]
        self.fallback = fallback
        self.remembered = {}
        self.ttl = ttl
        self.hide = hide

    cdef bytes _mark(self, const uint8_t* p, Py_ssize_t n):
        cdef uint64_t d[2]
        d[0] = siphash24(self.k0, self.k1, p, n)
        d[1] = siphash24(self.k2, self.k3, p, n)
        return PyBytes_FromStringAndSize(<char*>d, 16)

    cpdef bytes mark(self, bytes token):
        """What ``token`` (the header's value after ``Basic ``, trimmed) is remembered by."""
        return self._mark(<const uint8_t*>PyBytes_AS_STRING(token), PyBytes_GET_SIZE(token))

    cpdef object recall(self, bytes mark):
        """The consumer whose credentials ``mark`` stands for, verified less than ``ttl``
        seconds ago; else None."""
        found = self.remembered.get(mark)
        if found is None or <double>(<tuple>found)[1] <= _mono():
            return None
        return (<tuple>found)[0]

    def remember(self, bytes mark, consumer):
        """``mark``'s credentials were verified, for ``consumer`` (nothing when ttl is 0)."""
        if self.ttl <= 0:
            return
        if len(self.remembered) >= _BA_REMEMBERED_MAX:
            self.remembered.clear()
        self.remembered[mark] = (consumer, _mono() + self.ttl)

    cdef int request(self, RequestContext ctx) except -1:
        cdef bytes value = ctx.find_req_header(b"authorization")
        cdef const char* p
        cdef Py_ssize_t i = 6, n
        if value is None or self.ttl <= 0:
            return STEP_PYTHON
        p = PyBytes_AS_STRING(value)
        n = PyBytes_GET_SIZE(value)
        if not (n > 6 and _ieq(p, 6, b"basic ", 6)):
            return STEP_PYTHON
        _trim_ascii_ws(p, &i, &n)
        if i == n:
            return STEP_PYTHON
        consumer = self.recall(self._mark(<const uint8_t*>p + i, n - i))
        if consumer is None:
            return STEP_PYTHON
        ctx.consumer = consumer
        if self.hide:
            ctx.remove_req_headers(_AUTHORIZATION)
        return 0


# ---------------------------------------------------------------------------------------
# hmac-auth
# ---------------------------------------------------------------------------------------

cdef _Buf _hm_buf = _Buf()
cdef const char* _HM_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


cdef inline bint _hm_ws(char c) noexcept:
    return c == 32 or c == 9


cdef inline bint _hm_alpha(char c) noexcept:
    return (65 <= c <= 90) or (97 <= c <= 122)


cdef dict _hm_params(bytes value):
    """The parameters of an ``hmac k="v", ...`` Authorization value in its plain form (ASCII
    throughout, SP/HTAB around the parts, a comma between them), as the plugin's reading
    gives them; None for anything else, which the plugin's own (lenient) reading decides."""
    cdef const char* p = PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
    cdef Py_ssize_t i = 5, ks, ke, vs
    cdef dict out = {}
    if not (n > 5 and _ieq(p, 5, b"hmac ", 5)):
        return None
    while True:
        while i < n and _hm_ws(p[i]):
            i += 1
        if i == n:
            return out
        ks = i
        while i < n and _hm_alpha(p[i]):
            i += 1
        ke = i
        if ke == ks:
            return None
        while i < n and _hm_ws(p[i]):
            i += 1
        if i == n or p[i] != 61:                          # '='
            return None
        i += 1
        while i < n and _hm_ws(p[i]):
            i += 1
        if i == n or p[i] != 34:                          # '"'
            return None
        i += 1
        vs = i
        while i < n and p[i] != 34:
            if <unsigned char>p[i] < 32 or <unsigned char>p[i] > 126:
                return None
            i += 1
        if i == n:
            return None
        out[PyUnicode_DecodeLatin1(p + ks, ke - ks, NULL)] = PyUnicode_DecodeLatin1(p + vs, i - vs, NULL)
        i += 1
        while i < n and _hm_ws(p[i]):
            i += 1
        if i < n:
            if p[i] != 44:                                # ','
                return None
            i += 1


cdef inline bint _hm_ascii(const char* p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if <unsigned char>p[i] >= 128:
            return False
    return True


cdef bint _hm_b64_equal(bytes raw, bytes want):
    """``base64(raw) == want``, in time that depends on the lengths only (SECURITY)."""
    cdef const unsigned char* r = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef const unsigned char* w = <const unsigned char*>PyBytes_AS_STRING(want)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw), i = 0, j = 0
    cdef unsigned char acc = 0
    cdef unsigned char enc[4]
    cdef unsigned long v
    cdef int k, m
    if PyBytes_GET_SIZE(want) != 4 * ((n + 2) // 3):
        return False
    while i < n:
        m = <int>(n - i) if n - i < 3 else 3
        v = (<unsigned long>r[i]) << 16
        if m > 1:
            v |= (<unsigned long>r[i + 1]) << 8
        if m > 2:
            v |= r[i + 2]
        enc[0] = _HM_B64[(v >> 18) & 63]
        enc[1] = _HM_B64[(v >> 12) & 63]
        enc[2] = _HM_B64[(v >> 6) & 63] if m > 1 else 61
        enc[3] = _HM_B64[v & 63] if m > 2 else 61
        for k in range(4):
            acc |= enc[k] ^ w[j + k]
        i += 3
        j += 4
    return acc == 0


@cython.final  # PERF: its methods are called directly (no vtable)
cdef class HmacAuthStep(NativeStep):
    """hmac-auth's request phase for a request signed in the plain form, in C: the
    Authorization parameters read, the signed Date within the clock skew, the signing
    string built, the HMAC checked, the signature's first use recorded, the consumer set
    and the header hidden. Everything else, and every request it would refuse but for a
    used signature, goes to ``fallback`` (the plugin's on_request), which answers as it
    always has: a value with non-ASCII bytes (which the plugin signs as UTF-8 of their
    Latin-1 reading), a parameter list in another form, a bad or missing signature, an
    unknown user or algorithm. PERF: ~8 µs a request less than the plugin in Python.
    With the replay guard in Redis (``replay_waits``) the request waits on the guard's
    future, whose result is the verdict (``_HmacVerdict``). With ``validate_request_body``
    (``digest_ok``: the plugin's body_digest_ok) the signed Digest or Content-Digest is
    checked against the buffered body before the replay guard, as the plugin does."""

    cdef dict users            # ConsumerTable.hmac: username -> (consumer, secret bytes)
    cdef dict algs             # accepted algorithm name -> hashlib constructor
    cdef tuple enforce         # names that must be signed
    cdef double skew
    cdef bint hide
    cdef list challenge
    cdef object replay         # first_use(token, ttl) -> True / False / None, at once; or
                               # with replay_waits, first_use(token, ttl, then) -> a future
    cdef bint replay_waits
    cdef object digest_ok      # validate_request_body: body_digest_ok(ctx, body) -> bool; else None
    cdef ReplaySet rtable      # the node's guard's table (claimed here), or None
    cdef bytes rkey            # its region's key
    cdef object dates          # the plugin's date_seconds (str -> POSIX seconds or None)
    cdef object make_pads      # the plugin's hmac_pads(secret, constructor) -> (inner, outer)
    cdef dict pads             # (secret, constructor) -> make_pads' answer (at most 4 096)

    def __init__(self, fallback, dict users, dict algs, tuple enforce, double skew, bint hide,
                 list challenge, replay, dates, make_pads, bint replay_waits=False, digest_ok=None):
        self.fallback = fallback
        self.replay_waits = replay_waits
        self.digest_ok = digest_ok
        self.users = users
        self.algs = algs
        self.enforce = enforce
        self.skew = skew
        self.hide = hide
        self.challenge = challenge
        self.replay = replay
        table = getattr(replay, "table", None)
        if isinstance(table, ReplaySet):     # the node's guard (fastgw.replay.ReplayGuard)
            self.rtable = table
            self.rkey = replay.key
        self.dates = dates
        self.make_pads = make_pads
        self.pads = {}

    cdef bytes _hmac(self, bytes secret, object alg, bytes msg):
        """HMAC(secret, msg) from the key's pad states (PERF: 0.6 µs; OpenSSL's one-shot
        HMAC sets the key up each time: 1.4 µs)."""
        key = (secret, alg)
        pads = self.pads.get(key)
        if pads is None:
            if len(self.pads) >= 4096:
                self.pads.clear()
            pads = self.pads[key] = self.make_pads(secret, alg)
        inner = (<tuple>pads)[0].copy()
        inner.update(msg)
        outer = (<tuple>pads)[1].copy()
        outer.update(inner.digest())
        return outer.digest()

    cdef int request(self, RequestContext ctx) except -1:
        cdef bytes auth = ctx.find_req_header(b"authorization")
        cdef bytes date, value, piece
        cdef _Buf b = _hm_buf
        cdef list names
        cdef double now, sent, ttl
        if auth is None:
            return STEP_PYTHON
        params = _hm_params(auth)
        if params is None:
            return STEP_PYTHON
        user = params.get("username")
        signature = params.get("signature")
        if user is None or signature is None:
            return STEP_PYTHON
        hit = self.users.get(user)
        alg = self.algs.get(params.get("algorithm", "hmac-sha256"))
        if hit is None or alg is None:
            return STEP_PYTHON
        names = (<str>params.get("headers", "date")).lower().split()
        for name in self.enforce:
            if name not in names:
                return STEP_PYTHON
        date = ctx.find_req_header(b"x-date") or ctx.find_req_header(b"date")
        if date is None or ("date" not in names and "x-date" not in names):
            return STEP_PYTHON
        found = self.dates(PyUnicode_DecodeLatin1(PyBytes_AS_STRING(date), PyBytes_GET_SIZE(date), NULL))
        if found is None:
            return STEP_PYTHON
        sent = found
        now = _wall()
        if fabs(now - sent) > self.skew:
            return STEP_PYTHON
        # The signing string, as the plugin builds it (ASCII only: see the class docstring).
        b.reset()
        for k, name in enumerate(names):
            if k:
                b.add(b"\n", 1)
            if name == "request-line":
                piece = ctx._path_b
                if piece is None:
                    path = ctx.path
                    if type(path) is not str or not (<str>path).isascii():
                        return STEP_PYTHON
                    piece = (<str>path).encode("ascii")
                method = ctx.method
                version = ctx.http_version
                query = ctx.query
                if type(method) is not str or type(version) is not str or not (<str>method).isascii() \
                        or not (<str>version).isascii() or (query and type(query) is not bytes):
                    return STEP_PYTHON
                b.add_b((<str>method).encode("ascii"))
                b.add(b" ", 1)
                b.add_b(piece)
                if query:
                    b.add(b"?", 1)
                    b.add_b(<bytes>query)
                b.add(b" HTTP/", 6)
                b.add_b((<str>version).encode("ascii"))
            else:
                value = ctx.find_req_header((<str>name).encode("latin-1"))
                if value is None:
                    return STEP_PYTHON
                b.add_b((<str>name).encode("latin-1"))
                b.add(b": ", 2)
                b.add_b(value)
        if not _hm_ascii(b.p, b.n):
            return STEP_PYTHON
        consumer, secret = hit
        expected = self._hmac(<bytes>secret, alg, b.take())
        if not _hm_b64_equal(<bytes>expected, (<str>signature).encode("ascii")):
            return STEP_PYTHON
        if self.digest_ok is not None:
            # The body's digest, signed (a body the server did not buffer, a digest not
            # signed or not matching: the plugin answers, as it always has).
            if "digest" not in names and "content-digest" not in names:
                return STEP_PYTHON
            body = ctx.body
            if body is None:
                if ctx.body_size > 0 or ctx.find_req_header(b"transfer-encoding") is not None:
                    return STEP_PYTHON
                body = b""
            if not self.digest_ok(ctx, body):
                return STEP_PYTHON
        # The signature stays usable until its Date leaves the window: remember it that long.
        token = (<str>signature).encode("latin-1")
        ttl = sent + self.skew - now + 1
        if self.replay_waits:
            ctx._waiting = self.replay.first_use(token, ttl, _HmacVerdict(self, ctx, consumer))
            return STEP_WAIT
        if self.rtable is not None:
            verdict = self.rtable.first_use(self.rkey, token, ttl)
            first = verdict == REPLAY_FIRST_USE if verdict != REPLAY_FULL else self.replay.judge(verdict)
        else:
            first = self.replay.first_use(token, ttl)
        return self.admit(ctx, first, consumer)

    cdef int admit(self, RequestContext ctx, object first, object consumer) except -1:
        """The verdict once the replay guard has answered (``first``: True, False, or None
        when it could not record the signature)."""
        if first is None:           # SECURITY: no room / no store to record it: refuse
            return ctx.error(503, "replay guard unavailable")
        if not first:
            return ctx.error(401, "Signature already used", self.challenge)
        ctx.consumer = consumer
        if self.hide:
            ctx.remove_req_headers(_AUTHORIZATION)
        return 0


@cython.final
cdef class _HmacVerdict:
    """What the Redis replay guard's answer makes of a request the step checked (its
    ``then``): the request's verdict, 1 answered (refused) or 0 let through."""

    cdef HmacAuthStep step
    cdef RequestContext ctx
    cdef object consumer

    def __cinit__(self, HmacAuthStep step, RequestContext ctx, consumer):
        self.step = step
        self.ctx = ctx
        self.consumer = consumer

    def __call__(self, first):
        return self.step.admit(self.ctx, first, self.consumer)


# ---------------------------------------------------------------------------------------
# request-size-limit
# ---------------------------------------------------------------------------------------

@cython.final  # PERF: its methods are called directly (no vtable)
cdef class BodySizeStep(NativeStep):
    """request-size-limit's check of the declared size (the server enforces the limit on
    the bytes as they stream too, through Pipeline.max_body): 413 past ``limit``. PERF: in
    C, a route of built-in plugins keeps its request on the lazy path."""

    cdef long long limit

    def __init__(self, long long limit):
        self.limit = limit

    cdef int request(self, RequestContext ctx) except -1:
        if ctx.body_size > self.limit:
            return ctx.error(413, "Request size limit exceeded")
        return 0


# ---------------------------------------------------------------------------------------
# acl
# ---------------------------------------------------------------------------------------

cdef class AclStep(NativeStep):
    """No consumer: 401. A consumer in a ``deny`` group, or (with ``allow``) in none of the
    ``allow`` groups: 403 with ``message``. PERF: in C, a route of built-in plugins only
    (key-auth and acl: Kong's usual pair) keeps its request on the lazy path."""

    cdef frozenset allow
    cdef frozenset deny
    cdef str message

    def __init__(self, frozenset allow, frozenset deny, str message):
        self.allow = allow
        self.deny = deny
        self.message = message

    cdef int request(self, RequestContext ctx) except -1:
        cdef object consumer = ctx.consumer
        cdef object groups
        if consumer is None:
            return ctx.error(401, "Unauthorized")
        groups = (<Consumer>consumer).groups if type(consumer) is Consumer else consumer.groups
        if self.deny and not self.deny.isdisjoint(groups):
            return ctx.error(403, self.message)
        if self.allow and self.allow.isdisjoint(groups):
            return ctx.error(403, self.message)
        return 0


# ---------------------------------------------------------------------------------------
# ip-restriction
# ---------------------------------------------------------------------------------------

cdef class PeerVerdictStep(NativeStep):
    """ip-restriction without trusted proxies, where the caller is the TCP peer: a peer the
    plugin has judged (its ``verdicts`` memo, peer address -> allowed) is let through or
    refused here; a new one goes to the plugin's ``on_request`` (``fallback``), which
    parses it, matches the CIDR lists and fills the memo."""

    cdef dict verdicts
    cdef int status
    cdef str message

    def __init__(self, fallback, dict verdicts, int status, str message):
        self.fallback = fallback
        self.verdicts = verdicts
        self.status = status
        self.message = message

    cdef int request(self, RequestContext ctx) except -1:
        verdict = self.verdicts.get(ctx.peer_ip)
        if verdict is None:
            return STEP_PYTHON
        if verdict is True:
            return 0
        return ctx.error(self.status, self.message)


cdef class ForwardedVerdictStep(NativeStep):
    """ip-restriction with trusted proxies, where the caller may come from X-Forwarded-For:
    a (peer, X-Forwarded-For values) the plugin has judged (its ``verdicts`` memo, -> (allowed,
    the caller's address or None)) is let through or refused here, ``ctx.client_ip`` set as
    the plugin sets it; a new one goes to the plugin's ``on_request`` (``fallback``), which
    reads the hops, matches the CIDR lists and fills the memo. PERF: the plugin parsed the
    hops with ipaddress on every request (~10 µs)."""

    cdef dict verdicts
    cdef int status
    cdef str message

    def __init__(self, fallback, dict verdicts, int status, str message):
        self.fallback = fallback
        self.verdicts = verdicts
        self.status = status
        self.message = message

    cdef int request(self, RequestContext ctx) except -1:
        found = self.verdicts.get((ctx.peer_ip, ctx.find_req_headers(b"x-forwarded-for")))
        if found is None:
            return STEP_PYTHON
        verdict, client = <tuple>found
        if client is not None:
            ctx.client_ip = client
        if verdict is True:
            return 0
        return ctx.error(self.status, self.message)


# ---------------------------------------------------------------------------------------
# cors
# ---------------------------------------------------------------------------------------

cdef class CorsStep(NativeStep):
    """cors on a request that is no preflight, from no origin or from one the plugin has
    judged (its ``seen`` memo, Origin -> allowed): ``Vary: Origin`` and, for an allowed
    origin, ``Access-Control-Allow-Origin`` and the plugin's other headers, added to the
    answer. An OPTIONS request or a new origin goes to the plugin's ``on_request``
    (``fallback``), which answers preflights, matches origins and fills the memo."""

    cdef dict seen
    cdef bint vary
    cdef bint star              # any origin and no credentials: Allow-Origin is "*"
    cdef list extra             # the plugin's actual_extra

    def __init__(self, fallback, dict seen, bint vary, bint star, list extra):
        self.fallback = fallback
        self.seen = seen
        self.vary = vary
        self.star = star
        self.extra = extra

    cdef int request(self, RequestContext ctx) except -1:
        cdef bytes origin
        cdef list add
        if ctx.method == "OPTIONS":
            return STEP_PYTHON
        origin = ctx.find_req_header(b"origin")
        verdict = None
        if origin is not None:
            verdict = self.seen.get(origin)
            if verdict is None:
                return STEP_PYTHON
        add = ctx.response_headers_add
        if self.vary:
            add.append((b"Vary", b"Origin"))
        if verdict is True:
            add.append((b"Access-Control-Allow-Origin", b"*" if self.star else origin))
            if self.extra:
                add.extend(self.extra)
        return 0


# ---------------------------------------------------------------------------------------
# request-transformer (and header value templates, which response-headers renders too)
# ---------------------------------------------------------------------------------------

# A template's parts, as fastgw/plugins/template.py numbers them.
DEF _TPL_LIT = 0
DEF _TPL_PARAM = 1
DEF _TPL_HEADER = 2
DEF _TPL_QUERY = 3
DEF _TPL_CONSUMER = 4
DEF _TPL_GROUPS = 5
DEF _TPL_RID = 6

cdef _Buf _tpl_buf = _Buf()


cdef inline int _tpl_add_clean(_Buf b, bytes v) except -1:
    """Append ``v`` less its control bytes (0-31, 127), as Template.render drops them."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(v)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(v), i
    b.reserve(n)
    for i in range(n):
        if p[i] >= 32 and p[i] != 127:
            b.p[b.n] = <char>p[i]
            b.n += 1
    return 0


cdef object _tpl_utf8(object value):
    """A str as UTF-8 bytes; None for another type or a lone surrogate (the template's
    Python then writes it, as ``render_header`` does)."""
    if type(value) is not str:
        return None
    try:
        return (<str>value).encode("utf-8")
    except UnicodeEncodeError:
        return None


cdef object _tpl_render(tuple parts, RequestContext ctx):
    """A header value template rendered for ``ctx`` as Template.render_header writes it
    (``(kind, argument)`` parts from Template.native_parts: literals as UTF-8 bytes, header
    and query argument names as bytes): the client's bytes as they came (a query argument's
    percent-decoded), text as UTF-8, the request id as ``_ctx_b`` writes it, control bytes
    dropped from request values. None when a value is of a type only the template's Python
    writes (a consumer or request id a custom plugin set to another type)."""
    cdef _Buf b = _tpl_buf
    cdef int kind
    cdef Py_ssize_t i
    b.reset()
    for part in parts:
        kind = (<tuple>part)[0]
        arg = (<tuple>part)[1]
        if kind == _TPL_LIT:
            b.add_b(<bytes>arg)
            continue
        if kind == _TPL_PARAM:
            values = ctx.values
            i = <Py_ssize_t>arg
            if i >= len(values):
                continue
            v = values[i]
            if type(v) is not bytes:
                return None
        elif kind == _TPL_HEADER:
            v = ctx.find_req_header(<bytes>arg)
            if v is None:
                continue
        elif kind == _TPL_QUERY:
            query = ctx.query
            v = _rt_query_value(<bytes>query if type(query) is bytes else b"", <bytes>arg)
        elif kind == _TPL_CONSUMER or kind == _TPL_GROUPS:
            consumer = ctx.consumer
            if consumer is None:
                continue
            if type(consumer) is not Consumer:
                return None
            v = _tpl_utf8((<Consumer>consumer).name if kind == _TPL_CONSUMER
                          else ",".join((<Consumer>consumer).groups))
        else:
            rid = ctx.rid()
            if not rid:
                continue
            if type(rid) is not str:
                return None
            v = _ctx_b(rid)
        if v is None:
            return None
        _tpl_add_clean(b, <bytes>v)
    return b.take()


cdef class HeaderEditsStep(NativeStep):
    """request-transformer when it only edits headers (no rename, no query or body edit),
    with values fixed or rendered from templates: Kong's order, as the plugin's on_request
    does it: every template rendered first (they read the request as it came), then
    ``remove`` every copy, ``replace`` (only a header that is there: its copies become
    one), ``add`` (only one that is not there), ``append``; on the request in either mode.
    A value only the template's Python can write (a consumer or request id a custom plugin
    set to another type) hands the request to ``fallback``."""

    cdef tuple remove       # lower-case names
    cdef tuple replace      # ((lname,), (name, value))
    cdef tuple add          # (lname, (name, value))
    cdef tuple append       # (name, value)
    cdef bint dynamic       # some value is a template: a tuple of parts, not bytes

    def __init__(self, tuple remove, tuple replace, tuple add, tuple append, fallback=None):
        self.remove = remove
        self.replace = replace
        self.add = add
        self.append = append
        self.fallback = fallback
        self.dynamic = any(type(pair[1]) is tuple
                           for pair in ([e[1] for e in replace] + [e[1] for e in add] + list(append)))
        if self.dynamic and fallback is None:
            raise ValueError("HeaderEditsStep: templates need the plugin's on_request as fallback")

    cdef object _rendered(self, tuple entries, int at, RequestContext ctx):
        """``entries`` with each template value rendered (the pair at index ``at``)."""
        cdef list out = []
        cdef tuple pair
        for entry in entries:
            pair = <tuple>(entry if at < 0 else (<tuple>entry)[at])
            if type(pair[1]) is tuple:
                value = _tpl_render(<tuple>pair[1], ctx)
                if value is None:
                    return None
                pair = (pair[0], value)
            out.append(pair if at < 0 else ((<tuple>entry)[0], pair))
        return tuple(out)

    cdef int request(self, RequestContext ctx) except -1:
        cdef tuple names
        cdef tuple replace = self.replace, add = self.add, append = self.append
        if self.dynamic:
            replace = self._rendered(replace, 1, ctx)
            add = self._rendered(add, 1, ctx) if replace is not None else None
            append = self._rendered(append, -1, ctx) if add is not None else None
            if append is None:
                return STEP_PYTHON
        if self.remove:
            ctx.remove_req_headers(self.remove)
        for names, pair in replace:
            if ctx.find_req_header(<bytes>names[0]) is not None:
                ctx.remove_req_headers(names)
                ctx.add_req_header(<tuple>pair)
        for lname, pair in add:
            if ctx.find_req_header(<bytes>lname) is None:
                ctx.add_req_header(<tuple>pair)
        for pair in append:
            ctx.add_req_header(<tuple>pair)
        return 0


# ---------------------------------------------------------------------------------------
# request-id
# ---------------------------------------------------------------------------------------

cdef unsigned char _rid_ok[256]
cdef unsigned char _hex_lc[256]


cdef void _plugin_tables_init():
    cdef int c
    for c in range(256):
        _rid_ok[c] = 0
        _hex_lc[c] = 0
    for c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:+/=-":
        _rid_ok[c] = 1
    for c in b"0123456789abcdef":
        _hex_lc[c] = 1


_plugin_tables_init()


cdef bint valid_request_id(bytes rid):
    """1-128 characters of ``A-Z a-z 0-9 . _ : + / = -`` (SECURITY: it reaches logs and headers)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(rid), i
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(rid)
    if n < 1 or n > 128:
        return False
    for i in range(n):
        if not _rid_ok[p[i]]:
            return False
    return True


cdef bint _all_hex(const unsigned char* p, Py_ssize_t n, bint* all_zero):
    cdef Py_ssize_t i
    all_zero[0] = True
    for i in range(n):
        if not _hex_lc[p[i]]:
            return False
        if p[i] != 48:
            all_zero[0] = False
    return True


cdef bint valid_traceparent(bytes tp):
    """W3C ``vv-<32 hex trace id>-<16 hex parent id>-ff``, lower-case hex, no all-zero ids,
    version not ``ff``."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(tp)
    cdef bint zero
    if PyBytes_GET_SIZE(tp) != 55 or p[2] != 45 or p[35] != 45 or p[52] != 45:
        return False
    if not _all_hex(p, 2, &zero) or (p[0] == 102 and p[1] == 102):
        return False
    if not _all_hex(p + 3, 32, &zero) or zero:
        return False
    if not _all_hex(p + 36, 16, &zero) or zero:
        return False
    return _all_hex(p + 53, 2, &zero)


cdef uint64_t _tp_state = 0


cdef uint64_t _splitmix64():
    """Trace and span ids (PERF: not secrets; no syscall per request)."""
    global _tp_state
    cdef uint64_t z
    if _tp_state == 0:
        _tp_state = int.from_bytes(_os.urandom(8), "little") | 1
    _tp_state += 0x9E3779B97F4A7C15ULL
    z = _tp_state
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


def reseed_trace_ids():
    """Start a new trace-id sequence (called in each worker after start)."""
    global _tp_state
    _tp_state = 0


cdef const char* _HEXDIGITS = b"0123456789abcdef"


cdef void _hex64(char* out, uint64_t v):
    cdef int i
    for i in range(16):
        out[15 - i] = _HEXDIGITS[v & 15]
        v >>= 4


cpdef bytes new_traceparent():
    """A fresh sampled traceparent: ``00-<random trace id>-<random parent id>-01``."""
    cdef char buf[55]
    cdef uint64_t a = _splitmix64(), b = _splitmix64(), c = _splitmix64()
    memcpy(buf, b"00-", 3)
    _hex64(buf + 3, a | 1)       # never all-zero
    _hex64(buf + 19, b)
    buf[35] = 45
    _hex64(buf + 36, c | 1)
    memcpy(buf + 52, b"-01", 3)
    return PyBytes_FromStringAndSize(buf, 55)


cdef class RequestIdStep(NativeStep):
    """A valid client id is kept (if trusted), else the gateway's; sent up and (echo) down."""

    cdef bytes header
    cdef bytes header_lc
    cdef bint trust
    cdef bint echo
    cdef bint trace

    def __init__(self, bytes header, bint trust, bint echo, bint trace):
        self.header = header
        self.header_lc = header.lower()
        self.trust = trust
        self.echo = echo
        self.trace = trace

    cdef int request(self, RequestContext ctx) except -1:
        cdef bytes rid_b
        # PERF: C scans; nothing is rebuilt unless the client sent these headers.
        cdef bytes incoming = ctx.pop_req_header(self.header_lc)
        cdef bytes trace = ctx.pop_req_header(b"traceparent")
        if incoming is not None and self.trust and valid_request_id(incoming):
            ctx._request_id = incoming.decode("ascii")
            rid_b = incoming
        else:
            rid = ctx.rid()
            if not rid or type(rid) is not str:       # a plugin's "" (or not a str): ours
                rid = next_request_id()
                ctx._request_id = rid
            rid_b = (<str>rid).encode("ascii")
        pair = (self.header, rid_b)        # immutable: shared by both lists
        ctx.add_req_header(pair)
        if self.trace and (trace is None or not valid_traceparent(trace)):
            trace = new_traceparent()
        if trace is not None:
            ctx.add_req_header((b"traceparent", trace))
        if self.echo:
            ctx.response_headers_add.append(pair)
        return 0


# ---------------------------------------------------------------------------------------
# response-headers
# ---------------------------------------------------------------------------------------

cdef bytes _header_value(object value, RequestContext ctx):
    """A static value as is; a template ``(native parts, template)`` rendered for this
    request, in C, or by the template's Python for a value only it writes."""
    if type(value) is bytes:
        return <bytes>value
    rendered = _tpl_render(<tuple>(<tuple>value)[0], ctx)
    if rendered is None:
        rendered = (<tuple>value)[1].render_header(ctx)
    return <bytes>rendered


cdef class ResponseHeadersStep(NativeStep):
    """remove + set (one filter pass), then append, then add-if-missing."""

    cdef tuple drop          # lower-case names removed (``remove`` and ``set`` names)
    cdef tuple put           # (name, value) pairs appended after the drop: ``set``, then ``append``
    cdef tuple add_lc        # (lower-case name, name, value)
    # The same, less the names the head builder would not forward anyway (apply_head).
    cdef tuple fwd_put
    cdef tuple fwd_add_lc

    def __init__(self, tuple drop, tuple set_, tuple append_, tuple add_lc):
        self.drop = drop
        self.put = set_ + append_
        self.add_lc = add_lc
        self.fwd_put = tuple(t for t in self.put if forwardable_response_header(t[0]))
        self.fwd_add_lc = tuple(t for t in add_lc if forwardable_response_header(t[1]))

    cdef int _edit(self, list headers, ResponseHead r, tuple put, tuple add_lc,
                   RequestContext ctx) except -1:
        """The edits on ``headers`` and, when given, on the backend's scanned head ``r``."""
        cdef tuple t
        if self.drop:
            if r is not None:
                r.drop_headers(self.drop)
            remove_headers(headers, self.drop)
        for item in put:
            t = <tuple>item
            headers.append((t[0], _header_value(t[1], ctx)))
        for item in add_lc:
            # PERF: a C scan per added name (usually one) instead of a set of every name.
            t = <tuple>item
            if (r is None or not r.has_header(<bytes>t[0])) and find_header(headers, <bytes>t[0]) is None:
                headers.append((t[1], _header_value(t[2], ctx)))
        return 0

    cdef int apply_head(self, ResponseHead r, RequestContext ctx, list out) except -1:
        """``response`` on the backend's scanned head plus ``out`` (what earlier steps added)."""
        return self._edit(out, r, self.fwd_put, self.fwd_add_lc, ctx)

    cdef int response(self, RequestContext ctx) except -1:
        return self._edit(ctx.response_headers, None, self.put, self.add_lc, ctx)
