# part of fastgw/_core.pyx (see its docstring)
#
# rate-limiting's rules, in C, for every store: the caller's name, the verdict on the counts
# and the headers. Counting in the node's table (policy node) the whole request phase runs
# here (CounterTable.hit); for the other stores (Redis, the in-process dict) the plugin
# module (fastgw/plugins/rate_limiting.py) gets the counts and asks caller_name / decide /
# unavailable, so each rule is written once.
# A counter's slot comes from table_slot(): two SipHash-2-4 of the caller's name under the
# region's key, with the period folded into the key, so one hash pair per period and no
# bytes built per request beyond the name (the replay set hashes its tokens the same way).

DEF _RL_MAX = 4
DEF _RL_BY_CONSUMER = 0
DEF _RL_BY_IP = 1
DEF _RL_BY_HEADER = 2


from cpython.list cimport PyList_GET_ITEM

cdef _Buf _rl_buf = _Buf()

DEF _RL_PAIRS_CACHED = 1024   # header values below this are built once a process (see _rl_pair)
cdef dict _rl_pair_caches = {}   # header name -> [None or (name, b"%d" % v)] * _RL_PAIRS_CACHED


cdef list _rl_pair_cache(bytes name):
    """The shared cache of ``name``'s pairs: one a header name (RateLimit-Remaining,
    X-RateLimit-Remaining-Minute, ...), so at most ~10 a process, whatever the routes."""
    cdef object found = _rl_pair_caches.get(name)
    if found is None:
        found = [None] * _RL_PAIRS_CACHED
        _rl_pair_caches[name] = found
    return <list>found


cdef list _rl_remaining_cache = _rl_pair_cache(b"RateLimit-Remaining")
cdef list _rl_reset_cache = _rl_pair_cache(b"RateLimit-Reset")


cdef bytes _rl_decimal(long long v):
    """``b"%d" % v`` for v >= 0 (negative: 0). PERF: Python's formatting costs ~1 000
    instructions; a header value is formatted three times a request."""
    _rl_buf.reset()
    _rl_buf.add_int(v if v > 0 else 0)
    return _rl_buf.take()


cdef tuple _rl_pair(list cache, bytes name, long long v):
    """``(name, b"%d" % v)`` for v >= 0 (negative: 0), from ``cache`` (``name``'s, see
    _rl_pair_cache) when v is below _RL_PAIRS_CACHED. PERF: a request's headers then build
    no tuple and no bytes (and free none): ~1.2k instructions of the plugin's 5 headers."""
    cdef object found
    cdef tuple pair
    if v < 0:
        v = 0
    if v >= _RL_PAIRS_CACHED:
        return (name, _rl_decimal(v))
    found = <object>PyList_GET_ITEM(cache, v)
    if found is not None:
        return <tuple>found
    pair = (name, _rl_decimal(v))
    cache[v] = pair
    return pair


DEF _RL_NAMES_MAX = 4096    # callers' counter names kept per step (then forgotten all at once)


cdef inline uint64_t _rl_word(const uint8_t* k) noexcept nogil:
    cdef uint64_t w = 0
    cdef int j
    for j in range(8):
        w |= (<uint64_t>k[j]) << (8 * j)
    return w


cdef inline void _rl_slot(const uint8_t* key, const uint8_t* name, Py_ssize_t n, uint32_t period,
                          uint64_t* home, uint64_t* fp) noexcept nogil:
    home[0] = siphash24(_rl_word(key), _rl_word(key + 8) ^ period, name, n)
    fp[0] = siphash24(_rl_word(key + 16), _rl_word(key + 24) ^ period, name, n)


def table_slot(bytes key, bytes name, uint32_t salt):
    """(home, fingerprint) of ``name`` in one of the shared region's tables, under the
    region's 32-byte key (``salt``: a counter's period; 0 for the replay set)."""
    cdef uint64_t home, fp
    if len(key) != 32:
        raise ValueError("table_slot: the key must be 32 bytes")
    _rl_slot(<const uint8_t*>PyBytes_AS_STRING(key), <const uint8_t*>PyBytes_AS_STRING(name),
             PyBytes_GET_SIZE(name), salt, &home, &fp)
    return home, fp


@cython.final
cdef class _RlSlots:
    """A caller's counter slots, one (home, fingerprint) per limit: PERF: two SipHash-2-4 a
    limit (~360 instructions a request) computed once per caller, not per request."""
    cdef uint64_t homes[_RL_MAX]
    cdef uint64_t fps[_RL_MAX]


