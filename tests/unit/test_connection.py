"""The sans-I/O device core alone (``hardware/connection.py``): bytes and a time in, frames and flags
out. No loop, no transport, no sleep: the time of each input is a number the test passes, and what to
send is read back from ``data_to_send()``. The asyncio adapter is covered by tests/unit/test_session_*.

Each test runs on both twins of the core in one process: the compiled extension type (where the
install built one, ``_connection_c``) and the Python source (``connection``), side by side."""

from __future__ import annotations

import sys

import pytest

from blynk_server.hardware.connection import (
    CLOSE,
    CLOSE_QUIETLY,
    DEADLINE,
    HELD_GAP,
    MAX_HELD,
    PACE_GAP,
    READ,
    TIMER,
    DeviceConnection,
)
from blynk_server.model import now_ms
from protocol import Command, Decoder, Status, encode_frame
from protocol.body import join_fields
from tests.unit import fakes
from tests.unit.fakes import response

world, world_factory = fakes.world, fakes.world_factory


@pytest.fixture(autouse=True, params=["compiled", "python"])
def twin(request, monkeypatch) -> type:
    """``DeviceConnection`` in ``connect`` is the twin of this run, and the world counts into that
    twin's ``HardwareStats`` (``fakes.use_twin``)."""
    cls = fakes.use_twin(request.param, monkeypatch).session.__mro__[1]  # the core under the adapter
    assert request.param == "compiled" or not hasattr(cls, "__pyx_vtable__")
    monkeypatch.setattr(sys.modules[__name__], "DeviceConnection", cls)
    return cls


T0 = 500.0  # the core's clock is whatever its inputs say; nothing reads a real one
WALL_MS = 1_700_000_000_000


def connect(w, now: float = T0, port: int = 1) -> DeviceConnection:
    core = DeviceConnection(w.ctx)
    assert core.start("203.0.113.7", port, now)
    return core


def sent(core: DeviceConnection) -> list[tuple]:
    return Decoder().feed(core.data_to_send())


def login(w, now: float = T0, token: str | None = None, command: int = Command.HW_LOGIN, port: int = 1):
    core = connect(w, now, port)
    core.receive_data(encode_frame(command, 1, (token or w.token).encode()), now)
    assert sent(core) == [response(1, Status.SUCCESS)]
    core.dirty = 0  # what an adapter does once it has acted on the flags
    return core


def info(**fields) -> bytes:
    return join_fields(*[x for kv in fields.items() for x in (kv[0].replace("_", "-"), kv[1])])


# --- login ------------------------------------------------------------------------------------------


def test_login_answers_attaches_and_sets_the_heartbeat_deadline_and_the_info_grace(world):
    core = connect(world)
    assert core.hb_at == T0 + world.settings.login_timeout and core.next_deadline() == core.hb_at
    core.dirty = 0
    core.receive_data(encode_frame(Command.HW_LOGIN, 1, world.token.encode()), T0 + 1)
    assert sent(core) == [response(1, Status.SUCCESS)]
    assert world.hub.link(world.device_id) is core and core.device.online
    assert core.hb_at == T0 + 1 + world.settings.heartbeat_timeout_default
    assert core.timer_at() == T0 + 1 + world.settings.info_grace  # held pushes go out by then
    assert core.dirty & DEADLINE and core.dirty & TIMER
    assert world.ctx.stats.pending_logins == 0


def test_a_login_split_over_reads_and_a_ping_in_the_same_read(world):
    core = connect(world)
    login_frame = encode_frame(Command.HW_LOGIN, 1, world.token.encode())
    core.receive_data(login_frame[:3], T0)
    assert core.data_to_send() == b"" and core.device is None
    core.receive_data(login_frame[3:] + encode_frame(Command.PING, 2), T0)
    assert sent(core) == [response(1, Status.SUCCESS), response(2, Status.SUCCESS)]


