# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython framer: the twin of ``protocol.framing`` with the same API and behaviour, only faster.

A frame is a tuple ``(command, msg_id, payload)``; ``payload`` is the body as ``bytes``, or the status
``int`` for RESPONSE (command 0), whose header carries a status in place of a length and no body.

How it is fast:
- the chunk is read through a raw ``const unsigned char *`` (bytes directly, anything else through the
  buffer protocol), never copied as a whole;
- only an incomplete frame at the end of a chunk is copied into a small C buffer, and the next chunk
  completes that one frame and is then parsed in place (the tail is never re-copied);
- the ints of a frame (command, msg id, status: all 0..65535) come from a lazily filled table, so a
  frame costs one bytes object and one 3-tuple;
- the result list is allocated at its final size after a cheap first pass over the headers.

Odd argument types (floats, str, out-of-range values) are handed to the pure-Python twin, so both
raise exactly the same errors with the same messages.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_New
from cpython.long cimport PyLong_AsLongAndOverflow, PyLong_Check
from cpython.ref cimport PyObject
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy

from operator import index as _index

from protocol import framing as _py
from protocol.errors import FrameTooLarge

cdef enum:
    HDR = 5
    WIRE_MAX = 0xFFFF
    _KEEP = 4096  # a partial-frame buffer up to this size is kept between frames

HEADER_SIZE = HDR
MAX_WIRE_BODY = WIRE_MAX

Frame = tuple  # (command: int, msg_id: int, payload: bytes | int)

# Python ints 0..65535, created on first use and kept for the life of the process.
cdef PyObject *_ints[WIRE_MAX + 1]


cdef extern from "Python.h":
    # Raw-pointer spellings of the C API, so building a frame costs no reference juggling: the
    # tuple steals the new references, and a NULL (out of memory) is checked once per frame.
    PyObject *_PyTuple_New "PyTuple_New"(Py_ssize_t size)
    void _PyTuple_SET_ITEM "PyTuple_SET_ITEM"(PyObject *t, Py_ssize_t i, PyObject *o)
    void _PyList_SET_ITEM "PyList_SET_ITEM"(PyObject *t, Py_ssize_t i, PyObject *o)
    PyObject *_PyBytes_FromStringAndSize "PyBytes_FromStringAndSize"(const char *s, Py_ssize_t n)
    PyObject *_PyLong_FromLong "PyLong_FromLong"(long v)
    void _Py_INCREF "Py_INCREF"(PyObject *o)
    void _Py_DECREF "Py_DECREF"(PyObject *o)


cdef inline PyObject *_int(unsigned int value) noexcept:
    """A new reference to the int ``value`` (0..65535), or NULL when out of memory."""
    cdef PyObject *p = _ints[value]
    if p is NULL:
        p = _PyLong_FromLong(value)
        if p is NULL:
            return NULL
        _ints[value] = p  # the table keeps this reference for ever
    _Py_INCREF(p)
    return p


cdef inline PyObject *_frame(unsigned int command, unsigned int msg_id, PyObject *payload) noexcept:
    """A new tuple (command, msg_id, payload), stealing ``payload``; NULL when out of memory."""
    cdef PyObject *t
    cdef PyObject *c
    cdef PyObject *m
    if payload is NULL:
        return NULL
    t = _PyTuple_New(3)
    c = _int(command)
    m = _int(msg_id)
    if t is NULL or c is NULL or m is NULL:
        if t is not NULL:
            _Py_DECREF(t)
        if c is not NULL:
            _Py_DECREF(c)
        if m is not NULL:
            _Py_DECREF(m)
        _Py_DECREF(payload)
        return NULL
    _PyTuple_SET_ITEM(t, 0, c)
    _PyTuple_SET_ITEM(t, 1, m)
    _PyTuple_SET_ITEM(t, 2, payload)
    return t