@cython.final
cdef class RateLimitStep(NativeStep):
    """The plugin's rules; its request phase when it counts in the node's CounterTable."""

    cdef CounterTable table                # None: the plugin counts elsewhere, decide() judges
    cdef bytes key
    cdef bytes prefix
    cdef int by
    cdef str header
    cdef int n
    cdef long long limits[_RL_MAX]
    cdef uint32_t periods[_RL_MAX]
    cdef tuple lim_names, rem_names, lim_values
    cdef tuple lim_pairs, ietf_pairs         # prebuilt (X-RateLimit-Limit-<Period>, n) and (RateLimit-Limit, n)
    cdef tuple rem_caches                    # _rl_pair_cache of each rem_names[i]
    cdef bint hide
    cdef bint fault_tolerant
    cdef public object on_no_room          # called (no arguments) when the table has no room
    cdef dict names                        # consumer (a Consumer) or client address (a str) -> counter name
    cdef dict slots                        # counter name -> _RlSlots (at most _RL_NAMES_MAX)

    def __init__(self, CounterTable table, bytes key, bytes prefix, str limit_by, str header,
                 list limits, bint hide, bint fault_tolerant):
        """``limits``: (name, period, limit) per period, shortest first; ``table`` and its
        region's 32-byte ``key``, or None for both when the counts come from elsewhere."""
        cdef int i
        if (table is not None and (key is None or len(key) != 32)) or not 1 <= len(limits) <= _RL_MAX:
            raise ValueError("RateLimitStep: a table with its 32-byte key, and 1 to 4 limits")
        self.table = table
        self.key = key
        self.prefix = prefix
        self.by = {"consumer": _RL_BY_CONSUMER, "ip": _RL_BY_IP, "header": _RL_BY_HEADER}[limit_by]
        self.header = header
        self.n = len(limits)
        for i in range(self.n):
            self.periods[i] = limits[i][1]
            self.limits[i] = limits[i][2]
        self.lim_names = tuple(b"X-RateLimit-Limit-" + name.capitalize().encode() for name, _, _ in limits)
        self.rem_names = tuple(b"X-RateLimit-Remaining-" + name.capitalize().encode() for name, _, _ in limits)
        self.lim_values = tuple(b"%d" % limit for _, _, limit in limits)
        self.lim_pairs = tuple(zip(self.lim_names, self.lim_values))
        self.ietf_pairs = tuple((b"RateLimit-Limit", v) for v in self.lim_values)
        self.rem_caches = tuple(_rl_pair_cache(name) for name in self.rem_names)
        self.hide = hide
        self.fault_tolerant = fault_tolerant
        self.on_no_room = None
        self.names = {}
        self.slots = {}

    cpdef bytes caller_name(self, RequestContext ctx):
        """The counters' name for this request: the limits' prefix and who is calling.

        PERF: a consumer's (a Consumer's: its name is fixed) and a client address's name is
        built once and kept (at most _RL_NAMES_MAX, then all forgotten): the same callers
        come back request after request."""
        cdef object consumer, cname, ip, found
        if self.by == _RL_BY_CONSUMER:
            consumer = ctx.consumer
            if consumer is not None:
                if type(consumer) is Consumer:
                    found = self.names.get(consumer)
                    if found is not None:
                        return <bytes>found
                cname = consumer_name(consumer)
                found = self.prefix + b"c:" + str(cname if cname is not None else consumer).encode(
                    "utf-8", "surrogateescape")
                if type(consumer) is Consumer:
                    self._keep(consumer, found)
                return <bytes>found
        elif self.by == _RL_BY_HEADER:
            value = ctx.get_header(self.header)
            if value:
                return self.prefix + b"h:" + (<str>value).encode("utf-8", "surrogateescape")
        ip = ctx.client_ip
        if type(ip) is str:
            found = self.names.get(ip)
            if found is not None:
                return <bytes>found
            found = self.prefix + b"ip:" + (<str>ip).encode("utf-8", "surrogateescape")
            self._keep(ip, found)
            return <bytes>found
        return self.prefix + b"ip:" + str(ip).encode("utf-8", "surrogateescape")

    cdef void _keep(self, object caller, bytes name):
        if len(self.names) >= _RL_NAMES_MAX:
            self.names.clear()
        self.names[caller] = name

    cpdef int unavailable(self, RequestContext ctx) except -1:
        """The counts can't be had: let the request through (fault_tolerant) or answer 503."""
        if self.fault_tolerant:
            return 0
        return ctx.error(503, "rate limit counters unavailable")

    def decide(self, RequestContext ctx, list counts, double now):
        """Judge the request on ``counts`` (one per limit, this request included): 0, it
        passes (the headers added); 1, it was refused with 429 (the caller takes back its
        adds: a refused request is not counted)."""
        cdef long long c[_RL_MAX]
        cdef uint32_t ends[_RL_MAX]
        cdef uint32_t wall = <uint32_t>(<long long>now)
        cdef int i
        if len(counts) != self.n:
            raise ValueError("RateLimitStep.decide: one count per limit")
        for i in range(self.n):
            c[i] = counts[i]
            ends[i] = (wall // self.periods[i] + 1) * self.periods[i]
        return self._verdict(ctx, c, ends, wall)

    cdef int _verdict(self, RequestContext ctx, long long* counts, uint32_t* ends, uint32_t wall) except -1:
        cdef uint32_t retry = 0
        cdef bint over = False
        cdef int i
        for i in range(self.n):
            if counts[i] > self.limits[i]:
                over = True
                if ends[i] - wall > retry:
                    retry = ends[i] - wall
        if not over:
            if not self.hide:
                add = ctx.response_headers_add
                if type(add) is list:
                    self._headers(<list>add, counts, ends, wall, 0)
                else:
                    add.extend(self._headers([], counts, ends, wall, 0))
            return 0
        headers = [] if self.hide else self._headers([], counts, ends, wall, 1)
        headers.append((b"Retry-After", b"%d" % (retry if retry > 0 else 1)))
        return ctx.error(429, "API rate limit exceeded", headers)

    cdef _RlSlots _slots_of(self, bytes name):
        cdef _RlSlots found = <_RlSlots>self.slots.get(name)   # (None or a _RlSlots)
        cdef const uint8_t* key
        cdef int i
        if found is not None:
            return found
        found = _RlSlots.__new__(_RlSlots)
        key = <const uint8_t*>PyBytes_AS_STRING(self.key)
        for i in range(self.n):
            _rl_slot(key, <const uint8_t*>PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name), self.periods[i],
                     &found.homes[i], &found.fps[i])
        if len(self.slots) >= _RL_NAMES_MAX:
            self.slots.clear()
        self.slots[name] = found
        return found

    cdef int request(self, RequestContext ctx) except -1:
        cdef _RlSlots slots = self._slots_of(self.caller_name(ctx))
        cdef uint64_t* homes = slots.homes
        cdef uint64_t* fps = slots.fps
        cdef uint32_t wall = <uint32_t>(<long long>_wall())
        cdef long long counts[_RL_MAX]
        cdef uint32_t ends[_RL_MAX]
        cdef int i, j, verdict
        for i in range(self.n):
            ends[i] = (wall // self.periods[i] + 1) * self.periods[i]
            counts[i] = self.table.hit(homes[i], fps[i], wall, ends[i], 1)
            if counts[i] < 0:
                for j in range(i):                 # take back what this request added
                    self.table.hit(homes[j], fps[j], wall, ends[j], -1)
                if self.on_no_room is not None:
                    self.on_no_room()
                return self.unavailable(ctx)
        verdict = self._verdict(ctx, counts, ends, wall)
        if verdict:
            # A refused request is not counted (the client is let in again when the window ends).
            for i in range(self.n):
                self.table.hit(homes[i], fps[i], wall, ends[i], -1)
        return verdict

    cdef list _headers(self, list out, long long* counts, uint32_t* ends, uint32_t wall, int uncounted):
        """``out`` with Kong's per-period headers and the IETF RateLimit-* of the limit
        closest to running out appended (``uncounted``: adds that were taken back); on a
        tie, the longer period."""
        cdef long long remaining, best_remaining = -1
        cdef int i, best = -1
        for i in range(self.n):
            remaining = self.limits[i] - counts[i] + uncounted
            if remaining < 0:
                remaining = 0
            out.append(self.lim_pairs[i])
            out.append(_rl_pair(<list>self.rem_caches[i], <bytes>self.rem_names[i], remaining))
            if best < 0 or remaining <= best_remaining:
                best, best_remaining = i, remaining
        out.append(self.ietf_pairs[best])
        out.append(_rl_pair(_rl_remaining_cache, b"RateLimit-Remaining", best_remaining))
        out.append(_rl_pair(_rl_reset_cache, b"RateLimit-Reset", ends[best] - wall))
        return out
