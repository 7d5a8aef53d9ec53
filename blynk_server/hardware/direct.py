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

Its compiled twin ``_direct_c`` (``_direct_c.pxd``) registers each socket with its session in the event's
data, waits with ``epoll_wait`` in C and calls the ready sessions' ``_direct_read`` as a C method: no
lookup of the descriptor per read (a dict probe and an int object per read were 3 % of the server's CPU
at 10k x 2/s). A session that leaves during a wakeup stays referenced until the wakeup ends
(``_left``), since an event taken before it left may still name it; its ``_direct_read`` then finds it
gone. This file is the one source of behaviour and, as it is, the pure-Python twin (``select.epoll``,
the session found by descriptor). ``settings.direct_reads`` (``BLYNK_DIRECT_READS``) turns it off.

Under load a wakeup of the loop costs more than the reads it finds: at 10k devices x 2 msg/s each wakeup
found a few messages, and the wakeups (the process switched in, two epoll waits, a turn of the loop)
were over a tenth of the CPU per message (benchmarks/RESULTS.md, issue 12 step 10). So after a wakeup
that read something, the set rests: unwatched until ``coalesce`` seconds (``settings.read_coalesce_ms``)
after that poll began, then polled whatever it holds, and rests again while it finds reads. A read thus
waits ``coalesce`` at most; an idle set is watched as usual, so a lone read is taken at once; and a poll
that took as long as the rest (the loop saturated) is followed by none, so a rest never leaves the loop
idle while reads wait. The set rests in a gate, a one-entry epoll set of its own that the loop watches:
its entry is switched off for a rest and on again once a poll finds nothing or leaves no time to rest
(``epoll_ctl`` MOD; under a steady load it stays off from one rest to the next). Taking the set itself
out of the loop's epoll and back would cost far more: adding an epoll set to another makes the kernel
walk every socket in it (its loop check), 10,000 sockets 500 times a second (24 µs per message).
"""

from __future__ import annotations

import os
import select
import time

from blynk_server.config import check_read_coalesce_ms

try:
    import cython  # compiling: Cython's own; with Cython installed, its pure-Python stand-in
except ImportError:  # no Cython here: this is the pure-Python twin
    from blynk_server import nocython as cython

# Ready sockets taken per epoll_wait, and waits per wakeup while each comes back full: libuv's figures.
# Every ready socket is read in the turn that finds it (its frames handled or deferred by the turn
# budget): taking 256 a turn, a quiet device's ping waited behind a saturated set's round robin (ping
# p99 100 ms at 10k x 10/s against 13 ms through the transports).
MAX_EVENTS = 1024
MAX_ROUNDS = 48
READABLE = 0x001  # EPOLLIN
ENDED = 0x008 | 0x010  # EPOLLERR | EPOLLHUP: reported even with no events asked for
ADD, DELETE, MODIFY = 1, 2, 3  # epoll_ctl's operations (Linux's EPOLL_CTL_*), for the compiled twin


def available() -> bool:
    """Whether this platform has epoll."""
    return hasattr(select, "epoll")


class DirectReads:
    """The listener's epoll set of device sockets, watched by ``loop`` as one descriptor."""

    __slots__ = ("loop", "_epoll", "_fd", "sessions", "_polling", "_left", "coalesce", "_gate", "_gate_on", "_rest")

    def __init__(self, loop, coalesce: float = 0.0) -> None:
        check_read_coalesce_ms(coalesce * 1000)  # settings.read_coalesce_ms, here in seconds
        self.loop = loop
        self._epoll = select.epoll()
        self._fd = self._epoll.fileno()
        self.sessions: dict = {}  # socket descriptor -> the session reading it
        self._polling = False
        self._left: list = []  # sessions that left during this wakeup (compiled: events may name them)
        self.coalesce = coalesce  # seconds the set rests after a wakeup that read from it (0: never)
        self._rest = None  # the timer that ends a rest
        self._gate = None
        self._gate_on = False  # the gate's entry is on: the loop wakes for the set (while it does not rest)
        watched = self._fd
        if coalesce > 0:
            self._gate = select.epoll()  # the set's one entry, switched off while it rests
            self._gate.register(self._fd, READABLE)
            self._gate_on = True
            watched = self._gate.fileno()
        loop.add_reader(watched, self.poll)

    def add(self, session, fd: int, reading: bool) -> None:
        self._control(ADD, fd, session, READABLE if reading else 0)
        self.sessions[fd] = session

    def reading(self, session, fd: int, on: bool) -> None:
        """Switch ``fd``'s read events on or off (``session`` pausing or resuming its reads)."""
        self._control(MODIFY, fd, session, READABLE if on else 0)

    def _control(self, op: int, fd: int, session, events: int) -> None:
        if cython.compiled:
            err = blynk_epoll_control(self._fd, op, fd, session, events)  # noqa: F821 - C, in _direct_c.pxd
            if err:
                raise OSError(err, os.strerror(err))
        elif op == ADD:
            self._epoll.register(fd, events)
        else:
            self._epoll.modify(fd, events)

    def remove(self, session, fd: int) -> None:
        """``session`` leaves the set. Only its own entry: once its transport closed the descriptor, the
        number may already be a newer connection's (closing drops it from the set by itself)."""
        if self.sessions.get(fd) is session:
            del self.sessions[fd]
            if self._polling:
                self._left.append(session)
            if cython.compiled:
                blynk_epoll_control(self._fd, DELETE, fd, None, 0)  # noqa: F821 - closed already: ignored
            else:
                try:
                    self._epoll.unregister(fd)
                except OSError:  # closed already
                    pass

    def poll(self) -> None:
        """The set is ready (or its rest ended): each ready socket's session reads it once."""
        sessions = self.sessions
        self._polling = True
        read = 0
        started = time.monotonic() if self._gate is not None else 0.0
        now = self.loop.time()  # one reading for the wakeup (uvloop's own is the same within a turn)
        try:
            for _ in range(MAX_ROUNDS):
                if cython.compiled:
                    n = blynk_epoll_wait(self._fd)  # noqa: F821 - C, declared in _direct_c.pxd
                    for i in range(n):
                        session = blynk_event_session(i)  # noqa: F821 - the session the socket was added with
                        session._direct_read(blynk_event_mask(i), now)  # noqa: F821
                else:
                    ready = self._epoll.poll(0, MAX_EVENTS)
                    n = len(ready)
                    for fd, events in ready:
                        session = sessions.get(fd)
                        if session is not None:
                            session._direct_read(events, now)
                read += n
                if n < MAX_EVENTS:
                    break
        finally:
            self._polling = False
            if self._left:
                self._left.clear()
        if self._gate is not None and self._rest is None:
            # Rest until ``coalesce`` after this poll began: what comes meanwhile is read together when
            # it ends. A poll as long as that (the loop saturated) is followed by none: no idle gap.
            wait = started + self.coalesce - time.monotonic() if read else 0.0
            if wait > 0:
                self._watch(False)
                self._rest = self.loop.call_later(wait, self._rested)
            else:
                self._watch(True)

    def _watch(self, on: bool) -> None:
        """Switch the gate's entry, the loop's wakeups for the set, on or off unless it is so already: rests
        one after another (a steady load) keep it off, with no ``epoll_ctl`` between them."""
        if on != self._gate_on:
            self._gate.modify(self._fd, READABLE if on else 0)
            self._gate_on = on

    def _rested(self) -> None:
        self._rest = None
        self.poll()  # rests again if it reads anything; else the set is watched until a socket is ready

    def close(self) -> None:
        """Stop watching (the listener stopped; its sessions have left)."""
        if self._rest is not None:
            self._rest.cancel()
            self._rest = None
        if self._gate is not None:
            self.loop.remove_reader(self._gate.fileno())
            self._gate.close()
        else:
            self.loop.remove_reader(self._fd)
        self._epoll.close()
