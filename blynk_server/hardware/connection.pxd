# The typed layout of ``connection.py`` when Cython compiles it (pure-Python mode: this file augments
# the module, whose source stays the one source of behaviour; without Cython it runs as plain Python).
# ``DeviceConnection`` becomes an extension type: its state is C fields (times as double, flags as bint,
# counts as C integers) and the per-message methods are C functions called without a Python call.
# Every field is ``public``: the adapter (a Python subclass), the hub and the tests read and set them.
# A field or method added to the class must be declared here too (Cython refuses an undeclared one).
cimport cython

from blynk_server.hardware.budget cimport TurnBudget
from blynk_server.hardware.stats cimport HardwareStats


cdef class DeviceConnection:
    cdef public object ctx, settings, domain, decoder
    cdef public HardwareStats stats
    cdef public bytearray _buf
    cdef public object _view
    cdef public object ip, peer
    cdef public object out
    cdef public int dirty
    cdef public double now, hb_at
    cdef public bint _pending, write_blocked
    cdef public double _write_blocked_at
    cdef public Py_ssize_t _reply_cost, _noise
    cdef public object device
    cdef public bint closed
    cdef public double last_read, timeout
    cdef public Py_ssize_t buff_in
    cdef public bint info_acked
    cdef public list _held
    cdef public double _release_at
    cdef public int login_command
    cdef public list _paced
    cdef public double _paced_next
    cdef public int _msg_id
    cdef public long long _batch_ms
    cdef public double _rate, _burst, _tokens, _tokens_at
    cdef public bint _flood_paused
    cdef public double _last_quota
    cdef public object _group_ts
    cdef public dict _bridges
    cdef public TurnBudget budget
    cdef public bytes deferred
    cdef public long long _arrived_ms

    cdef _feed(self, data)
    cdef list _decode(self, data)
    cdef void _defer(self, bytes data)
    cdef inline bint _queued_behind(self)
    cdef void _lone_ping(self, int msg_id)
    @cython.locals(stats=HardwareStats, budget=TurnBudget, cmd=int, sep=Py_ssize_t, body=bytes, writes=list)
    cdef void _handle_frames(self, list frames)
    cdef void _charge_read(self, Py_ssize_t frames, int msg_id)
    cdef void _apply_writes(self, list writes)
    @cython.locals(now=double, tokens=double)
    cdef void _charge(self, Py_ssize_t count, int msg_id)
    cdef void _write(self, bytes data, int command, Py_ssize_t frames=*)
    cdef inline void _out(self, bytes data)
    cdef void _paced_write(self, bytes data)
    cdef void _reply(self, int msg_id, int status)
    cdef bint _should_log(self)
    cdef inline void _arm(self, double now, double delay)
