"""Bounded work and bounded replies per message (issue 10, findings 2 and 3).

A sync naming one pin 16,000 times is answered once; a ``utc`` request repeating ``dst_next`` 3,000
times is answered once per distinct field; the frames a request makes the server send are charged to
the device's message budget, so a sync flood meets flood control. Another device is served meanwhile.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from blynk_server.devclient import DeviceClient
from blynk_server.timeutil import next_transitions, upcoming_transitions, zone
from protocol import Command, Status
from protocol.body import join_fields

from .conftest import Control, assert_no_traceback, connect, write_acked, write_restart_read

MANY_PINS = range(10, 250)  # pins with no datastream: any value is stored as sent


KYIV_SPRING_2026 = 1774746000  # 2026-03-29 01:00 UTC: Europe/Kyiv moves to +03:00


@pytest.mark.parametrize("offset", [-3601, -1800, -1, 0, 1, 1800, 3599])
def test_cached_dst_transitions_equal_the_computed_ones(offset):
    """dst_next comes from a per-zone, per-hour cache: around a transition it must still name the
    next two changes after *now*, as computing them afresh does."""
    now = KYIV_SPRING_2026 + offset
    tz = zone("Europe/Kyiv")
    assert upcoming_transitions(tz, now) == next_transitions(tz, datetime.fromtimestamp(now, UTC), 2)


async def _until_ping(client: DeviceClient, timeout: float = 5.0) -> list[tuple]:
    """Every frame received before the answer to a PING sent now (the server answers in order)."""
    pid = client.send(Command.PING)
    frames = []
    while (frame := await client.recv(timeout))[1] != pid or frame[0] != Command.RESPONSE:
        frames.append(frame)
    assert frame[2] == Status.SUCCESS
    return frames


async def test_repeated_pins_and_utc_fields_are_answered_once(rig):
    r = rig()
    control_token = r.token()
    async with Control(r.srv, control_token) as control:
        dev = await connect(r.srv, r.token(), info={"h-beat": "40", "buff-in": "4096", "dev": "sim"})
        try:
            await write_acked(dev, 2, "x" * 1000)
            sid = dev.send(Command.HARDWARE_SYNC, b"vr" + b"\x002" * 16_000)
            assert await _until_ping(dev) == [(Command.HARDWARE, sid, b"vw\x002\x00" + b"x" * 1000)]

            meta = join_fields("meta", "set", "Timezone", "Europe/Kyiv")
            assert (await dev.request(Command.INTERNAL, meta))[2] == Status.SUCCESS
            asked = [b"dst_next"] * 3000 + [b"time", b"time"] + [b"no%d" % i for i in range(100)]
            uid = dev.send(Command.INTERNAL, b"\x00".join([b"utc", *asked]))
            frames = await _until_ping(dev)
            assert [f[1] for f in frames] == [uid] * 3
            (_, _, dst), (_, _, now), status = frames
            assert dst.split(b"\x00")[:2] == [b"utc", b"dst_next"] and len(dst.split(b"\x00")) == 6
            assert now.split(b"\x00")[:2] == [b"utc", b"time"]
            assert status == (Command.RESPONSE, uid, Status.ILLEGAL_COMMAND)
        finally:
            await dev.close()
    assert control.stats.failures == []
    await write_restart_read(r.srv, control_token)
    assert_no_traceback(r.srv)


async def test_replies_are_charged_to_the_flood_budget(rig):
    """Five syncs naming 240 pins each are 5 frames in but 1,200 out: over a budget of 1,000 the
    device gets QUOTA_LIMIT and is paused, while another device keeps pinging and writing."""
    r = rig(env={"BLYNK_MESSAGE_RATE": "1000"})
    control_token = r.token()
    async with Control(r.srv, control_token) as control:
        dev = await connect(r.srv, r.token(), info={"h-beat": "40", "buff-in": "4096", "dev": "sim"})
        try:
            for pin in MANY_PINS:
                dev.virtual_write(pin, pin)
            assert not [f for f in await _until_ping(dev) if f[0] == Command.RESPONSE]  # ~240 of 1,000 spent
            sync = join_fields("vr", *MANY_PINS)
            for _ in range(5):
                dev.send(Command.HARDWARE_SYNC, sync)
            frames = []
            while (frame := await dev.recv())[0] != Command.RESPONSE:
                frames.append(frame)
            assert frame[2] == Status.QUOTA_LIMIT
            frames += await _until_ping(dev, timeout=10)  # answered once the pause is over
            assert [f[0] for f in frames] == [Command.HARDWARE] * 5 * len(MANY_PINS)
        finally:
            await dev.close()
    assert control.stats.failures == [] and control.stats.rtts
    await write_restart_read(r.srv, control_token)
    assert_no_traceback(r.srv)


async def test_repeated_errors_are_each_answered_but_logged_sparsely(rig):
    """300 invalid values: 300 answers of status 2, but log lines 1, 2, 4, ... 256 only (9)."""
    r = rig(env={"BLYNK_MESSAGE_RATE": "1000"})
    dev = await connect(r.srv, r.token())
    try:
        ids = {dev.virtual_write(3, "not-a-number") for _ in range(300)}  # V3 is an int datastream
        answers = [f for f in await _until_ping(dev) if f[0] == Command.RESPONSE]
    finally:
        await dev.close()
    assert {f[1] for f in answers} == ids and {f[2] for f in answers} == {Status.ILLEGAL_COMMAND}
    assert r.srv.stderr().count("invalid value device=") == 9
    assert_no_traceback(r.srv)
