"""Deadlines: one loop timer for every session's deadline, on a fake clock."""

from __future__ import annotations

import pytest

from blynk_server.hardware.deadlines import RESOLUTION, Deadlines
from tests.unit.fakes import FakeLoop


class Owner:
    def __init__(self, deadlines: Deadlines | None = None, rearm: float | None = None) -> None:
        self._deadline_key = 0
        self.fired: list[float] = []
        self.deadlines = deadlines
        self.rearm = rearm

    def _on_deadline(self) -> None:
        self.fired.append(self.deadlines.loop.time() if self.deadlines is not None else 0.0)
        if self.rearm is not None:
            self.deadlines.set(self, self.rearm)


@pytest.fixture
def loop():
    return FakeLoop(start=1000.0)


def test_fires_at_the_deadline_not_before_at_most_one_resolution_late(loop):
    d = Deadlines(loop)
    owner = Owner(d)
    d.set(owner, 10.0)
    loop.advance(10.0 - RESOLUTION / 10)
    assert owner.fired == []
    loop.advance(RESOLUTION * 1.1)
    assert len(owner.fired) == 1
    assert 1010.0 <= owner.fired[0] <= 1010.0 + RESOLUTION
    assert owner._deadline_key == 0 and len(d) == 0
    loop.advance(100)
    assert len(owner.fired) == 1  # once


def test_set_again_replaces_the_deadline(loop):
    d = Deadlines(loop)
    owner = Owner(d)
    d.set(owner, 5.0)
    loop.advance(4.0)
    d.set(owner, 5.0)  # moved to t+9
    loop.advance(4.0)
    assert owner.fired == []
    loop.advance(1.0 + RESOLUTION)
    assert len(owner.fired) == 1 and owner.fired[0] >= 1009.0
    assert len(d) == 0


def test_an_earlier_deadline_moves_the_timer_forward(loop):
    d = Deadlines(loop)
    late, early = Owner(d), Owner(d)
    d.set(late, 60.0)
    d.set(early, 1.0)
    loop.advance(1.0 + RESOLUTION)
    assert len(early.fired) == 1 and late.fired == []
    loop.advance(59.0)
    assert len(late.fired) == 1


def test_cancel(loop):
    d = Deadlines(loop)
    owner = Owner(d)
    d.set(owner, 1.0)
    d.cancel(owner)
    d.cancel(owner)  # twice is fine
    assert len(d) == 0
    loop.advance(10.0)
    assert owner.fired == []


def test_one_loop_timer_for_many_owners(loop):
    d = Deadlines(loop)
    owners = [Owner(d) for _ in range(1000)]
    for i, owner in enumerate(owners):
        d.set(owner, 1.0 + (i % 50) * 0.37)
    assert len(d) == 1000
    assert len(loop.timers()) == 1
    loop.advance(30.0)
    assert all(len(o.fired) == 1 for o in owners)
    assert loop.timers() == []


def test_an_owner_rearming_from_its_callback_fires_again_later(loop):
    d = Deadlines(loop)
    owner = Owner(d, rearm=2.0)
    d.set(owner, 2.0)
    loop.advance(7.0)
    assert len(owner.fired) == 3
    assert all(b - a >= 2.0 for a, b in zip(owner.fired, owner.fired[1:], strict=False))


@pytest.mark.parametrize("start", [0.0, 1000.0, 123456.789])
@pytest.mark.parametrize("delay", [4.3, 8.1, 8.6, 16.2, 18.7])
def test_a_timer_firing_exactly_at_its_bucket_time_empties_the_bucket(start, delay):
    """Bucket times whose float product k * RESOLUTION divides back to k - 1 (4.3 / 0.1 == 42.99...):
    a timer firing at exactly that time must still fire the bucket, not re-arm itself at the same time
    forever (FakeLoop raises after 100,000 timers)."""
    loop = FakeLoop(start=start)
    d = Deadlines(loop)
    owner = Owner(d)
    d.set(owner, delay)
    loop.advance(delay + RESOLUTION)
    assert len(owner.fired) == 1


def test_cancelled_owners_are_compacted_away_not_kept_until_their_bucket_fires(loop):
    """A bucket is a list: a cancelled owner stays in it unmatched only until more than half of it is
    cancelled; the dead owners kept alive are never more than the live ones (plus one)."""
    d = Deadlines(loop)
    live = [Owner(d) for _ in range(100)]
    for owner in live:
        d.set(owner, 30.0)
    for _ in range(50):  # connections that come and go within one bucket's tenth of a second
        gone = Owner(d)
        d.set(gone, 30.0)
        d.cancel(gone)
        assert d.held() - len(d) <= len(d) + 1
    assert len(d) == 100
    for owner in live:
        d.cancel(owner)
    assert d.held() <= 1 and len(d) == 0
    loop.advance(31.0)
    assert all(o.fired == [] for o in live)


def test_an_owner_moved_away_and_back_fires_once(loop):
    d = Deadlines(loop)
    owner, other = Owner(d), Owner(d)
    d.set(other, 5.0)  # keeps the first bucket from being compacted empty
    d.set(owner, 5.0)
    d.set(owner, 9.0)
    d.set(owner, 5.0)  # in the 5 s bucket twice now: once cancelled, once armed
    d.set(owner, 5.0)  # the same bucket again: nothing to do
    loop.advance(20.0)
    assert len(owner.fired) == 1 and len(other.fired) == 1
