"""The receive buffer every device session of a listener shares, the round robin of busy sockets,
and the queue of reads deferred to a later loop turn (``budget.TurnBudget``).

A session reads into the shared buffer and consumes or copies every byte in ``buffer_updated``, so
one buffer serves all sessions (a 4 KiB buffer per session was a third of an idle session's memory).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol

from blynk_server.hardware.budget import TurnBudget

READS_PER_TURN = 8  # busy (full-buffer) sockets resumed per loop turn: bounds one turn's work in a flood
SMALL_READ = 256  # bytes read from a socket not granted a turn while busy ones wait (pings, logins fit)


class Reader(Protocol):
    def _resume_turn(self) -> None: ...

    def _run_deferred(self) -> None: ...


class ReadTurns:
    """Round robin over the sessions whose last read filled their buffer.

    Resuming every such socket on the very next turn makes a turn's work grow with the number of busy
    sockets: 1,000 flooding devices x 4 KiB is ~290,000 frames per turn, so a quiet device's ping or a
    new login waits a second or more. Resuming at most ``READS_PER_TURN`` of them per turn bounds a
    turn to a few milliseconds; quiet sockets (pings, logins, commands) are never queued and are read
    every turn. Busy sockets wait in order, and TCP flow control holds their senders meanwhile.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, budget: TurnBudget) -> None:
        self.loop = loop
        self.waiting: collections.deque[Reader] = collections.deque()
        self.buf = bytearray(size)  # the receive buffer every session of this listener shares
        self.view = memoryview(self.buf)
        self.small = self.view[:SMALL_READ]
        self.budget = budget
        self.deferred: collections.deque[Reader] = collections.deque()  # sessions holding a deferred read
        self.refill_scheduled = False

    def defer(self, session: Reader) -> None:
        self.waiting.append(session)
        budget = self.budget
        if not budget.turns_waiting:  # sockets wait while a turn is scheduled: one flag for both
            budget.turns_waiting = True
            self.loop.call_soon(self._turn)

    def _turn(self) -> None:
        waiting = self.waiting
        for _ in range(min(READS_PER_TURN, len(waiting))):
            waiting.popleft()._resume_turn()
        if waiting:
            self.loop.call_soon(self._turn)  # runs on the next turn, after this turn's reads
        else:
            self.budget.turns_waiting = False

    # --- the turn budget ------------------------------------------------------------------------------

    def drawn(self) -> None:
        """A session's read spent a quarter of the budget (``TurnBudget.mark``): refill it at the next turn."""
        if not self.refill_scheduled:
            self.refill_scheduled = True
            self.loop.call_soon(self._refill)

    def defer_read(self, session: Reader) -> None:
        """``session`` keeps a read for a later turn (its socket paused): queued behind the others."""
        self.deferred.append(session)
        self.drawn()

    def _refill(self) -> None:
        """A new turn: a full budget, spent first on the deferred reads, oldest first; the reads of
        this turn's poll get what is left (and are deferred in turn when it is gone)."""
        self.refill_scheduled = False
        budget = self.budget
        if budget.left <= 0:
            budget.exhausted_turns += 1
        budget.left = budget.limit
        queue = self.deferred
        while queue and budget.left > 0:
            queue.popleft()._run_deferred()
        if queue:  # spent again: the rest waits for the next turn
            self.drawn()
