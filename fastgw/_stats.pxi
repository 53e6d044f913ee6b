# part of fastgw/_core.pyx (see its docstring)
#
# The per-worker writer into the shared-memory stats region (layout: fastgw/stats.py).
# One writer per region writer slot, so plain (non-atomic) increments are safe: the
# supervisor only reads. Names at module level carry a `_st`/`fgw_st` prefix because all
# parts of _core.pyx share one C namespace.

from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memset

cdef extern from *:
    """
    #include <stdint.h>
    #include <time.h>
    #ifndef CLOCK_REALTIME_COARSE
    #define CLOCK_REALTIME_COARSE 5
    #endif
    /* PERF: CLOCK_REALTIME_COARSE is answered by the vDSO from the tick-updated kernel
       time (no syscall, ~5 ns, no TSC read); one-second buckets need no finer clock. */
    static inline uint32_t fgw_st_now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME_COARSE, &ts);
        return (uint32_t)ts.tv_sec;
    }
    /* Log-linear latency histogram (HDR-like): values < 16 us exact, then 16 linear
       sub-buckets per power of two, so a bucket is at most 1/16 of its lower bound wide
       (<= 3.2% error at the midpoint). 384 buckets cover 0 .. 2^27 us (134 s); larger
       values land in the last bucket. */
    static inline int fgw_st_hist_index(uint64_t v) {
        int e;
        if (v < 16) return (int)v;
        e = 63 - __builtin_clzll(v);
        if (e > 26) return 383;
        return (e - 3) * 16 + (int)((v >> (e - 4)) & 15);
    }
    static inline void fgw_st_store_release(uint32_t *p, uint32_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    """
    uint32_t fgw_st_now_s() nogil
    int fgw_st_hist_index(uint64_t v) nogil
    void fgw_st_store_release(uint32_t *p, uint32_t v) nogil

# Block layout of one (writer, key) pair; must match fastgw/stats.py (a test checks).
cdef enum:
    _ST_TOT_N = 32            # u64 running totals
    _ST_HIST_N = 384          # histogram buckets
    _ST_THIST_OFF = 256       # u64[384] running latency histogram
    _ST_SEC_OFF = 3328        # ring of 64-byte one-second buckets
    _ST_SEC_SIZE = 64

# Totals fields (u64 index)
cdef enum:
    _ST_T_CALLS = 0           # 1..5: status class 1xx/other, 2xx, 3xx, 4xx, 5xx
    _ST_T_GW = 6              # answered by the gateway itself; 7..11: by class
    _ST_T_TOTAL_US = 12
    _ST_T_UPSTREAM_US = 13
    _ST_T_BYTES_IN = 14
    _ST_T_BYTES_OUT = 15
    _ST_T_MAX_US = 16
    _ST_T_LAST_SEC = 17

# One-second bucket: u32[8] = stamp, calls, class 1..5, gw; then u64[4] at byte 32.


cdef inline int _st_status_class(int status) noexcept nogil:
    cdef int c = status // 100
    if c < 2 or c > 5:
        return 1
    return c


def stats_hist_index(uint64_t value):
    """Histogram bucket of a latency in microseconds (exposed for the reader's tests)."""
    return fgw_st_hist_index(value)


