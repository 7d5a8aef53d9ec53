"""Reads the device sockets of one listener in batches: every ready socket read back to back, then
every read handed to its session. Pure-Python twin of ``_poller_c`` (``_poller_c.pyx``), same API and
behaviour; ``hotpath`` picks one.

Why: through the loop's own transports each read is a loop callback into the session, so the kernel's
receive path and the session's Python path alternate once per message and neither stays in the CPU's
caches. With 10,000 devices x 2 msg/s, reading the ready sockets of one wakeup first and handling
their bytes afterwards cost measurably less CPU per message (``benchmarks/RESULTS.md``, issue 12).

How: one ``epoll`` descriptor per listener, watched by the event loop (``add_reader``); the loop calls
``_ready`` when any device socket is readable. A session registers once its connection speaks the
binary protocol over plain TCP (``HardwareSession.poll_reads``): from then on the transport never
reads (``pause_reading`` for good) and this reads instead; writes, closing and ``connection_lost``
stay the transport's. What a session asks of this: ``read_offer()`` (how many bytes it takes now: the
shared buffer, or a small read while busy sockets wait their turn), ``buffer_updated(n)`` (its bytes
are at the start of the shared buffer ``turns.buf``, as after a loop's read) and ``read_ended(exc)``
(end of stream: None; a socket error: the ``OSError``; a failed ``buffer_updated``: its exception,
logged, the connection aborted and the others' reads handed over). At most ``MAX_EVENTS`` sockets are read per
wakeup; the rest stay ready (level-triggered) for the next loop turn. Linux only (``epoll``): where
there is none, ``available()`` is False and sessions read through their transports.
"""

from __future__ import annotations

import errno
import logging
import os
import select
from typing import Any, Protocol

log = logging.getLogger(__name__)

MAX_EVENTS = 256  # sockets read per wakeup (one loop turn)
STAGING = 65536  # bytes of one wakeup's reads kept before they are handed over (more: handed over now)


class Reader(Protocol):
    def read_offer(self) -> int: ...

    def buffer_updated(self, nbytes: int) -> None: ...

    def read_ended(self, exc: BaseException | None) -> None: ...


def available() -> bool:
    """Is there an ``epoll`` here (Linux)?"""
    return hasattr(select, "epoll")


class Poller:
    """The sockets of one listener's sessions, by file descriptor."""

    def __init__(self, loop: Any, buf: bytearray) -> None:
        self._loop = loop
        self._buf = buf  # the listener's shared receive buffer (turns.buf): reads are handed over there
        self._view = memoryview(buf)
        self._epoll = select.epoll()
        self._sessions: dict[int, Reader] = {}
        self._staging = bytearray(max(STAGING, len(buf)))
        self._stage = memoryview(self._staging)
        loop.add_reader(self._epoll.fileno(), self._ready)

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, fd: int, session: Reader) -> None:
        self._epoll.register(fd, select.EPOLLIN)
        self._sessions[fd] = session

    def pause(self, fd: int) -> None:
        """Stop reading ``fd`` until ``resume``."""
        self._epoll.modify(fd, 0)

    def resume(self, fd: int) -> None:
        self._epoll.modify(fd, select.EPOLLIN)

    def discard(self, fd: int, session: Reader) -> None:
        """``session`` no longer reads here. A no-op when ``fd`` is another's by now: a descriptor the
        transport closed (the kernel drops it from the set) may already be a new connection's."""
        if self._sessions.get(fd) is session:
            del self._sessions[fd]
            try:
                self._epoll.unregister(fd)
            except OSError:  # closed already
                pass

    def close(self) -> None:
        self._loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
        self._sessions.clear()

    def _ready(self) -> None:
        events = self._epoll.poll(0, MAX_EVENTS)
        sessions = self._sessions
        stage = self._stage
        size = len(self._staging)
        got: list[tuple[Reader, int, int, int]] = []  # (session, fd, start, count)
        used = 0
        for fd, _ in events:
            session = sessions.get(fd)
            if session is None:
                continue
            offer = session.read_offer()
            if used + offer > size:  # the staging area is full: hand over what it holds first
                self._hand_over(got)
                got, used = [], 0
            try:
                n = os.readv(fd, [stage[used : used + offer]])
            except BlockingIOError:
                continue
            except InterruptedError:
                continue
            except OSError as exc:
                got.append((session, fd, -1, exc.errno or errno.EIO))
                continue
            got.append((session, fd, used, n))
            used += n
        self._hand_over(got)

    def _hand_over(self, got: list[tuple[Reader, int, int, int]]) -> None:
        sessions = self._sessions
        buf = self._view
        stage = self._stage
        for session, fd, start, n in got:
            if sessions.get(fd) is not session:  # closed meanwhile by another's read (a newer login)
                continue
            if start < 0:
                self.discard(fd, session)
                session.read_ended(OSError(n, os.strerror(n)))
            elif n == 0:
                self.discard(fd, session)
                session.read_ended(None)
            else:
                buf[:n] = stage[start : start + n]
                try:
                    session.buffer_updated(n)
                except Exception as exc:  # as a loop does: this connection ends, the others' reads go on
                    log.exception("device read failed fd=%d", fd)
                    self.discard(fd, session)
                    session.read_ended(exc)
