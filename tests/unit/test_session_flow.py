"""Flow control of a session, in process on a fake clock: the per-device message budget (flood pause
and QUOTA_LIMIT), read turns for sockets that fill the shared buffer, a device that does not read its
replies (write buffer), the close grace, and paced output for blynklib."""

from __future__ import annotations

import pytest

from blynk_server.hardware.session import CLOSE_GRACE, PACE_GAP
from blynk_server.hardware.turns import READS_PER_TURN, SMALL_READ
from protocol import Command, Status, encode_frame
from protocol.body import join_fields
from tests.unit import fakes
from tests.unit.fakes import response

world, world_factory, both_twins = fakes.world, fakes.world_factory, fakes.both_twins
pytestmark = pytest.mark.usefixtures("both_twins")  # each test on the compiled and the pure twin


def pings(first_id: int, n: int) -> bytes:
    return b"".join(encode_frame(Command.PING, first_id + i) for i in range(n))


# --- message budget -----------------------------------------------------------------------------------


def test_over_the_rate_reading_pauses_for_the_excess_with_one_quota_answer(world_factory):
    w = world_factory(message_rate=10.0)  # burst defaults to one second's worth: 10
    dev = w.login()  # the login cost 1
    dev.transport.feed(pings(100, 14))  # 15 in all: 5 over
    frames = dev.frames()
    assert frames[:14] == [response(100 + i, Status.SUCCESS) for i in range(14)]  # every ping still answered
    assert frames[14:] == [response(113, Status.QUOTA_LIMIT)]  # the last frame of the read gets the quota answer
    assert not dev.transport.reading and w.ctx.stats.flood_pauses == 1 and w.ctx.stats.quota_sent == 1
    dev.transport.feed(encode_frame(Command.PING, 200))  # waits in the socket meanwhile
    assert dev.frames() == []
    w.loop.advance(0.5 - 0.01)  # 5 tokens at 10/s, and one more for the waiting ping
    assert not dev.transport.reading
    w.loop.advance(0.11)
    assert dev.transport.reading
    assert dev.frames() == [response(200, Status.SUCCESS)]
    assert not dev.closed


def test_one_quota_answer_per_quota_warning_period(world_factory):
    w = world_factory(message_rate=10.0, quota_warning_period=5.0)
    dev = w.login()
    dev.transport.feed(pings(100, 20))
    w.loop.advance(2.0)
    dev.transport.feed(pings(200, 20))
    w.loop.advance(2.0)
    statuses = [f[2] for f in dev.frames()]
    assert statuses.count(Status.QUOTA_LIMIT) == 1 and w.ctx.stats.flood_pauses == 2
    w.loop.advance(1.0)
    dev.transport.feed(pings(300, 20))
    assert [f[2] for f in dev.frames()].count(Status.QUOTA_LIMIT) == 1
    assert w.ctx.stats.quota_sent == 2


def test_a_sync_costs_the_frames_it_makes_the_server_send(world_factory):
    w = world_factory(message_rate=10.0)
    dev = w.login()
    dev.request(Command.INTERNAL, join_fields("buff-in", 4096))
    w.loop.advance(1.0)  # refilled
    for pin in range(12):
        dev.transport.feed(encode_frame(Command.HARDWARE, 50 + pin, join_fields("vw", 100 + pin, 1)))
        w.loop.advance(1.0)
    assert w.ctx.stats.flood_pauses == 0
    frames = dev.request(Command.HARDWARE_SYNC, join_fields("vr", *range(100, 112)))  # 1 frame in, 12 out
    assert len(frames) == 12 + 1  # and the QUOTA_LIMIT answer: 13 is over a budget of 10
    assert w.ctx.stats.flood_pauses == 1


# --- read turns ---------------------------------------------------------------------------------------


def test_a_read_filling_the_buffer_waits_for_the_next_turn(world_factory):
    w = world_factory(recv_buffer=1024, message_rate=1e6)
    dev = w.login()
    del dev.transport.reads[:]  # the login's
    dev.transport.feed(pings(1, 500))  # 2,500 bytes
    assert dev.transport.reads == [1024] and not dev.transport.reading
    w.loop.run_ready()  # this turn resumes it; the socket is read on the next
    assert dev.transport.reading
    w.loop.run_until_idle()
    assert sum(dev.transport.reads) == 2500
    assert [f[1] for f in dev.frames()] == list(range(1, 501))


