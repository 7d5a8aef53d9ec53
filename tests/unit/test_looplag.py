"""The loop's health figures (``looplag.LoopLag``): a periodic timer's lateness, and one turn's length
sampled at each tick, on the fake loop with a fake clock."""

from __future__ import annotations

import pytest

from blynk_server.looplag import TURN_BUCKETS, LoopLag
from tests.unit.fakes import FakeLoop


class Clock:
    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def test_each_tick_times_the_turn_after_it_from_one_ready_callback_to_the_next():
    loop, clock = FakeLoop(), Clock(10.0, 10.003)
    lag = LoopLag(interval=0.1, clock=clock)
    lag.start(loop)
    loop.advance(0.09)
    assert sum(lag.turn_counts) == 0 and lag.samples == 0
    loop.advance(0.01)  # the tick; its two callbacks run a turn apart
    assert lag.samples == 1 and clock.times == []
    assert lag.turn_counts[TURN_BUCKETS.index(0.005)] == 1 and sum(lag.turn_counts) == 1
    assert lag.turn_seconds == pytest.approx(0.003)
    lag.stop()
    loop.advance(1.0)
    assert lag.samples == 1  # stopped: no more ticks


class CountingLoop(FakeLoop):
    """Counts its turns (``run_ready`` calls)."""

    turns = 0

    def run_ready(self) -> int:
        self.turns += 1
        return super().run_ready()


def test_the_turn_timed_is_exactly_one_turn():
    loop = CountingLoop()
    lag = LoopLag(interval=0.1, clock=lambda: float(loop.turns))  # a clock in turns
    lag.start(loop)
    loop.advance(0.1)
    assert lag.turn_seconds == 1.0 and lag.turn_counts[TURN_BUCKETS.index(1.0)] == 1


def test_a_late_tick_is_lag():
    loop = FakeLoop()
    lag = LoopLag(interval=0.1, clock=Clock(1.0, 1.0))
    lag.start(loop)
    due = loop.timers()[0]
    loop.now = due + 0.25  # the loop was blocked past the timer
    loop.advance(0)
    assert lag.last == pytest.approx(0.25) and lag.max == pytest.approx(0.25) and lag.samples == 1
