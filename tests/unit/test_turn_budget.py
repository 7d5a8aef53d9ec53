"""The turn budget (``hardware/budget.py``, ``turns.ReadTurns``): past ``turn_budget`` frames of telemetry
in one loop turn, reads wait for a later turn in arrival order, and nothing waits behind them that
should not (logins, lone pings, commands to devices). On the fake loop a turn is one ``run_ready``."""

from __future__ import annotations

import pytest

from protocol import Command, Status
from tests.unit import fakes
from tests.unit.fakes import response

world, world_factory, both_twins = fakes.world, fakes.world_factory, fakes.both_twins
pytestmark = pytest.mark.usefixtures("both_twins")  # each test on the compiled and the pure twin

ARRIVED_MS = 1_700_000_000_000


def devices(w, n: int) -> list:
    """``n`` logged-in devices, the first one the world's own; the turn that logged them in is over."""
    out = [w.login()]
    for i in range(1, n):
        out.append(w.login(token=w.add_device(f"d{i}").token))
    w.loop.run_until_idle()
    return out


def vw(dev, pin: int, value: str) -> None:
    dev.send(Command.HARDWARE, f"vw\0{pin}\0{value}")


def value(w, dev, pin: str = "v3") -> bytes | None:
    row = w.pending_value(dev.session.device.id, pin)
    return None if row is None else row[0]


def test_reads_past_the_budget_wait_for_the_next_turn_and_keep_their_arrival_time(world_factory):
    w = world_factory(turn_budget=4)
    a, b, c = devices(w, 3)
    w.ctx.wall_ms = lambda: ARRIVED_MS
    for dev in (a, b):
        vw(dev, 3, "1")
        vw(dev, 3, "2")  # a read each: 2 frames, so a and b spend the turn's 4
    vw(c, 3, "7")
    assert value(w, a) == b"2" and value(w, b) == b"2"
    assert value(w, c) is None  # kept, not handled, not lost
    assert not c.transport.reading and c.session.deferred is not None
    assert w.ctx.budget.deferred_reads == 1
    w.ctx.wall_ms = lambda: ARRIVED_MS + 5_000  # handled later: stamped when it arrived
    w.loop.run_ready()  # the next turn: a full budget, the deferred read first
    assert w.pending_value(c.session.device.id, "v3") == (b"7", ARRIVED_MS)
    assert c.transport.reading and c.session.deferred is None
    assert w.ctx.budget.exhausted_turns == 1


def test_deferred_reads_are_handled_in_arrival_order_a_budget_per_turn(world_factory):
    w = world_factory(turn_budget=1)
    devs = devices(w, 5)
    for i, dev in enumerate(devs):
        vw(dev, 3, str(i))
    assert [value(w, d) for d in devs] == [b"0", None, None, None, None]
    handled = []
    for _ in range(4):
        w.loop.run_ready()
        handled.append([value(w, d) is not None for d in devs].count(True))
    assert handled == [2, 3, 4, 5]  # one read a turn, the oldest first
    assert [value(w, d) for d in devs] == [b"0", b"1", b"2", b"3", b"4"]


def test_a_devices_later_bytes_queue_behind_its_deferred_read(world_factory):
    w = world_factory(turn_budget=1)
    a, b = devices(w, 2)
    vw(a, 3, "1")
    vw(b, 3, "1")  # deferred: its socket is paused
    vw(b, 3, "2")  # stays in the socket meanwhile
    assert b.transport.inbound and value(w, b) is None
    w.loop.run_until_idle()
    assert value(w, b) == b"2" and not b.transport.inbound


def test_a_lone_ping_a_login_and_a_command_do_not_wait_for_the_budget(world_factory):
    w = world_factory(turn_budget=1)
    a, b = devices(w, 2)
    vw(a, 3, "1")  # the turn's budget is spent
    assert b.request(Command.PING) == [response(2, Status.SUCCESS)]
    # (request() ran the loop; spend the new turn's budget again)
    vw(a, 3, "2")
    other = w.add_device("late")
    late = w.connect()
    late.send(Command.HW_LOGIN, other.token)
    assert late.frames() == [response(1, Status.SUCCESS)]  # answered in this turn
    w.loop.advance(w.settings.info_grace)  # b's pushes are no longer held for its info message
    vw(a, 3, "3")
    assert w.ctx.budget.spent()
    w.hub.link(b.session.device.id).push(Command.HARDWARE, b"vw\x001\x00on")
    assert b.frames() == [(Command.HARDWARE, 1, b"vw\x001\x00on")]  # written at once


def test_a_ping_behind_a_deferred_read_keeps_its_place(world_factory):
    w = world_factory(turn_budget=1)
    a, b = devices(w, 2)
    vw(a, 3, "1")
    vw(b, 3, "5")  # deferred
    b.session.receive_data(b"\x06\x00\x09\x00\x00", w.loop.time())  # a ping by another carrier (WebSocket)
    assert b.frames() == []  # after the write, not before it
    w.loop.run_ready()
    assert value(w, b) == b"5" and b.frames() == [response(9, Status.SUCCESS)]


def test_a_deferred_read_of_a_device_that_disconnects_is_still_stored(world_factory):
    w = world_factory(turn_budget=1)
    a, b = devices(w, 2)
    vw(a, 3, "1")
    vw(b, 3, "8")
    b.transport.abort()
    w.loop.run_until_idle()
    assert value(w, b) == b"8"


def test_a_deferred_read_of_a_device_the_server_closes_is_handled_first(world_factory):
    w = world_factory(turn_budget=1)
    a, b = devices(w, 2)
    vw(a, 3, "1")
    vw(b, 3, "9")  # deferred
    replaced_by = w.login(token=b.session.device.token)  # the same token logs in again: b is closed
    assert b.session.closed and value(w, replaced_by) == b"9"  # stored before b went


def test_no_budget_never_defers(world_factory):
    w = world_factory(turn_budget=0)
    devs = devices(w, 3)
    for dev in devs:
        vw(dev, 3, "4")
        vw(dev, 3, "5")
    assert [value(w, d) for d in devs] == [b"5"] * 3
    assert w.ctx.budget.deferred_reads == 0 and not w.loop.run_ready()  # nothing to refill


def test_the_budget_is_refilled_the_turn_after_a_quarter_of_it_is_spent(world_factory):
    """A refill per turn cost a callback per turn: one read a turn, it was most of a message's CPU."""
    w = world_factory(turn_budget=8)  # a quarter: 2 frames
    (a,) = devices(w, 1)
    vw(a, 3, "1")
    assert w.ctx.budget.left == 7 and not w.loop.run_ready()  # no refill yet: the next turn goes on from 7
    vw(a, 3, "2")
    assert w.ctx.budget.left == 6
    assert w.loop.run_ready() == 1 and w.ctx.budget.left == 8  # the refill, at the next turn
    assert not w.loop.run_ready()


def test_a_turn_after_light_ones_still_gets_three_quarters_of_the_budget(world_factory):
    w = world_factory(turn_budget=8)
    devs = devices(w, 8)
    vw(devs[0], 3, "0")  # a light turn: 7 left, no refill
    w.loop.run_ready()
    for i, dev in enumerate(devs[1:], 1):  # one turn, seven reads
        vw(dev, 3, str(i))
    assert [value(w, d) for d in devs] == [str(i).encode() for i in range(8)]  # none deferred
    assert w.ctx.budget.deferred_reads == 0
    vw(devs[0], 3, "8")  # the eighth read of the budget's period, still this turn: kept
    assert w.ctx.budget.deferred_reads == 1
    w.loop.run_ready()
    assert value(w, devs[0]) == b"8"
