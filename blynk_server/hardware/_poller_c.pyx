# The compiled twin of ``poller.py`` (see its docstring: why and how): the same API and behaviour, with
# epoll_wait and recv called directly and a wakeup's reads staged in one C buffer.
from cpython.bytearray cimport PyByteArray_AS_STRING
from libc.errno cimport EAGAIN, EINTR, EIO, errno
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

import logging
import os

log = logging.getLogger("blynk_server.hardware.poller")


cdef extern from "sys/epoll.h" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        unsigned int u32
        unsigned long long u64

    cdef struct epoll_event:
        unsigned int events
        epoll_data_t data

    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    enum:
        EPOLLIN
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC

cdef extern from "sys/socket.h" nogil:
    ssize_t recv(int fd, void *buf, size_t n, int flags)

cdef extern from "unistd.h" nogil:
    int close(int fd)


MAX_EVENTS = 256
STAGING = 65536
DEF _MAX_EVENTS = 256


def available():
    return True


cdef class Poller:
    cdef object _loop
    cdef bytearray _buf
    cdef dict _sessions
    cdef int _epfd
    cdef char *_staging
    cdef Py_ssize_t _size
    cdef epoll_event _events[_MAX_EVENTS]
    # One wakeup's reads: the session, its descriptor, where its bytes start in _staging (-1: an error,
    # its errno in _counts) and how many.
    cdef list _got
    cdef int _fds[_MAX_EVENTS]
    cdef Py_ssize_t _starts[_MAX_EVENTS]
    cdef Py_ssize_t _counts[_MAX_EVENTS]

    def __cinit__(self):
        self._epfd = -1
        self._staging = NULL

    def __init__(self, loop, bytearray buf):
        self._loop = loop
        self._buf = buf
        self._sessions = {}
        self._got = []
        self._size = max(STAGING, len(buf))
        self._staging = <char *>malloc(self._size)
        if self._staging == NULL:
            raise MemoryError()
        self._epfd = epoll_create1(EPOLL_CLOEXEC)
        if self._epfd < 0:
            raise OSError(errno, os.strerror(errno))
        loop.add_reader(self._epfd, self._ready)

    def __dealloc__(self):
        if self._epfd >= 0:
            close(self._epfd)
        free(self._staging)

    def __len__(self):
        return len(self._sessions)

    cdef int _ctl(self, int op, int fd, unsigned int events) except -1:
        cdef epoll_event ev
        ev.events = events
        ev.data.u64 = 0
        ev.data.fd = fd
        if epoll_ctl(self._epfd, op, fd, &ev) < 0:
            raise OSError(errno, os.strerror(errno))
        return 0

    def add(self, int fd, session):
        self._ctl(EPOLL_CTL_ADD, fd, EPOLLIN)
        self._sessions[fd] = session

    def pause(self, int fd):
        self._ctl(EPOLL_CTL_MOD, fd, 0)

    def resume(self, int fd):
        self._ctl(EPOLL_CTL_MOD, fd, EPOLLIN)

    def discard(self, int fd, session):
        if self._sessions.get(fd) is session:
            del self._sessions[fd]
            try:
                self._ctl(EPOLL_CTL_DEL, fd, 0)
            except OSError:  # closed already
                pass

    def close(self):
        if self._epfd >= 0:
            self._loop.remove_reader(self._epfd)
            close(self._epfd)
            self._epfd = -1
        self._sessions.clear()

    def _ready(self):
        cdef int n, i, fd, k = 0
        cdef Py_ssize_t used = 0, offer
        cdef ssize_t got
        cdef dict sessions = self._sessions
        cdef list staged = self._got
        n = epoll_wait(self._epfd, self._events, _MAX_EVENTS, 0)
        for i in range(n):
            fd = self._events[i].data.fd
            session = sessions.get(fd)
            if session is None:
                continue
            offer = session.read_offer()
            if offer > self._size:
                offer = self._size
            if used + offer > self._size:  # the staging area is full: hand over what it holds first
                self._hand_over(k)
                k = 0
                used = 0
            got = recv(fd, self._staging + used, <size_t>offer, 0)
            if got < 0:
                if errno == EAGAIN or errno == EINTR:  # EWOULDBLOCK is EAGAIN on Linux
                    continue
                self._starts[k] = -1
                self._counts[k] = errno if errno else EIO
            else:
                self._starts[k] = used
                self._counts[k] = got
                used += got
            self._fds[k] = fd
            staged.append(session)
            k += 1
        self._hand_over(k)

    cdef _hand_over(self, int k):
        cdef int i, fd, code
        cdef Py_ssize_t start, count
        cdef char *base = PyByteArray_AS_STRING(self._buf)
        cdef dict sessions = self._sessions
        cdef list staged = self._got
        try:
            for i in range(k):
                session = staged[i]
                fd = self._fds[i]
                if sessions.get(fd) is not session:  # closed meanwhile by another's read (a newer login)
                    continue
                start = self._starts[i]
                count = self._counts[i]
                if start < 0:
                    code = <int>count
                    self.discard(fd, session)
                    session.read_ended(OSError(code, os.strerror(code)))
                elif count == 0:
                    self.discard(fd, session)
                    session.read_ended(None)
                else:
                    memcpy(base, self._staging + start, count)
                    try:
                        session.buffer_updated(count)
                    except Exception as exc:  # as a loop does: this connection ends, the others' reads go on
                        log.exception("device read failed fd=%d", fd)
                        self.discard(fd, session)
                        session.read_ended(exc)
        finally:
            del staged[:]
