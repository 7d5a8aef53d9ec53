# The compiled twin of pinwrite.py (Cython's pure-Python mode: that file is the source, this one its
# types). DomainStats, DeviceState and PinWriter are extension types (the write reads the state's fields
# and adds to the counters as C fields); ``write`` and ``coerce_value`` are C functions to each other and
# Python ones to everyone else, and coerce_value's number a C double. A field or method added there must
# be declared here too.

cimport cython


cdef extern from *:
    """
    /* Out of the cyclic collector's sight: for a tuple of atomic objects only, which no cycle can pass
       through (what the collector itself does to such a tuple at its next pass). */
    static inline void blynk_untrack(PyObject *op) { PyObject_GC_UnTrack(op); }
    """
    void blynk_untrack(tuple op)


cdef class DomainStats:
    cdef public long long writes, invalid_writes, events, events_rejected, events_undeclared
    cdef public long long properties_rejected, meta_rejected, http_writes_delivered
    cdef public long long info_cache_bytes, info_cache_entries


cdef class DeviceState:
    cdef readonly object id  # the record's int object, shared: a C integer would make one per read
    cdef public object record, template
    cdef public dict values, properties, meta, last_event_ms
    cdef public object events_day, events_today
    cdef public bint online, deleted


cdef class PinWriter:
    cdef public object store, reactions
    cdef public DomainStats stats
    cdef public list pending
    cdef public set watched

    @cython.locals(datastreams=dict, values=dict, pending=dict, watched=set)
    cpdef object write(self, DeviceState dev, str key, object raw, object ts)


cdef int STRING, LOCATION, INT, ENUM, NUMBER
cdef dict _KINDS
cdef double _NOT_INT

@cython.locals(x=cython.double, clamped=cython.double, integral=cython.bint, canonical=cython.bint, kind=cython.int)
cpdef object coerce_value(object ds, object raw)
cpdef object check_ts(object ts)
@cython.locals(n=Py_ssize_t, start=Py_ssize_t, i=Py_ssize_t, c=cython.uchar, value=cython.double)
cdef double _int_value(bytes raw)
