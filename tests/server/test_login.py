"""Login, info message, heartbeat and connection lifecycle over real sockets."""

from __future__ import annotations

import asyncio

from blynk_server.devclient import DeviceClient, LoginFailed
from protocol import Command, Status, encode_frame
from protocol.body import join_fields


async def test_hw_login_and_ping(device):
    srv, _, token = device
    c = await DeviceClient.open("127.0.0.1", srv.port)
    c.send_raw(encode_frame(Command.HW_LOGIN, 1, token.encode()))
    assert await c.recv() == (0, 1, Status.SUCCESS)
    assert await c.ping() == Status.SUCCESS
    await c.close()


async def test_old_login_command_any_msg_id(device):
    srv, _, token = device
    c = await DeviceClient.open("127.0.0.1", srv.port)
    c.send_raw(encode_frame(Command.LOGIN, 777, token.encode()))
    assert await c.recv() == (0, 777, Status.SUCCESS)
    await c.close()


async def test_invalid_token_gets_9(server):
    c = await DeviceClient.open("127.0.0.1", server.port)
    c.send_raw(encode_frame(Command.HW_LOGIN, 1, b"x" * 32))
    assert await c.recv() == (0, 1, Status.INVALID_TOKEN)
    await c.close()
    try:
        await DeviceClient.connect("127.0.0.1", server.port, "nope")
    except LoginFailed as exc:
        assert exc.status == Status.INVALID_TOKEN
    else:
        raise AssertionError("login with a bad token succeeded")


async def test_anything_before_login_closes(server):
    c = await DeviceClient.open("127.0.0.1", server.port)
    c.send(Command.PING)
    await asyncio.wait_for(c.closed.wait(), 5)
    assert c.frames.empty()
    await c.close()


async def test_info_answered_with_same_msg_id_and_stored(device):
    srv, _, token = device
    c = await DeviceClient.connect("127.0.0.1", srv.port, token, info=None)
    body = (
        join_fields(
            "mcu",
            "2.1.0",
            "fw-type",
            "TMPLx",
            "build",
            "Nov 1 2026",
            "blynk",
            "1.4.0",
            "h-beat",
            "40",
            "buff-in",
            "1024",
            "dev",
            "ESP32",
            "tmpl",
            "TMPLx",
        )
        + b"\0"
    )
    c.send_raw(encode_frame(Command.INTERNAL, 2, body))
    assert await c.recv() == (0, 2, Status.SUCCESS)
    await c.close()
    import json

    for _ in range(50):
        info = json.loads(srv.cli("device", "show", token).stdout)["info"]
        if info:
            break
        await asyncio.sleep(0.1)
    assert info["firmware_version"] == "2.1.0"
    assert info["device"] == "ESP32"
    assert info["buff_in"] == 1024


async def test_second_login_on_same_connection_gets_4(client, device):
    _, _, token = device
    reply = await client.request(Command.HW_LOGIN, token.encode())
    assert reply[2] == Status.ALREADY_REGISTERED


async def test_newer_connection_wins(device):
    srv, _, token = device
    old = await DeviceClient.connect("127.0.0.1", srv.port, token)
    new = await DeviceClient.connect("127.0.0.1", srv.port, token)
    await asyncio.wait_for(old.closed.wait(), 5)
    assert await new.ping() == Status.SUCCESS
    await old.close()
    await new.close()


async def test_server_never_pings(client):
    frames = await client.silence(1.5)
    assert all(f[0] != Command.PING for f in frames)


async def test_login_timeout_closes_silent_connections(make_server):
    srv = make_server(env={"BLYNK_LOGIN_TIMEOUT": "0.5"})
    c = await DeviceClient.open("127.0.0.1", srv.port)
    await asyncio.wait_for(c.closed.wait(), 5)
    await c.close()


async def test_read_idle_timeout_follows_heartbeat(make_server):
    srv = make_server(env={"BLYNK_DEFAULT_HEARTBEAT": "30"})  # 69 s before the info message says otherwise
    tid = "TMPLidle"
    srv.new_template(tid)
    token, other = srv.new_device(tid), srv.new_device(tid, "other")
    # h-beat 1 → ceil(1 × 2.3) = 3 s without any byte read closes the connection (the formula itself
    # is a unit test; here: the server applies the info's heartbeat, and traffic keeps a session alive).
    info = {"h-beat": "1", "buff-in": "1024"}
    busy = await DeviceClient.connect("127.0.0.1", srv.port, other, info=info)
    idle = await DeviceClient.connect("127.0.0.1", srv.port, token, info=info)

    async def keep_pinging() -> None:
        while True:
            assert await busy.ping() == Status.SUCCESS
            await asyncio.sleep(0.3)  # the traffic's pace, well inside the 3 s timeout

    pinger = asyncio.create_task(keep_pinging())
    try:
        await asyncio.wait_for(idle.closed.wait(), 10)  # far sooner than the default's 69 s
        # The busy session, logged in before the idle one and on the same heartbeat, lives on.
        assert not pinger.done() and not busy.closed.is_set()
    finally:
        pinger.cancel()
        await asyncio.gather(pinger, return_exceptions=True)
    assert await busy.ping() == Status.SUCCESS
    await idle.close()
    await busy.close()