def test_a_session_has_a_decoder_of_its_own_only_while_part_of_a_frame_waits(world):
    a, b = login(world), login(world, token=world.add_device("b").token, port=2)
    assert a.decoder is None and b.decoder is None  # reads that end on a frame boundary share one
    ping = encode_frame(Command.PING, 7)
    a.receive_data(ping[:3], T0)  # a's partial frame stays with a...
    shared = world.ctx.decoder
    b.receive_data(encode_frame(Command.PING, 8) + ping[:2], T0)  # ... and b's with b
    assert a.decoder is not None and b.decoder is not None and world.ctx.decoder is not shared
    assert sent(b) == [response(8, Status.SUCCESS)]
    a.receive_data(ping[3:], T0)
    b.receive_data(ping[2:], T0)
    assert sent(a) == [response(7, Status.SUCCESS)] and sent(b) == [response(7, Status.SUCCESS)]
    assert a.decoder is None and b.decoder is None


def test_an_invalid_token_is_answered_then_closed_quietly(world):
    core = connect(world)
    core.receive_data(encode_frame(Command.HW_LOGIN, 1, b"x" * 32), T0)
    assert sent(core) == [response(1, Status.INVALID_TOKEN)]
    assert core.closed and core.dirty & CLOSE_QUIETLY and not core.dirty & CLOSE
    assert world.ctx.stats.logins["invalid_token"] == 1


def test_the_login_deadline_fires_at_its_time_and_not_before(world):
    core = connect(world)
    deadline = core.next_deadline()
    core.handle_timer(deadline - 0.001)
    assert not core.closed
    core.handle_timer(deadline)
    assert core.closed and core.dirty & CLOSE_QUIETLY and core.data_to_send() == b""
    assert world.ctx.stats.logins["timeout"] == 1 and world.ctx.stats.pending_logins == 1
    core.connection_lost(None)  # the transport closed
    assert world.ctx.stats.pending_logins == 0


# --- heartbeat --------------------------------------------------------------------------------------


def test_the_heartbeat_deadline_moves_with_reads_and_closes_an_idle_device(world):
    core = login(world)
    core.receive_data(encode_frame(Command.INTERNAL, 2, info(h_beat=10)), T0)  # timeout ceil(10 x 2.3) = 23
    assert core.timeout == 23.0 and core.hb_at == T0 + 23
    core.receive_data(encode_frame(Command.PING, 3), T0 + 20)  # a read does not touch the deadline...
    assert core.hb_at == T0 + 23
    core.dirty = 0
    core.handle_timer(T0 + 23)  # ... its check does: idle 3 s, due again 20 s later
    assert not core.closed and core.hb_at == T0 + 43 and core.dirty & DEADLINE
    core.handle_timer(T0 + 43)
    assert core.closed and core.dirty & CLOSE and world.ctx.stats.idle_timeouts == 1


def test_output_blocked_for_the_timeout_closes_as_a_slow_reader(world):
    core = login(world)
    core.writing_paused(T0 + 1)
    assert core.read_blocked()
    core.handle_timer(core.hb_at)  # blocked for less than the timeout: checked again later
    assert not core.closed
    core.handle_timer(core.hb_at)
    assert core.closed and world.ctx.stats.slow_reader_closes == 1 and world.ctx.stats.idle_timeouts == 0


# --- flood control ----------------------------------------------------------------------------------


def test_over_the_rate_reading_is_blocked_for_the_excess_with_one_quota_answer(world_factory):
    w = world_factory(message_rate=10.0)  # burst: one second's worth
    core = login(w)  # the login cost 1 token
    core.receive_data(b"".join(encode_frame(Command.PING, 100 + i) for i in range(14)), T0)  # 5 over
    frames = sent(core)
    assert frames[:14] == [response(100 + i, Status.SUCCESS) for i in range(14)]
    assert frames[14:] == [response(113, Status.QUOTA_LIMIT)]
    assert core.read_blocked() and core.dirty & READ and core.dirty & TIMER
    assert abs(core.timer_at() - (T0 + 0.5)) < 1e-9  # 5 tokens at 10/s
    core.dirty = 0
    core.handle_timer(T0 + 0.49)
    assert core.read_blocked() and not core.dirty & READ
    core.handle_timer(T0 + 0.5)
    assert not core.read_blocked() and core.dirty & READ and core.timer_at() > T0 + 0.5  # only the info grace left
    assert w.ctx.stats.flood_pauses == 1 and w.ctx.stats.quota_sent == 1


