"""Per-device limits: buff-in, flood control, oversize frames. Others keep being served."""

from __future__ import annotations

import asyncio

from blynk_server.devclient import DeviceClient
from protocol import Command, Status
from protocol.body import join_fields


async def test_frames_larger_than_buff_in_are_dropped(device):
    srv, tid, token = device
    small = srv.new_device(tid, "small")
    target = await DeviceClient.connect("127.0.0.1", srv.port, small, info={"h-beat": "40", "buff-in": "40"})
    sender = await DeviceClient.connect("127.0.0.1", srv.port, token)
    assert (await sender.request(Command.BRIDGE, b"1\x00i\x00" + small.encode()))[2] == Status.SUCCESS
    sender.send(Command.BRIDGE, b"1\x00vw\x002\x00" + b"x" * 40)  # 5 + 45 bytes > 40: dropped
    msg_id = sender.send(Command.BRIDGE, b"1\x00vw\x002\x00ok")
    assert await target.recv() == (Command.BRIDGE, msg_id, b"vw\x002\x00ok")
    assert await target.silence(0.3) == []
    await sender.close()
    await target.close()


async def test_flood_control_pauses_and_warns_once(make_server):
    srv = make_server("--message-rate", "50")
    srv.new_template("TMPLflood")
    flooder_token = srv.new_device("TMPLflood", "flooder")
    quiet_token = srv.new_device("TMPLflood", "quiet")
    flooder = await DeviceClient.connect("127.0.0.1", srv.port, flooder_token)
    quiet = await DeviceClient.connect("127.0.0.1", srv.port, quiet_token)
    loop = asyncio.get_running_loop()
    burst = b"".join(
        bytes([Command.HARDWARE]) + i.to_bytes(2, "big") + len(b).to_bytes(2, "big") + b
        for i, b in ((i, join_fields("vw", 1, i)) for i in range(1, 301))
    )
    start = loop.time()
    flooder.send_raw(burst)
    quota = await flooder.expect(lambda f: f[0] == 0)
    assert quota[2] == Status.QUOTA_LIMIT
    # Another device is served promptly while the flooder is paused.
    t0 = loop.time()
    assert await quiet.ping() == Status.SUCCESS
    assert loop.time() - t0 < 0.5
    # The flooder's own ping waits behind its backlog: ~ (300 - 50) / 50 = 5 s of pausing.
    assert await flooder.ping(timeout=15) == Status.SUCCESS
    assert loop.time() - start >= 3.5
    # No second QUOTA_LIMIT within the minute, and nothing written was lost.
    flooder.send_raw(burst[: len(burst) // 3])
    frames = await flooder.silence(1.0)
    assert all(f[2] != Status.QUOTA_LIMIT for f in frames if f[0] == 0)
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
