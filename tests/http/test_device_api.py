"""The device HTTPS API (/external/api) on the device port: every endpoint and its errors."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from blynk_server.devclient import DeviceClient
from protocol import Command


def _ms() -> int:
    return time.time_ns() // 1_000_000


async def test_update_reaches_connected_device_and_get_returns_it(device, http):
    client = await DeviceClient.connect(device.srv.host, device.srv.port, device.token)
    try:
        status, body, _ = await http.fetch("GET", device.ext("update", "v1=42"))
        assert (status, body) == (200, "")
        frame = await client.expect(lambda f: f[0] == Command.HARDWARE)
        assert frame[1] != 0
        assert frame[2] == b"vw\x001\x0042"
        status, body, _ = await http.fetch("GET", device.ext("get", "v1"))
        assert (status, body) == (200, "42")
        status, body, _ = await http.fetch("GET", device.ext("isHardwareConnected"))
        assert body == "true"
    finally:
        await client.close()


async def test_update_offline_is_stored(device, http):
    assert (await http.fetch("GET", device.ext("isHardwareConnected")))[1] == "false"
    assert (await http.fetch("GET", device.ext("update", "V1=250")))[0] == 200  # clamped to max
    assert (await http.fetch("GET", device.ext("get", "V1")))[1] == "100"


async def test_get_by_pin_parameter_and_trailing_slashes(device, http):
    """``get?pin=V2`` as in the C++ library's HTTP example; ``update/?token=`` as on Blynk's widget pages."""
    assert (await http.fetch("GET", device.base + f"/external/api/update/?token={device.token}&v1=17"))[0] == 200
    assert (await http.fetch("GET", device.ext("get", "pin=V1")))[1] == "17"
    assert (await http.fetch("GET", device.base + f"/external/api/get/?token={device.token}&pin=v1"))[1] == "17"
    assert await http.error(device.ext("get", "pin=x9")) == (400, "Wrong pin format.")


async def test_get_errors(device, http):
    base = device.base + "/external/api/get"
    assert await http.error(base + "?v1") == (400, "No token provided.")
    assert await http.error(base + "?token=nope&v1") == (400, "Invalid token.")
    assert await http.error(device.ext("get", "x1")) == (400, "Wrong pin format.")
    assert await http.error(device.ext("get", "v256")) == (400, "Wrong pin format.")
    assert await http.error(device.ext("get")) == (400, "Wrong pin format.")
    assert await http.error(device.ext("get", "v77")) == (400, "No datastream setup for that pin.")


async def test_get_several_pins_typed_json_and_default(device, http):
    await http.fetch("GET", device.ext("batch/update", "v1=5&v2=2.5&v3=hello"))
    status, body, resp = await http.fetch("GET", device.ext("get", "v1&v2&v3&v6&V5"))
    assert status == 200 and resp.content_type == "application/json"
    assert json.loads(body) == {"v1": 5, "v2": 2.5, "v3": "hello", "v6": 7, "V5": None}
    assert (await http.fetch("GET", device.ext("get", "v6")))[1] == "7"  # datastream default


async def test_get_and_update_by_datastream_id(device, http):
    """``dataStreamId=N`` is the datastream with id N, not pin VN (issue 13, item 4)."""
    assert (await http.fetch("GET", device.ext("update", "dataStreamId=3&value=abc")))[0] == 200  # V3, id 3
    assert (await http.fetch("GET", device.ext("get", "dataStreamId=3")))[1] == "abc"
    assert (await http.fetch("GET", device.ext("update", "dataStreamId=20&value=9")))[0] == 200
    assert (await http.fetch("GET", device.ext("get", "v7")))[1] == "9"  # id 20 is V7
    assert (await http.fetch("GET", device.ext("get", "v20")))[1] == ""  # not V20
    assert (await http.fetch("GET", device.ext("update", "dataStreamId=256&value=x")))[0] == 200
    assert (await http.fetch("GET", device.ext("get", "pin=V20")))[1] == "x"  # V20 has the default rule's 256
    status, message = await http.error(device.ext("get", "dataStreamId=99"))
    assert status == 400 and message.startswith("Requested dataStream doesn't exist in the product ")
    assert await http.error(device.ext("update", "dataStreamId=99&value=1")) == (status, message)
    assert await http.error(device.ext("update", "dataStreamId=x&value=1")) == (400, "Wrong dataStreamId format.")


async def test_datastream_id_in_every_endpoint(device, http):
    """batch/update, update/property and data/get take the id too, and write the id's pin."""
    now = _ms()
    url = device.ext("batch/update", "dataStreamId=20")
    assert (await http.fetch("POST", url, json=[[now - 1000, 4], [now, 5]]))[0] == 200
    assert (await http.fetch("GET", device.ext("get", "v7")))[1] == "5"
    assert (await http.fetch("GET", device.ext("update/property", "dataStreamId=20&label=Lvl")))[0] == 200
    auth = {"Authorization": f"Bearer {device.srv.api_key}"}
    did = json.loads((await http.fetch("GET", f"{device.admin}/api/devices?token={device.token}", headers=auth))[1])
    props = (await http.fetch("GET", f"{device.admin}/api/devices/{did[0]['id']}/properties", headers=auth))[1]
    assert json.loads(props) == {"V7": {"label": "Lvl"}}
    assert (await http.fetch("POST", device.ext("batch/update", "pin=v5"), json=[[now, 1]]))[0] == 200
    q = "dataStreamId=5&period=DAY&output=JSON"
    assert json.loads((await http.fetch("GET", device.ext("data/get", q)))[1])["rows"] == 1
    status, message = await http.error(device.ext("data/get", "dataStreamId=21&output=JSON"))
    assert status == 400 and message.startswith("Requested dataStream doesn't exist")
    status, message = await http.error(device.ext("update/property", "dataStreamId=21&label=x"))
    assert status == 400 and message.startswith("Requested dataStream doesn't exist")


