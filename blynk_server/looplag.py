"""How late the event loop runs a periodic timer: a blocked loop shows here first (``/metrics``)."""

from __future__ import annotations

import asyncio


class LoopLag:
    """Measures event-loop lag: how late a ``call_later`` callback runs. A blocked loop shows here first."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.last = 0.0
        self.max = 0.0
        self.total = 0.0
        self.samples = 0
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
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
