# The typed layout of ``budget.py`` when Cython compiles it (pure-Python mode, as stats.pxd): C fields
# the core draws frames from without a Python object.
cdef class TurnBudget:
    cdef public long long limit, left, deferred_reads, exhausted_turns

    cpdef bint spent(self)
