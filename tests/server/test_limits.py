"""Per-device limits: buff-in, flood control, oversize frames. Others keep being served."""

from __future__ import annotations

import asyncio

from blynk_server.devclient import DeviceClient
from protocol import Command, Status
from protocol.body import join_fields


async def test_frames_larger_than_buff_in_are_dropped(device, until_ping):
    srv, tid, token = device
    small = srv.new_device(tid, "small")
    target = await DeviceClient.connect("127.0.0.1", srv.port, small, info={"h-beat": "40", "buff-in": "40"})
    sender = await DeviceClient.connect("127.0.0.1", srv.port, token)
    assert (await sender.request(Command.BRIDGE, b"1\x00i\x00" + small.encode()))[2] == Status.SUCCESS
    sender.send(Command.BRIDGE, b"1\x00vw\x002\x00" + b"x" * 40)  # 5 + 45 bytes > 40: dropped
    msg_id = sender.send(Command.BRIDGE, b"1\x00vw\x002\x00ok")
    assert await target.recv() == (Command.BRIDGE, msg_id, b"vw\x002\x00ok")
    assert await until_ping(target) == []
    await sender.close()
    await target.close()


def _burst(n: int, first_id: int = 1) -> bytes:
    """``n`` pipelined ``vw 1 i`` frames, msg ids from ``first_id``."""
    return b"".join(
        bytes([Command.HARDWARE]) + i.to_bytes(2, "big") + len(b).to_bytes(2, "big") + b
        for i, b in ((i, join_fields("vw", 1, i)) for i in range(first_id, first_id + n))
    )


async def _flooded(make_server) -> tuple[DeviceClient, DeviceClient]:
    """A server at 100 messages/s per device, a flooder that has just sent 300 frames at once and got its
    QUOTA_LIMIT, and a quiet device."""
    srv = make_server("--message-rate", "100")
    srv.new_template("TMPLflood")
    flooder_token = srv.new_device("TMPLflood", "flooder")
    quiet_token = srv.new_device("TMPLflood", "quiet")
    flooder = await DeviceClient.connect("127.0.0.1", srv.port, flooder_token)
    quiet = await DeviceClient.connect("127.0.0.1", srv.port, quiet_token)
    flooder.send_raw(_burst(300))
    quota = await flooder.expect(lambda f: f[0] == 0)
    assert quota[2] == Status.QUOTA_LIMIT
    return flooder, quiet


async def test_flood_control_pauses_the_flooder_not_the_others(make_server):
    flooder, quiet = await _flooded(make_server)
    # The server does not read the flooder for as long as its excess takes, (300 - 100) / 100 = 2 s: a
    # ping sent now waits that long. Another device is served meanwhile: its ping is answered while the
    # flooder's is still waiting.
    ping_id = flooder.send(Command.PING, msg_id=1000)
    flooder_ping = asyncio.create_task(flooder.expect(lambda f: f[1] == ping_id, timeout=15))
    assert await quiet.ping() == Status.SUCCESS
    assert not flooder_ping.done()
    assert (await flooder_ping)[2] == Status.SUCCESS
    await flooder.close()
    await quiet.close()


async def test_a_second_flood_is_paused_without_a_second_warning(make_server, until_ping):
    flooder, quiet = await _flooded(make_server)
    assert await flooder.ping(timeout=15) == Status.SUCCESS  # the first pause is over
    # Msg ids apart from the ones the client gives its own PINGs.
    flooder.send_raw(_burst(100, first_id=2000))
    frames = await until_ping(flooder, timeout=15)
    assert all(f[2] != Status.QUOTA_LIMIT for f in frames if f[0] == 0)  # one per quota_warning_period
    await flooder.close()
    await quiet.close()


async def test_oversize_frame_answered_and_closed(server):
    tid = "TMPLbig"
    server.new_template(tid)
    token = server.new_device(tid)
    c = await DeviceClient.connect("127.0.0.1", server.port, token)
    c.send_raw(bytes([Command.HARDWARE, 0, 9, 0xFF, 0xFF]))  # declares a 65535-byte body
    assert await c.recv() == (0, 9, Status.ILLEGAL_COMMAND)
    await asyncio.wait_for(c.closed.wait(), 5)
    await c.close()
    # The server keeps serving everyone else.
    c = await DeviceClient.connect("127.0.0.1", server.port, token)
    assert await c.ping() == Status.SUCCESS
    await c.close()


async def test_garbage_before_login_closes_without_harm(server):
    c = await DeviceClient.open("127.0.0.1", server.port)
    c.send_raw(b"\xff\x00\x00\x00\x03abc")
    await asyncio.wait_for(c.closed.wait(), 5)
    await c.close()