async def test_template_shows_datastream_ids(device, http):
    auth = {"Authorization": f"Bearer {device.srv.api_key}"}
    body = (await http.fetch("GET", f"{device.admin}/api/templates/{device.tid}", headers=auth))[1]
    streams = {ds["pin"]: (ds["id"], ds["alias"]) for ds in json.loads(body)["datastreams"]}
    assert streams["V7"] == (20, "Level") and streams["V20"] == (256, "V20") and streams["V1"] == (1, "V1")


async def test_update_errors(device, http):
    assert await http.error(device.ext("update", "v1=abc")) == (400, "Value doesn't match the Datastream data type.")
    assert await http.error(device.ext("update", "v99=1")) == (400, "No datastream setup for that pin.")
    assert await http.error(device.ext("update", "q1=1")) == (400, "Wrong pin format.")
    assert await http.error(device.base + "/external/api/update?token=bad&v1=1") == (400, "Invalid token.")


async def test_multi_value_update_and_get_all(device, http):
    assert (await http.fetch("GET", device.ext("update", "pin=V4&value=24.03&value=49.84")))[0] == 200
    await http.fetch("GET", device.ext("update", "v2=1.5"))
    status, body, _ = await http.fetch("GET", device.ext("getAll"))
    assert status == 200
    assert json.loads(body) == {"v2": 1.5, "v4": [24.03, 49.84], "v6": 7}
    assert await http.error(device.ext("update", "pin=V4&value=500&value=1")) == (
        400,
        "Value doesn't match the Datastream data type.",
    )


async def test_batch_post(device, http):
    now = _ms()
    points = [[now - 2000, 10], [now - 1000, 11], [now, 12]]
    status, body, _ = await http.fetch("POST", device.ext("batch/update", "pin=v5"), json=points)
    assert (status, body) == (200, "OK")
    assert (await http.fetch("GET", device.ext("get", "v5")))[1] == "12"
    url = device.ext("batch/update", "pin=v5")
    assert await http.error(url, "POST", data=json.dumps(points)) == (400, "Unknown content type.")
    big = [[now, 1]] * 10_001
    assert await http.error(url, "POST", json=big) == (
        400,
        "Too much data in batch. Maximum batch size is 10000 points.",
    )
    assert await http.error(device.ext("batch/update", "pin=zz"), "POST", json=points) == (400, "Wrong pin format.")
    assert await http.error(url, "POST", json=[[now, "text"]]) == (
        400,
        "Value doesn't match the Datastream data type.",
    )
    # 3 points stored above: a full batch would pass the device's 10,000 a day; what is left still fits.
    assert await http.error(url, "POST", json=[[now, 1]] * 10_000) == (
        400,
        "Daily limit of 10000 data points per device is reached (9997 left for today, UTC).",
    )
    assert (await http.fetch("POST", url, json=[[now, 1]] * 9_997))[0] == 200


async def test_property_and_log_event(device, http):
    device.srv.declare_events(device.tid, "overheat")
    assert (await http.fetch("GET", device.ext("update/property", "pin=v1&label=Temp&color=%23FF0000")))[0] == 200
    # Read back through the admin API (the device's id from its token).
    auth = {"Authorization": f"Bearer {device.srv.api_key}"}
    status, body, _ = await http.fetch("GET", f"{device.admin}/api/devices?token={device.token}", headers=auth)
    did = json.loads(body)[0]["id"]
    status, body, _ = await http.fetch("GET", f"{device.admin}/api/devices/{did}/properties", headers=auth)
    assert status == 200 and json.loads(body) == {"V1": {"color": "#FF0000", "label": "Temp"}}
    assert await http.error(device.ext("update/property", "pin=v1")) == (400, "Wrong request format.")
    assert await http.error(device.ext("update/property", "pin=w1&label=x")) == (400, "Wrong pin format.")
    assert (await http.fetch("GET", device.ext("logEvent", "code=overheat&description=hot")))[0] == 200
    assert await http.error(device.ext("logEvent")) == (400, "Event code is not provided.")
    assert await http.error(device.ext("logEvent", "code=undeclared")) == (
        400,
        "Can't find Event with this code in Product template",
    )
    assert await http.error(device.ext("logEvent", "code=overheat")) == (
        400,
        "Events of one code must be at least 1 second apart.",
    )


