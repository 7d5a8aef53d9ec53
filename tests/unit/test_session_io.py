"""What a logged-in session does with a device's messages and with server pushes: writes stored through
a real Domain (in the store's write-behind batch, nothing flushed), sync, pushes held until the info
answer, buff-in, bridges. In process, on a fake clock (tests/unit/fakes.py)."""

from __future__ import annotations

import pytest

from blynk_server.hardware.session import MAX_BRIDGES, MAX_HELD
from protocol import Command, Status, encode_frame
from protocol.body import join_fields
from tests.unit import fakes
from tests.unit.fakes import response

world, world_factory, both_twins = fakes.world, fakes.world_factory, fakes.both_twins
pytestmark = pytest.mark.usefixtures("both_twins")  # each test on the compiled and the pure twin


def info(**fields) -> bytes:
    return join_fields(*[x for kv in fields.items() for x in (kv[0].replace("_", "-"), kv[1])])


def hw(*fields) -> bytes:
    return join_fields(*fields)


# --- writes -----------------------------------------------------------------------------------------


def test_a_vw_write_is_stored_through_the_domain_unanswered(world):
    dev = world.login()
    assert dev.request(Command.HARDWARE, hw("vw", 1, "21.5")) == []
    state = world.domain.device(world.device_id)
    value, ts = state.values["v1"]
    assert value == b"21.5" and ts > 0
    assert world.pending_value(world.device_id, "v1") == (b"21.5", ts)
    assert (world.device_id, "v1", ts, b"21.5") in world.store._pending.history  # v1 keeps history
    assert world.domain.stats.writes == 1


def test_writes_of_one_read_are_stored_in_order_with_one_timestamp(world):
    dev = world.login()
    dev.transport.feed(
        encode_frame(Command.HARDWARE, 2, hw("vw", 1, "1"))
        + encode_frame(Command.HARDWARE, 3, hw("Vw", 2, "a\0b"))  # the pin kind in any case; the value keeps its NULs
        + encode_frame(Command.HARDWARE, 4, hw("vw", 1, "2"))
    )
    state = world.domain.device(world.device_id)
    assert state.values["v1"][0] == b"2" and state.values["v2"][0] == b"a\0b"
    assert state.values["v1"][1] == state.values["v2"][1]
    assert [row[3] for row in world.store._pending.history] == [b"1", b"2"]
    assert dev.frames() == []


def test_an_invalid_value_is_refused_and_the_others_of_the_read_kept(world):
    dev = world.login()
    dev.transport.feed(
        encode_frame(Command.HARDWARE, 2, hw("vw", 3, "abc"))  # v3 is an int datastream
        + encode_frame(Command.HARDWARE, 3, hw("vw", 3, "7.6"))
    )
    assert dev.frames() == [response(2, Status.ILLEGAL_COMMAND)]
    assert world.domain.device(world.device_id).values["v3"][0] == b"8"  # rounded
    assert not dev.closed


@pytest.mark.parametrize("body", [hw("vw", 256, "1"), hw("vw", "1x", "1"), hw("vw", 1), hw("xw", 1, "1"), b"vw"])
def test_a_malformed_write_is_refused(world, body):
    dev = world.login()
    assert dev.request(Command.HARDWARE, body) == [response(2, Status.ILLEGAL_COMMAND)]
    assert world.domain.device(world.device_id).values == {}


LONE_WRITES = [
    hw("vw", 1, "21.5"),
    hw("vw", "001", "4"),  # leading zeros: still v1
    hw("Vw", 255, "a\0b"),  # the kind in any case, the value keeps its NULs
    hw("vw", 3, "abc"),  # refused: v3 is an int datastream
    hw("vw", 3, "7.6"),  # rounded
    hw("vw", 256, "1"),  # no such pin
    hw("vw", "1234", "1"),
    hw("vw", "1x", "1"),
    hw("vw", "", "1"),
    b"vw\x001\x00",  # no value
    b"vw\x001",
    hw("dw", 1, "1"),
    hw("vr", 1),
]


