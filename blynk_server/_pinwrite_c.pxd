# The compiled twin of pinwrite.py (Cython's pure-Python mode: that file is the source, this one its
# types). PinWriter is an extension type; ``write`` and ``coerce_value`` are C functions to each other
# and Python ones to everyone else. A field or method added there must be declared here too.

cdef class PinWriter:
    cdef public object store, stats, reactions

    cpdef object write(self, object dev, str key, object raw, object ts)


cpdef object coerce_value(object ds, object raw)
cpdef object check_ts(object ts)
