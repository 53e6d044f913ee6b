# part of fastgw/_core.pyx (see its docstring)
#
# The proxy's connection glue: ClientConnection and UpstreamConnection are asyncio
# protocols wired to each other with plain method calls (no Task, Future or await on the
# plain path), a coarse TimerWheel for every timeout, and the upstream keep-alive pools.

from cpython.unicode cimport PyUnicode_AsASCIIString
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec

import logging as _logging
import time as _time

cdef object _log = _logging.getLogger("fastgw.proxy")

DEF S_HEAD = 0      # reading a request head (or idle between requests)
DEF S_BODY = 1      # request dispatched, its body still arriving
DEF S_WAIT = 2      # request complete, answer in progress
DEF S_CLOSED = 3
DEF S_TUNNEL = 4    # after a 101: bytes pass both ways untouched (WebSocket)
DEF S_LINGER = 5    # last answer sent, write side shut: reading and dropping until the client closes

DEF B_NONE = 0
DEF B_LENGTH = 1
DEF B_CHUNKED = 2

DEF P_UPSTREAM = 1   # reasons to pause reading from the client
DEF P_PIPELINE = 2
DEF P_PENDING = 4
DEF P_PLUGIN = 8

DEF T_NONE = 0
DEF T_IDLE = 1
DEF T_HEADER = 2
DEF T_CONNECT = 3
DEF T_READ = 4
DEF T_SEND = 5
DEF T_LINGER = 6
DEF T_PLUGIN = 7    # a request step is waiting (the route's read timeout bounds it)

DEF PENDING_LIMIT = 262144

DEF U_IDLE = 0
DEF U_HEAD = 1
DEF U_BODY = 2
DEF U_TUNNEL = 3



# The clock of a poller turn. PERF: as nginx caches its time once per event-loop turn, a
# turn of Poller._ready reads the monotonic clock once and every request it handles is
# timed with that reading (the wall clock, for access-log lines, at most once a turn):
# one clock read per turn instead of four or five per request (~25 ns each here). A
# request's times are then those of the turns that handled its events, within one turn's
# length (microseconds; the dashboard and log show milliseconds). Outside a turn (uvloop
# transports, timers, tests) each call reads the clock.
cdef double _turn_mono = 0.0
cdef double _turn_wall = 0.0     # 0: not read yet this turn
cdef bint _turn_held = False


cdef inline double _mono_read() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline double _wall_read() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline double _mono() noexcept nogil:
    """Monotonic seconds: the turn's reading inside a poller turn, else the clock's."""
    if _turn_held:
        return _turn_mono
    return _mono_read()


cdef inline double _wall() noexcept nogil:
    """Wall-clock seconds: read once per poller turn (on first use), else each call."""
    global _turn_wall
    if _turn_held:
        if _turn_wall == 0.0:
            _turn_wall = _wall_read()
        return _turn_wall
    return _wall_read()


cdef inline void _turn_begin() noexcept nogil:
    global _turn_mono, _turn_wall, _turn_held
    _turn_mono = _mono_read()
    _turn_wall = 0.0
    _turn_held = True


cdef inline void _turn_end() noexcept nogil:
    global _turn_held
    _turn_held = False


# ---------------------------------------------------------------------------------------
# Timer wheel
# ---------------------------------------------------------------------------------------

cdef class Timed:
    """Something with one deadline in the wheel (0 = none). Re-arming later costs nothing:
    the wheel re-files the entry when its old slot comes up."""
    cdef double deadline
    cdef long long sched_tick

    cdef int on_timeout(self) except -1:
        pass

    cdef void _on_data(self, bytes data) noexcept:
        """Bytes from this connection's socket (FdTransport calls it; asyncio: data_received).
        Here: a protocol written in Python (tests, tools) gets its ``data_received``."""
        try:
            self.data_received(data)
        except Exception as exc:
            _log.error("data_received failed: %r", exc, exc_info=exc)

    cdef int _transport_lost(self, object exc) except -1:
        """The socket is closed (FdTransport calls it; asyncio: connection_lost)."""
        return 0


cdef inline str _unmapped(str ip):
    """An IPv4-mapped IPv6 peer (``::ffff:1.2.3.4``) as the IPv4 address it is."""
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


cdef class Connection(Timed):
    """A Timed with a transport, bound once: written to, paused and resumed with C calls
    when it is fastgw's own (FdTransport), through its bound methods when it is uvloop's."""
    cdef public object transport
    cdef object _write_fn                # transport.write, bound once (uvloop transports)
    cdef FdTransport ftr                 # the transport when it is ours: called from C

    cdef inline int _bind(self, object transport) except -1:
        self.transport = transport
        if type(transport) is FdTransport:
            self.ftr = transport
        else:
            self.ftr = None
            self._write_fn = transport.write
        return 0

    cdef inline int _unbind(self) except -1:
        # PERF: break the transport <-> protocol cycle (via the bound write) so a closed
        # connection is freed by refcount at once, not by the cyclic GC under churn.
        self._write_fn = None
        self.ftr = None
        self.transport = None
        return 0

    cdef inline int _write(self, bytes data) except -1:
        # PERF: a C call into our own transport; a bound-method call into uvloop's.
        if self.ftr is not None:
            self.ftr.write(data)
        else:
            self._write_fn(data)
        return 0

    cdef inline int _write_end(self, bytes data, bint last) except -1:
        """``_write(data)``; ``last``: the connection's last bytes (close or half-close
        follows at once), which our transport sends with the FIN (FdTransport.write_end)."""
        if self.ftr is not None:
            self.ftr.write_end(data, last)
        else:
            self._write_fn(data)
        return 0

    cdef inline int _write_buf(self, _Buf b, bint last) except -1:
        """``_write(b.take())``; our transport sends from the buffer without the bytes copy.
        ``last``: the connection's last bytes, as _write_end."""
        if self.ftr is not None:
            self.ftr.write_from(b.p, b.n, last)
        else:
            self._write_fn(b.take())
        return 0

    cdef inline int _write2(self, bytes a, bytes b) except -1:
        """``_write(a + b)``; our transport sends both pieces without joining them."""
        if self.ftr is not None:
            self.ftr.write2(a, b)
        else:
            self._write_fn(a + b)
        return 0

    cdef inline int _pause_reading(self) except -1:
        if self.ftr is not None:
            self.ftr.pause_reading()
        else:
            self.transport.pause_reading()
        return 0

    cdef inline int _resume_reading(self) except -1:
        if self.ftr is not None:
            self.ftr.resume_reading()
        else:
            self.transport.resume_reading()
        return 0

    cdef inline int _close_transport(self) except -1:
        if self.ftr is not None:
            self.ftr.close()
        elif self.transport is not None:
            self.transport.close()
        return 0

    cdef bint _half_close(self) except -1:
        """Shut the write side once what is queued has gone out (reads go on); False when
        the transport can't (TLS)."""
        if self.ftr is not None:
            self.ftr.write_eof()
        elif self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            return False
        return True


cdef class ClientConnection(Connection)
cdef class UpstreamConnection(Connection)
cdef class Poller
cdef class FdTransport
cdef class Backend
cdef class UpstreamPool
cdef class Engine


@cython.final  # PERF: its methods are called directly (no vtable)
cdef class TimerWheel:
    """Coarse timeouts: one loop timer per worker ticks every ``resolution`` seconds.

    PERF: arming a deadline is a float store plus, only when it moves earlier than the
    slot it is filed in, one list append; there is no cancel (BENCHMARKING.md: a
    call_later + cancel per request costs 2.7 µs)."""
    cdef public double resolution
    cdef public double now
    cdef int size
    cdef list slots
    cdef long long tick
    cdef double base
    cdef object loop
    cdef object handle
    cdef bint running
    cdef long long horizon

    def __init__(self, loop, double resolution=0.25, int size=512, double horizon=5.0):
        self.loop = loop
        self.resolution = resolution
        self.size = size
        self.horizon = max(1, min(size - 1, <long long>(horizon / resolution)))
        self.slots = [[] for _ in range(size)]
        self.now = _mono_read()
        self.base = self.now
        self.tick = 0
        self.running = False

    def start(self):
        self.running = True
        self.handle = self.loop.call_later(self.resolution, self._on_tick)

    def stop(self):
        self.running = False
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    cdef inline int arm(self, Timed t, double deadline) except -1:
        cdef long long target
        t.deadline = deadline
        target = <long long>((deadline - self.base) / self.resolution) + 1
        if target <= self.tick:
            target = self.tick + 1
        # PERF: an entry is filed at most `horizon` ticks ahead and re-filed when its slot
        # comes up. Moving a deadline (idle 75 s -> read 60 s -> idle ...) then touches no
        # list unless the new deadline is nearer than the horizon.
        if target - self.tick > self.horizon:
            target = self.tick + self.horizon
        if t.sched_tick <= 0 or target < t.sched_tick:
            t.sched_tick = target
            (<list>self.slots[target % self.size]).append(t)

    def _on_tick(self):
        cdef list bucket
        cdef Timed t
        cdef long long due
        self.now = _mono_read()
        due = <long long>((self.now - self.base) / self.resolution)
        while self.tick < due:
            self.tick += 1
            bucket = self.slots[self.tick % self.size]
            if not bucket:
                continue
            self.slots[self.tick % self.size] = []
            for t in bucket:
                if t.sched_tick != self.tick:
                    continue          # re-filed in an earlier slot meanwhile
                t.sched_tick = 0
                if t.deadline <= 0:
                    continue          # disarmed
                if t.deadline <= self.now:
                    t.deadline = 0
                    try:
                        t.on_timeout()
                    except Exception:
                        _log.exception("timeout handler failed")
                else:
                    self.arm(t, t.deadline)
        if self.running:
            self.handle = self.loop.call_later(self.resolution, self._on_tick)


# ---------------------------------------------------------------------------------------
# Routes, backends, pools
# ---------------------------------------------------------------------------------------

@cython.final  # PERF: its methods are called directly (no vtable)
cdef class Route:
    """One compiled (stage, resource, method): everything the hot path reads, typed."""
    cdef public str key
    cdef public str service
    cdef public str stage
    cdef public str resource
    cdef public str method
    cdef public tuple param_names
    cdef public int prefix_len
    cdef public object template          # Template or None
    cdef public Backend backend
    cdef public bint host_from_target
    cdef public double connect_timeout
    cdef public double read_timeout
    cdef public double send_timeout
    cdef public object pipeline          # Pipeline or None (None: the plain path)
    cdef public StepChain chain          # pipeline.chain: its sync phases, called from C
    cdef public bint pipeline_async
    cdef public bint has_response_phase
    cdef public bint has_log_phase
    cdef public long long max_body       # -1: no limit
    cdef public bint needs_body          # a plugin reads the whole body before the request phase
    cdef public bint ctx_lazy            # its RequestContext keeps headers on the scan (_context.pxi)
    cdef public int stats_slot
    cdef public object spec
    cdef public dict variables
    cdef bytes log_part                  # access-log fragment for service/stage/resource (first use)

    def __init__(self):
        self.max_body = -1
        self.stats_slot = -1
        self.connect_timeout = 5.0
        self.read_timeout = 60.0
        self.send_timeout = 60.0
        self.param_names = ()
        self.variables = {}

    def __repr__(self):
        return f"<Route {self.key}>"


cdef bytes _NO_ROUTE_LOG_PART = access_route_part(None, None, None)


DEF HASH_IP = 1
DEF HASH_PATH = 2
DEF HASH_HEADER = 3
DEF HASH_COOKIE = 4
DEF _RING_POINTS = 160       # ring points per unit of weight (nginx's ketama uses 160)
DEF _RING_MAX_UNITS = 100    # weight units given 160 points each; beyond, points are shared
cdef uint64_t _RING_SEED = 0x5f3759df0b5eed5    # fixed: every worker and node builds one ring


cdef inline uint32_t _ring_hash(bytes b) noexcept:
    return <uint32_t>(_rt_hash(<const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b),
                               _RING_SEED) >> 32)


def _parse_hash_key(str spec):
    """(HASH_*, name) for a hash_key of "ip", "path", "header:Name" or "cookie:name"."""
    kind, _, name = spec.partition(":")
    if kind == "ip" and not name:
        return HASH_IP, None
    if kind == "path" and not name:
        return HASH_PATH, None
    if kind == "header" and name:
        return HASH_HEADER, name.lower().encode("latin-1")
    if kind == "cookie" and name:
        return HASH_COOKIE, name.encode("latin-1")
    raise ValueError(f"bad hash_key {spec!r} (ip, path, header:Name or cookie:name)")


