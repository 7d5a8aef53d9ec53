"""One writer: provisioning on a running server takes effect at once, on every door."""

from __future__ import annotations

import asyncio

import aiohttp

from blynk_server.devclient import DeviceClient, LoginFailed
from blynk_server.model import Datastream
from protocol import Command, Status

from .conftest import hw_url


async def test_device_deleted_while_online_is_disconnected_and_refused_everywhere(server, template, http):
    record = await server.provisioning.create_device(template.id, "doomed")
    host, port = server.hardware.address
    device = await DeviceClient.connect(host, port, record.token)
    try:
        device.virtual_write(1, 42)
        assert await device.ping() == Status.SUCCESS  # the write before it was handled
        assert server.domain.device(record.id).values["v1"][0] == b"42"

        await server.provisioning.delete_device(record.id)

        await asyncio.wait_for(device.closed.wait(), 1.0)  # disconnected at once (bounded, not timed)
    finally:
        await device.close()
    update = hw_url(server, f"/external/api/update?token={record.token}&v1=7")
    async with http.get(update) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["message"] == "Invalid token."
    async with http.get(hw_url(server, f"/{record.token}/get/v1")) as resp:
        assert resp.status == 400
    async with http.get(hw_url(server, f"/static/fw_1_{'a' * 22}.bin?token={record.token}")) as resp:
        assert resp.status == 403 and (await resp.json())["error"]["message"] == "Invalid token."
    try:
        await DeviceClient.connect(host, port, record.token)
        raise AssertionError("a deleted token logged in")
    except LoginFailed as exc:
        assert exc.status == Status.INVALID_TOKEN
    async with http.ws_connect(hw_url(server, "/websocket")) as ws:
        from protocol import encode_frame

        await ws.send_bytes(encode_frame(Command.HW_LOGIN, 1, record.token.encode()))
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.BINARY
        assert msg.data[0] == Command.RESPONSE and int.from_bytes(msg.data[3:5], "big") == Status.INVALID_TOKEN
    # Nothing is left of it in the store, and the rows it wrote before are gone too.
    rows = await server.store.run(server.store.rows_of_device, record.id)
    assert sum(rows.values()) == 0, rows


async def test_datastream_added_while_online_applies_to_the_next_write(server, template, http):
    record = await server.provisioning.create_device(template.id, "live")
    host, port = server.hardware.address
    device = await DeviceClient.connect(host, port, record.token)
    try:
        update = hw_url(server, f"/external/api/update?token={record.token}&v5=250")
        async with http.get(update) as resp:
            assert resp.status == 400  # no datastream on v5 yet

        await server.provisioning.put_datastream(template.id, Datastream("v5", "Level", "int", 0, 10))

        async with http.get(update) as resp:
            assert resp.status == 200
        # The device gets the clamped value, and its own write is validated by the new datastream too.
        frame = await device.expect(lambda f: f[0] == Command.HARDWARE)
        assert frame[2] == b"vw\x005\x0010"
        device.virtual_write(5, 99)
        assert await device.ping() == Status.SUCCESS
        assert server.domain.device(record.id).values["v5"][0] == b"10"
    finally:
        await device.close()


async def test_history_reads_see_writes_not_yet_flushed(server, http):
    tpl = await server.provisioning.create_template("H", [Datastream("v1", "T", "double", history=True)])
    record = await server.provisioning.create_device(tpl.id, "h")
    for v in (1, 2, 3):
        async with http.get(hw_url(server, f"/external/api/update?token={record.token}&v1={v}")) as resp:
            assert resp.status == 200
    query = f"/external/api/data/get?token={record.token}&pin=v1&period=DAY&output=JSON"
    async with http.get(hw_url(server, query)) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert [p["value"] for p in body["data"]] == [1.0, 2.0, 3.0]
