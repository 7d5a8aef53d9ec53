"""Every device command with the reference's replies, over real sockets."""

from __future__ import annotations

import json
import time

import pytest

from blynk_server.devclient import DeviceClient
from protocol import Command, Status
from protocol.body import join_fields


def values_of(srv, token: str) -> dict:
    """The device's values as the running server holds them (the CLI asks it): every write it has
    processed, flushed to disk or not."""
    return json.loads(srv.cli("device", "show", token).stdout)["values"]


@pytest.fixture
def sync(until_ping):
    async def sync(client, *pins) -> list[tuple]:
        """The frames a HARDWARE_SYNC of ``pins`` (all when none) is answered with."""
        body = join_fields("vr", *pins) if pins else b""
        msg_id = client.send(Command.HARDWARE_SYNC, body)
        frames = await until_ping(client)
        assert all(f[1] == msg_id for f in frames), frames
        return frames

    return sync


async def test_write_is_not_acknowledged_and_is_stored(client, device, until_ping):
    srv, _, token = device
    client.virtual_write(2, "hello")
    assert await until_ping(client) == []  # the write before the PING is processed
    values = values_of(srv, token)
    assert values["V2"]["value"] == "hello"


async def test_multi_value_tail_stored_whole_and_synced_back(client, sync):
    client.virtual_write(10, 1, "two", 3.5)
    frames = await sync(client, 10)
    assert frames[0][2] == b"vw\x0010\x001\x00two\x003.5"


async def test_malformed_hardware_gets_2(client):
    for body in (b"vw", b"vw\x001", b"vw\x001\x00", b"xx\x001\x002", b"vw\x00999\x001", b"vw\x00abc\x001"):
        reply = await client.request(Command.HARDWARE, body)
        assert reply[2] == Status.ILLEGAL_COMMAND, body


async def test_values_validated_and_clamped(client, sync):
    client.virtual_write(3, 150)  # int 0..100 → clamped to 100
    client.virtual_write(1, -100.5)  # double -40..85 → clamped
    client.virtual_write(0, 0.6)  # int rounds
    frames = await sync(client, 3, 1, 0)
    assert [f[2] for f in frames] == [b"vw\x003\x00100", b"vw\x001\x00-40", b"vw\x000\x001"]
    assert (await client.request(Command.HARDWARE, b"vw\x003\x00abc"))[2] == Status.ILLEGAL_COMMAND
    assert (await client.request(Command.HARDWARE, b"vw\x005\x007"))[2] == Status.ILLEGAL_COMMAND  # not an enum value
    assert (await client.request(Command.HARDWARE, b"vw\x004\x00500\x001"))[2] == Status.ILLEGAL_COMMAND
    client.virtual_write(4, "30.5", "50.4")
    assert (await sync(client, 4))[0][2] == b"vw\x004\x0030.5\x0050.4"


async def test_sync_all_sends_only_flagged_pins_with_values(client, sync):
    client.virtual_write(1, 21.5)  # sync flag
    client.virtual_write(2, "x")  # no sync flag
    frames = await sync(client)
    bodies = {f[2] for f in frames}
    assert b"vw\x001\x0021.5" in bodies
    # V0 is flagged but has neither a value nor a default: nothing is sent for it; V2 is not flagged.
    assert bodies == {b"vw\x001\x0021.5"}


async def test_sync_listed_pins_skips_pins_without_value(client, sync):
    assert await sync(client, 77) == []
    not_a_read = await client.request(Command.HARDWARE_SYNC, b"vw\x001")
    assert not_a_read == (0, not_a_read[1], Status.ILLEGAL_COMMAND)
    bad = await client.request(Command.HARDWARE_SYNC, b"vr")
    assert bad == (0, bad[1], Status.ILLEGAL_COMMAND)


async def test_property(client, device):
    assert (await client.request(Command.PROPERTY, b"1\x00color\x00#D3435C"))[2] == Status.SUCCESS
    assert (await client.request(Command.PROPERTY, b"0\x001\x00isDisabled\x00true"))[2] == Status.SUCCESS
    assert (await client.request(Command.PROPERTY, b"1\x00color"))[2] == Status.ILLEGAL_COMMAND_BODY
    assert (await client.request(Command.PROPERTY, b"x\x00color\x001"))[2] == Status.ILLEGAL_COMMAND


async def test_event_log_limits_and_clear(client, device):
    srv, tid, _ = device
    srv.declare_events(tid, "alarm", "other", "third")
    assert (await client.request(Command.EVENT_LOG, b"alarm\x00too hot"))[2] == Status.SUCCESS
    # Same code within 1 s is refused; another code is fine.
    assert (await client.request(Command.EVENT_LOG, b"alarm"))[2] == Status.QUOTA_LIMIT
    assert (await client.request(Command.EVENT_LOG, b"other"))[2] == Status.SUCCESS
    long = b"x" * 301
    assert (await client.request(Command.EVENT_LOG, b"third\x00" + long))[2] == Status.ILLEGAL_COMMAND_BODY
    assert (await client.request(Command.EVENT_LOG, b""))[2] == Status.ILLEGAL_COMMAND
    assert (await client.request(Command.EVENT_CLEAR, b"alarm"))[2] == Status.SUCCESS
    assert (await client.request(Command.EVENT_CLEAR, b"alarm\x00all"))[2] == Status.SUCCESS


