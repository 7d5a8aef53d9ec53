# The typed layout of ``_budget_c``, the compiled twin of ``budget.py`` (as _stats_c.pxd): C fields
# the core draws frames from without a Python object.
cdef class TurnBudget:
    cdef public long long limit, left, mark, deferred_reads, exhausted_turns
    cdef public bint turns_waiting

    cpdef bint spent(self)
