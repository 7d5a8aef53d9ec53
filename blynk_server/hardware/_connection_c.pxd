# The typed layout of ``_connection_c``, the compiled twin Cython builds from ``connection.py``
# (pure-Python mode: this file augments that source, the one source of behaviour, which also runs as
# plain Python under its own name).
# ``DeviceConnection`` becomes an extension type: its state is C fields (times as double, flags as bint,
# counts as C integers) and the per-message methods are C functions called without a Python call.
# Every field is ``public``: the hub, the tests and the pure adapter read and set them (the compiled
# adapter, _session_c.pxd's extension type, reaches them in C). ``receive_into``, a read's entry, is
# ``cpdef``: a C call from the compiled adapter, a method for everyone else.
# A field or method added to the class must be declared here too (Cython refuses an undeclared one).
cimport cython

cdef extern from *:
    """
    #include <time.h>
    /* The wall clock in UTC milliseconds (model.now_ms without a Python call). */
    static inline long long blynk_wall_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    }
    /* bytes of buf[start:end], copied once (bytes(memoryview[a:b]) makes a view, then the copy). */
    static inline PyObject *blynk_bytes_of(PyObject *buf, Py_ssize_t start, Py_ssize_t end) {
        return PyBytes_FromStringAndSize(PyByteArray_AS_STRING(buf) + start, end - start);
    }
    /* The int object of a read's timestamp (ms), one for all the reads of the same millisecond (the loop
       thread's only): a pin's (value, ts) row then holds a shared int, not one made and freed per write. */
    static PyObject *blynk_ms_last = NULL;
    static long long blynk_ms_last_value;
    static inline PyObject *blynk_ms_object(long long ms) {
        if (blynk_ms_last == NULL || blynk_ms_last_value != ms) {
            PyObject *fresh = PyLong_FromLongLong(ms);
            if (fresh == NULL) return NULL;
            Py_XSETREF(blynk_ms_last, fresh);
            blynk_ms_last_value = ms;
        }
        Py_INCREF(blynk_ms_last);
        return blynk_ms_last;
    }
    """
    long long blynk_wall_ms()
    bytes blynk_bytes_of(bytearray buf, Py_ssize_t start, Py_ssize_t end)
    object blynk_ms_object(long long ms)

from blynk_server.hardware._budget_c cimport TurnBudget
from blynk_server.hardware._stats_c cimport HardwareStats
# The compiled pin writer, called in C when the domain uses it (a domain on the pure twin: a method call).
from blynk_server._pinwrite_c cimport PinWriter as CPinWriter


cdef class DeviceConnection:
    # In the order of the struct. First what a read (a lone PING or vw) touches, side by side: with
    # 10,000 sessions each read's session is out of the CPU's caches, and each cache line of it is a
    # miss. Within each part by size (pointers, 8-byte numbers, 4-byte ones): no padding between fields.
    cdef public object ctx
    cdef public HardwareStats stats
    cdef public TurnBudget budget
    cdef public bytearray _buf
    cdef public object _view
    cdef public object device, decoder
    cdef public bytes deferred
    cdef public object out
    cdef public object _group_ts
    cdef public double now, last_read, _rate, _burst, _tokens, _tokens_at
    cdef public long long _batch_ms, _arrived_ms
    cdef public int dirty, _reply_cost
    cdef public bint closed, _flood_paused, write_blocked
    cdef public int _max_body  # the decoder's body limit, read once: in what was padding (the object no larger)
    # The rest: logins, held pushes, pacing, bridges, timers.
    cdef public int buff_in, login_command, _msg_id, port
    cdef public bint _pending, info_acked
    cdef public object ip
    cdef public list _held, _paced
    cdef public dict _bridges
    cdef public double hb_at, _write_blocked_at, timeout, _release_at, _paced_next, _last_quota
    cdef public long long _noise

    cpdef void receive_into(self, Py_ssize_t nbytes, double now)
    cdef _feed(self, data)
    cdef list _decode(self, data)
    cdef inline bint _defers(self)
    cdef void _defer(self, bytes data)
    cdef inline bint _queued_behind(self)
    cdef void _lone_ping(self, int msg_id)
    @cython.locals(buf=bytearray, pin=int, pos=Py_ssize_t, msg_id=int, raw=bytes)
    cdef bint _lone_write(self, Py_ssize_t nbytes)
    @cython.locals(n=Py_ssize_t, buf=bytearray)
    cdef bint _lone_write_copied(self, bytes data)
    @cython.locals(stats=HardwareStats, cmd=int, sep=Py_ssize_t, body=bytes)
    cdef void _handle_frames(self, list frames)
    @cython.locals(budget=TurnBudget, left=cython.longlong)
    cdef inline void _begin_read(self, Py_ssize_t frames)
    cdef void _charge_read(self, Py_ssize_t frames, int msg_id)
    cdef void _write_value(self, str key, bytes raw, int msg_id)
    cdef void _refused_write(self, int msg_id, str key, exc)
    @cython.locals(now=double, tokens=double)
    cdef void _charge(self, Py_ssize_t count, int msg_id)
    cdef void _write(self, bytes data, int command, Py_ssize_t frames=*)
    cdef inline void _out(self, bytes data)
    cdef void _paced_write(self, bytes data)
    cdef void _reply(self, int msg_id, int status)
    cdef bint _should_log(self)
    cdef inline void _arm(self, double now, double delay)
    cdef object _wall_ms(self)