def test_a_lone_ping_is_charged_too(world_factory):
    w = world_factory(message_rate=2.0, message_burst=2.0)
    core = login(w)
    core.receive_data(encode_frame(Command.PING, 2), T0)
    assert not core.read_blocked()
    core.receive_data(encode_frame(Command.PING, 3), T0)
    assert core.read_blocked()


# --- held pushes ------------------------------------------------------------------------------------


def test_pushes_wait_for_the_info_answer_then_go_out_a_gap_later(world):
    core = login(world)
    assert core.push(Command.HARDWARE, join_fields("vw", 1, "9"), None, T0 + 1)
    assert core.data_to_send() == b""
    core.receive_data(encode_frame(Command.INTERNAL, 2, info(buff_in=1024)), T0 + 2)
    assert sent(core) == [response(2, Status.SUCCESS)] and core.info_acked
    assert core.timer_at() == T0 + 2 + HELD_GAP  # not in the info answer's segment (blynklib)
    core.handle_timer(T0 + 2 + HELD_GAP)
    assert [(c, b) for c, _, b in sent(core)] == [(Command.HARDWARE, join_fields("vw", 1, "9"))]
    assert core.push(Command.HARDWARE, join_fields("vw", 1, "10"), None, T0 + 3)
    assert [f[2] for f in sent(core)] == [join_fields("vw", 1, "10")]  # now at once


def test_without_info_held_pushes_go_out_at_the_info_grace_oldest_dropped_past_max_held(world):
    core = login(world)
    for i in range(MAX_HELD + 3):
        core.push(Command.HARDWARE, join_fields("vw", 1, i), None, T0)
    grace = T0 + world.settings.info_grace
    assert core.next_deadline() == grace
    core.handle_timer(grace - 0.001)
    assert core.data_to_send() == b"" and not core.info_acked
    core.handle_timer(grace)
    assert [f[2] for f in sent(core)] == [join_fields("vw", 1, i) for i in range(3, MAX_HELD + 3)]
    assert core.info_acked


# --- pacing -----------------------------------------------------------------------------------------


def test_blynklib_gets_one_frame_per_pace_gap(world):
    core = login(world, command=Command.LOGIN)
    core.receive_data(encode_frame(Command.INTERNAL, 2, info(ver="0.2.6", buff_in=1024, dev="python")), T0)
    assert sent(core) == [response(2, Status.SUCCESS)]
    for pin in (1, 2):
        core.receive_data(encode_frame(Command.HARDWARE, 3, join_fields("vw", pin, pin)), T0 + 1)
    core.receive_data(encode_frame(Command.HARDWARE_SYNC, 4, join_fields("vr", 1, 2)), T0 + 1)
    assert [f[2] for f in sent(core)] == [join_fields("vw", 1, "1")]
    assert core.timer_at() == T0 + 1 + PACE_GAP
    core.handle_timer(T0 + 1 + PACE_GAP - 0.001)
    assert core.data_to_send() == b""
    core.handle_timer(T0 + 1 + PACE_GAP)
    assert [f[2] for f in sent(core)] == [join_fields("vw", 2, "2")]
    assert core.timer_at() == 0.0  # nothing paced is left (and the info cancelled the grace)


# --- bridges ----------------------------------------------------------------------------------------


