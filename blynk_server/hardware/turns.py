"""The receive buffer every device session of a listener shares, and the round robin of busy sockets.

A session reads into the shared buffer and consumes or copies every byte in ``buffer_updated``, so
one buffer serves all sessions (a 4 KiB buffer per session was a third of an idle session's memory).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol

READS_PER_TURN = 8  # busy (full-buffer) sockets resumed per loop turn: bounds one turn's work in a flood
SMALL_READ = 256  # bytes read from a socket not granted a turn while busy ones wait (pings, logins fit)


class Reader(Protocol):
    def _resume_turn(self) -> None: ...


class ReadTurns:
    """Round robin over the sessions whose last read filled their buffer.

    Resuming every such socket on the very next turn makes a turn's work grow with the number of busy
    sockets: 1,000 flooding devices x 4 KiB is ~290,000 frames per turn, so a quiet device's ping or a
    new login waits a second or more. Resuming at most ``READS_PER_TURN`` of them per turn bounds a
    turn to a few milliseconds; quiet sockets (pings, logins, commands) are never queued and are read
    every turn. Busy sockets wait in order, and TCP flow control holds their senders meanwhile.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.waiting: collections.deque[Reader] = collections.deque()
        self.scheduled = False
        self.buf = bytearray(size)  # the receive buffer every session of this listener shares
        self.view = memoryview(self.buf)
        self.small = self.view[:SMALL_READ]

    def defer(self, session: Reader) -> None:
        self.waiting.append(session)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._turn)

    def _turn(self) -> None:
        waiting = self.waiting
        for _ in range(min(READS_PER_TURN, len(waiting))):
            waiting.popleft()._resume_turn()
        if waiting:
            self.loop.call_soon(self._turn)  # runs on the next turn, after this turn's reads
        else:
            self.scheduled = False
