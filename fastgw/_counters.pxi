# part of fastgw/_core.pyx (see its docstring)
#
# The node-wide rate-limit counters (fastgw/counters.py; the region: fastgw/shared.py): one
# open-addressed table of 16-byte slots in shared memory, written by every worker with
# atomic compare-and-swap (the helpers of _replay.pxi), so a limit holds for the node
# whichever worker counts a request. No locks.
#
# A slot is two words: the key (a 64-bit keyed hash of limit, caller and period; never 0,
# 0 is an empty slot) and the value ``window end << 44 | count``: the second the counting
# window ends, modulo 2**20 (wall clock: windows line up across processes and nodes), and
# the count in it (44 bits). A value whose window has ended reads as a count of 0, and its
# slot is free for another key. A key lives in the first of ``_CT_WINDOW`` slots from its
# home that holds it, else in the first free one it claims.
#
# Races, and how each ends: two workers claiming the same key in two slots at once each
# look again after the claim, and one that sees the other's slot gives its own up (if both
# do, their adds find the key gone and start over); a worker whose add landed in a slot that changed hands meanwhile (a slot is
# free as soon as its window ends) takes the add back and starts over. A count can read one
# too high for the instant between such an add and its undo, never too low.

DEF _CT_WINDOW = 32                    # slots a key may live in (8 cache lines)
DEF _CT_COUNT_BITS = 44
DEF _CT_COUNT_MASK = 0xFFFFFFFFFFF     # 2**44 - 1 (cast it in expressions: a bare literal this
                                       # wide makes Cython compute with Python ints)

COUNTERS_WINDOW = _CT_WINDOW


cdef inline bint _ct_live(uint64_t v, uint32_t now) noexcept nogil:
    """The value's window has not ended at ``now``."""
    cdef uint32_t ahead = (<uint32_t>(v >> _CT_COUNT_BITS) - now) & _RP_EXP_MASK
    return v != 0 and ahead != 0 and ahead < _RP_LIVE_MAX


@cython.final
cdef class CounterTable:
    """The counters over a shared mapping (``fastgw.shared.SharedRegion`` builds it)."""

    cdef unsigned char[::1] _mv           # keeps the mapping exported while we point into it
    cdef uint64_t* _slots                 # 2 words per slot: key, value
    cdef uint64_t _mask
    cdef readonly Py_ssize_t capacity

    def __cinit__(self, object buffer, Py_ssize_t offset, Py_ssize_t capacity):
        self._mv = buffer
        if capacity < _CT_WINDOW or capacity & (capacity - 1):
            raise ValueError("counter table: capacity must be a power of two >= 32")
        if offset < 0 or offset % 16 or offset + capacity * 16 > self._mv.shape[0]:
            raise ValueError("counter table: outside the region")
        self._slots = <uint64_t*>(&self._mv[0] + offset)
        self._mask = <uint64_t>capacity - 1
        self.capacity = capacity

    cdef Py_ssize_t _find(self, uint64_t home, uint64_t key, uint32_t now) noexcept nogil:
        """The slot that holds ``key`` (claimed if need be), or -1 when none is free."""
        cdef uint64_t start = home & self._mask
        cdef uint64_t i, kk, free_k = 0
        cdef Py_ssize_t free, mine
        cdef int k
        while True:
            free = -1
            for k in range(_CT_WINDOW):
                i = (start + k) & self._mask
                kk = fgw_rp_load(&self._slots[2 * i])
                if kk == key:
                    return <Py_ssize_t>i
                if free < 0 and (kk == 0 or not _ct_live(fgw_rp_load(&self._slots[2 * i + 1]), now)):
                    free = <Py_ssize_t>i
                    free_k = kk
            if free < 0:
                return -1
            if not fgw_rp_cas(&self._slots[2 * free], free_k, key):
                continue                   # taken meanwhile (perhaps by this key): look again
            mine = free
            # Another worker may have claimed the key in another slot at the same time. Each
            # looks once more after its claim (sequentially consistent: at least one of two
            # such claimers sees the other) and gives its own slot up when it sees another.
            for k in range(_CT_WINDOW):
                i = (start + k) & self._mask
                if <Py_ssize_t>i != mine and fgw_rp_load(&self._slots[2 * i]) == key:
                    fgw_rp_cas(&self._slots[2 * mine], key, 0)
                    return <Py_ssize_t>i
            return mine

    cpdef long long hit(self, uint64_t home, uint64_t key, uint32_t now, uint32_t end, long long delta):
        """Add ``delta`` to ``key``'s count in the window ending at second ``end`` (a new
        window starts at 0) and return the count; -1 when there is no room for the key.
        A negative ``delta`` takes back an earlier add of the same window (never below 0)."""
        cdef uint64_t k = key | 1
        cdef uint64_t exp = end & _RP_EXP_MASK
        cdef uint64_t v, nv
        cdef long long count
        cdef Py_ssize_t slot
        if (<uint32_t>(end - now)) == 0 or (<uint32_t>(end - now)) >= _RP_LIVE_MAX:
            raise ValueError("counter table: the window must end 1 .. 524287 s after now")
        while True:
            slot = self._find(home, k, now)
            if slot < 0:
                return -1
            while True:
                v = fgw_rp_load(&self._slots[2 * slot + 1])
                count = <long long>(v & <uint64_t>_CT_COUNT_MASK) if _ct_live(v, now) and (v >> _CT_COUNT_BITS) == exp else 0
                count += delta
                if count < 0:
                    count = 0
                elif count > <long long>_CT_COUNT_MASK:
                    count = <long long>_CT_COUNT_MASK
                nv = (exp << _CT_COUNT_BITS) | <uint64_t>count
                if fgw_rp_cas(&self._slots[2 * slot + 1], v, nv):
                    break
            if fgw_rp_load(&self._slots[2 * slot]) == k:
                return count
            # The slot changed hands while we added (its window had ended, or our claim was
            # given up): take the add back from whoever holds it now, and start over.
            while True:
                v = fgw_rp_load(&self._slots[2 * slot + 1])
                if not (_ct_live(v, now) and (v >> _CT_COUNT_BITS) == exp):
                    break
                count = <long long>(v & <uint64_t>_CT_COUNT_MASK) - delta
                if count < 0:
                    count = 0
                elif count > <long long>_CT_COUNT_MASK:
                    count = <long long>_CT_COUNT_MASK
                if fgw_rp_cas(&self._slots[2 * slot + 1], v, (exp << _CT_COUNT_BITS) | <uint64_t>count):
                    break

    def count(self, uint64_t home, uint64_t key, uint32_t now, uint32_t end):
        """The key's count in the window ending at ``end`` (0 if it has none); no claim."""
        cdef uint64_t k = key | 1
        cdef uint64_t start = home & self._mask
        cdef uint64_t i, v
        cdef int j
        for j in range(_CT_WINDOW):
            i = (start + j) & self._mask
            if fgw_rp_load(&self._slots[2 * i]) == k:
                v = fgw_rp_load(&self._slots[2 * i + 1])
                if _ct_live(v, now) and (v >> _CT_COUNT_BITS) == (end & _RP_EXP_MASK):
                    return <long long>(v & <uint64_t>_CT_COUNT_MASK)
                return 0
        return 0