def test_a_bridge_writes_the_target_and_forwards_to_its_connection(world):
    other = world.add_device("target")
    source = login(world)
    target = login(world, token=other.token, port=2)
    target.receive_data(encode_frame(Command.INTERNAL, 2, info(buff_in=1024)), T0)
    sent(target)
    source.receive_data(encode_frame(Command.BRIDGE, 2, join_fields(1, "i", other.token)), T0)
    assert sent(source) == [response(2, Status.SUCCESS)]
    source.receive_data(encode_frame(Command.BRIDGE, 3, join_fields(1, "vw", 2, "hi")), T0)
    assert source.data_to_send() == b""
    assert sent(target) == [(Command.BRIDGE, 3, join_fields("vw", 2, "hi"))]
    assert world.domain.device(other.id).values["v2"][0] == b"hi"


def test_a_bridge_to_an_unknown_token_is_not_allowed(world):
    source = login(world)
    source.receive_data(encode_frame(Command.BRIDGE, 2, join_fields(1, "i", "y" * 32)), T0)
    source.receive_data(encode_frame(Command.BRIDGE, 3, join_fields(1, "vw", 2, "x")), T0)
    assert sent(source) == [response(2, Status.NOT_ALLOWED), response(3, Status.NOT_ALLOWED)]


# --- output and time --------------------------------------------------------------------------------


def test_one_answer_is_one_bytes_several_are_kept_in_order(world):
    core = login(world)
    core.receive_data(encode_frame(Command.PING, 2), T0)
    assert type(core.out) is bytes  # the common case allocates no list
    core.receive_data(encode_frame(Command.PING, 3) + encode_frame(Command.PING, 4), T0)
    assert type(core.out) is list
    assert sent(core) == [response(i, Status.SUCCESS) for i in (2, 3, 4)] and core.out is None


def test_stored_timestamps_come_from_the_contexts_wall_clock(world):
    world.ctx.wall_ms = lambda: WALL_MS
    core = login(world)
    core.receive_data(encode_frame(Command.HARDWARE, 2, join_fields("vw", 1, "3.5")), T0)
    assert world.pending_value(world.device_id, "v1") == (b"3.5", WALL_MS)


def test_the_default_wall_clock_is_the_real_one(world):
    """Compiled, the default clock (``model.now_ms``) is read in C: the same clock, to the millisecond."""
    assert world.ctx.wall_ms is now_ms
    core = login(world)
    before = now_ms()
    core.receive_data(encode_frame(Command.HARDWARE, 2, join_fields("vw", 1, "3.5")), T0)
    after = now_ms()
    value, ts = world.pending_value(world.device_id, "v1")
    assert value == b"3.5" and before <= ts <= after


def test_a_newer_login_with_the_same_token_closes_the_older_connection(world):
    first = login(world)
    second = login(world, T0 + 1, port=2)
    assert first.closed and first.dirty & CLOSE and not second.closed
    assert world.hub.link(world.device_id) is second and world.ctx.stats.replaced == 1
    first.connection_lost(None)  # the replaced one's loss leaves the device online
    assert second.device.online


def test_unsent_output_drained_restarts_the_idle_clock(world):
    core = login(world)
    core.writing_paused(T0 + 1)
    core.writing_resumed(T0 + 100)
    assert not core.read_blocked() and core.last_read == T0 + 100
    core.handle_timer(core.hb_at)  # idle since the drain, not since the login
    assert not core.closed and core.hb_at == T0 + 100 + core.timeout


def test_after_close_nothing_is_sent_and_nothing_is_due(world):
    core = login(world)
    core.close("test")
    assert core.dirty & CLOSE
    assert not core.push(Command.HARDWARE, join_fields("vw", 1, "1"), None, T0)
    core.receive_data(encode_frame(Command.PING, 5), T0)
    assert core.data_to_send() == b"" and core.next_deadline() is None
    core.connection_lost(None)
    assert world.hub.link(world.device_id) is None and not core.device.online
