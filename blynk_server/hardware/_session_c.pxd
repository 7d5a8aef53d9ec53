# The typed layout of ``_session_c``, the compiled twin of ``session.py`` (as _connection_c.pxd):
# ``HardwareSession`` becomes an extension type deriving from the core's, so the per-read path
# (``get_buffer``, ``buffer_updated``) reaches the core's fields (``out``, ``dirty``, ``closed``,
# ``write_blocked``) and its own as C fields, and calls ``receive_into`` and the adapter's helpers as C
# functions. ``asyncio.BufferedProtocol``, the second base in session.py, stays a base at run time
# (it has no instance layout: ``__slots__ = ()``), so ``isinstance`` holds for asyncio's own loops.
# Fields others set (``_deadline_key``: the shared wheel) stay ``public``; a method another module or a
# loop callback calls stays a ``def`` in session.py and is not declared here.
from blynk_server.hardware._connection_c cimport DeviceConnection


cdef class HardwareSession(DeviceConnection):
    # The loop and the read turns are the context's (ctx.loop, ctx.turns): a pointer less each per session.
    cdef public object transport
    cdef public object _timer
    cdef public long long _deadline_key  # the bucket on the shared wheel; 0: none
    cdef public Py_ssize_t _offered
    cdef public bint _granted, _turn_paused

    cdef void _sync(self)
    cdef void _check_unsent(self)
    cdef void _apply(self)
    cdef void _wait_turn(self)
    cdef void _resume_reading(self)
