"""How the event loop keeps up (``/metrics``): how late it runs a periodic timer (a blocked loop shows
here first), and how long its turns take, one sampled at each tick."""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable

# Upper bounds (seconds) of the loop-turn histogram (``blynk_loop_turn_seconds``).
TURN_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class LoopLag:
    """Measures event-loop lag: how late a ``call_later`` callback runs; and, at each such tick, the
    length of one loop turn.

    A turn is timed between two ``call_soon`` callbacks, the second scheduled by the first: it is the
    work of one turn (its I/O callbacks, timers and ready callbacks), not a wait for I/O, since a loop
    with a callback ready polls without waiting (uvloop and asyncio's own loop alike). Timing every turn
    took a callback per turn (about 1.3 µs per read when a turn holds one read: benchmarks/RESULTS.md,
    issue 12 step 8); a turn sampled every ``interval`` is a fair sample, as the tick does not depend on
    the turn's length.
    """

    def __init__(self, interval: float = 0.1, clock: Callable[[], float] = time.perf_counter) -> None:
        self.interval = interval
        self.clock = clock  # times a turn (a test gives its own)
        self.last = 0.0
        self.max = 0.0
        self.total = 0.0
        self.samples = 0
        self.turn_counts = [0] * (len(TURN_BUCKETS) + 1)  # sampled turns per bucket, the last for longer ones
        self.turn_seconds = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self.interval
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        lag = max(0.0, self._loop.time() - self._due)
        self.last = lag
        self.max = max(self.max, lag)
        self.total += lag
        self.samples += 1
        self._loop.call_soon(self._turn_begins)  # in the ready callbacks of the turn the tick ran in
        self._schedule()

    def _turn_begins(self) -> None:
        self._loop.call_soon(self._turn_ends, self.clock())  # one turn later

    def _turn_ends(self, began: float) -> None:
        took = self.clock() - began
        self.turn_seconds += took
        self.turn_counts[bisect.bisect_left(TURN_BUCKETS, took)] += 1

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
