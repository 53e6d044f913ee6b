# part of fastgw/_core.pyx (see its docstring)
#
# The node-wide set of used one-time tokens (hmac-auth's replay guard; the region and its
# header: fastgw/replay.py). One open-addressed table of 64-bit words in shared memory that
# every worker of the node writes with atomic compare-and-swap, so a token is accepted once
# per node whichever worker sees it. No locks: a worker that dies mid-claim leaves either
# its word or none.
#
# A word is ``fingerprint << 20 | expiry``: 44 bits of the token's keyed hash (never 0, so
# a word of 0 is an empty slot) and the second it stops mattering, modulo 2**20 (the
# system-wide monotonic clock, so every process reads the same one). A word is live while
# its expiry lies 1 .. 2**19 - 1 seconds ahead; the plugin never asks for more than
# 2 x 86 400 s. Expired words are free slots. A token looks at the ``_RP_WINDOW`` slots from
# its home slot: a live word with its fingerprint there means "used"; otherwise it claims
# the first free one, and a window with none free answers "full" (the caller fails closed).

from libc.math cimport ceil
from libc.stdint cimport uint8_t, uint32_t, uint64_t

# (fgw_rp_load / fgw_rp_cas: the atomics of _shm.pxi)

DEF _RP_EXP_BITS = 20
DEF _RP_EXP_MASK = 0xFFFFF             # 2**20 - 1
DEF _RP_LIVE_MAX = 0x80000             # 2**19: expiries further ahead than this read as past
DEF _RP_FP_MASK = 0xFFFFFFFFFFF        # 44 bits
DEF _RP_WINDOW = 64                    # slots a token may live in (8 cache lines)

REPLAY_FIRST_USE = 0
REPLAY_USED = 1
REPLAY_FULL = 2
REPLAY_MAX_TTL = _RP_LIVE_MAX - 1
REPLAY_WINDOW = _RP_WINDOW


cdef inline bint _rp_live(uint64_t w, uint32_t now) noexcept nogil:
    """The word holds a token whose expiry is still ahead of ``now``."""
    cdef uint32_t ahead = (<uint32_t>(w & _RP_EXP_MASK) - now) & _RP_EXP_MASK
    return w != 0 and ahead != 0 and ahead < _RP_LIVE_MAX


@cython.final
cdef class ReplaySet:
    """The token table over a shared mapping (``fastgw.replay.ReplayRegion`` builds it)."""

    cdef unsigned char[::1] _mv           # keeps the mapping exported while we point into it
    cdef uint64_t* _slots
    cdef uint64_t _mask
    cdef readonly Py_ssize_t capacity

    def __cinit__(self, object buffer, Py_ssize_t offset, Py_ssize_t capacity):
        self._mv = buffer
        if capacity < _RP_WINDOW or capacity & (capacity - 1):
            raise ValueError("replay set: capacity must be a power of two >= 64")
        if offset < 0 or offset % 8 or offset + capacity * 8 > self._mv.shape[0]:
            raise ValueError("replay set: table outside the region")
        self._slots = <uint64_t*>(&self._mv[0] + offset)
        self._mask = <uint64_t>capacity - 1
        self.capacity = capacity

    cpdef int claim(self, uint64_t home, uint64_t fingerprint, uint32_t now, uint32_t ttl):
        """Record a token for ``ttl`` seconds from ``now`` (monotonic seconds) unless it is
        already recorded: REPLAY_FIRST_USE, REPLAY_USED, or REPLAY_FULL (nothing recorded).
        ``home`` picks the token's slots, ``fingerprint`` (44 bits used) identifies it."""
        cdef uint64_t fp = (fingerprint & <uint64_t>_RP_FP_MASK) | 1
        cdef uint64_t word, w, free_w = 0
        cdef uint64_t start = home & self._mask
        cdef uint64_t i, mine
        cdef int k
        cdef Py_ssize_t free
        if ttl < 1 or ttl >= _RP_LIVE_MAX:
            raise ValueError("replay set: ttl must be 1 .. 524287 s")
        word = (fp << _RP_EXP_BITS) | ((now + ttl) & _RP_EXP_MASK)
        while True:
            free = -1
            for k in range(_RP_WINDOW):
                i = (start + k) & self._mask
                w = fgw_rp_load(&self._slots[i])
                if _rp_live(w, now):
                    if (w >> _RP_EXP_BITS) == fp:
                        return REPLAY_USED
                elif free < 0:
                    free = <Py_ssize_t>i
                    free_w = w
            if free < 0:
                return REPLAY_FULL
            if fgw_rp_cas(&self._slots[free], free_w, word):
                break
            # Another worker took that slot first (perhaps for this very token): look again.
        # SECURITY: two workers may claim the same token at once in two different slots
        # when the window changed between their scans (a word expired in between). Each
        # looks once more after claiming: the later claim sees the earlier one, so at most
        # one of them answers "first use".
        mine = <uint64_t>free
        for k in range(_RP_WINDOW):
            i = (start + k) & self._mask
            if i != mine:
                w = fgw_rp_load(&self._slots[i])
                if _rp_live(w, now) and (w >> _RP_EXP_BITS) == fp:
                    return REPLAY_USED
        return REPLAY_FIRST_USE

    cpdef int first_use(self, bytes key, bytes token, double ttl) except -1:
        """``claim`` for ``token``, slotted under the region's 32-byte ``key``, for ``ttl``
        seconds from now (rounded up; 1 .. REPLAY_MAX_TTL), on the system-wide monotonic
        clock: REPLAY_FIRST_USE, REPLAY_USED or REPLAY_FULL."""
        cdef uint64_t home, fp
        cdef double seconds = ceil(ttl)
        if key is None or PyBytes_GET_SIZE(key) != 32 or token is None:
            raise ValueError("replay set: a 32-byte key and a token")
        _rl_slot(<const uint8_t*>PyBytes_AS_STRING(key), <const uint8_t*>PyBytes_AS_STRING(token),
                 PyBytes_GET_SIZE(token), 0, &home, &fp)
        if not seconds >= 1:
            seconds = 1
        elif seconds > _RP_LIVE_MAX - 1:          # (REPLAY_MAX_TTL)
            seconds = _RP_LIVE_MAX - 1
        return self.claim(home, fp, <uint32_t>(<long long>_mono()), <uint32_t>seconds)

    def live_count(self, uint32_t now):
        """How many tokens are recorded and not yet expired (a full scan: tests, admin)."""
        cdef Py_ssize_t n = 0
        cdef uint64_t i
        for i in range(<uint64_t>self.capacity):
            if _rp_live(fgw_rp_load(&self._slots[i]), now):
                n += 1
        return n