async def test_group_gives_one_timestamp(client, device):
    srv, _, token = device
    client.send(Command.GROUP, b"t\x001700000000000")
    client.virtual_write(20, 1)
    client.virtual_write(21, 2)
    client.send(Command.GROUP, b"e")
    client.virtual_write(22, 3)
    assert await client.ping() == Status.SUCCESS  # the writes before it are processed
    values = values_of(srv, token)
    assert values["V20"]["ts"] == values["V21"]["ts"] == 1700000000000
    assert values["V22"]["ts"] > 1700000000000
    assert (await client.request(Command.GROUP, b"q"))[2] == Status.ILLEGAL_COMMAND


async def test_bridge_init_forward_and_offline(device, until_ping):
    srv, tid, token = device
    other = srv.new_device(tid, "target")
    sender = await DeviceClient.connect("127.0.0.1", srv.port, token)
    assert (await sender.request(Command.BRIDGE, b"1\x00vw\x005\x001"))[2] == Status.NOT_ALLOWED  # not initialised
    assert (await sender.request(Command.BRIDGE, b"1\x00i\x00" + b"y" * 32))[2] == Status.NOT_ALLOWED
    assert (await sender.request(Command.BRIDGE, b"1\x00i\x00" + other.encode()))[2] == Status.SUCCESS
    assert (await sender.request(Command.BRIDGE, b"1\x00vw\x005\x001"))[2] == Status.DEVICE_NOT_IN_NETWORK
    target = await DeviceClient.connect("127.0.0.1", srv.port, other)
    msg_id = sender.send(Command.BRIDGE, b"1\x00vw\x006\x00on")
    assert await target.recv() == (Command.BRIDGE, msg_id, b"vw\x006\x00on")
    assert await until_ping(sender) == []
    assert (await sender.request(Command.BRIDGE, b"1\x00vw"))[2] == Status.ILLEGAL_COMMAND
    await sender.close()
    await target.close()


async def test_internal_rtc_utc_meta(client):
    now = time.time()
    rtc = await client.request(Command.INTERNAL, b"rtc\x00sync")
    assert rtc[0] == Command.INTERNAL and rtc[2].startswith(b"rtc\x00")
    assert abs(int(rtc[2].split(b"\0")[1]) - now) < 5  # UTC device: local == UTC
    utc = await client.request(Command.INTERNAL, b"utc\x00time")
    assert abs(int(utc[2].split(b"\0")[2]) / 1000 - now) < 5
    assert (await client.request(Command.INTERNAL, b"utc\x00tz_name"))[2] == b"utc\x00tz_name\x00UTC"
    assert (await client.request(Command.INTERNAL, b"utc\x00tz"))[2] == b"utc\x00tz\x000\x000"
    assert (await client.request(Command.INTERNAL, b"utc\x00bogus"))[2] == Status.ILLEGAL_COMMAND
    assert (await client.request(Command.INTERNAL, b"meta\x00set\x00Timezone\x00Europe/Kyiv"))[2] == Status.SUCCESS
    got = await client.request(Command.INTERNAL, b"meta\x00get\x00Timezone")
    assert got[2] == b"meta\x00Timezone\x00Europe/Kyiv"
    tz = await client.request(Command.INTERNAL, b"utc\x00tz_name")
    assert tz[2] == b"utc\x00tz_name\x00Europe/Kyiv"
    iso = await client.request(Command.INTERNAL, b"utc\x00iso")
    assert iso[2].endswith((b"+02:00", b"+03:00"))
    rule = await client.request(Command.INTERNAL, b"utc\x00tz_rule")
    assert rule[2].startswith(b"utc\x00tz_rule\x00EET-2EEST")
    dst = await client.request(Command.INTERNAL, b"utc\x00dst_next")
    assert len(dst[2].split(b"\0")) == 6
    assert (await client.request(Command.INTERNAL, b"meta\x00get\x00Nope"))[2] == Status.NO_DATA
    assert (await client.request(Command.INTERNAL, b""))[2] == Status.ILLEGAL_COMMAND
    assert (await client.request(Command.INTERNAL, b"zzz"))[2] == Status.ILLEGAL_COMMAND


async def test_legacy_notifications_get_a_clear_status(client):
    # No SMTP server configured: e-mail is off, like tweets and SMS; NOTIFY is logged as an event.
    for cmd in (Command.TWEET, Command.EMAIL, Command.SMS):
        assert (await client.request(cmd, b"to@example.com\0hello\0body"))[2] == Status.NTF_NOT_AUTHORIZED
    assert (await client.request(Command.NOTIFY, b"hello"))[2] == Status.SUCCESS


async def test_unknown_command_gets_2(client):
    assert (await client.request(99, b"?"))[2] == Status.ILLEGAL_COMMAND
    assert await client.ping() == Status.SUCCESS