@cython.final  # PERF: its methods are called directly (no vtable)
cdef class StatsWriter:
    """Writes one worker's counters into its slot of the shared-memory stats region.

    Built by ``fastgw.stats.StatsRegion.writer(worker_index, generation)``; the hot path
    calls :meth:`record` once per finished request and :meth:`record_consumer` once per
    authenticated call. No locks, no syscalls, no Python objects: plain C integer adds
    into the mapping (this process is the only writer of these bytes).
    """

    cdef unsigned char[::1] _mv           # keeps the mapping exported while we point into it
    cdef unsigned char *_base             # first key block of this writer
    cdef Py_ssize_t _n_keys
    cdef Py_ssize_t _stride
    cdef uint32_t _ring_len
    cdef uint32_t _hist_period
    cdef uint32_t _hist_ring_len
    cdef Py_ssize_t _hstamp_off
    cdef Py_ssize_t _hring_off
    cdef uint32_t _fixed_now
    cdef readonly int writer_index

    def __cinit__(self, object buffer, Py_ssize_t offset, Py_ssize_t n_keys, Py_ssize_t stride,
                  uint32_t ring_len, uint32_t hist_period, uint32_t hist_ring_len,
                  Py_ssize_t hstamp_off, Py_ssize_t hring_off, int writer_index=0):
        self._mv = buffer
        if n_keys <= 0 or ring_len == 0 or hist_period == 0 or hist_ring_len == 0:
            raise ValueError("bad stats layout")
        if offset < 0 or offset + n_keys * stride > self._mv.shape[0]:
            raise ValueError("stats writer block outside the region")
        if hring_off + <Py_ssize_t>hist_ring_len * _ST_HIST_N * 4 > stride:
            raise ValueError("stats block stride too small")
        self._base = &self._mv[0] + offset
        self._n_keys = n_keys
        self._stride = stride
        self._ring_len = ring_len
        self._hist_period = hist_period
        self._hist_ring_len = hist_ring_len
        self._hstamp_off = hstamp_off
        self._hring_off = hring_off
        self._fixed_now = 0
        self.writer_index = writer_index

    def set_clock(self, uint32_t now_s=0):
        """Freeze the writer's clock at ``now_s`` (epoch seconds; tests); 0 = real clock."""
        self._fixed_now = now_s

    cdef inline uint32_t _now(self) noexcept nogil:
        if self._fixed_now:
            return self._fixed_now
        return fgw_st_now_s()

    cdef inline unsigned char *_block(self, Py_ssize_t slot) noexcept nogil:
        # SECURITY: a bad slot must never write outside the region; it counts in slot 0
        # (the overflow key) instead.
        if slot < 0 or slot >= self._n_keys:
            slot = 0
        return self._base + slot * self._stride

    cdef inline uint32_t *_second(self, unsigned char *blk, uint32_t now) noexcept nogil:
        cdef uint32_t *sb = <uint32_t *>(blk + _ST_SEC_OFF + (now % self._ring_len) * _ST_SEC_SIZE)
        if sb[0] != now:
            # A bucket from a previous lap of the ring: clear, then publish the stamp.
            memset(sb, 0, _ST_SEC_SIZE)
            fgw_st_store_release(sb, now)
        return sb

    cpdef void record(self, Py_ssize_t slot, int status, int64_t total_us, int64_t upstream_us,
                      int64_t bytes_in, int64_t bytes_out, int flags) noexcept:
        """Count one finished request in key ``slot``.

        ``status``: HTTP status sent; ``total_us``/``upstream_us``: latencies in
        microseconds (upstream 0 when the backend was not called); ``flags`` bit 1: the
        gateway answered itself (401, 429, cache, mock, 404 ...).
        """
        self._record(slot, status, total_us, upstream_us, bytes_in, bytes_out, flags, self._now())

    cdef void _record(self, Py_ssize_t slot, int status, int64_t total_us, int64_t upstream_us,
                      int64_t bytes_in, int64_t bytes_out, int flags, uint32_t now) noexcept nogil:
        cdef unsigned char *blk = self._block(slot)
        cdef uint64_t *tot = <uint64_t *>blk
        cdef int c = _st_status_class(status)
        cdef uint64_t t = <uint64_t>total_us if total_us > 0 else 0
        cdef uint64_t u = <uint64_t>upstream_us if upstream_us > 0 else 0
        cdef uint64_t bi = <uint64_t>bytes_in if bytes_in > 0 else 0
        cdef uint64_t bo = <uint64_t>bytes_out if bytes_out > 0 else 0
        cdef int h = fgw_st_hist_index(t)
        cdef uint32_t *sb
        cdef uint64_t *sb64
        cdef uint32_t period, hi
        cdef uint32_t *hstamp
        cdef uint32_t *hring

        # running totals
        tot[_ST_T_CALLS] += 1
        tot[c] += 1
        if flags & 1:
            tot[_ST_T_GW] += 1
            tot[_ST_T_GW + c] += 1
        tot[_ST_T_TOTAL_US] += t
        tot[_ST_T_UPSTREAM_US] += u
        tot[_ST_T_BYTES_IN] += bi
        tot[_ST_T_BYTES_OUT] += bo
        if t > tot[_ST_T_MAX_US]:
            tot[_ST_T_MAX_US] = t
        if now > tot[_ST_T_LAST_SEC]:
            tot[_ST_T_LAST_SEC] = now
        (<uint64_t *>(blk + _ST_THIST_OFF))[h] += 1

        # one-second bucket
        sb = self._second(blk, now)
        sb[1] += 1
        sb[1 + c] += 1
        if flags & 1:
            sb[7] += 1
        sb64 = <uint64_t *>(sb + 8)
        sb64[0] += t
        sb64[1] += u
        sb64[2] += bi
        sb64[3] += bo

        # histogram ring (one histogram per hist_period seconds)
        period = now // self._hist_period
        hi = period % self._hist_ring_len
        hstamp = <uint32_t *>(blk + self._hstamp_off)
        hring = <uint32_t *>(blk + self._hring_off) + <Py_ssize_t>hi * _ST_HIST_N
        if hstamp[hi] != period:
            memset(hring, 0, _ST_HIST_N * 4)
            fgw_st_store_release(hstamp + hi, period)
        hring[h] += 1

    cpdef void record_consumer(self, Py_ssize_t slot) noexcept:
        """Count one call of the consumer whose key (``~consumer/{name}``) has ``slot``."""
        cdef uint32_t now = self._now()
        cdef unsigned char *blk = self._block(slot)
        cdef uint64_t *tot = <uint64_t *>blk
        cdef uint32_t *sb = self._second(blk, now)
        tot[_ST_T_CALLS] += 1
        if now > tot[_ST_T_LAST_SEC]:
            tot[_ST_T_LAST_SEC] = now
        sb[1] += 1

    def record_at(self, uint32_t now_s, Py_ssize_t slot, int status, int64_t total_us,
                  int64_t upstream_us=0, int64_t bytes_in=0, int64_t bytes_out=0, int flags=0):
        """:meth:`record` at an explicit second (tests, replays)."""
        self._record(slot, status, total_us, upstream_us, bytes_in, bytes_out, flags, now_s)