cdef bytes _cookie_value(bytes header, bytes name):
    """The value of cookie ``name`` in a Cookie header (RFC 6265 5.4: "a=1; b=2"), or None."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name)
    for part in header.split(b";"):
        part = part.strip()
        if PyBytes_GET_SIZE(part) > n and part[n] == 61 and part.startswith(name):
            return part[n + 1:]
    return None


@cython.final  # PERF: its methods are called directly (no vtable)
cdef class Backend:
    """A stage's backend: its targets' pools, picked round-robin, each taking its weight's
    share when the weights differ (smooth weighted round-robin, nginx's: the picks of
    weights 3 and 1 run a a b a). A target that could not be connected to ``max_fails``
    times within ``fail_timeout`` seconds is passed over for ``fail_timeout`` seconds
    (nginx's max_fails / fail_timeout), and so is one that fails its active health checks
    (``checked_down``), unless every target is: then they are all tried in turn, as before.
    A backend with one target never skips it. With ``least_conn`` the pick is the target
    with the fewest exchanges in flight for its weight (this worker's, counted on its
    pool: ``UpstreamPool.busy``), ties going in turn (nginx's ``least_conn``). With
    ``hash`` a request goes where its key (``hash_key``: the client's address, the path, a
    header or a cookie) falls on a ring of the targets' points (160 per unit of weight,
    nginx's ``hash ... consistent``): the same key goes to the same target on every worker
    and node, and adding or removing a target moves only the keys of its share; a target
    passed over gives its keys to the next one on the ring, and a request without the key
    goes in turn. A request
    whose connection failed goes to the next target, each target once, at most ``tries``
    targets in all (0: every target) and not once it is ``tries_timeout`` seconds old (0:
    no bound), as nginx's proxy_next_upstream_tries / _timeout; with ``retry_unanswered``
    (the default) so does an idempotent request the gateway sent whole whose target closed
    the connection, or did not answer in the read timeout, before its response head
    (nginx's default ``proxy_next_upstream error timeout``). A connection the target closed
    unanswered counts toward its ``max_fails`` as a failed connection does, whatever the
    method; a read timeout does not (a slow resource says little of the target's health,
    and must not take every target out)."""
    cdef public list pools
    cdef int rr
    cdef readonly int n
    cdef readonly int max_fails
    cdef readonly double fail_timeout
    cdef readonly bint weighted         # the weights differ (else plain round-robin)
    cdef readonly list weights          # int per target
    cdef readonly bint least_conn       # balance "least_conn"
    cdef readonly int hash_on           # balance "hash": HASH_IP / _PATH / _HEADER / _COOKIE (0: not)
    cdef readonly bytes hash_name       # the header (lower-case) or cookie name
    cdef uint32_t* ring                 # the ring's points, sorted ...
    cdef int* ring_target               # ... and the target each belongs to
    cdef Py_ssize_t ring_n
    cdef readonly int tries             # targets tried for one request at most (0: each once)
    cdef readonly double tries_timeout  # no next target once the request is this old (0: none)
    cdef readonly bint retry_unanswered # an idempotent request unanswered goes to the next target too
    cdef list current                   # smooth WRR: each target's running score

    def __cinit__(self):
        self.ring = NULL
        self.ring_target = NULL
        self.ring_n = 0

    def __dealloc__(self):
        PyMem_Free(self.ring)
        PyMem_Free(self.ring_target)

    def __init__(self, list pools, int max_fails=1, double fail_timeout=10.0, list weights=None,
                 str balance="round_robin", int tries=0, double tries_timeout=0.0, str hash_key="ip",
                 bint retry_unanswered=True):
        self.pools = pools
        self.retry_unanswered = retry_unanswered
        self.n = len(pools)
        self.rr = 0
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        self.weights = [1] * self.n if weights is None else [int(w) for w in weights]
        if len(self.weights) != self.n or min(self.weights, default=1) < 1:
            raise ValueError("one weight >= 1 per target")
        self.weighted = len(set(self.weights)) > 1
        self.current = [0] * self.n
        if balance not in ("round_robin", "least_conn", "hash"):
            raise ValueError(f"unknown balance {balance!r}")
        self.least_conn = balance == "least_conn"
        self.hash_on = 0
        if balance == "hash":
            self.hash_on, self.hash_name = _parse_hash_key(hash_key)
            self._build_ring()
        if tries < 0 or tries_timeout < 0:
            raise ValueError("tries and tries_timeout are >= 0")
        self.tries = tries if 0 < tries < self.n else self.n
        self.tries_timeout = tries_timeout

    cdef inline UpstreamPool pick(self):
        if self.n == 1:
            return <UpstreamPool>self.pools[0]
        return self.pick_live(None)

    cdef int _build_ring(self) except -1:
        cdef list points = []
        cdef Py_ssize_t i, r, count, total = sum(self.weights)
        cdef UpstreamPool p
        for i in range(self.n):
            p = <UpstreamPool>self.pools[i]
            label = f"{p.host}:{p.port}".encode()
            # 160 points per unit of weight; past 100 units in all, the same 16 000 points
            # shared by weight (weights go up to 1 000 a target: the ring stays small).
            count = _RING_POINTS * <Py_ssize_t>self.weights[i]
            if total > _RING_MAX_UNITS:
                count = max(1, (_RING_POINTS * _RING_MAX_UNITS * <Py_ssize_t>self.weights[i]) // total)
            for r in range(count):
                points.append((_ring_hash(label + b"-" + str(r).encode()), i))
        points.sort()
        self.ring = <uint32_t*>PyMem_Malloc(len(points) * sizeof(uint32_t))
        self.ring_target = <int*>PyMem_Malloc(len(points) * sizeof(int))
        if self.ring == NULL or self.ring_target == NULL:
            raise MemoryError()
        for r in range(len(points)):
            self.ring[r] = points[r][0]
            self.ring_target[r] = points[r][1]
        self.ring_n = len(points)
        return 0

    def _pick_key_for_tests(self, bytes key, UpstreamPool avoid=None):
        """Tests only: pick_keyed from Python."""
        return self.pick_keyed(key, avoid)

    cdef UpstreamPool pick_keyed(self, bytes key, UpstreamPool avoid):
        """``hash``: the target at ``key``'s place on the ring, or the next one there that is
        not passed over (nor ``avoid``); all passed over, or no key: in turn (pick_live)."""
        cdef uint32_t h
        cdef Py_ssize_t lo = 0, hi = self.ring_n, mid, k
        cdef UpstreamPool p
        cdef double now
        if not key or self.ring_n == 0:
            return self.pick_live(avoid)
        if self.n == 1:
            return <UpstreamPool>self.pools[0]
        now = _mono()
        for k in range(self.n):     # none to take (all passed over): don't walk the whole ring
            p = <UpstreamPool>self.pools[k]
            if p is not avoid and not p.passed_over(now):
                break
        else:
            return self.pick_live(avoid)
        h = _ring_hash(key)
        while lo < hi:              # the first point at or after h (wrapping to the first)
            mid = (lo + hi) >> 1
            if self.ring[mid] < h:
                lo = mid + 1
            else:
                hi = mid
        for k in range(self.ring_n):
            p = <UpstreamPool>self.pools[self.ring_target[(lo + k) % self.ring_n]]
            if p is not avoid and not p.passed_over(now):
                return p
        return self.pick_live(avoid)

    def _pick_for_tests(self, UpstreamPool avoid=None):
        """Tests only: pick_live from Python."""
        return self.pick_live(avoid)

    cdef UpstreamPool pick_live(self, UpstreamPool avoid):
        """The next target in turn that is not passed over, other than ``avoid`` (the one
        that just failed); when all are passed over, the next in turn anyway."""
        cdef UpstreamPool p, first = None
        cdef double now = _mono()
        cdef int k, i, start = self.rr, first_i = 0
        if self.least_conn:
            p = self._pick_least(avoid, now)
            if p is not None:
                return p
        elif self.weighted:
            p = self._pick_weighted(avoid, now)
            if p is not None:
                return p
        for k in range(self.n):
            i = start + k
            if i >= self.n:
                i -= self.n
            p = <UpstreamPool>self.pools[i]
            if p is avoid:
                continue
            if not p.passed_over(now):
                self.rr = i + 1 if i + 1 < self.n else 0
                return p
            if first is None:
                first, first_i = p, i
        if first is None:
            return avoid
        self.rr = first_i + 1 if first_i + 1 < self.n else 0      # all passed over: in turn
        return first

    cdef UpstreamPool _pick_least(self, UpstreamPool avoid, double now):
        """The target not passed over (nor ``avoid``) with the fewest exchanges in flight per
        unit of weight (busy_a / w_a < busy_b / w_b, compared as busy_a * w_b < busy_b * w_a);
        among equals the first from the turn on, and the turn moves past it. None when
        every target is passed over."""
        cdef UpstreamPool p, best = None
        cdef int k, i, best_i = 0
        cdef long w, best_w = 1
        for k in range(self.n):
            i = self.rr + k
            if i >= self.n:
                i -= self.n
            p = <UpstreamPool>self.pools[i]
            if p is avoid or p.passed_over(now):
                continue
            w = <long>self.weights[i]
            if best is None or <long>p.busy * best_w < <long>best.busy * w:
                best, best_i, best_w = p, i, w
        if best is not None:
            self.rr = best_i + 1 if best_i + 1 < self.n else 0
        return best

    cdef UpstreamPool _pick_weighted(self, UpstreamPool avoid, double now):
        """Smooth weighted round-robin over the targets not passed over (nor ``avoid``):
        each adds its weight to its score, the highest score wins and gives back the sum
        of the weights taken part. None when every target is passed over."""
        cdef UpstreamPool p
        cdef int i, best = -1
        cdef long total = 0, score, top = 0
        for i in range(self.n):
            p = <UpstreamPool>self.pools[i]
            if p is avoid or p.passed_over(now):
                continue
            score = <long>self.current[i] + <long>self.weights[i]
            self.current[i] = score
            total += <long>self.weights[i]
            if best < 0 or score > top:
                best, top = i, score
        if best < 0:
            return None
        self.current[best] = top - total
        return <UpstreamPool>self.pools[best]

    def close(self):
        for p in self.pools:
            (<UpstreamPool>p).close_idle()


# A host-name target is looked up again after this many seconds (new connections only;
# pooled ones keep their address until they close).
UPSTREAM_DNS_TTL = 30.0


@cython.final  # PERF: its methods are called directly (no vtable)
cdef class UpstreamPool:
    """Keep-alive connections to one backend target (LIFO, so warm connections are reused)."""
    cdef public str host
    cdef public int port
    cdef public object ssl
    cdef public bytes host_header
    cdef readonly int max_idle
    cdef public double idle_timeout
    cdef ObjStack idle
    cdef Engine engine
    cdef int family
    cdef object sockaddr                  # (ip, port) when connectable without DNS or TLS
    cdef bint dns                         # the target is a host name (re-resolved)
    cdef double resolved_until
    cdef object resolving                 # the lookup in progress (a Task) or None
    cdef double own_until                 # passed over until then (Backend.pick_live), without a
                                          # shared mark
    cdef uint64_t* shared_until           # the node's mark of this target (_marks.pxi), or NULL
    cdef uint64_t* shared_tally           # the node's count of its failed connects, or NULL
    cdef object marks                     # the PassiveMarks it is in (keeps the mapping alive)
    cdef public bint checked_down         # failed its active health checks (fastgw/health.py)
    cdef int own_fails                    # failed connects in the window ending at fail_window_end,
    cdef double fail_window_end           # without a shared tally
    cdef readonly int busy                # exchanges in flight: connections lent to a client

    def __init__(self, Engine engine, str host, int port, object ssl=None, int max_idle=256,
                 double idle_timeout=55.0):
        self.engine = engine
        self.host = host
        self.port = port
        self.ssl = ssl
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.idle = ObjStack(max(max_idle, 0))
        default_port = 443 if ssl is not None else 80
        self.host_header = (host if port == default_port else f"{host}:{port}").encode("idna")
        # Plain-HTTP targets are connected on the engine's Poller (no uvloop transport):
        # an IP literal directly; a host name once resolved (see resolve_address). TLS
        # targets go through loop.create_connection.
        self.sockaddr = None
        self.dns = False
        self.resolved_until = 0.0
        self.resolving = None
        if ssl is None:
            for family in (_socket.AF_INET, _socket.AF_INET6):
                try:
                    _socket.inet_pton(family, host)
                except OSError:
                    continue
                self.family = family
                self.sockaddr = (host, port)
                break
            else:
                self.dns = True

    cdef int resolve_address(self) except -1:
        """Look the host name up again (off the loop) when its answer is older than
        UPSTREAM_DNS_TTL; new connections use the last answer meanwhile, or uvloop's
        create_connection until there is one."""
        if not self.dns or self.resolving is not None or _mono() < self.resolved_until:
            return 0
        loop = self.engine.loop
        self.resolving = loop.create_task(
            loop.getaddrinfo(self.host, self.port, type=_socket.SOCK_STREAM))
        self.resolving.add_done_callback(self._resolved)

    def _resolved(self, fut):
        self.resolving = None
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None or not fut.result():
            # Keep the last address, if any; ask again soon.
            _log.warning("upstream %s: address lookup failed (%r); retrying in 5 s", self.host, exc)
            self.resolved_until = _mono() + 5.0
            return
        family, _type, _proto, _name, sockaddr = fut.result()[0]
        self.family = family
        self.sockaddr = (sockaddr[0], sockaddr[1])
        self.resolved_until = _mono() + UPSTREAM_DNS_TTL

    def idle_count(self):
        return self.idle.n

    def _set_busy_for_tests(self, int n):
        """Tests only: pretend ``n`` exchanges are in flight on this target."""
        self.busy = n

    cdef int connect_failed(self, int max_fails, double fail_timeout) except -1:
        """A new connection to this target failed or timed out, or the target closed one
        unanswered: count it (for the node when the target has a slot in the marks table),
        and pass the target over for ``fail_timeout`` s once ``max_fails`` fall within that
        long."""
        cdef double now = _mono()
        cdef int count
        if self.shared_tally != NULL:
            count = _mk_count(self.shared_tally, now, fail_timeout)
        else:
            if now >= self.fail_window_end:
                self.own_fails = 0
                self.fail_window_end = now + fail_timeout
            self.own_fails += 1
            count = self.own_fails
        if max_fails > 0 and count >= max_fails and self.until() <= now:
            if self.shared_until != NULL:
                _mk_raise(self.shared_until, now + fail_timeout)     # for every worker of the node
            else:
                self.own_until = now + fail_timeout
            _log.warning("upstream %s:%d: passed over for %g s after %d failed connection(s)",
                         self.host, self.port, fail_timeout, count)

    cdef inline double until(self) noexcept:
        """Until when failed connects pass the target over: the node's mark when it has one
        (written by whichever worker saw them), else this worker's own."""
        return _mk_read(self.shared_until) if self.shared_until != NULL else self.own_until

    cdef inline bint passed_over(self, double now) noexcept:
        """Failed connects (max_fails) or active health checks keep it out of the picks."""
        return self.until() > now or self.checked_down

    cdef inline void answered(self) noexcept:
        """A new connection to the target got an answer: the target works again, for the
        node too (a count or mark another worker left included). Not at connect: a target
        that takes connections and closes them unanswered is failing. Two reads when there
        is nothing to clear."""
        if self.shared_until != NULL:
            if fgw_rp_load(self.shared_until) != 0:
                fgw_rp_store(self.shared_until, 0)
            if fgw_rp_load(self.shared_tally) != 0:
                fgw_rp_store(self.shared_tally, 0)
        else:
            self.own_fails = 0
            self.own_until = 0.0

    @property
    def fails(self):
        """Failed connects counted toward ``max_fails`` in the current window: the node's
        count when the target has a slot in the marks table, else this worker's own."""
        if self.shared_tally != NULL:
            return _mk_tally_count(fgw_rp_load(self.shared_tally), _mono())
        return self.own_fails if _mono() < self.fail_window_end else 0

    @property
    def down_until(self):
        """Until when the target is passed over after failed connects (monotonic seconds)."""
        return self.until()

    def passed_over_now(self):
        """Whether a pick would pass this target over now (for tests and tools)."""
        return self.passed_over(_mono())

    def fail_connect(self, int max_fails, double fail_timeout):
        """Count a failed connection as the proxy does (for tests)."""
        self.connect_failed(max_fails, fail_timeout)

    def answer_received(self):
        """A new connection got an answer, as the proxy records it (for tests)."""
        self.answered()

    cdef UpstreamConnection acquire(self, ClientConnection client):
        cdef UpstreamConnection c
        while self.idle.n:
            c = <UpstreamConnection>self.idle.pop()
            if not c.closed:
                c.deadline = 0
                c._attach(client)
                c.reused = True
                return c
        c = UpstreamConnection(self)
        c._attach(client)
        c.reused = False
        c.start_connect()
        return c

    cdef int release(self, UpstreamConnection c) except -1:
        if c.closed:
            return 0
        if self.engine.draining or not self.idle.push(c):
            c.close()
            return 0
        c._detach()
        self.engine.wheel.arm(c, self.engine.wheel.now + self.idle_timeout)

    cpdef void close_idle(self):
        cdef UpstreamConnection c
        for c in self.idle.take_all():
            c.close()


# ---------------------------------------------------------------------------------------
# Engine: what one worker's connections share
# ---------------------------------------------------------------------------------------

@cython.final  # PERF: its methods are called directly (no vtable)
cdef class Engine:
    cdef public object loop
    cdef public Router router
    cdef public TimerWheel wheel
    cdef public StatsWriter stats         # None: stats off
    cdef object log_sink                  # AccessLog or None (set through access_log)
    cdef AccessLines access_lines         # its lines, written to from C
    cdef Py_ssize_t access_max            # its max_bytes: flush when this much is waiting
    cdef public object unmatched_slot     # callable(host: bytes) -> int, or None
    cdef dict _consumer_slots             # consumer name -> stats slot (consumer_slots)
    cdef object _last_consumer            # the consumer counted last (by identity) ...
    cdef object _last_cslot               # ... and its slot (None: not counted)
    cdef public double idle_timeout
    cdef public double header_timeout
    cdef public double lingering_timeout  # a lingering close ends after this long without data ...
    cdef public double lingering_time     # ... or this long after the answer at the latest
    cdef public Py_ssize_t max_head
    cdef Slots conns                      # open client connections (each knows its slot)
    cdef public bint draining
    cdef public object on_drained
    cdef public object plugin_errors      # callable(exc, ctx) for logging
    cdef ObjStack free_heads              # RequestHeads of closed connections, for new ones
    cdef public Poller poller             # fastgw's epoll set (None: all on uvloop transports)

    def __init__(self, loop, router, double idle_timeout=75.0, double header_timeout=30.0,
                 Py_ssize_t max_head=65536, double lingering_timeout=5.0, double lingering_time=30.0):
        self.loop = loop
        self.router = router
        self.wheel = TimerWheel(loop)
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.lingering_timeout = lingering_timeout
        self.lingering_time = lingering_time
        self.max_head = max_head
        self.conns = Slots()
        self._consumer_slots = {}
        self.draining = False
        self.free_heads = ObjStack(256)

    @property
    def connections(self):
        """The open client connections (a new list)."""
        return self.conns.members()

    cdef inline int add_connection(self, ClientConnection c) except -1:
        if c.conn_slot < 0:
            c.conn_slot = self.conns.add(c)
        return 0

    cdef inline int remove_connection(self, ClientConnection c) except -1:
        cdef Py_ssize_t i = c.conn_slot
        if i >= 0:
            c.conn_slot = -1
            moved = self.conns.remove(i)
            if moved is not None:
                (<ClientConnection>moved).conn_slot = i
        return 0

    @property
    def consumer_slots(self):
        """Consumer name -> stats slot (set at each config load)."""
        return self._consumer_slots

    @consumer_slots.setter
    def consumer_slots(self, dict slots):
        self._consumer_slots = slots
        self._last_consumer = None

    cdef inline object consumer_slot(self, object consumer):
        """The stats slot of ``consumer``, or None. PERF: requests come from the same
        consumer in runs; its name's dict lookup is made once per run."""
        if consumer is not self._last_consumer:
            self._last_cslot = self._consumer_slots.get(consumer_name(consumer))
            self._last_consumer = consumer
        return self._last_cslot

    @property
    def access_log(self):
        """The worker's AccessLog, or None; lines go straight into its ``lines``."""
        return self.log_sink

    @access_log.setter
    def access_log(self, log):
        self.log_sink = log
        self.access_lines = log.lines if log is not None else None
        self.access_max = log.max_bytes if log is not None else 0

    def start(self):
        self.wheel.start()

    def drain(self):
        """Stop keeping connections alive: idle ones close now, busy ones after their answer."""
        cdef ClientConnection c
        self.draining = True
        for c in self.conns.members():
            if c.state == S_HEAD and not c.inbuf:
                if c.served:
                    c._close()      # idle between requests: nothing is lost
                else:
                    # Accepted but nothing read yet: its first request may be on the way;
                    # serve it (with Connection: close) if it comes soon.
                    c._arm(T_IDLE, 2.0)
        self._check_drained()

    cdef int _check_drained(self) except -1:
        if self.draining and self.conns.n == 0 and self.on_drained is not None:
            cb, self.on_drained = self.on_drained, None
            cb()

    def stop(self):
        self.wheel.stop()

    # PERF: a RequestHead is ~2.3 KB (offset arrays) to malloc and zero; with keep-alive off
    # that was once per request. Closed connections hand theirs back.
    cdef inline RequestHead take_head(self):
        return <RequestHead>self.free_heads.pop()

    cdef inline int give_head(self, RequestHead h) except -1:
        h.buf = None
        self.free_heads.push(h)
        return 0


# ---------------------------------------------------------------------------------------
# Client side
# ---------------------------------------------------------------------------------------

cdef bytes CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
cdef bytes _SERVER_ALLOW = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"   # OPTIONS * (no route takes
                                                                         # TRACE or CONNECT)
cdef object _normalize = None


cdef inline bint _idempotent(bytes method):
    return (method is M_GET or method is M_HEAD or method is M_PUT or method is M_DELETE
            or method is M_OPTIONS or method == b"TRACE")


@cython.final  # PERF: its methods are called directly (no vtable)
cdef class ClientConnection(Connection):
    """One client TCP connection: parses heads, routes, runs plugins, streams both ways."""
    cdef Engine engine
    cdef ForwardInfo fwd
    cdef bytes peer_ip                   # the TCP peer's address (IPv4-mapped unwrapped)
    cdef str peer_ip_str                 # the same as str, made on first use (_peer_str)
    cdef bytes inbuf
    cdef Py_ssize_t scan_pos
    cdef int state
    cdef int paused
    cdef bint reading_paused
    cdef bint writing_paused
    cdef bint processing
    cdef int timer_kind
    # the exchange in progress
    cdef RequestHead req
    cdef Route route
    cdef tuple values
    cdef bytes norm_path
    cdef RequestContext ctx
    cdef int body_mode
    cdef long long body_left
    cdef ChunkedScanner chunk
    cdef long long bytes_in
    cdef long long max_body
    cdef bint req_done
    cdef list pending
    cdef Py_ssize_t pending_size
    cdef UpstreamConnection up
    cdef bytes up_head
    cdef bint up_retryable               # a reused connection: sent again once if it was stale
    cdef bint up_replayable              # idempotent and sent whole: may go to another target
    cdef bytes up_body                   # body bytes sent with up_head, kept for a retry
    cdef bint retried
    cdef int up_tries                    # targets tried for this request (connect failures)
    cdef bint resp_started
    cdef bint dechunk
    cdef bint keep_alive
    cdef bint head_req
    cdef bint by_gateway
    cdef int status
    cdef long long bytes_out
    cdef double t_start
    cdef double t_up
    cdef double t_up_end
    cdef str request_id
    cdef object async_task
    cdef int served                      # requests answered on this connection
    cdef RequestHead head_obj            # reused for every request on this connection
    cdef bint buffering                  # collecting the body for a needs_body pipeline
    cdef list body_plain                 # decoded payload pieces while buffering a chunked body
    cdef list tap_parts                  # the answer's body so far, for ctx.response_tap (else None)
    cdef long long tap_size              # the answer's Content-Length, while tap_parts is set
                                         # (-1: chunked; the upstream side adds decoded bytes)
    cdef long long tap_room              # decoded bytes the tap takes still (chunked answers)
    cdef list hold_parts                 # the answer's body while held for ctx.response_filter
    cdef list hold_headers               # the held answer's headers (end-to-end, after plugins)
    cdef long long hold_room             # decoded bytes the filter takes still (-1: framed by length)
    cdef bint rechunk                    # the gateway frames the decoded payload as chunks itself
                                         # (a held chunked answer outgrew the filter: _hold_release)
    cdef bint swallow                    # the backend's error answer is read and dropped: the
                                         # response tap answers instead at its end (stale_if_error)
    cdef Py_ssize_t conn_slot            # in engine.conns (-1: not there)
    cdef bint head_rejected              # a head was refused: the client's bytes after it were not read
    cdef double linger_end               # S_LINGER: close by then whatever the client does

    def __init__(self, Engine engine, ForwardInfo fwd):
        self._init(engine, fwd)

    cdef inline int _init(self, Engine engine, ForwardInfo fwd) except -1:
        self.engine = engine
        self.fwd = fwd
        self.inbuf = b""
        self.state = S_HEAD
        self.conn_slot = -1

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport):
        """asyncio's entry (uvloop transports: TLS, FASTGW_UVLOOP_TRANSPORTS=1)."""
        peer = transport.get_extra_info("peername")
        self._made(transport, PyUnicode_AsASCIIString(_unmapped(peer[0]) if peer else "127.0.0.1"))

    cdef int _made(self, object transport, bytes ip) except -1:
        """The connection is up; ``ip`` is the peer's address (an IPv4-mapped one unwrapped).
        PERF: the Listener calls this from C with the address it formatted."""
        self._bind(transport)
        self.peer_ip = ip
        self.engine.add_connection(self)
        self._arm(T_IDLE, self.engine.idle_timeout)

    cdef bint _last_request_in(self) noexcept:
        """A whole request is in, the connection closes after its answer and no byte
        came after it: this client has nothing more to be read (see Listener._accept)."""
        return self.state == S_WAIT and not self.keep_alive and not self.inbuf \
            and self.req is not None and not self.req.upgrade

    def connection_lost(self, exc):
        self._transport_lost(exc)

    cdef int _transport_lost(self, object exc) except -1:
        cdef UpstreamConnection up = self.up
        self.state = S_CLOSED
        self.deadline = 0
        self._unbind()
        self.engine.remove_connection(self)
        if self.head_obj is not None and self.async_task is None:
            self.engine.give_head(self.head_obj)
            self.head_obj = None
        if up is not None:
            # The client went away mid-exchange: the upstream answer can't be reused.
            self.up = None
            up._detach()
            up.close()
        if self.async_task is not None:
            self._stop_phase_task()
        self.engine._check_drained()
        return 0

    def data_received(self, bytes data):
        self._on_data(data)

    cdef void _on_data(self, bytes data) noexcept:
        try:
            if self.state == S_HEAD:
                if self.inbuf:
                    self.inbuf = self.inbuf + data
                else:
                    self.inbuf = data
                self._process_input()
            elif self.state == S_BODY:
                self._take_body(data)
            elif self.state == S_WAIT:
                # Pipelined bytes: keep them in order until the answer in progress is done.
                self.inbuf = self.inbuf + data if self.inbuf else data
                self._pause(P_PIPELINE)
            elif self.state == S_TUNNEL:
                self.up._write(data)
                self._arm(T_READ, self.route.read_timeout)
            elif self.state == S_LINGER:
                self._linger_rearm()    # what the client still sends is dropped
        except Exception as exc:
            self._internal_error(exc)

    def eof_received(self):
        if self.state == S_HEAD or self.state == S_TUNNEL or self.state == S_LINGER:
            return False          # idle, half a head that can never complete, or a tunnel: close
        if self.state == S_BODY:
            # The client half-closed before sending the whole body.
            self._abort_exchange()
            return False
        # Answer the request in progress, then close (RFC 9112 9.6 allows half-close).
        self.keep_alive = False
        return True

    def pause_writing(self):
        self.writing_paused = True
        if self.up is not None and self.up.transport is not None:
            self.up._pause_reading()
        self._arm(T_SEND, self.route.send_timeout if self.route is not None else 60.0)

    def resume_writing(self):
        self.writing_paused = False
        if self.up is not None and self.up.transport is not None:
            self.up._resume_reading()
        if self.timer_kind == T_SEND:
            self._arm(T_READ, self.route.read_timeout if self.route is not None else 60.0)

    # -- flow control and timers ---------------------------------------------------------
    cdef inline int _pause(self, int reason) except -1:
        self.paused |= reason
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self._pause_reading()

    cdef inline int _resume(self, int reason) except -1:
        self.paused &= ~reason
        if self.paused == 0 and self.reading_paused and self.state != S_CLOSED:
            self.reading_paused = False
            self._resume_reading()

    cdef inline int _arm(self, int kind, double seconds) except -1:
        self.timer_kind = kind
        self.engine.wheel.arm(self, self.engine.wheel.now + seconds)

    cdef int on_timeout(self) except -1:
        cdef int kind = self.timer_kind
        cdef UpstreamPool failed
        self.timer_kind = T_NONE
        if self.state == S_CLOSED:
            return 0
        if kind == T_IDLE:
            self._close()
        elif kind == T_HEADER:
            self.keep_alive = False
            self._answer_error(408, "request head not received in time")
        elif kind == T_CONNECT:
            failed = self.up.pool if self.up is not None else None
            self._drop_upstream()
            if not self._next_upstream(failed):
                self._upstream_error(504, "upstream connect timed out")
        elif kind == T_READ:
            failed = self.up.pool if self.up is not None else None
            self._drop_upstream()
            if self.state == S_BODY and not self.resp_started and not (self.paused & P_UPSTREAM):
                # The body stopped coming while the backend waits for it: the client's doing
                # (as nginx's client_body_timeout), not the backend's.
                self.keep_alive = False
                self._answer_error(408, "request body not received in time")
            elif not self._next_unanswered(failed, False):
                self._upstream_error(504, "upstream timed out")
        elif kind == T_SEND:
            self._abort_exchange()
        elif kind == T_LINGER:
            self._close()               # the client was silent for lingering_timeout, or time is up
        elif kind == T_PLUGIN:
            self._plugin_timed_out()

    # -- request head --------------------------------------------------------------------
    cdef int _process_input(self) except -1:
        if self.processing:
            return 0
        self.processing = True
        try:
            while self.state == S_HEAD and self.inbuf:
                if not self._on_head_data():
                    break         # an incomplete head: wait for more bytes
        finally:
            self.processing = False

    cdef bint _on_head_data(self) except -1:
        """Handle the head at the start of inbuf; False while it is still incomplete."""
        cdef Py_ssize_t bad = -1
        cdef Py_ssize_t end
        cdef bytes data = self.inbuf
        cdef RequestHead req
        if self.scan_pos == 0:
            # RFC 9112 2.2: ignore at least one empty line before a request-line.
            while PyBytes_GET_SIZE(data) >= 2 and PyBytes_AS_STRING(data)[0] == 13 \
                    and PyBytes_AS_STRING(data)[1] == 10:
                data = _bslice(data, 2, PyBytes_GET_SIZE(data))
            self.inbuf = data
            if not data:
                return False
            self._arm(T_HEADER, self.engine.header_timeout)
        end = find_head_end(data, self.scan_pos, &bad)
        if bad >= 0:
            self.inbuf = b""
            self.keep_alive = False
            self.head_rejected = True
            self._answer_error(400, "bare LF in request head")
            return True
        if end < 0:
            if PyBytes_GET_SIZE(data) > self.engine.max_head:
                self.inbuf = b""
                self.keep_alive = False
                self.head_rejected = True
                self._answer_head_too_large(data)
                return True
            self.scan_pos = PyBytes_GET_SIZE(data) - 3 if PyBytes_GET_SIZE(data) > 3 else 0
            self.inbuf = data
            return False
        self.scan_pos = 0
        if end > self.engine.max_head:
            self.inbuf = b""
            self.keep_alive = False
            self.head_rejected = True
            self._answer_head_too_large(data)
            return True
        try:
            if self.head_obj is None:
                self.head_obj = self.engine.take_head()
            req = scan_request(data, end, self.head_obj)
            self.head_obj = req
        except HttpError as exc:
            self.inbuf = b""
            self.keep_alive = False
            self.head_rejected = True
            self._answer_error(exc.status, exc.message)
            return True
        self.inbuf = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + end, PyBytes_GET_SIZE(data) - end) \
            if end < PyBytes_GET_SIZE(data) else b""
        self._start(req, end)
        return True

    cdef int _answer_head_too_large(self, bytes data) except -1:
        """414 when the request line alone is over the limit (RFC 9110 15.5.15), else 431."""
        if memchr(PyBytes_AS_STRING(data), 10, self.engine.max_head) == NULL:
            self._answer_error(414, "request target too long")
        else:
            self._answer_error(431, "request head too large")

    cdef int _start(self, RequestHead req, Py_ssize_t head_len) except -1:
        cdef tuple m
        cdef int code
        cdef bytes path
        cdef bytes rest
        self.req = req
        self.t_start = _mono()
        self.bytes_in = head_len
        self.bytes_out = 0
        self.status = 0
        self.route = None
        self.ctx = None
        self.up = None
        self.up_head = None
        self.retried = False
        self.up_tries = 0
        self.up_body = None
        self.up_replayable = False
        self.resp_started = False
        self.dechunk = False
        self.rechunk = False
        self.by_gateway = False
        self.request_id = None
        self.pending = None
        self.pending_size = 0
        self.max_body = -1
        self.buffering = False
        self.body_plain = None
        self.t_up = 0
        self.t_up_end = 0
        self.head_req = req.method == b"HEAD"
        self.keep_alive = req.keep_alive and not self.engine.draining
        self.deadline = 0
        self.timer_kind = T_NONE
        if req.chunked:
            self.body_mode = B_CHUNKED
            self.chunk = ChunkedScanner()
            self.req_done = False
        elif req.content_length > 0:
            self.body_mode = B_LENGTH
            self.body_left = req.content_length
            self.req_done = False
        else:
            self.body_mode = B_NONE
            self.req_done = True
        self.state = S_WAIT if self.req_done else S_BODY
        if not self.req_done:
            # Until we know the request is going upstream, don't read its body off the wire.
            rest = self.inbuf
            self.inbuf = b""
        else:
            rest = None
        if req.path == b"*":
            # OPTIONS * (the scanner takes the asterisk-form with OPTIONS only) asks about the
            # server, not a resource (RFC 9110 9.3.7): the gateway answers for itself, as a
            # liveness probe some load balancers send expects. No route, so no plugins.
            self.keep_alive = self.keep_alive and self.req_done
            self._answer(200, [(b"Allow", _SERVER_ALLOW)], b"")
            return 0
        path = _rt_normalize(req.path)
        if path is None:
            self.keep_alive = self.keep_alive and self.req_done
            self._answer_error(400, "invalid request path")
            return 0
        self.norm_path = path
        m = self.engine.router.match(req.host, req.method, path)
        code = m[0]
        if code == 200:
            self.route = <Route>m[1]
            self.values = m[2]
        elif code == 404:
            self.keep_alive = self.keep_alive and self.req_done
            self._answer_error(404, "no route for this request")
            return 0
        else:
            if req.method == b"OPTIONS" and self._try_preflight(m[1], m[2]):
                return 0
            self.keep_alive = self.keep_alive and self.req_done
            self._answer_error(405, "method not allowed", [(b"Allow", m[1].allow)])
            return 0
        if self.route.pipeline is not None:
            if self.route.needs_body and not self.req_done:
                self._start_buffering(rest)
                return 0
            self._run_request_phase()
            if self.state != S_BODY and self.state != S_WAIT:
                return 0        # answered by a plugin (or closed)
        if rest is not None:
            self._take_body(rest)
            if self.state != S_BODY and self.state != S_WAIT:
                return 0
        if self.async_task is None:     # else the request phase's task dispatches
            self._dispatch()

    # -- plugins -------------------------------------------------------------------------
    cdef inline str _peer_str(self):
        if self.peer_ip_str is None:
            self.peer_ip_str = PyUnicode_DecodeASCII(PyBytes_AS_STRING(self.peer_ip),
                                                     PyBytes_GET_SIZE(self.peer_ip), NULL)
        return self.peer_ip_str

    cdef RequestContext _make_ctx(self, Route route, tuple values):
        cdef RequestHead req = self.req
        cdef RequestContext ctx = new_context(
            method_str(req.method), self.norm_path, req.query,
            None if route.ctx_lazy else req.forward_headers(), req, self._peer_str(),
            self.fwd.scheme, route, values, self.request_id, "1.1" if req.version == 11 else "1.0")
        ctx.body_size = req.content_length if not req.chunked else -1
        ctx.start_time = self.t_start
        return ctx

    cdef int _start_buffering(self, bytes rest) except -1:
        """A plugin needs the whole body (e.g. an HMAC digest): collect it, bounded by the
        route's size limit (1 MiB when none), then run the request phase."""
        cdef Route route = self.route
        cdef long long limit = route.max_body if route.max_body >= 0 else 1048576
        if self.req.content_length > limit:
            self.keep_alive = False
            self._answer_error(413, "request body too large")
            return 0
        self.ctx = self._make_ctx(route, self.values)
        self.max_body = limit
        self.buffering = True
        self.body_plain = [] if self.body_mode == B_CHUNKED else None
        # The route's read timeout between body pieces (each re-arms it); a body that stops
        # coming is answered 408. Without it a client could hold the connection and its
        # buffer for ever by sending part of a body.
        self._arm(T_READ, route.read_timeout)
        if self.req.expect_continue:
            self._write(CONTINUE_100)
        if rest is not None:
            self._take_body(rest)

    cdef int _body_buffered(self) except -1:
        cdef RequestContext ctx = self.ctx
        self.buffering = False
        pieces = self.body_plain if self.body_plain is not None else self.pending
        ctx.body = b"".join(pieces) if pieces else b""
        self.body_plain = None
        self._resume(P_PENDING)
        self._run_request_phase()
        if self.state != S_BODY and self.state != S_WAIT:
            return 0
        if self.async_task is None:     # else the request phase's task dispatches
            self._dispatch()

    cdef int _run_request_phase(self) except -1:
        cdef Route route = self.route
        pipeline = route.pipeline
        cdef RequestContext ctx = self.ctx
        if ctx is None:
            ctx = self._make_ctx(route, self.values)
            self.ctx = ctx
            if route.needs_body:
                ctx.body = b""
        self.max_body = route.max_body
        if self.max_body >= 0 and self.req.content_length > self.max_body:
            self.keep_alive = False
            self._answer_error(413, "request body too large")
            return 0
        if route.pipeline_async:
            self._start_phase_task(pipeline, ctx, False)
            return 0
        try:
            state = route.chain.start_request(ctx)
        except Exception as exc:
            self._plugin_failed(exc)
            return 0
        if state == 1:
            self._answer_ctx()
        elif state == 2:
            # A step has to wait (e.g. a password check off the loop): the rest of the phase
            # and the dispatch run in a task, as for an async pipeline.
            self._start_phase_task(pipeline, ctx, True)

    cdef int _start_phase_task(self, pipeline, RequestContext ctx, bint resume) except -1:
        """The request phase goes on in a task (see _run_async); reading waits for it, and
        the route's read timeout bounds it (T_PLUGIN).

        PERF: a step that waits on a future (a Redis count, a password check on a thread)
        goes on from the future's done callback (_step_waited), with no task and no
        coroutine: that cost ~5 µs a request. ``async_task`` holds the future meanwhile, so
        everything that stops a waiting phase (the client gone, the timeout) cancels it
        the same way."""
        self._pause(P_PLUGIN)
        waiting = ctx._waiting
        if resume and isinstance(waiting, _asyncio.Future):
            ctx._waiting = None
            self.async_task = waiting
            waiting.add_done_callback(self._step_waited)
        else:
            self.async_task = self.engine.loop.create_task(self._run_async(pipeline, ctx, resume))
        self._arm(T_PLUGIN, self.route.read_timeout)

    def _step_waited(self, fut):
        """The future a request step waited on is done: the step's verdict (truthy: it
        answered), then the steps after it, then answer or dispatch, as _run_async."""
        cdef RequestContext ctx = self.ctx
        cdef int state
        if fut is not self.async_task or self.state == S_CLOSED:
            # Stopped meanwhile (the client went, or timed out): a coroutine the step
            # handed on as its next wait is closed, never awaited.
            if not fut.cancelled() and fut.exception() is None and hasattr(fut.result(), "close"):
                fut.result().close()
            if fut is self.async_task:
                self.async_task = None
            return
        self.async_task = None
        chain = self.route.chain
        try:
            try:
                answered = fut.result()
            except BaseException:           # the step's own failure (or a cancel not ours)
                state = 1 if chain.crashed(ctx) else 0
            else:
                state = chain.resume_request(ctx, answered)
            if state == 2:                  # a later step waits in turn (reading stays paused)
                self._start_phase_task(self.route.pipeline, ctx, True)
                return
        except Exception as exc:
            self._resume(P_PLUGIN)
            self._plugin_failed(exc)
            return
        self._resume(P_PLUGIN)
        try:
            if state == 1:
                self._answer_ctx()
            else:
                self._dispatch()
        except Exception as exc:
            self._internal_error(exc)

    cdef int _stop_phase_task(self) except -1:
        """Cancel the request phase's task; close what a step returned if the task never
        took it up (no coroutine left never awaited)."""
        self.async_task.cancel()
        self.async_task = None
        if self.ctx is not None:
            self.ctx._drop_waiting()

    async def _run_async(self, pipeline, ctx, bint resume):
        """The request phase in a task (the whole of an async pipeline's, or the rest after a
        step that waits: ``resume``), then answer or dispatch. The phase's coroutine is made
        here: a task cancelled before it starts leaves no coroutine never awaited."""
        try:
            answered = await (pipeline.finish_request(ctx) if resume else pipeline.run_request_async(ctx))
        except _asyncio.CancelledError:
            raise
        except Exception as exc:
            self.async_task = None
            self._resume(P_PLUGIN)
            self._plugin_failed(exc)
            return
        self.async_task = None
        if self.state == S_CLOSED:
            return
        self._resume(P_PLUGIN)
        if answered:
            self._answer_ctx()
            return
        try:
            self._dispatch()
        except Exception as exc:
            self._internal_error(exc)

    cdef bint _try_preflight(self, object methods, tuple values):
        cdef Route route
        for r in methods.routes.values():
            route = <Route>r
            pipeline = route.pipeline
            if pipeline is None or getattr(pipeline, "preflight", None) is None:
                continue
            self.route = route
            ctx = self._make_ctx(route, values if values is not None else ())
            self.ctx = ctx
            try:
                answered = pipeline.preflight(ctx)
            except Exception as exc:
                self._plugin_failed(exc)
                return True
            if answered:
                self.keep_alive = self.keep_alive and self.req_done
                self._answer_ctx()
                return True
            self.route = None
            self.ctx = None
            return False
        return False

    cdef int _plugin_timed_out(self) except -1:
        """A request step waited longer than the route's read timeout: stop it, answer 504."""
        if self.async_task is None:
            return 0
        self._stop_phase_task()
        self._resume(P_PLUGIN)
        _log.warning("plugin timed out on %s", self.route.key if self.route else "?")
        self.keep_alive = self.keep_alive and self.req_done
        self._answer_error(504, "plugin timed out")

    cdef int _plugin_failed(self, exc) except -1:
        _log.error("plugin failed on %s: %r", self.route.key if self.route else "?", exc, exc_info=exc)
        self.keep_alive = self.keep_alive and self.req_done
        self._answer_error(500, "plugin error")

    cdef int _answer_ctx(self) except -1:
        cdef RequestContext ctx = self.ctx
        if self.route is not None and self.route.has_response_phase:
            # Response plugins (e.g. response-headers, CORS) apply to gateway answers too.
            ctx.status = ctx.answer_status
            ctx.response_headers = ctx.answer_headers
            try:
                self.route.chain.run_response(ctx)
            except Exception as exc:
                _log.error("response plugin failed on %s: %r", self.route.key, exc, exc_info=exc)
            ctx.answer_headers = ctx.response_headers
        cdef list headers = list(ctx.answer_headers)
        if ctx.response_headers_add:
            headers.extend(ctx.response_headers_add)
        if not self.req_done:
            self.keep_alive = False
        body = ctx.answer_body
        if ctx.response_filter is not None and body and not self.head_req:
            try:
                if ctx.response_filter.start(ctx.answer_status, headers, len(body)):
                    body = <bytes?>ctx.response_filter.rewrite(body)
            except Exception as exc:
                _log.error("response filter failed on %s: %r", self.route.key, exc, exc_info=exc)
        self._answer(ctx.answer_status, headers, body)

    cdef str _rid(self):
        """This request's id: the gateway's, or the one a plugin (request-id) put in ctx."""
        cdef object rid
        if self.ctx is not None:
            rid = self.ctx.rid()               # (made now if nothing asked for it before)
            if type(rid) is str and rid:
                return <str>rid
        if self.request_id is None:
            self.request_id = next_request_id()
        return self.request_id

    # -- request body --------------------------------------------------------------------
    cdef int _take_body(self, bytes data) except -1:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t k
        cdef bytes body, leftover = None
        if n == 0:
            return 0
        if self.body_mode == B_LENGTH:
            if n <= self.body_left:
                body = data
            else:
                body = _bslice(data, 0, self.body_left)
                leftover = _bslice(data, self.body_left, n)
            self.body_left -= PyBytes_GET_SIZE(body)
            if self.body_left == 0:
                self.req_done = True
        else:
            k = self.chunk.feed(data, self.body_plain)
            if k < 0:
                self._bad_body()
                return 0
            if k == n:
                body = data
            else:
                body = _bslice(data, 0, k)
                leftover = _bslice(data, k, n)
            if self.chunk.done:
                self.req_done = True
        self.bytes_in += PyBytes_GET_SIZE(body)
        if self.max_body >= 0 and self.bytes_in - self.req.head_len > self.max_body:
            self._body_too_large()
            return 0
        if self.timer_kind == T_READ:
            self._arm(T_READ, self.route.read_timeout)    # a piece came: the body still flows
        if self.up is not None and self.up.transport is not None and self.pending is None:
            self.up._write(body)
        else:
            if self.pending is None:
                self.pending = []
            self.pending.append(body)
            self.pending_size += PyBytes_GET_SIZE(body)
            if self.pending_size > PENDING_LIMIT and not self.buffering:
                self._pause(P_PENDING)
        if self.req_done:
            self.state = S_WAIT if self.state == S_BODY else self.state
            if leftover:
                self.inbuf = leftover
                self._pause(P_PIPELINE)
            if self.buffering:
                self._body_buffered()

    cdef int _bad_body(self) except -1:
        self.keep_alive = False
        if self.resp_started:
            self._abort_exchange()
        else:
            self._drop_upstream()
            self._answer_error(400, "bad chunked body")

    cdef int _body_too_large(self) except -1:
        self.keep_alive = False
        if self.resp_started:
            self._abort_exchange()
        else:
            self._drop_upstream()
            self._answer_error(413, "request body too large")

    # -- upstream --------------------------------------------------------------------------
    cdef int _dispatch(self) except -1:
        self.up_tries = 1
        return self._forward(self._pick_target(None), True)

    cdef inline UpstreamPool _pick_target(self, UpstreamPool avoid):
        """The target for this request (``avoid``: the one that just failed): by its key on
        a ``hash`` backend, else the backend's turn (round-robin, weighted or least_conn)."""
        cdef Backend backend = self.route.backend
        if backend.hash_on:
            return backend.pick_keyed(self._hash_key(backend), avoid)
        if avoid is None:
            return backend.pick()
        return backend.pick_live(avoid)

    cdef bytes _hash_key(self, Backend backend):
        """This request's key for a ``hash`` backend (None: it has none)."""
        cdef bytes v, lname
        if backend.hash_on == HASH_IP:
            # The caller behind trusted proxies when ip-restriction found it (else every
            # request through one load balancer would land on one target).
            if self.ctx is not None and self.ctx.client_ip is not None and self.ctx.client_ip != self.ctx.peer_ip:
                return str(self.ctx.client_ip).encode("latin-1")
            return self.peer_ip
        if backend.hash_on == HASH_PATH:
            return self.norm_path
        lname = b"cookie" if backend.hash_on == HASH_COOKIE else backend.hash_name
        v = self.ctx.find_req_header(lname) if self.ctx is not None else self.req.view_find(lname)
        if v is not None and backend.hash_on == HASH_COOKIE:
            return _cookie_value(v, backend.hash_name)
        return v

    cdef int _forward(self, UpstreamPool pool, bint first) except -1:
        """Send the request to ``pool``'s target (``first``: not a retry on another one)."""
        cdef Route route = self.route
        cdef RequestHead req = self.req
        cdef bytes path_q, host, query
        cdef list headers = None, extra = None
        cdef bytes method = req.method
        cdef RequestContext ctx = self.ctx
        cdef bint chunked = req.chunked
        cdef long long content_length = req.content_length
        if ctx is not None:
            if ctx.body_replaced and self.req_done:
                # A plugin rewrote the (buffered) body: it goes out whole, with its own length.
                chunked = False
                content_length = PyBytes_GET_SIZE(ctx.body)
                if first:
                    self.pending = [ctx.body]
                    self.pending_size = content_length
            if ctx._head is not None and route.template is None:
                extra = ctx._added      # lazy mode: the scan (with the steps' drops) + these
            else:
                headers = ctx.headers
            query = ctx.query
            if ctx.upstream_path is not None:
                path_q = ctx.upstream_path
            else:
                path_q = self._backend_path(route, query, headers, query != req.query or req.has_query)
        else:
            path_q = self._backend_path(route, req.query, None, req.has_query)
        host = pool.host_header if route.host_from_target else (req.host_raw or pool.host_header)
        self.up_head = build_upstream_head(req, method, path_q, host, self.peer_ip, self.fwd, headers,
                                           extra, chunked, content_length)
        if first and req.expect_continue and not self.req_done:
            self._write(CONTINUE_100)
        self.up = pool.acquire(self)
        if self.up.transport is not None:
            self._upstream_ready()
        else:
            self._arm(T_CONNECT, route.connect_timeout)

    cdef bytes _backend_path(self, Route route, bytes query, list headers, bint with_query):
        cdef bytes p
        if route.template is not None:
            p = route.template.render(self.values, query, headers if headers is not None else self.req.headers())
        elif route.prefix_len:
            p = _bslice(self.norm_path, route.prefix_len, PyBytes_GET_SIZE(self.norm_path)) or b"/"
        else:
            p = self.norm_path
        if with_query and query:
            return p + b"?" + query
        return p

    cdef int _upstream_ready(self) except -1:
        """The upstream connection is open: send the head, glued to the body bytes we hold."""
        cdef bytes data = self.up_head
        cdef bytes body = self.up_body    # a retry sends the same body again
        if self.pending is not None:
            body = b"".join(self.pending)     # usually one piece: no copy
            self.pending = None
            self.pending_size = 0
            self._resume(P_PENDING)
        # Only an idempotent request (RFC 9110 9.2.2) may be sent again: a POST the backend
        # received before it closed the pooled connection must not run twice.
        self.up_replayable = self.req_done and _idempotent(self.req.method)
        self.up_retryable = self.up_replayable and self.up.reused and not self.retried
        # The whole request (head and body) was sent: keep the body for a retry.
        self.up_body = body if self.up_replayable else None
        self.t_up = _mono()
        self.up.send(data, body)
        if not self.req_done and self.state == S_BODY:
            # Body still to come: read it from the client again.
            if self.paused & P_PENDING:
                self._resume(P_PENDING)
        self._arm(T_READ, self.route.read_timeout)

    cdef int _upstream_connect_failed(self, UpstreamPool failed) except -1:
        self.up = None
        if not self._next_upstream(failed):
            self._upstream_error(502, "upstream connection failed")

    cdef bint _next_upstream(self, UpstreamPool failed, bint count=True) except -1:
        """No connection to ``failed``'s target could be made (nothing of the request reached
        it), or it left a request that may be sent again unanswered: count the failure
        (``count``), and send the request to another target while one is left untried
        (nginx's proxy_next_upstream error timeout), within the backend's ``tries`` and
        ``tries_timeout``. False: answer the error."""
        cdef Backend backend = self.route.backend
        if count:
            self._count_failure(failed)
        if self.state == S_CLOSED or self.resp_started or self.up_tries >= backend.tries:
            return False
        if backend.tries_timeout > 0 and _mono() - self.t_start >= backend.tries_timeout:
            return False
        self.up_tries += 1
        self._forward(self._pick_target(failed), False)
        return True

    cdef int _upstream_lost(self, bint got_bytes, UpstreamPool failed) except -1:
        """The upstream connection (to ``failed``'s target) closed before a complete answer."""
        self.up = None
        if not got_bytes and self.up_retryable and not self.resp_started:
            # A reused keep-alive connection that the backend had just closed: retry once
            # on a fresh connection (the whole request is in up_head, nothing was answered).
            self.retried = True
            self.up_retryable = False
            # The head is built again: with host_header "target" its Host is the target's.
            # A hash backend's request stays with its key's target (a fresh connection).
            self._forward(self._pick_target(None), False)
            return 0
        if self._next_unanswered(failed, True):
            return 0
        self._upstream_error(502, "upstream closed the connection")

    cdef bint _next_unanswered(self, UpstreamPool failed, bint closed) except -1:
        """The target closed the connection (``closed``) or timed out before the response
        head: an idempotent request sent whole goes to the next target (see Backend); False
        when it can't (nothing sent to the client may be taken back). A close counts toward
        the target's max_fails whatever the method; a slow answer does not (one slow
        resource must not take every target out)."""
        if self.resp_started:
            return False
        if self.up_replayable and self.route.backend.retry_unanswered:
            return self._next_upstream(failed, closed)
        if closed:
            self._count_failure(failed)
        return False

    cdef int _count_failure(self, UpstreamPool failed) except -1:
        """Count a failure of ``failed``'s target toward the backend's max_fails; as in
        nginx, the only target of a backend is never passed over, so it counts nothing."""
        cdef Backend backend = self.route.backend
        if failed is not None and backend.n > 1:
            failed.connect_failed(backend.max_fails, backend.fail_timeout)

    cdef int _upstream_error(self, int status, str message) except -1:
        if self.resp_started:
            self._abort_exchange()
            return 0
        self.keep_alive = self.keep_alive and self.req_done
        self.t_up_end = _mono()
        if self.ctx is not None and self.ctx.response_tap is not None and self._tap_answers_failure():
            self._answer_ctx()
            return 0
        self._answer_error(status, message)

    cdef bint _tap_answers_failure(self) except -1:
        """The backend gave no answer, or an error one (500, 502, 503, 504): the response
        tap's ``upstream_failed(ctx)`` may answer instead (proxy-cache's stale answer,
        stale_if_error); True when it did."""
        hook = getattr(self.ctx.response_tap, "upstream_failed", None)
        if hook is None:
            return False
        try:
            return bool(hook(self.ctx))
        except Exception as exc:
            _log.error("response tap failed on %s: %r", self.route.key, exc, exc_info=exc)
            return False

    cdef int _drop_upstream(self) except -1:
        cdef UpstreamConnection up = self.up
        if up is not None:
            self.up = None
            up._detach()
            up.close()

    # -- response from upstream ----------------------------------------------------------
    cdef int _response_head(self, ResponseHead resp, const char* body, Py_ssize_t body_n,
                            bint whole) except -1:
        """Answer with the backend's head and its first body bytes ``body[:body_n]``;
        ``whole``: they are all of the answer."""
        cdef int conn_mode
        cdef list headers = None, add = None
        cdef bint chunked_out
        self.up_body = None           # answered: no retry any more
        self.status = resp.status
        if self.dechunk or resp.until_close or not self.req_done:
            # not self.req_done: the backend answers before it had the whole body (e.g. a
            # 413): the connection ends after this answer, and the head says so.
            self.keep_alive = False
        conn_mode = self._conn_mode()
        chunked_out = resp.chunked and not self.dechunk
        cdef RequestContext ctx = self.ctx
        cdef StepChain chain
        if ctx is not None:
            if ctx.response_tap is not None:
                # RFC 5861 4: an "error" is a 500, 502, 503 or 504 (a 501 is an answer).
                if 500 <= resp.status <= 504 and resp.status != 501 and self._tap_answers_failure():
                    self.swallow = True
                    if self.timer_kind == T_READ:
                        self._arm(T_READ, self.route.read_timeout)
                    return 0
                self._tap_start(resp, ctx.response_tap, body, body_n)
            ctx.status = resp.status
            add = ctx.response_headers_add
            if self.route.has_response_phase:
                chain = self.route.chain
                if chain.head_only_response:
                    add = chain.apply_to_head(resp, ctx)
                else:
                    ctx.response_headers = resp.forward_headers()
                    try:
                        chain.run_response(ctx)
                    except Exception as exc:
                        _log.error("response plugin failed on %s: %r", self.route.key, exc, exc_info=exc)
                    headers = ctx.response_headers
            if ctx.status != resp.status and 100 <= ctx.status <= 999:
                self.status = ctx.status
        if ctx is not None and ctx.response_filter is not None and self._hold_start(resp, ctx, headers, add, body, body_n):
            return 0
        # PERF: one buffer and one write for the head and the first body bytes.
        fill_response_head(resp, headers, add, self.status, chunked_out, conn_mode, body, body_n)
        self.resp_started = True
        self.bytes_out = _buf.n
        self._write_buf(_buf, whole and not self.keep_alive)   # _finish closes next: see _write_end

    cdef int _start_tunnel(self, ResponseHead resp, bytes rest) except -1:
        """The backend accepted the upgrade (101): relay its answer, then pass bytes through
        both ways until either side closes or the route's read timeout passes idle."""
        cdef RequestContext ctx = self.ctx
        cdef list add = ctx.response_headers_add if ctx is not None else None
        cdef bytes head = build_response_head(resp, None, add, 101, False, CLOSE_NO, rest)
        self.status = 101
        self.resp_started = True
        self.bytes_out = PyBytes_GET_SIZE(head)
        self.t_up_end = _mono()
        self._write(head)
        self.state = S_TUNNEL
        self._log_exchange()
        self._arm(T_READ, self.route.read_timeout)
        if self.inbuf:
            # Bytes the client sent right behind its handshake belong to the new protocol.
            self.up._write(self.inbuf)
            self.inbuf = b""
        self._resume(P_PIPELINE)

    cdef inline bint _body_by_length(self, ResponseHead resp) noexcept:
        """The answer has a body framed by Content-Length (what the tap and the filter see)."""
        return not (self.head_req or resp.chunked or resp.until_close) and resp.content_length >= 0

    cdef inline bint _body_chunked(self, ResponseHead resp) noexcept:
        """The answer has a chunked body (the tap and the filter see it decoded)."""
        return resp.chunked and not (self.head_req or resp.until_close)

    cdef inline bint _takes_decoded(self) noexcept:
        """The tap or the filter took a chunked answer, or the gateway re-frames one: the
        upstream side hands over the decoded payload (_take_decoded)."""
        return (self.rechunk or (self.tap_parts is not None and self.tap_size < 0)
                or (self.hold_parts is not None and self.hold_room >= 0))

    cdef inline bint _may_take_decoded(self) noexcept:
        """Before the head is answered: a tap or a filter may take a chunked answer."""
        return self.ctx is not None and (self.ctx.response_tap is not None or self.ctx.response_filter is not None)

    cdef int _take_decoded(self, ResponseHead resp, bytes data, bint whole) except -1:
        """Decoded payload bytes of a chunked answer (see _takes_decoded); ``whole``: the last."""
        if self.tap_parts is not None and self.tap_size < 0:
            self._tap_decoded(data)
        if self.hold_parts is not None and self.hold_room >= 0:
            self.hold_room -= PyBytes_GET_SIZE(data)
            self.hold_parts.append(data)
            if self.hold_room < 0:
                self._hold_release(resp, whole)
            if self.timer_kind == T_READ:
                self._arm(T_READ, self.route.read_timeout)
        elif self.rechunk:
            out = _chunk(data) + b"0\r\n\r\n" if whole else _chunk(data)
            self.bytes_out += PyBytes_GET_SIZE(out)
            self._write_end(out, whole and not self.keep_alive)   # last: _finish closes next
            if self.timer_kind == T_READ:
                self._arm(T_READ, self.route.read_timeout)

    cdef int _tap_start(self, ResponseHead resp, object tap, const char* body, Py_ssize_t body_n) except -1:
        """Offer the backend's answer to ``ctx.response_tap``; collect its body if taken.

        A chunked answer is offered with content_length -1; its decoded payload comes through
        _tap_decoded, up to the tap's ``max_answer`` bytes (beyond, the collection is dropped)."""
        cdef bint chunked = self._body_chunked(resp)
        if not chunked and not self._body_by_length(resp):
            return 0
        try:
            taken = tap.start(resp.status, resp.forward_headers(), -1 if chunked else resp.content_length)
            room = getattr(tap, "max_answer", 0) if chunked and taken else 0
        except Exception as exc:
            _log.error("response tap failed on %s: %r", self.route.key, exc, exc_info=exc)
            return 0
        if not taken:
            return 0
        if chunked:
            self.tap_size = -1
            self.tap_room = room
            self.tap_parts = []
        else:
            self.tap_size = resp.content_length
            self.tap_parts = [PyBytes_FromStringAndSize(body, body_n)] if body_n else []

    cdef int _tap_decoded(self, bytes data) except -1:
        """Decoded payload bytes of a chunked answer the tap took (see _tap_start)."""
        self.tap_room -= PyBytes_GET_SIZE(data)
        if self.tap_room < 0:
            self.tap_parts = None        # larger than the tap takes: not kept
        else:
            self.tap_parts.append(data)

    cdef int _tap_finish(self, bint trailers) except -1:
        """The answer is all out: hand its body to the tap when every byte was collected
        (a chunked answer with trailer fields is not handed: the tap would lose them)."""
        cdef list parts = self.tap_parts
        self.tap_parts = None
        body = b"".join(parts)
        if self.ctx is None or self.ctx.response_tap is None:
            return 0
        if (PyBytes_GET_SIZE(body) != self.tap_size) if self.tap_size >= 0 else trailers:
            return 0
        try:
            self.ctx.response_tap.finish(body)
        except Exception as exc:
            _log.error("response tap failed on %s: %r", self.route.key, exc, exc_info=exc)

    cdef bint _hold_start(self, ResponseHead resp, RequestContext ctx, list headers, list add,
                          const char* body, Py_ssize_t body_n) except -1:
        """Offer the answer to ``ctx.response_filter``; True: it is held until its body is whole.

        A chunked answer is offered with content_length -1 and held while its decoded payload
        fits the filter's ``max_answer`` (beyond: _hold_release)."""
        cdef list final
        cdef bint chunked = self._body_chunked(resp)
        if not chunked and (not self._body_by_length(resp) or resp.content_length == 0):
            return False
        final = resp.forward_headers() if headers is None else \
            [(n, v) for n, v in headers if forwardable_response_header(n)]
        if add:
            final.extend(add)
        try:
            taken = ctx.response_filter.start(self.status, final, -1 if chunked else resp.content_length)
            room = getattr(ctx.response_filter, "max_answer", 0) if chunked and taken else -1
        except Exception as exc:
            _log.error("response filter failed on %s: %r", self.route.key, exc, exc_info=exc)
            return False
        if not taken:
            return False
        self.hold_headers = final
        self.hold_room = room
        if chunked:
            self.hold_parts = []           # the decoded payload comes through _take_decoded
        else:
            self.hold_parts = [PyBytes_FromStringAndSize(body, body_n)] if body_n else []
        return True

    cdef int _hold_release(self, ResponseHead resp, bint whole) except -1:
        """A held chunked answer outgrew the filter: send it unchanged after all, its head and
        the payload so far now, the rest as it comes. The backend's chunks can't be passed on
        from the middle of one, so the gateway frames the payload as chunks itself (an
        HTTP/1.0 client gets it decoded, as before); trailer fields are not passed on."""
        cdef bytes body = b"".join(self.hold_parts)
        cdef list headers = self.hold_headers
        self.hold_parts = None
        self.hold_headers = None
        self.rechunk = not self.dechunk
        if self.rechunk:
            body = _chunk(body) + b"0\r\n\r\n" if whole else _chunk(body)
        fill_response_head(resp, headers, None, self.status, self.rechunk, self._conn_mode(),
                           PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body))
        self.resp_started = True
        self.bytes_out = _buf.n
        # Not _write_buf: a rare path, and a further caller changes how the compiler inlines
        # that one on the hot path (callgrind: +25 instructions a request).
        self._write_end(_buf.take(), whole and not self.keep_alive)   # last: _finish closes next

    cdef int _hold_finish(self) except -1:
        """The held answer's body is whole: send it rewritten, with its own Content-Length."""
        cdef bytes body = b"".join(self.hold_parts)
        cdef bytes data
        cdef list headers = self.hold_headers
        self.hold_parts = None
        self.hold_headers = None
        try:
            body = <bytes?>self.ctx.response_filter.rewrite(body)
        except Exception as exc:
            _log.error("response filter failed on %s: %r", self.route.key, exc, exc_info=exc)
        data = build_answer(self.status, headers, body, self._conn_mode(), False)
        self.resp_started = True
        self.bytes_out = PyBytes_GET_SIZE(data)
        self._write_end(data, not self.keep_alive)     # last: _finish closes next

    cdef inline int _conn_mode(self) noexcept:
        """How the answer's head speaks of the connection (close, HTTP/1.0 keep-alive, nothing)."""
        if not self.keep_alive:
            return CLOSE_YES
        if self.req.version == 10:
            return KEEP_10
        return CLOSE_NO

    cdef int _response_body(self, bytes body, bint whole) except -1:
        """Forward body bytes of the backend's answer; ``whole``: the answer ends with them.
        (The decoded payload of a chunked answer a tap or filter took: _take_decoded.)"""
        if self.tap_parts is not None and self.tap_size >= 0:
            self.tap_parts.append(body)
        if self.hold_parts is not None or self.rechunk or self.swallow:
            if self.hold_parts is not None and self.hold_room < 0:
                self.hold_parts.append(body)
            if self.timer_kind == T_READ:
                self._arm(T_READ, self.route.read_timeout)
            return 0
        self.bytes_out += PyBytes_GET_SIZE(body)
        self._write_end(body, whole and not self.keep_alive)   # last: _finish closes next
        if self.timer_kind == T_READ:
            self._arm(T_READ, self.route.read_timeout)

    cdef int _response_done(self, bint trailers) except -1:
        """The backend's answer is complete (``trailers``: a chunked one ended with fields)."""
        self.up = None
        self.t_up_end = _mono()
        if self.swallow:
            # The backend's error answer is read to its end (its connection stays usable):
            # the tap's answer goes out instead (_tap_answers_failure set it).
            self._answer_ctx()
            return 0
        if self.tap_parts is not None:
            self._tap_finish(trailers)
        if not self.req_done:
            # The backend answered before the body was all sent: the connection can't be reused.
            self.keep_alive = False
        if self.hold_parts is not None:
            self._hold_finish()
        self._finish()

    # -- answers by the gateway ------------------------------------------------------------
    cdef int _answer_error(self, int status, str message, list headers=None) except -1:
        cdef list h = [(b"Content-Type", b"application/json")]
        if headers:
            h.extend(headers)
        if self.ctx is not None and self.ctx.response_headers_add:
            h.extend(self.ctx.response_headers_add)
        self._answer(status, h, error_body(status, message, self._rid()))

    cdef int _answer(self, int status, list headers, bytes body) except -1:
        cdef int conn_mode
        cdef bytes data
        if self.state == S_CLOSED:
            return 0
        if self.resp_started:
            self._abort_exchange()
            return 0
        if self.req is None:
            self.keep_alive = False
            self.t_start = _mono()
            self.bytes_in = 0
        if self.engine.draining:
            self.keep_alive = False
        conn_mode = self._conn_mode()
        self.status = status
        self.by_gateway = True
        data = build_answer(status, headers, body, conn_mode, self.head_req)
        self.bytes_out = PyBytes_GET_SIZE(data)
        self.resp_started = True
        self._write_end(data, not self.keep_alive)     # last: _finish closes next
        self._finish()

    # -- end of an exchange -----------------------------------------------------------------
    cdef int _finish(self) except -1:
        cdef bint ends = not self.keep_alive or self.state == S_CLOSED
        # An exchange that broke off (the backend failed in the body) leaves its collections.
        self.tap_parts = None
        self.hold_parts = None
        self.hold_headers = None
        self.rechunk = False
        self.swallow = False
        if ends:
            # The connection ends here: close (or half-close) before the log phase, whose
            # plugins may take their time, since the answer's last bytes wait in the kernel
            # for this FIN (_write_end).
            if self.state != S_CLOSED and (not self.req_done or self.inbuf or self.head_rejected):
                self._linger()      # the client may still be sending: don't answer it with a reset
            else:
                self._close()
        self._log_exchange()
        self.ctx = None
        self.req = None
        self.head_req = False
        self.served += 1
        if ends:
            return 0
        # Ready for the next request on this connection.
        self.state = S_HEAD
        self.route = None
        self.up = None
        self.pending = None
        self.resp_started = False
        if not self.inbuf and self.head_obj is not None:
            # Memory: an idle keep-alive connection holds no 2.3 KB head; the next request
            # takes one back from the engine (LIFO: usually this one, still in cache).
            self.engine.give_head(self.head_obj)
            self.head_obj = None
        self._resume(P_PIPELINE)
        self._arm(T_IDLE, self.engine.idle_timeout)
        if self.inbuf:
            self._process_input()

    cdef int _log_exchange(self) except -1:
        """Count the exchange (stats, consumer), run the log phase, queue the access-log line."""
        cdef double now = _mono()
        cdef Route route = self.route
        cdef StatsWriter stats = self.engine.stats
        cdef long long total_us = <long long>((now - self.t_start) * 1e6) if self.t_start > 0 else 0
        cdef long long up_us = <long long>((self.t_up_end - self.t_up) * 1e6) if self.t_up > 0 and self.t_up_end > 0 else 0
        cdef int slot
        cdef RequestContext ctx = self.ctx
        if self.req is not None:
            if stats is not None:
                if route is not None:
                    slot = route.stats_slot
                elif self.engine.unmatched_slot is not None:
                    slot = self.engine.unmatched_slot(self.req.host)
                else:
                    slot = -1
                if slot >= 0:
                    stats.record(slot, self.status, total_us, up_us, self.bytes_in, self.bytes_out,
                                 1 if self.by_gateway else 0)
                if ctx is not None and ctx.consumer is not None:
                    cslot = self.engine.consumer_slot(ctx.consumer)
                    if cslot is not None:
                        stats.record_consumer(cslot)
            if ctx is not None and route is not None and route.has_log_phase:
                ctx.status = self.status
                ctx.bytes_in = self.bytes_in
                ctx.bytes_out = self.bytes_out
                ctx.upstream_time = up_us / 1e6
                try:
                    route.chain.run_log(ctx)
                except Exception as exc:
                    _log.error("log plugin failed on %s: %r", route.key, exc, exc_info=exc)
            if self.engine.access_lines is not None:
                self._access_log(route, ctx, total_us, up_us)

    cdef int _access_log(self, Route route, RequestContext ctx, long long total_us, long long up_us) except -1:
        cdef RequestHead req = self.req
        cdef Engine e = self.engine
        cdef bytes part
        consumer = consumer_name(ctx.consumer) if ctx is not None else None
        if route is None:
            part = _NO_ROUTE_LOG_PART
        else:
            part = route.log_part
            if part is None:
                part = route.log_part = access_route_part(route.service, route.stage, route.resource)
        e.access_lines.add(_wall(), self._rid(), ctx.client_ip if ctx is not None else self._peer_str(),
                           consumer, part, req.method, req.target, self.status, self.bytes_in,
                           self.bytes_out, total_us, up_us)
        if e.access_lines.buf.n >= e.access_max:
            e.log_sink.flush()

    cdef int _abort_exchange(self) except -1:
        """Nothing sensible can be sent any more: close both sides."""
        self._drop_upstream()
        self.keep_alive = False
        if self.req is not None and self.status == 0:
            self.status = 499
        self._close()

    cdef int _internal_error(self, exc) except -1:
        _log.error("internal error: %r", exc, exc_info=exc)
        if self.state != S_CLOSED and not self.resp_started:
            self.keep_alive = False
            try:
                self._answer_error(500, "internal error")
                return 0
            except Exception:
                pass
        self._abort_exchange()

    cdef int _close(self) except -1:
        if self.state == S_CLOSED and self.transport is None:
            return 0
        self.state = S_CLOSED
        self.deadline = 0
        self._drop_upstream()
        self._close_transport()
        self.engine.remove_connection(self)
        self.engine._check_drained()

    # -- lingering close (RFC 9112 9.6) ----------------------------------------------------
    cdef int _linger(self) except -1:
        """Close after an answer that left client bytes unread (a body not taken, pipelined
        requests, a refused head). Closing at once would make the kernel answer those bytes
        with a reset, which can destroy the answer before the client reads it: so shut the
        write side once the answer is out, read and drop what the client still sends, and
        close on its EOF, after ``lingering_timeout`` without data, or ``lingering_time``
        after the answer at the latest (nginx's lingering_close). A TLS connection (no
        half-close) closes at once."""
        cdef Engine e = self.engine
        self._drop_upstream()
        if not self._half_close():
            self._close()
            return 0
        self.state = S_LINGER
        self.inbuf = b""
        self.pending = None
        self.chunk = None
        e.remove_connection(self)       # draining does not wait for it
        self._resume(self.paused)       # whatever held reading back: read (and drop) now
        if self.ftr is not None:
            self.ftr.resume_reading()   # also a last request's socket, left out of the epoll set
        self.linger_end = e.wheel.now + e.lingering_time
        self._linger_rearm()
        e._check_drained()

    cdef int _linger_rearm(self) except -1:
        """Bytes came while lingering: wait ``lingering_timeout`` more, within ``lingering_time``."""
        cdef double left = self.linger_end - self.engine.wheel.now
        if left <= 0:
            self._close()
        else:
            self._arm(T_LINGER, min(self.engine.lingering_timeout, left))


