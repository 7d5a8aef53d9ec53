"""The legacy /{token}/... API: bodies, text/plain errors, CORS header."""

from __future__ import annotations

import json

from blynk_server.devclient import DeviceClient
from protocol import Command


async def test_get_update_put_and_errors(device, http):
    b, t = device.base, device.token
    status, body, resp = await http.fetch("GET", f"{b}/{t}/update/V1?value=12")
    assert (status, body) == (200, "")
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    status, body, resp = await http.fetch("GET", f"{b}/{t}/get/V1")
    assert (status, json.loads(body)) == (200, ["12"])
    assert resp.content_type == "application/json"
    await http.fetch("GET", f"{b}/{t}/update/V4?value=1.5&value=2.5")
    assert json.loads((await http.fetch("GET", f"{b}/{t}/get/v4"))[1]) == ["1.5", "2.5"]
    assert (await http.fetch("PUT", f"{b}/{t}/update/V3", json=["put"]))[0] == 200
    assert json.loads((await http.fetch("GET", f"{b}/{t}/get/V3"))[1]) == ["put"]
    assert (await http.fetch("PUT", f"{b}/{t}/pin/V3", json=["pin"]))[0] == 200
    assert json.loads((await http.fetch("GET", f"{b}/{t}/get/V3"))[1]) == ["pin"]

    async def err(method: str, url: str, **kw) -> tuple[int, str, str]:
        status, body, resp = await http.fetch(method, url, **kw)
        return status, body, resp.content_type

    assert await err("GET", f"{b}/badtoken/get/V1") == (400, "Invalid token.", "text/plain")
    assert await err("GET", f"{b}/{t}/get/X1") == (400, "Wrong pin format.", "text/plain")
    assert await err("GET", f"{b}/{t}/get/V77") == (400, "Requested pin doesn't exist in the app.", "text/plain")
    assert await err("GET", f"{b}/{t}/update/V1") == (400, "Wrong request format.", "text/plain")
    assert await err("PUT", f"{b}/{t}/update/V1", json=[]) == (400, "No pin for update provided.", "text/plain")
    assert await err("PUT", f"{b}/{t}/update/V1", data="[1]") == (
        500,
        "Unexpected content type. Expecting application/json.",
        "text/plain",
    )
    assert (await http.fetch("GET", f"{b}/{t}/nothing/here/at/all"))[0] == 404


async def test_property_via_update(device, http):
    assert (await http.fetch("GET", f"{device.base}/{device.token}/update/V1?label=Hi"))[0] == 200


async def test_is_hardware_connected_and_write_reaches_device(device, http):
    b, t = device.base, device.token
    assert json.loads((await http.fetch("GET", f"{b}/{t}/isHardwareConnected"))[1]) is False
    client = await DeviceClient.connect(device.srv.host, device.srv.port, t)
    try:
        assert json.loads((await http.fetch("GET", f"{b}/{t}/isHardwareConnected"))[1]) is True
        await http.fetch("GET", f"{b}/{t}/update/V1?value=33")
        frame = await client.expect(lambda f: f[0] == Command.HARDWARE)
        assert frame[1] != 0 and frame[2] == b"vw\x001\x0033"
    finally:
        await client.close()


async def test_extra_pin_history(device, http):
    b, t = device.base, device.token
    import time

    now = time.time_ns() // 1_000_000
    body = [{"value": "5", "timestamp": now - 10}, {"value": "6", "timestamp": now - 20}]
    assert (await http.fetch("PUT", f"{b}/{t}/extra/pin/V5", json=body))[0] == 200
    assert json.loads((await http.fetch("GET", f"{b}/{t}/get/V5"))[1]) == ["5"]  # the first point is current
