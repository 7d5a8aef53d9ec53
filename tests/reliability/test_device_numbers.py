"""Numbers of any length and oversized fields in device frames (issue 10, findings 1, 6 and 10).

Python refuses ``int()`` of more than 4,300 digits, and values past 2^63 broke the store: every
numeric field gets status 2 (ILLEGAL_COMMAND) and the device stays connected; ``h-beat`` and
``buff-in`` are clamped to 1..65535; an info message over ``max_info_size`` gets status 11
(ILLEGAL_COMMAND_BODY) and is not stored.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from blynk_server.model import MAX_TS_MS
from protocol import Command, Status
from protocol.body import join_fields

from .conftest import Control, assert_no_traceback, connect, db_path, stored_value, write_acked, write_restart_read

HUGE = b"9" * 5000
TS = 1_767_225_600_123  # 2026-01-01: a GROUP timestamp in range

BAD_FRAMES = [
    (Command.HARDWARE, b"vw\x00" + HUGE + b"\x001"),
    (Command.HARDWARE, b"dw\x00" + HUGE + b"\x001"),
    (Command.HARDWARE, b"vr\x00" + HUGE),
    (Command.HARDWARE, b"pm" + b"\x001\x00out" * 800),
    (Command.HARDWARE_SYNC, b"vr\x00" + HUGE),
    (Command.GROUP, b"t\x00" + HUGE),
    (Command.GROUP, b"t\x009223372036854775808"),
    (Command.GROUP, b"t\x00" + str(MAX_TS_MS + 1).encode()),
    (Command.GROUP, b"t\x000"),
    (Command.BRIDGE, HUGE + b"\x00i\x00" + b"t" * 32),
    (Command.BRIDGE, b"1\x00vw\x00" + HUGE + b"\x001"),
]


@pytest.mark.parametrize(("command", "body"), BAD_FRAMES, ids=lambda x: repr(x)[:24])
async def test_numbers_of_any_length_get_status_2(server, unique, command, body):
    server.new_template(unique)
    dev = await connect(server, server.new_device(unique))
    try:
        if command == Command.BRIDGE and body.startswith(b"1\x00vw"):  # a bridge to send through
            target = server.new_device(unique)
            assert (await dev.request(Command.BRIDGE, b"1\x00i\x00" + target.encode()))[2] == Status.SUCCESS
        msg_id = dev.send(command, body)
        assert await dev.recv() == (Command.RESPONSE, msg_id, Status.ILLEGAL_COMMAND)
        assert await dev.ping() == Status.SUCCESS  # still connected and served
    finally:
        await dev.close()
    assert_no_traceback(server)


async def test_group_timestamps_in_range_still_apply_and_the_store_keeps_flushing(rig):
    r = rig()
    control_token, token = r.token(), r.token()
    async with Control(r.srv, control_token) as control:
        dev = await connect(r.srv, token)
        try:
            for body in (b"t\x00" + HUGE, b"t\x009223372036854775808"):
                assert (await dev.request(Command.GROUP, body))[2] == Status.ILLEGAL_COMMAND
            dev.send(Command.GROUP, b"t\x00" + str(TS).encode())
            await write_acked(dev, 6, 42)
            dev.send(Command.GROUP, b"e")
            await write_acked(dev, 3, 7)
        finally:
            await dev.close()
    assert control.stats.failures == []
    await write_restart_read(r.srv, control_token)
    assert stored_value(r.srv.data_dir, token, "v6") == (b"42", TS)
    assert stored_value(r.srv.data_dir, token, "v3")[0] == b"7"
    assert_no_traceback(r.srv)


async def test_info_numbers_are_clamped_and_an_oversized_info_is_refused(rig):
    r = rig(env={"BLYNK_MAX_INFO_SIZE": "12000"})  # room for two 5,000-digit numbers
    token = r.token()
    dev = await connect(r.srv, token, info={"mcu": "1.0.0", "h-beat": "9" * 5000, "buff-in": "9" * 5000})
    try:
        big = join_fields("mcu", "2.0.0", "dev", "x" * 12000)
        assert (await dev.request(Command.INTERNAL, big))[2] == Status.ILLEGAL_COMMAND_BODY
        assert await dev.ping() == Status.SUCCESS  # still connected
        await write_acked(dev, 20, "y" * 1000)  # buff-in 65535 (clamped), not the 250 assumed before the info
        sid = dev.send(Command.HARDWARE_SYNC, b"vr\x0020")
        assert await dev.recv() == (Command.HARDWARE, sid, b"vw\x0020\x00" + b"y" * 1000)
    finally:
        await dev.close()
    assert r.srv.stop() == 0
    conn = sqlite3.connect(f"file:{db_path(r.srv.data_dir)}?mode=ro", uri=True)
    try:
        (info,) = conn.execute("SELECT info FROM devices WHERE token = ?", (token,)).fetchone()
    finally:
        conn.close()
    info = json.loads(info)
    assert (info["firmware_version"], info["heartbeat"], info["buff_in"]) == ("1.0.0", 65535, 65535)
    assert_no_traceback(r.srv)