@cython.final  # PERF: its methods are called directly (no vtable)
cdef class ClientFactory:
    """The protocol factory of a listener: a new ClientConnection per accepted connection
    (PERF: a C call, no Python lambda frame and no __init__ argument parsing)."""
    cdef Engine engine
    cdef ForwardInfo fwd

    def __init__(self, Engine engine, ForwardInfo fwd):
        self.engine = engine
        self.fwd = fwd

    def __call__(self):
        return self.make()

    cdef ClientConnection make(self):
        cdef ClientConnection c = ClientConnection.__new__(ClientConnection)
        c._init(self.engine, self.fwd)
        return c


# ---------------------------------------------------------------------------------------
# Upstream side
# ---------------------------------------------------------------------------------------

@cython.final  # PERF: its methods are called directly (no vtable)
cdef class UpstreamConnection(Connection):
    """One keep-alive connection to a backend target; serves one client exchange at a time."""
    cdef UpstreamPool pool
    cdef ClientConnection client
    cdef public bint closed
    cdef bint reused
    cdef bint got_bytes
    cdef int state
    cdef bytes buf
    cdef Py_ssize_t scan_pos
    cdef ResponseHead resp
    cdef long long body_left
    cdef ChunkedScanner chunk
    cdef object connect_task
    cdef ResponseHead head_obj           # reused for every response on this connection

    def __init__(self, UpstreamPool pool):
        self.pool = pool
        self.buf = b""

    cdef inline void _attach(self, ClientConnection client) noexcept:
        """Lend this connection to ``client``'s exchange (counted in the pool's ``busy``)."""
        if self.client is None:
            self.pool.busy += 1
        self.client = client

    cdef inline void _detach(self) noexcept:
        """The exchange is over with this connection, whichever way: the one place ``client``
        is cleared, so ``busy`` counts each lent connection once."""
        if self.client is not None:
            self.pool.busy -= 1
            self.client = None

    def start_connect(self):
        cdef UpstreamPool pool = self.pool
        cdef Poller poller = pool.engine.poller
        if poller is not None and pool.dns:
            pool.resolve_address()
        if poller is not None and pool.sockaddr is not None and poller.epfd >= 0:
            # PERF: a non-blocking connect on the Poller; connection_made or
            # _connect_failed follow from the loop (never inside this call).
            self.connect_task = FdTransport.connect(poller, pool.family, pool.sockaddr, self)
            return
        loop = pool.engine.loop
        self.connect_task = loop.create_task(
            loop.create_connection(lambda: self, pool.host, pool.port, ssl=pool.ssl))
        self.connect_task.add_done_callback(self._connect_done)

    def _connect_failed(self, exc):
        """The Poller's connect ended without a connection (exc None: it was cancelled)."""
        self.connect_task = None
        self.closed = True
        if exc is None:
            return
        client = self.client
        self._detach()
        if client is not None:
            (<ClientConnection>client)._upstream_connect_failed(self.pool)

    def _connect_done(self, fut):
        self.connect_task = None
        if fut.cancelled():
            self.closed = True
            return
        exc = fut.exception()
        if exc is not None:
            self.closed = True
            client = self.client
            self._detach()
            if client is not None:
                (<ClientConnection>client)._upstream_connect_failed(self.pool)

    cdef int send(self, bytes data, bytes more=None) except -1:
        """Send a request (``data``, then ``more`` when given: a head and its body bytes)."""
        self.state = U_HEAD
        self.got_bytes = False
        self.buf = b""
        self.scan_pos = 0
        if more is None:
            self._write(data)
        else:
            self._write2(data, more)

    cdef int close(self) except -1:
        self.closed = True
        self.deadline = 0
        if self.connect_task is not None:
            task, self.connect_task = self.connect_task, None
            if type(task) is FdTransport:
                task.abort()
            else:
                task.cancel()
        self._close_transport()

    cdef int on_timeout(self) except -1:
        # Only idle pooled connections are armed here.
        if self.client is None:
            self.close()

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport):
        self.connect_task = None
        self._bind(transport)
        if self.closed:
            transport.close()
            return
        client = self.client
        if client is not None:
            (<ClientConnection>client)._upstream_ready()
        else:
            self.pool.release(self)

    def connection_lost(self, exc):
        self._transport_lost(exc)

    cdef int _transport_lost(self, object exc) except -1:
        cdef ClientConnection client = self.client
        self.closed = True
        self.deadline = 0
        self._detach()
        self._unbind()
        if client is not None and client.up is self:
            if self.state == U_BODY and self.resp.until_close:
                client._response_done(False)
            else:
                client._upstream_lost(self.got_bytes, self.pool)
        return 0

    def eof_received(self):
        return False

    def pause_writing(self):
        if self.client is not None:
            self.client._pause(P_UPSTREAM)

    def resume_writing(self):
        if self.client is not None:
            self.client._resume(P_UPSTREAM)

    def data_received(self, bytes data):
        self._on_data(data)

    cdef void _on_data(self, bytes data) noexcept:
        cdef ClientConnection client = self.client
        if client is None:
            self.close()          # bytes on an idle connection: the backend is confused
            return
        self.got_bytes = True
        try:
            if self.state == U_HEAD:
                self._on_head(client, data)
            elif self.state == U_BODY:
                self._on_body(client, data)
            elif self.state == U_TUNNEL:
                client._write(data)
                client._arm(T_READ, client.route.read_timeout)
            else:
                self.close()
        except Exception as exc:
            self._detach()
            self.close()
            client._internal_error(exc)

    cdef int _on_head(self, ClientConnection client, bytes data) except -1:
        cdef Py_ssize_t bad = -1, end, n
        cdef ResponseHead resp
        cdef bytes rest
        if self.buf:
            data = self.buf + data
        while True:
            end = find_head_end(data, self.scan_pos, &bad)
            if bad >= 0:
                self._fail(client, "bad response head from upstream")
                return 0
            if end < 0:
                if PyBytes_GET_SIZE(data) > 65536:
                    self._fail(client, "response head from upstream too large")
                    return 0
                self.buf = data
                self.scan_pos = PyBytes_GET_SIZE(data) - 3 if PyBytes_GET_SIZE(data) > 3 else 0
                return 0
            self.scan_pos = 0
            self.buf = b""
            if end > 65536:
                self._fail(client, "response head from upstream too large")
                return 0
            try:
                resp = scan_response(data, end, client.head_req, self.head_obj)
                self.head_obj = resp
            except HttpError as exc:
                self._fail(client, exc.message)
                return 0
            if not self.reused:
                self.pool.answered()  # a new connection's first answer: the target works
            if resp.status < 200:
                rest = _bslice(data, end, PyBytes_GET_SIZE(data))
                if resp.status == 101:
                    if not client.req.upgrade:
                        self._fail(client, "upstream switched protocols unasked")
                        return 0
                    self.resp = resp
                    self.state = U_TUNNEL
                    client._start_tunnel(resp, rest)
                    return 0
                # RFC 9110 15.2: a proxy forwards interim answers (e.g. 103 Early Hints), but
                # never to an HTTP/1.0 client; a 100 is not: the gateway answers Expect itself.
                if resp.status != 100 and client.req is not None and client.req.version == 11:
                    # The same head builder as a final answer's: end-to-end fields, no
                    # Content-Length (a 1xx has none), no Connection.
                    client._write(build_response_head(resp, None, None, resp.status, False, CLOSE_NO, None))
                data = rest
                if not data:
                    return 0
                continue
            break
        self.resp = resp
        self.state = U_BODY
        n = PyBytes_GET_SIZE(data) - end
        if n == resp.content_length and not resp.chunked and not resp.until_close:
            # PERF: the whole body came with the head (a small answer): it goes into the
            # client's buffer from `data` itself, never a bytes object of its own.
            self.body_left = 0
            client._response_head(resp, PyBytes_AS_STRING(data) + end, n, True)
            self._message_done(client, None)
            return 0
        rest = _bslice(data, end, PyBytes_GET_SIZE(data))
        if resp.chunked:
            # An HTTP/1.0 client can't take chunked framing: decode it for that client.
            client.dechunk = client.req.version == 10
            self.chunk = ChunkedScanner()
        else:
            self.body_left = resp.content_length
        self._frame(client, rest, True)

    cdef int _on_body(self, ClientConnection client, bytes data) except -1:
        self._frame(client, data, False)

    cdef int _frame(self, ClientConnection client, bytes data, bint first) except -1:
        """Pass body bytes through to the client and notice where the message ends."""
        cdef ResponseHead resp = self.resp
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data), k
        cdef bytes body = data, extra = None, decoded = None
        cdef bint done = False
        cdef list out
        if resp.until_close:
            pass
        elif resp.chunked:
            # The payload is decoded for an HTTP/1.0 client, for a response tap or filter that
            # took the answer (proxy-cache, response-transformer) and when the gateway frames it
            # itself; the first bytes are decoded whenever a tap or a filter may take it.
            if client.dechunk or (client._takes_decoded() if not first else client._may_take_decoded()):
                out = []
                k = self.chunk.feed(data, out)
                decoded = b"".join(out)
            else:
                k = self.chunk.feed(data)
            if k < 0:
                self._fail(client, "bad chunked body from upstream")
                return 0
            if client.dechunk:
                body = decoded
            elif k < n:
                body = _bslice(data, 0, k)
            if k < n:
                extra = _bslice(data, k, n)
            done = self.chunk.done
        else:
            if n >= self.body_left:
                if n > self.body_left:
                    extra = _bslice(data, self.body_left, n)
                    body = _bslice(data, 0, self.body_left)
                self.body_left = 0
                done = True
            else:
                self.body_left -= n
        if first:
            client._response_head(resp, PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body), done)
        elif body:
            client._response_body(body, done)
        if decoded is not None and client._takes_decoded():
            client._take_decoded(resp, decoded, done)
        if done:
            self._message_done(client, extra)

    cdef int _message_done(self, ClientConnection client, bytes extra) except -1:
        cdef bint reusable = self.resp.keep_alive and not extra and client.req_done and not self.closed
        cdef bint trailers = self.chunk is not None and self.chunk.trailer_bytes > 0
        self.state = U_IDLE
        self._detach()
        self.resp = None
        self.chunk = None
        if reusable:
            self._resume_reading()
            self.pool.release(self)
        else:
            self.close()
        client._response_done(trailers)

    cdef int _fail(self, ClientConnection client, str message) except -1:
        self._detach()
        self.close()
        client.up = None
        client._upstream_error(502, message)