@pytest.mark.parametrize("body", LONE_WRITES)
def test_a_read_of_one_write_ends_as_the_same_frame_through_the_decoder(world_factory, body):
    """A read holding one whole ``vw`` frame skips the decoder (``_lone_write``), and so does such a read
    deferred to a later turn (``_lone_write_copied``); split over two reads, the same frame goes through
    the decoder. All end the same: answers, values, counts."""
    outcomes = []
    for way in ("whole", "deferred", "split"):
        w = world_factory(turn_budget=1)
        dev = w.login()
        other = w.login(token=w.add_device("other").token)
        w.loop.run_until_idle()
        if way == "deferred":
            other.send(Command.HARDWARE, hw("vw", 1, "0"))  # spends this turn's budget
        frame = encode_frame(Command.HARDWARE, 9, body)
        stats, domain_stats = w.ctx.stats, w.domain.stats
        before = (domain_stats.writes, domain_stats.invalid_writes, stats.messages_in[Command.HARDWARE])
        if way == "split":
            dev.transport.feed(frame[:7])
        dev.transport.feed(frame[7:] if way == "split" else frame)
        assert (dev.session.deferred is not None) == (way == "deferred")
        w.loop.run_until_idle()
        after = (domain_stats.writes, domain_stats.invalid_writes, stats.messages_in[Command.HARDWARE])
        state = w.domain.device(w.device_id)
        counts = tuple(x - y for x, y in zip(after, before, strict=True))
        outcomes.append((dev.frames(), {k: v[0] for k, v in state.values.items()}, counts, dev.closed))
    assert outcomes[0] == outcomes[1] == outcomes[2]


def test_a_group_timestamp_applies_to_its_writes(world):
    dev = world.login()
    dev.request(Command.GROUP, hw("t", 1_700_000_000_000))
    dev.request(Command.HARDWARE, hw("vw", 1, "5"))
    dev.request(Command.GROUP, b"e")
    dev.request(Command.HARDWARE, hw("vw", 2, "x"))
    values = world.domain.device(world.device_id).values
    assert values["v1"] == (b"5", 1_700_000_000_000)
    assert values["v2"][1] != 1_700_000_000_000


def test_sync_answers_the_stored_values(world):
    dev = world.login()
    dev.request(Command.HARDWARE, hw("vw", 1, "3.5"))
    dev.request(Command.HARDWARE, hw("vw", 2, "on"))
    frames = dev.request(Command.HARDWARE_SYNC, hw("vr", 1, 2))
    assert frames == [(Command.HARDWARE, 4, hw("vw", 1, "3.5")), (Command.HARDWARE, 4, hw("vw", 2, "on"))]


# --- pushes, held until the info answer ---------------------------------------------------------------


def test_pushes_are_held_until_the_info_is_answered(world):
    dev = world.login()
    assert world.hub.send(world.device_id, Command.HARDWARE, hw("vw", 1, "9"))
    world.loop.run_until_idle()
    assert dev.frames() == []
    assert dev.request(Command.INTERNAL, info(ver="1.0", h_beat=10, buff_in=1024)) == [response(2, Status.SUCCESS)]
    assert dev.session.info_acked
    world.loop.advance(0.05)  # released in a later segment than the info's answer (blynklib)
    frames = dev.frames()
    assert [(c, b) for c, _, b in frames] == [(Command.HARDWARE, hw("vw", 1, "9"))]
    assert world.hub.send(world.device_id, Command.HARDWARE, hw("vw", 1, "10"))  # now at once
    assert [f[2] for f in dev.frames()] == [hw("vw", 1, "10")]


def test_without_info_held_pushes_go_out_after_the_info_grace(world):
    dev = world.login()
    world.hub.send(world.device_id, Command.HARDWARE, hw("vw", 1, "9"))
    world.loop.advance(world.settings.info_grace - 0.01)
    assert dev.frames() == []
    world.loop.advance(0.02)
    assert [f[2] for f in dev.frames()] == [hw("vw", 1, "9")]
    assert dev.session.info_acked


def test_at_most_max_held_pushes_are_held_oldest_dropped(world):
    dev = world.login()
    for i in range(MAX_HELD + 10):
        world.hub.send(world.device_id, Command.HARDWARE, hw("vw", 1, i))
    world.loop.advance(world.settings.info_grace)
    assert [f[2] for f in dev.frames()] == [hw("vw", 1, i) for i in range(10, MAX_HELD + 10)]


def test_a_push_over_the_devices_buff_in_is_dropped_and_counted(world):
    dev = world.login()
    dev.request(Command.INTERNAL, info(buff_in=64))
    assert dev.session.buff_in == 64
    assert not world.hub.send(world.device_id, Command.HARDWARE, hw("vw", 2, "x" * 60))
    assert world.ctx.stats.dropped_oversize == 1
    assert world.hub.send(world.device_id, Command.HARDWARE, hw("vw", 2, "x" * 10))
    world.loop.advance(0.05)
    assert [f[2] for f in dev.frames()] == [hw("vw", 2, "x" * 10)]


def test_an_oversized_info_is_refused_and_the_device_stays(world):
    dev = world.login()
    big = info(ver="1", dev="x" * world.settings.max_info_size)
    assert dev.request(Command.INTERNAL, big) == [response(2, Status.ILLEGAL_COMMAND_BODY)]
    assert not dev.closed and not dev.session.info_acked