async def test_history_json(device, http):
    now = _ms()
    hour = now // 3_600_000 * 3_600_000 - 3_600_000
    points = [[hour + 1000, 1], [hour + 2000, 3], [hour + 3_600_000 + 5, 10]]
    assert (await http.fetch("POST", device.ext("batch/update", "pin=v5"), json=points))[0] == 200
    # Read at once: a history read sees the points still waiting to be written behind.
    status, body, _ = await http.fetch("GET", device.ext("data/get", "pin=v5&period=DAY&output=JSON"))
    assert status == 200, body
    out = json.loads(body)
    assert out["rows"] == 3 and [r["value"] for r in out["data"]] == [1, 3, 10]
    q = "dataStreamId=5&period=DAY&granularityType=HOURLY&sourceType=AVG&output=JSON"
    out = json.loads((await http.fetch("GET", device.ext("data/get", q)))[1])
    assert [(r["ts"], r["value"]) for r in out["data"]] == [(hour, 2.0), (hour + 3_600_000, 10.0)]
    first = datetime.fromtimestamp((hour + 1000) / 1000, UTC)
    for fmt, expected in (
        ("ISO_SIMPLE", first.strftime("%Y-%m-%d %H:%M:%S")),  # Blynk: 2018-06-07 22:01:20
        ("ISO_US", first.strftime("%m/%d/%y %I:%M:%S %p")),  # Blynk: 04/10/19 11:45:41 AM
    ):
        q = f"pin=v5&period=DAY&format={fmt}&tzName=UTC&output=JSON"
        assert json.loads((await http.fetch("GET", device.ext("data/get", q)))[1])["data"][0]["ts"] == expected
    q = "pin=v5&period=DAY&granularityType=HOURLY&sourceType=COUNT&output=JSON"
    assert [r["value"] for r in json.loads((await http.fetch("GET", device.ext("data/get", q)))[1])["data"]] == [2, 1]
    assert await http.error(device.ext("data/get", "pin=v5&period=YEAR&output=JSON")) == (
        500,
        "No enum constant cc.blynk.server.core.model.widgets.outputs.graph.Period.YEAR",
    )
    assert await http.error(device.ext("data/get", "pin=v5&sourceType=MEDIAN&output=JSON")) == (
        400,
        "Request with incorrect parameters",
    )
    assert await http.error(device.ext("data/get", "pin=v1&output=JSON")) == (500, "No data")
    assert await http.error(device.base + "/external/api/data/get?pin=v5") == (400, "No token provided.")


async def test_device_meta(device, http):
    assert await http.error(device.ext("device/meta")) == (400, "Wrong metaField format.")
    assert await http.error(device.ext("device/meta", "metaFieldId=Serial")) == (400, "MetaField doesn't exist.")
    admin = f"{device.admin}/api/devices"
    headers = {"X-API-Key": device.srv.api_key}
    devices = json.loads((await http.fetch("GET", admin, headers=headers))[1])
    did = next(d["id"] for d in devices if d["token"] == device.token)
    assert (await http.fetch("PUT", f"{admin}/{did}/meta/Serial", json={"value": "A1"}, headers=headers))[0] == 200
    status, body, _ = await http.fetch("GET", device.ext("device/meta", "metaFieldId=Serial"))
    assert json.loads(body) == {"type": "Text", "value": "A1"}
    assert (await http.fetch("GET", device.ext("device/meta/update", "metaFieldId=Serial&value=B2")))[0] == 200
    assert json.loads((await http.fetch("GET", device.ext("device/meta", "metaFieldId=Serial")))[1])["value"] == "B2"
    assert await http.error(device.ext("device/meta/update", "value=1")) == (400, "Wrong metaField format")
    assert await http.error(device.ext("device/meta/update", "metaFieldId=Nope&value=1")) == (
        400,
        "MetaField doesn't exist",
    )
    assert await http.error(device.ext("device/meta/update", "metaFieldId=Serial")) == (400, "Wrong value")


async def test_unknown_external_path_is_json_404(device, http):
    status, message = await http.error(device.ext("nothing"))
    assert status == 404