cdef inline PyObject *_body_frame(const unsigned char *h) noexcept:
    """The frame whose header starts at ``h`` and whose body follows it (known to be complete)."""
    cdef unsigned int length = (<unsigned int>h[3] << 8) | h[4]
    return _frame(h[0], (<unsigned int>h[1] << 8) | h[2],
                  _PyBytes_FromStringAndSize(<const char *>h + HDR, length))


cdef inline PyObject *_response_frame(const unsigned char *h) noexcept:
    return _frame(0, (<unsigned int>h[1] << 8) | h[2], _int((<unsigned int>h[3] << 8) | h[4]))


cdef class Decoder:
    """Incremental decoder: feed it any chunks, get back the frames they complete.

    Buffers at most one partial frame (header plus at most ``max_body`` bytes of body), so the
    memory a connection can hold is bounded by ``max_body + 5``.
    """

    cdef unsigned char *_buf
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef public Py_ssize_t max_body

    def __cinit__(self, *args, **kwargs):
        self._buf = NULL
        self._len = 0
        self._cap = 0

    def __init__(self, max_body=WIRE_MAX):
        max_body = _index(max_body)
        if not 0 <= max_body <= WIRE_MAX:
            raise ValueError(f"max_body must be within 0..{WIRE_MAX}")
        self.max_body = max_body

    def __dealloc__(self):
        free(self._buf)

    @property
    def buffered(self):
        """How many bytes of an incomplete frame are held."""
        return self._len

    def reset(self):
        """Drop any partial frame."""
        self._len = 0
        self._shrink()

    cdef inline void _shrink(self) noexcept:
        """Give back a buffer grown for one big frame: thousands of idle sessions should not each
        keep 64 KB because of a single large message."""
        if self._cap > _KEEP and self._len == 0:
            free(self._buf)
            self._buf = NULL
            self._cap = 0

    cdef int _reserve(self, Py_ssize_t size) except -1:
        cdef unsigned char *p
        if size <= self._cap:
            return 0
        if size < 64:
            size = 64
        p = <unsigned char *>realloc(self._buf, size)
        if p is NULL:
            raise MemoryError()
        self._buf = p
        self._cap = size
        return 0

    def feed(self, data):
        """Consume ``data`` (any bytes-like object) and return the complete frames, in order.

        Raises ``FrameTooLarge`` when a header declares a body over ``max_body``; the frames that
        came before it are on the exception, and the decoder keeps nothing of the chunk.
        """
        cdef Py_buffer view
        if PyBytes_CheckExact(data):
            return self._feed(<const unsigned char *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        try:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        except BufferError:
            # e.g. a non-contiguous memoryview: take its bytes, as bytes(memoryview(...)) would
            data = bytes(memoryview(data))
            return self._feed(<const unsigned char *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        try:
            return self._feed(<const unsigned char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef list _feed(self, const unsigned char *p, Py_ssize_t n):
        cdef Py_ssize_t max_body = self.max_body
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t take, need, length, count, scan, stop, i
        cdef unsigned int command
        cdef PyObject *first = NULL
        cdef PyObject *t
        cdef list frames
        cdef object exc_frames
        cdef const unsigned char *h

        # 1. Complete the frame left over from the previous chunk, if any.
        if self._len:
            if self._len < HDR:
                take = HDR - self._len
                if take > n:
                    take = n
                self._reserve(HDR)
                memcpy(self._buf + self._len, p, take)
                self._len += take
                pos = take
                if self._len < HDR:
                    return []
            h = self._buf
            if h[0] == 0:
                first = _response_frame(h)
                self._len = 0
                if first is NULL:
                    raise MemoryError()
            else:
                length = (<Py_ssize_t>h[3] << 8) | h[4]
                if length > max_body:
                    self._len = 0
                    raise FrameTooLarge(h[0], (h[1] << 8) | h[2], length, max_body, [])
                need = HDR + length - self._len
                take = n - pos
                if take > need:
                    take = need
                self._reserve(HDR + length)
                h = self._buf
                memcpy(self._buf + self._len, p + pos, take)
                self._len += take
                pos += take
                if take < need:
                    return []
                first = _body_frame(h)
                self._len = 0
                self._shrink()
                if first is NULL:
                    raise MemoryError()

        # 2. Count the complete frames of the chunk (headers only), stopping at an incomplete or
        #    oversized one, so the list can be built at its final size.
        count = 0
        scan = pos
        while n - scan >= HDR:
            h = p + scan
            if h[0] == 0:
                scan += HDR
            else:
                length = (<Py_ssize_t>h[3] << 8) | h[4]
                if length > max_body:
                    break
                stop = scan + HDR + length
                if stop > n:
                    break
                scan = stop
            count += 1

        # 3. Build the frames.
        if first is not NULL:
            frames = PyList_New(count + 1)  # (a failure here leaks ``first``: out of memory anyway)
            _PyList_SET_ITEM(<PyObject *>frames, 0, first)
            i = 1
            count += 1
        else:
            frames = PyList_New(count)
            i = 0
        while i < count:
            h = p + pos
            if h[0] == 0:
                t = _response_frame(h)
                pos += HDR
            else:
                t = _body_frame(h)
                pos += HDR + ((<Py_ssize_t>h[3] << 8) | h[4])
            if t is NULL:
                # the list's empty slots are NULL, which list_dealloc accepts
                raise MemoryError()
            _PyList_SET_ITEM(<PyObject *>frames, i, t)
            i += 1

        # 4. An oversized header ends the chunk; otherwise keep the incomplete tail.
        if n - pos >= HDR:
            h = p + pos
            length = (<Py_ssize_t>h[3] << 8) | h[4]
            if length > max_body:  # (a complete RESPONSE header would have been counted)
                self._len = 0
                raise FrameTooLarge(h[0], (h[1] << 8) | h[2], length, max_body, frames)
        if pos < n:
            self._reserve(n - pos)
            memcpy(self._buf, p + pos, n - pos)
            self._len = n - pos
        return frames


cdef inline bint _small(object value, long lo, long hi, long *out):
    """Is ``value`` an int within lo..hi? (Anything else goes to the Python twin for its error.)"""
    cdef int overflow = 0
    cdef long v
    if not PyLong_Check(value):
        return False
    v = PyLong_AsLongAndOverflow(value, &overflow)
    if overflow or v < lo or v > hi:
        return False
    out[0] = v
    return True


def encode_frame(command, msg_id, body=b""):
    """Build one frame: header and body in a single bytes object."""
    cdef long c = 0, m = 0
    cdef Py_ssize_t length
    cdef unsigned char *out
    if not (PyBytes_CheckExact(body) and _small(command, 1, 0xFF, &c) and _small(msg_id, 1, 0xFFFF, &m)):
        return _py.encode_frame(command, msg_id, body)
    length = PyBytes_GET_SIZE(body)
    if length > WIRE_MAX:
        return _py.encode_frame(command, msg_id, body)
    frame = PyBytes_FromStringAndSize(NULL, HDR + length)
    out = <unsigned char *>PyBytes_AS_STRING(frame)
    out[0] = <unsigned char>c
    out[1] = <unsigned char>(m >> 8)
    out[2] = <unsigned char>m
    out[3] = <unsigned char>(length >> 8)
    out[4] = <unsigned char>length
    if length:
        memcpy(out + HDR, PyBytes_AS_STRING(body), length)
    return frame


def encode_response(msg_id, status):
    """Build a RESPONSE frame: the status sits where the length would be, and no body follows."""
    cdef long m = 0, s = 0
    cdef unsigned char *out
    if not (_small(msg_id, 1, 0xFFFF, &m) and _small(status, 0, 0xFFFF, &s)):
        return _py.encode_response(msg_id, status)
    frame = PyBytes_FromStringAndSize(NULL, HDR)
    out = <unsigned char *>PyBytes_AS_STRING(frame)
    out[0] = 0
    out[1] = <unsigned char>(m >> 8)
    out[2] = <unsigned char>m
    out[3] = <unsigned char>(s >> 8)
    out[4] = <unsigned char>s
    return frame