def test_the_session_is_the_hubs_device_link(world):
    dev = world.login()
    link = world.hub.link(world.device_id)
    assert link is dev.session
    assert link.device.id == world.device_id
    assert link.buff_in == world.settings.default_buff_in and not link.info_acked
    assert link.local_host() == "192.0.2.1"
    dev.request(Command.INTERNAL, info(buff_in=2048))
    assert link.buff_in == 2048 and link.info_acked


def test_local_host_without_a_socket_address(world):
    dev = world.connect()
    assert dev.session.local_host() == "192.0.2.1"
    dev.transport.extra["sockname"] = None
    assert dev.session.local_host() is None


# --- bridges ------------------------------------------------------------------------------------------


def test_a_bridge_writes_to_the_target_and_forwards_to_it_when_online(world):
    other = world.add_device("target")
    source = world.login()
    assert source.request(Command.BRIDGE, hw(1, "i", other.token)) == [response(2, Status.SUCCESS)]
    # Offline target: the value is stored, the sender told the target is not connected.
    assert source.request(Command.BRIDGE, hw(1, "vw", 2, "hi")) == [response(3, Status.DEVICE_NOT_IN_NETWORK)]
    assert world.domain.device(other.id).values["v2"][0] == b"hi"
    target = world.login(token=other.token, peer=("198.51.100.2", 1))
    target.request(Command.INTERNAL, info(buff_in=1024))
    world.loop.advance(0.05)
    target.frames()
    assert source.request(Command.BRIDGE, hw(1, "vw", 2, "again")) == []
    assert target.frames() == [(Command.BRIDGE, 4, hw("vw", 2, "again"))]
    assert world.domain.device(other.id).values["v2"][0] == b"again"


@pytest.mark.parametrize("token", ["short", "y" * 32])
def test_a_bridge_to_an_unknown_token_is_not_allowed(world, token):
    source = world.login()
    assert source.request(Command.BRIDGE, hw(1, "i", token)) == [response(2, Status.NOT_ALLOWED)]
    assert source.request(Command.BRIDGE, hw(1, "vw", 5, "x")) == [response(3, Status.NOT_ALLOWED)]


def test_bridges_per_connection_are_capped(world_factory):
    world = world_factory(message_rate=10_000.0)  # 100 frames at once: not a flood here
    other = world.add_device("target")
    source = world.login()
    for pin in range(MAX_BRIDGES):
        source.send(Command.BRIDGE, hw(pin, "i", other.token))
    assert all(f[2] == Status.SUCCESS for f in source.frames())
    assert source.request(Command.BRIDGE, hw(MAX_BRIDGES, "i", other.token))[0][2] == Status.NOT_ALLOWED
    assert source.request(Command.BRIDGE, hw(0, "i", other.token))[0][2] == Status.SUCCESS  # re-pointing one is fine


def test_a_bridge_write_with_a_bad_value_is_refused(world):
    other = world.add_device("target")
    source = world.login()
    source.request(Command.BRIDGE, hw(1, "i", other.token))
    assert source.request(Command.BRIDGE, hw(1, "vw", 3, "abc")) == [response(3, Status.ILLEGAL_COMMAND)]


# --- other commands -----------------------------------------------------------------------------------


def test_notifications_are_refused_not_dropped(world):
    dev = world.login()  # no mailer: e-mail is off (tests/unit/test_outbox_mailer.py has the rest)
    assert dev.request(Command.TWEET, b"hello") == [response(2, Status.NTF_NOT_AUTHORIZED)]
    assert dev.request(Command.EMAIL, b"a@example.com\0s\0b") == [response(3, Status.NTF_NOT_AUTHORIZED)]


def test_an_unknown_command_is_illegal(world):
    dev = world.login()
    assert dev.request(99, b"x") == [response(2, Status.ILLEGAL_COMMAND)]
    assert not dev.closed


def test_meta_set_then_get(world):
    dev = world.login()
    assert dev.request(Command.INTERNAL, hw("meta", "set", "Location", "attic")) == [response(2, Status.SUCCESS)]
    frames = dev.request(Command.INTERNAL, hw("meta", "get", "Location"))
    assert frames == [(Command.INTERNAL, 3, hw("meta", "Location", "attic"))]
    assert dev.request(Command.INTERNAL, hw("meta", "get", "Nothing")) == [response(4, Status.NO_DATA)]


def test_a_frame_too_large_closes_the_session(world_factory):
    w = world_factory(max_frame=64)
    dev = w.login()
    assert dev.request(Command.HARDWARE, hw("vw", 2, "x" * 100)) == [response(2, Status.ILLEGAL_COMMAND)]
    assert dev.closed and w.ctx.stats.oversize_frames_in == 1
