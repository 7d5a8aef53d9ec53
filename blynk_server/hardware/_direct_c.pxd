# The typed layout of ``_direct_c``, the compiled twin Cython builds from ``direct.py`` (as _session_c.pxd):
# ``DirectReads`` an extension type whose sockets are registered with their sessions in the events' data
# (``blynk_epoll_control``; the set's ``sessions`` and ``_left`` hold the references) and whose ``poll``
# waits with ``epoll_wait`` in C (the events in a static array: one loop thread) and calls each ready
# session's ``_direct_read`` as a C method.
cimport cython

from blynk_server.hardware._session_c cimport HardwareSession

cdef extern from *:
    """
    #include <errno.h>
    #include <sys/epoll.h>
    #define BLYNK_MAX_EVENTS 1024  /* direct.MAX_EVENTS */
    static struct epoll_event blynk_events[BLYNK_MAX_EVENTS];  /* the loop thread's only */
    static inline int blynk_epoll_wait(int epfd) {
        int n = epoll_wait(epfd, blynk_events, BLYNK_MAX_EVENTS, 0);
        return n < 0 ? 0 : n;  /* EINTR: the loop calls again while the set is ready */
    }
    /* epoll_ctl with the session (borrowed) as the event's data; 0, or the errno */
    static int blynk_epoll_control(int epfd, int op, int fd, PyObject *session, unsigned int events) {
        struct epoll_event ev;
        ev.events = events;
        ev.data.ptr = session;
        return epoll_ctl(epfd, op, fd, &ev) < 0 ? errno : 0;
    }
    /* the session of ready event i: a new reference, as Cython expects of a returned object */
    static inline PyObject *blynk_event_session(int i) {
        PyObject *session = (PyObject *)blynk_events[i].data.ptr;
        Py_INCREF(session);
        return session;
    }
    static inline unsigned int blynk_event_mask(int i) { return blynk_events[i].events; }
    """
    int blynk_epoll_wait(int epfd)
    int blynk_epoll_control(int epfd, int op, int fd, object session, unsigned int events)
    HardwareSession blynk_event_session(int i)
    unsigned int blynk_event_mask(int i)


cdef class DirectReads:
    cdef public object loop
    cdef object _epoll
    cdef readonly int _fd  # read by the tests, as _gate and _rest
    cdef public dict sessions
    cdef bint _polling
    cdef list _left
    cdef public double coalesce
    cdef readonly object _gate, _rest  # read by the tests
    cdef readonly bint _gate_on

    @cython.locals(session=HardwareSession, n=int, i=int, ready=list, read=int, started=double, wait=double, now=double)
    cpdef void poll(self)
