# part of fastgw/_core.pyx (see its docstring)
#
# The atomics every table in the node's shared region (fastgw/shared.py) is written with:
# the replay set (_replay.pxi), the rate-limit counters (_counters.pxi) and the targets'
# passive marks (_marks.pxi). Words are 64-bit and naturally aligned.

from libc.stdint cimport uint64_t

cdef extern from *:
    """
    /* Sequentially consistent: a claim (store) followed by a look at the other slots
       (loads) is the Dekker pattern; acquire/release alone would let two claimers each
       miss the other's word on a weakly ordered CPU (x86's locked cmpxchg is a full
       barrier anyway). */
    static inline uint64_t fgw_rp_load(uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_SEQ_CST);
    }
    static inline int fgw_rp_cas(uint64_t *p, uint64_t expected, uint64_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
    static inline void fgw_rp_store(uint64_t *p, uint64_t v) {
        __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
    }
    """
    uint64_t fgw_rp_load(uint64_t *p) nogil
    bint fgw_rp_cas(uint64_t *p, uint64_t expected, uint64_t desired) nogil
    void fgw_rp_store(uint64_t *p, uint64_t v) nogil