def test_busy_sockets_are_resumed_a_few_per_turn_quiet_ones_read_a_little_every_turn(world_factory):
    w = world_factory(recv_buffer=1024, message_rate=1e6)
    tokens = [w.add_device(f"d{i}").token for i in range(20)]
    busy = [w.login(token=t, peer=("198.51.100.1", i)) for i, t in enumerate(tokens)]
    quiet = w.login(peer=("198.51.100.2", 1))
    for dev in busy:
        del dev.transport.reads[:]  # the login's
    for dev in busy:
        dev.transport.feed(pings(1, 1000))  # 5,000 bytes each
    # The first read filled the shared buffer; the next sockets, not granted a turn, read SMALL_READ.
    assert busy[0].transport.reads == [1024] and {d.transport.reads[0] for d in busy[1:]} == {SMALL_READ}
    assert not any(d.transport.reading for d in busy)
    quiet.transport.feed(encode_frame(Command.PING, 9))
    assert quiet.frames() == [response(9, Status.SUCCESS)]  # read at once, never queued

    def reads() -> int:
        return sum(len(d.transport.reads) for d in busy)

    before = reads()
    while w.loop.run_ready():
        # One read per socket resumed on the previous turn: at most READS_PER_TURN reads a turn.
        assert reads() - before <= READS_PER_TURN
        before = reads()
        assert sum(d.transport.reading and bool(d.transport.inbound) for d in busy) <= READS_PER_TURN
    assert all(sum(d.transport.reads) == 5000 for d in busy)
    assert all([f[1] for f in d.frames()] == list(range(1, 1001)) for d in busy)


# --- a device that does not read ------------------------------------------------------------------


def push_kib(w, n: int) -> None:
    for _ in range(n):
        w.hub.send(w.device_id, Command.HARDWARE, join_fields("vw", 2, "x" * 1000))


def slow_world(world_factory):
    w = world_factory(write_buffer_high=4096, write_buffer_max=16384)
    dev = w.login()
    dev.request(Command.INTERNAL, join_fields("buff-in", 2048))
    w.loop.advance(0.1)
    dev.transport.stall()
    return w, dev


def test_over_the_high_mark_the_device_is_not_read_until_its_output_drains(world_factory):
    w, dev = slow_world(world_factory)
    push_kib(w, 5)
    assert dev.transport.writing_paused and not dev.transport.reading
    assert w.ctx.stats.write_pauses == 1
    dev.transport.feed(encode_frame(Command.PING, 50))
    dev.transport.drain()
    w.loop.run_until_idle()
    assert dev.transport.reading
    assert dev.frames()[-1] == response(50, Status.SUCCESS)
    assert not dev.closed


def test_over_the_max_the_slow_reader_is_closed(world_factory):
    w, dev = slow_world(world_factory)
    push_kib(w, 17)
    assert dev.closed and w.ctx.stats.slow_reader_closes == 1
    assert dev.transport.aborted  # its unsent output is not kept alive


def test_output_blocked_for_the_heartbeat_timeout_closes(world_factory):
    w, dev = slow_world(world_factory)
    push_kib(w, 5)
    timeout = dev.session.timeout
    w.loop.advance(timeout - 0.5)
    assert not dev.closed
    w.loop.advance(1.0)
    assert dev.closed and w.ctx.stats.slow_reader_closes == 1 and w.ctx.stats.idle_timeouts == 0


def test_a_close_gives_unsent_output_a_grace_then_aborts(world_factory):
    w, dev = slow_world(world_factory)
    push_kib(w, 1)  # under the high mark
    dev.session.close("test")
    assert dev.transport.closing and not dev.transport.aborted
    w.loop.advance(CLOSE_GRACE - 0.1)
    assert not dev.transport.aborted
    w.loop.advance(0.2)
    assert dev.transport.aborted


# --- blynklib pacing ------------------------------------------------------------------------------


def test_blynklib_gets_its_frames_pace_gap_apart(world):
    dev = world.login(command=Command.LOGIN)
    dev.request(Command.INTERNAL, join_fields("ver", "0.2.6", "buff-in", 1024, "dev", "python"))
    dev.request(Command.HARDWARE, join_fields("vw", 1, "1"))
    dev.request(Command.HARDWARE, join_fields("vw", 2, "2"))
    world.loop.advance(PACE_GAP)  # the info's answer went out just now
    dev.frames()
    writes_before = len(dev.transport.out)
    dev.send(Command.HARDWARE_SYNC, join_fields("vr", 1, 2))
    first = dev.frames()
    assert len(first) == 1 and first[0][2] == join_fields("vw", 1, "1")
    world.loop.advance(PACE_GAP - 0.001)
    assert dev.frames() == []
    world.loop.advance(0.002)
    assert [f[2] for f in dev.frames()] == [join_fields("vw", 2, "2")]
    assert len(dev.transport.out) > writes_before
