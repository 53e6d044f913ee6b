# part of fastgw/_core.pyx (see its docstring)
#
# Two small containers for objects that come and go once per connection or request.
#
# PERF: a Python set costs a hash and a probe on each add and discard (~600 instructions
# a connection for the engine's set and the poller's), and a list used as a stack
# reallocates its storage as pop() shrinks it below half and append() grows it again
# (~450 instructions a connection with keep-alive off, in realloc). Both here keep their
# storage: a slot that empties is set to None and reused.

cimport cython


cdef inline int _put_at(list items, Py_ssize_t i, object o) except -1:
    """``items[i] = o``, ``i`` at most ``len(items)``: a slot emptied before is reused."""
    if i < len(items):
        items[i] = o
    else:
        items.append(o)
    return 0


@cython.final  # PERF: its methods are called directly (no vtable)
cdef class ObjStack:
    """A LIFO of objects whose storage only grows (up to ``limit`` items)."""
    cdef list items
    cdef readonly Py_ssize_t n
    cdef Py_ssize_t limit

    def __init__(self, Py_ssize_t limit):
        self.items = []
        self.n = 0
        self.limit = limit

    cdef inline bint push(self, object o) except -1:
        """Add ``o`` on top; False (and nothing held) when the stack is full."""
        if self.n >= self.limit:
            return False
        _put_at(self.items, self.n, o)
        self.n += 1
        return True

    cdef inline object pop(self):
        """The top object (removed), or None when empty."""
        if self.n == 0:
            return None
        self.n -= 1
        o = self.items[self.n]
        self.items[self.n] = None
        return o

    cdef list take_all(self):
        """Every object held, bottom first; the stack is left empty."""
        out = self.items[:self.n]
        self.items = []
        self.n = 0
        return out


@cython.final
cdef class Slots:
    """An unordered set of objects with O(1) add and remove and no hashing: each member
    keeps the index it was given (``add``'s result) and hands it to ``remove``."""
    cdef list items
    cdef readonly Py_ssize_t n

    def __init__(self):
        self.items = []
        self.n = 0

    cdef inline Py_ssize_t add(self, object o) except -1:
        cdef Py_ssize_t i = self.n
        _put_at(self.items, i, o)
        self.n = i + 1
        return i

    cdef inline object remove(self, Py_ssize_t i):
        """Remove member ``i``; the last member moves into its slot and is returned (its
        index is now ``i``), or None when ``i`` was the last one."""
        cdef Py_ssize_t last = self.n - 1
        moved = None
        if i != last:
            moved = self.items[last]
            self.items[i] = moved
        self.items[last] = None
        self.n = last
        return moved

    cdef list members(self):
        return self.items[:self.n]
