# The typed layout of ``_session_c``, the compiled twin of ``session.py`` (as _connection_c.pxd):
# ``HardwareSession`` becomes an extension type deriving from the core's, so the per-read path
# (``get_buffer``, ``buffer_updated``) reaches the core's fields (``out``, ``dirty``, ``closed``,
# ``write_blocked``) and its own as C fields, and calls ``receive_into`` and the adapter's helpers as C
# functions. ``asyncio.BufferedProtocol``, the second base in session.py, stays a base at run time
# (it has no instance layout: ``__slots__ = ()``), so ``isinstance`` holds for asyncio's own loops.
# Fields others set (``_deadline_key``: the shared wheel) stay ``public``; a method another module or a
# loop callback calls stays a ``def`` in session.py and is not declared here.
cimport cython

from blynk_server.hardware._connection_c cimport DeviceConnection

cdef extern from *:
    """
    #include <errno.h>
    #include <sys/socket.h>
    /* recv into the shared buffer's first n bytes; the count, or -errno. */
    static inline Py_ssize_t blynk_recv(int fd, PyObject *buf, Py_ssize_t n) {
        Py_ssize_t got;
        do { got = recv(fd, PyByteArray_AS_STRING(buf), (size_t)n, 0); } while (got < 0 && errno == EINTR);
        return got < 0 ? -errno : got;
    }
    """
    Py_ssize_t blynk_recv(int fd, bytearray buf, Py_ssize_t n)


cdef class HardwareSession(DeviceConnection):
    # The loop and the read turns are the context's (ctx.loop, ctx.turns): a pointer less each per session.
    # After the core's fields, in the order of the struct: first what a read touches (as the core's).
    cdef public object transport
    cdef public Py_ssize_t _offered
    cdef public int _direct_fd  # the socket while the listener's epoll set reads it (direct.py); -1
    cdef public bint _granted, _turn_paused, _direct_paused
    cdef public object _timer
    cdef public long long _deadline_key  # the bucket on the shared wheel; 0: none

    cdef void _sync(self)
    cdef void _check_unsent(self)
    cdef void _apply(self)
    cdef void _wait_turn(self)
    cdef void _resume_reading(self)
    cdef object _offer(self)
    cdef void _on_read(self, Py_ssize_t nbytes, double now)
    cdef void _pause_reads(self)
    cdef void _resume_reads(self)
    @cython.locals(n=Py_ssize_t, fd=int)
    cdef void _direct_read(self, unsigned int events, double now)
    cdef void _leave_direct(self)
