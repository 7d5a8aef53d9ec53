"""Plain TCP device sockets read from one epoll set of the listener's (Linux), not by their transports.

uvloop reads a socket with its own bookkeeping and two Python-level callbacks per read (``get_buffer``,
``buffer_updated``); below one core, a telemetry read is one message, so that is paid per message. Here
the loop watches one descriptor, this set. When it is ready, ``poll`` takes the ready sockets and has
each session read its own once (``HardwareSession._direct_read``: one ``recv`` into the shared buffer);
compiled, that is a C call per socket and the only Python-level call is the loop's, once per wakeup.

A session joins after the first bytes showed the binary protocol (``go_direct``); its transport stays
the one that writes, flow-controls and closes, with its own reading paused. A session that pauses
reading (its turn, the flood bucket, unsent output) has its events switched off here. At the end of the
socket (EOF, an error, a hang-up) the session leaves the set and the transport reads again, so the
transport finds the end itself and the connection is lost the usual way. TLS sockets and the WebSocket
door keep their transports' reads.

Its compiled twin ``_direct_c`` (``_direct_c.pxd``) waits with ``epoll_wait`` in C and calls the compiled
sessions' ``_direct_read`` as a C method; this file is the one source of behaviour and, as it is, the
pure-Python twin (``select.epoll``). ``settings.direct_reads`` (``BLYNK_DIRECT_READS``) turns it off.
"""

from __future__ import annotations

import select

try:
    import cython  # compiling: Cython's own; with Cython installed, its pure-Python stand-in
except ImportError:  # no Cython here: this is the pure-Python twin
    from blynk_server.hardware import nocython as cython

# Ready sockets taken per epoll_wait, and waits per wakeup while each comes back full: libuv's figures.
# Every ready socket is read in the turn that finds it (its frames handled or deferred by the turn
# budget): taking 256 a turn, a quiet device's ping waited behind a saturated set's round robin (ping
# p99 100 ms at 10k x 10/s against 13 ms through the transports).
MAX_EVENTS = 1024
MAX_ROUNDS = 48
READABLE = 0x001  # EPOLLIN
ENDED = 0x008 | 0x010  # EPOLLERR | EPOLLHUP: reported even with no events asked for


def available() -> bool:
    """Whether this platform has epoll."""
    return hasattr(select, "epoll")


class DirectReads:
    """The listener's epoll set of device sockets, watched by ``loop`` as one descriptor."""

    __slots__ = ("loop", "_epoll", "_fd", "sessions")

    def __init__(self, loop) -> None:
        self.loop = loop
        self._epoll = select.epoll()
        self._fd = self._epoll.fileno()
        self.sessions: dict = {}  # socket descriptor -> the session reading it
        loop.add_reader(self._fd, self.poll)

    def add(self, session, fd: int, reading: bool) -> None:
        self.sessions[fd] = session
        self._epoll.register(fd, READABLE if reading else 0)

    def reading(self, fd: int, on: bool) -> None:
        """Switch ``fd``'s read events on or off (a session pausing or resuming its reads)."""
        self._epoll.modify(fd, READABLE if on else 0)

    def remove(self, session, fd: int) -> None:
        """``session`` leaves the set. Only its own entry: once its transport closed the descriptor, the
        number may already be a newer connection's (closing drops it from the set by itself)."""
        if self.sessions.get(fd) is session:
            del self.sessions[fd]
            try:
                self._epoll.unregister(fd)
            except OSError:  # closed already
                pass

    def poll(self) -> None:
        """The set is ready: each ready socket's session reads it once."""
        sessions = self.sessions
        for _ in range(MAX_ROUNDS):
            if cython.compiled:
                n = blynk_epoll_wait(self._fd)  # noqa: F821 - C, declared in _direct_c.pxd
                for i in range(n):
                    session = sessions.get(blynk_event_fd(i))  # noqa: F821
                    if session is not None:
                        session._direct_read(blynk_event_mask(i))  # noqa: F821
            else:
                ready = self._epoll.poll(0, MAX_EVENTS)
                n = len(ready)
                for fd, events in ready:
                    session = sessions.get(fd)
                    if session is not None:
                        session._direct_read(events)
            if n < MAX_EVENTS:
                return

    def close(self) -> None:
        """Stop watching (the listener stopped; its sessions have left)."""
        self.loop.remove_reader(self._fd)
        self._epoll.close()
