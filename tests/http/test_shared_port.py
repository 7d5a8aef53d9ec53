"""One port, two protocols: HTTP (keep-alive, pipelining, slow clients) and WebSocket hardware
sessions next to binary devices."""

from __future__ import annotations

import asyncio

import aiohttp

from blynk_server.devclient import DEFAULT_INFO, DeviceClient
from protocol import Command, Decoder, Status, encode_frame
from protocol.body import join_fields


async def test_keep_alive_reuses_one_connection(device, http):
    conn = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=conn) as s:
        for i in range(5):
            async with s.get(device.ext("update", f"v1={i}")) as r:
                assert r.status == 200
        async with s.get(device.ext("get", "v1")) as r:
            assert await r.text() == "4"
        assert len(conn._conns) == 1  # still the one pooled connection


async def test_pipelined_requests(device, raw_exchange):
    req = (
        f"GET /external/api/update?token={device.token}&v1=9 HTTP/1.1\r\nHost: x\r\n\r\n"
        f"GET /external/api/get?token={device.token}&v1 HTTP/1.1\r\nHost: x\r\n\r\n"
        f"GET /{device.token}/get/V1 HTTP/1.1\r\nHost: x\r\n\r\n"
    ).encode()
    bodies = await raw_exchange(device.srv.host, device.srv.port, req, 3)
    assert bodies == [b"HTTP/1.1 200 OK|", b"HTTP/1.1 200 OK|9", b'HTTP/1.1 200 OK|["9"]']


async def test_slow_client_trickles_headers(device):
    req = f"GET /external/api/get?token={device.token}&v6 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    reader, writer = await asyncio.open_connection(device.srv.host, device.srv.port)
    for i in range(len(req)):
        writer.write(req[i : i + 1])
        await writer.drain()
        await asyncio.sleep(0.005)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"\r\n\r\n7")


async def test_binary_device_still_works_next_to_http(device, http):
    client = await DeviceClient.connect(device.srv.host, device.srv.port, device.token)
    try:
        assert await client.ping() == Status.SUCCESS
        assert (await http.fetch("GET", device.ext("get", "v6")))[1] == "7"
    finally:
        await client.close()


async def _ws_frames(ws, decoder: Decoder, want, timeout: float = 5.0):
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        for frame in decoder.feed(msg.data):
            if want(frame):
                return frame


async def test_websocket_hardware_session(device, http):
    for path in ("/websocket", "/websockets"):
        async with http.session.ws_connect(f"{device.base}{path}") as ws:
            dec = Decoder()
            # Login split across two WS messages: the session's decoder is incremental.
            login = encode_frame(Command.HW_LOGIN, 1, device.token.encode())
            await ws.send_bytes(login[:3])
            await ws.send_bytes(login[3:])
            assert (await _ws_frames(ws, dec, lambda f: f[1] == 1))[2] == Status.SUCCESS
            info = join_fields(*[x for kv in DEFAULT_INFO.items() for x in kv])
            await ws.send_bytes(encode_frame(Command.INTERNAL, 2, info) + encode_frame(Command.PING, 3, b""))
            assert (await _ws_frames(ws, dec, lambda f: f[1] == 3))[2] == Status.SUCCESS
            assert (await http.fetch("GET", device.ext("isHardwareConnected")))[1] == "true"
            await ws.send_bytes(encode_frame(Command.HARDWARE, 4, b"vw\x003\x00from-ws"))
            await http.fetch("GET", device.ext("update", "v1=77"))
            frame = await _ws_frames(ws, dec, lambda f: f[0] == Command.HARDWARE)
            assert frame[1] != 0 and frame[2] == b"vw\x001\x0077"
            assert (await http.fetch("GET", device.ext("get", "v3")))[1] == "from-ws"
        for _ in range(50):
            if (await http.fetch("GET", device.ext("isHardwareConnected")))[1] == "false":
                break
            await asyncio.sleep(0.05)
        assert (await http.fetch("GET", device.ext("isHardwareConnected")))[1] == "false"


async def test_websocket_bad_token(device, http):
    async with http.session.ws_connect(f"{device.base}/websocket") as ws:
        await ws.send_bytes(encode_frame(Command.HW_LOGIN, 1, b"x" * 32))
        frame = await _ws_frames(ws, Decoder(), lambda f: f[1] == 1)
        assert frame[2] == Status.INVALID_TOKEN
