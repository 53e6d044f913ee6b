# part of fastgw/_core.pyx (see its docstring)
#
# The node's passive marks (the region: fastgw/shared.py): for each backend target, the
# time until which it is passed over after failed connections (``max_fails`` within
# ``fail_timeout``). A worker that passes a target over writes it here, and every worker's
# ``UpstreamPool.passed_over`` reads it, so one worker's failures spare the others theirs
# (nginx's max_fails with a ``zone``; without one, each of N workers would send its own
# requests to a dead target first, and with a target that drops packets each would wait a
# connect timeout). The count of failures toward ``max_fails`` stays each worker's own.
#
# A slot is two words: the key (a hash of the target; never 0, 0 is an empty slot) and the
# time, the bits of a double on the system-wide monotonic clock (0: not passed over). A
# target looks at the ``_MK_WINDOW`` slots from its home and claims the first empty one
# with compare-and-swap; a slot, once claimed, is the target's for the region's life (a
# node has few targets). A worker that finds no slot keeps its marks to itself.

from libc.string cimport memcpy

DEF _MK_WINDOW = 16


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


@cython.final
cdef class PassiveMarks:
    """The marks table over a shared mapping (``fastgw.shared.SharedRegion`` builds it)."""

    cdef unsigned char[::1] _mv           # keeps the mapping exported while pools point into it
    cdef uint64_t* _slots                 # 2 words per slot: key, time
    cdef uint64_t _mask
    cdef readonly Py_ssize_t capacity

    def __cinit__(self, object buffer, Py_ssize_t offset, Py_ssize_t capacity):
        self._mv = buffer
        if capacity < _MK_WINDOW or capacity & (capacity - 1):
            raise ValueError("marks table: capacity must be a power of two >= 16")
        if offset < 0 or offset % 16 or offset + capacity * 16 > self._mv.shape[0]:
            raise ValueError("marks table: outside the region")
        self._slots = <uint64_t*>(&self._mv[0] + offset)
        self._mask = <uint64_t>capacity - 1
        self.capacity = capacity

    cdef uint64_t* word(self, uint64_t key, bint claim) noexcept nogil:
        """The time word of ``key``'s slot, claimed if need be (``claim``), or NULL: not
        there (not claiming), or its window full."""
        cdef uint64_t i, at, have
        if key == 0:
            key = 1
        for i in range(_MK_WINDOW):
            at = (key + i) & self._mask
            have = fgw_rp_load(&self._slots[2 * at])
            if have == 0:
                if not claim:
                    return NULL
                if fgw_rp_cas(&self._slots[2 * at], 0, key):
                    return &self._slots[2 * at + 1]
                have = fgw_rp_load(&self._slots[2 * at])    # another worker claimed it just now
            if have == key:
                return &self._slots[2 * at + 1]
        return NULL

    def share(self, UpstreamPool pool, uint64_t key):
        """Make ``pool`` read and write the node's mark of its target (``key``: from
        fastgw.shared.target_key); False when the table has no room for it."""
        cdef uint64_t* w = self.word(key, True)
        if w == NULL:
            return False
        pool.marks = self
        pool.shared_until = w
        return True

    def until(self, uint64_t key):
        """The target's mark (0.0: not passed over, or not in the table), for tests and tools."""
        cdef uint64_t* w = self.word(key, False)
        return 0.0 if w == NULL else _mk_read(w)
