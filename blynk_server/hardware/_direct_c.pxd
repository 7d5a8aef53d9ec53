# The typed layout of ``_direct_c``, the compiled twin Cython builds from ``direct.py`` (as _session_c.pxd):
# ``DirectReads`` an extension type whose ``poll`` waits with ``epoll_wait`` in C (the events in a static
# array: one loop thread) and calls each ready compiled session's ``_direct_read`` as a C method.
cimport cython

from blynk_server.hardware._session_c cimport HardwareSession

cdef extern from *:
    """
    #include <sys/epoll.h>
    #define BLYNK_MAX_EVENTS 1024  /* direct.MAX_EVENTS */
    static struct epoll_event blynk_events[BLYNK_MAX_EVENTS];  /* the loop thread's only */
    static inline int blynk_epoll_wait(int epfd) {
        int n = epoll_wait(epfd, blynk_events, BLYNK_MAX_EVENTS, 0);
        return n < 0 ? 0 : n;  /* EINTR: the loop calls again while the set is ready */
    }
    static inline int blynk_event_fd(int i) { return blynk_events[i].data.fd; }
    static inline unsigned int blynk_event_mask(int i) { return blynk_events[i].events; }
    """
    int blynk_epoll_wait(int epfd)
    int blynk_event_fd(int i)
    unsigned int blynk_event_mask(int i)


cdef class DirectReads:
    cdef public object loop
    cdef object _epoll
    cdef int _fd
    cdef public dict sessions

    @cython.locals(session=HardwareSession, n=int, i=int, ready=list)
    cpdef void poll(self)
