# part of fastgw/_core.pyx (see its docstring)
#
# The node's passive marks (the region: fastgw/shared.py): for each backend target, the
# count of its failed connections in the current ``fail_timeout`` window, and the time
# until which it is passed over once they reach ``max_fails``. Every worker counts into
# the same tally and every worker's ``UpstreamPool.passed_over`` reads the same mark, so
# ``max_fails`` means that many failures on the node, whichever workers met them, and one
# worker's failures spare the others theirs (nginx's max_fails with a ``zone``; without
# one, each of N workers would count its own and send its own requests to a dead target
# first, and with a target that drops packets each would wait a connect timeout).
#
# A slot is four words (32 bytes: a slot never straddles a cache line): the key (a hash of
# the target; never 0, 0 is an empty slot), the mark (the bits of a double on the
# system-wide monotonic clock; 0: not passed over), the tally (the window's end in
# milliseconds on that clock, shifted left by _MK_COUNT_BITS, or'ed with the count; 0: no
# failure counted) and a spare word. A target looks at the ``_MK_WINDOW`` slots from its
# home and claims the first empty one with compare-and-swap; a slot, once claimed, is the
# target's for the region's life (a node has few targets). A worker that finds no slot
# keeps its count and marks to itself.

from libc.string cimport memcpy

DEF _MK_WINDOW = 16
DEF _MK_WORDS = 4                         # key, mark, tally, spare
DEF _MK_COUNT_BITS = 20
DEF _MK_COUNT_MAX = (1 << _MK_COUNT_BITS) - 1


cdef inline double _mk_read(uint64_t* word) noexcept nogil:
    cdef uint64_t bits = fgw_rp_load(word)
    cdef double t
    memcpy(&t, &bits, 8)
    return t


cdef inline void _mk_raise(uint64_t* word, double until) noexcept nogil:
    """The word's time becomes ``until`` unless it is later already."""
    cdef uint64_t old, new
    memcpy(&new, &until, 8)
    while True:
        old = fgw_rp_load(word)
        if _mk_read(&old) >= until or fgw_rp_cas(word, old, new):
            return


cdef inline int _mk_tally_count(uint64_t tally, double now) noexcept nogil:
    """The failures a tally word holds, 0 once its window has ended."""
    if tally == 0 or (tally >> _MK_COUNT_BITS) <= <uint64_t>(now * 1000.0):
        return 0
    return <int>(tally & _MK_COUNT_MAX)


cdef inline int _mk_count(uint64_t* word, double now, double window) noexcept nogil:
    """Count one failed connection in the tally ``word`` and return the window's count: a
    window that has ended (or none yet) starts a new one of ``window`` seconds."""
    cdef uint64_t old, new
    cdef int count
    while True:
        old = fgw_rp_load(word)
        count = _mk_tally_count(old, now)
        if count == 0:
            new = ((<uint64_t>((now + window) * 1000.0) + 1) << _MK_COUNT_BITS) | 1
        elif count < _MK_COUNT_MAX:
            new = old + 1
        else:
            new = old
        if fgw_rp_cas(word, old, new):
            return <int>(new & _MK_COUNT_MAX)


@cython.final
cdef class PassiveMarks:
    """The marks table over a shared mapping (``fastgw.shared.SharedRegion`` builds it)."""

    cdef unsigned char[::1] _mv           # keeps the mapping exported while pools point into it
    cdef uint64_t* _slots                 # _MK_WORDS words per slot: key, mark, tally, spare
    cdef uint64_t _mask
    cdef readonly Py_ssize_t capacity

    def __cinit__(self, object buffer, Py_ssize_t offset, Py_ssize_t capacity):
        self._mv = buffer
        if capacity < _MK_WINDOW or capacity & (capacity - 1):
            raise ValueError("marks table: capacity must be a power of two >= 16")
        if offset < 0 or offset % 32 or offset + capacity * _MK_WORDS * 8 > self._mv.shape[0]:
            raise ValueError("marks table: outside the region")
        self._slots = <uint64_t*>(&self._mv[0] + offset)
        self._mask = <uint64_t>capacity - 1
        self.capacity = capacity

    cdef uint64_t* word(self, uint64_t key, bint claim) noexcept nogil:
        """The mark word of ``key``'s slot (its tally is the next word), claimed if need
        be (``claim``), or NULL: not there (not claiming), or its window full."""
        cdef uint64_t i, at, have
        if key == 0:
            key = 1
        for i in range(_MK_WINDOW):
            at = (key + i) & self._mask
            have = fgw_rp_load(&self._slots[_MK_WORDS * at])
            if have == 0:
                if not claim:
                    return NULL
                if fgw_rp_cas(&self._slots[_MK_WORDS * at], 0, key):
                    return &self._slots[_MK_WORDS * at + 1]
                have = fgw_rp_load(&self._slots[_MK_WORDS * at])    # another worker claimed it just now
            if have == key:
                return &self._slots[_MK_WORDS * at + 1]
        return NULL

    def share(self, UpstreamPool pool, uint64_t key):
        """Make ``pool`` count into and read the node's tally and mark of its target
        (``key``: from fastgw.shared.target_key); False when the table has no room for it."""
        cdef uint64_t* w = self.word(key, True)
        if w == NULL:
            return False
        pool.marks = self
        pool.shared_until = w
        pool.shared_tally = w + 1
        return True

    def until(self, uint64_t key):
        """The target's mark (0.0: not passed over, or not in the table), for tests and tools."""
        cdef uint64_t* w = self.word(key, False)
        return 0.0 if w == NULL else _mk_read(w)

    def fails(self, uint64_t key):
        """The target's failed connections in its current window (0: none, or not in the
        table), for tests and tools."""
        cdef uint64_t* w = self.word(key, False)
        return 0 if w == NULL else _mk_tally_count(fgw_rp_load(w + 1), _mono())
