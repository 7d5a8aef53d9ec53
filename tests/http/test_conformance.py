"""Conformance: Blynk's documented examples of the device HTTPS API and of the legacy token API, one
test per example (path, parameters, body, expected status and body shape), against the whole server
in process (real HTTP on 127.0.0.1, real SQLite).

Sources, named in the comment over each page's tests (and the examples in each test's docstring):

* ``DOCS + <page>``: the pages under https://docs.blynk.io/en/blynk.cloud/device-https-api/ (their
  current text, the ``~/revisions/ynmC8lZ6FPocTYWigjcO`` revision where the current one drops an example,
  and the GitBook sources of the same pages where the rendered page cuts the response tabs).
* ``LEGACY``: the legacy server's "HTTP RESTful API" (blynkkk/blynk-server ``apiary.apib``, the
  README's API link); ``rtc`` and ``extra/pin`` from its ``HttpAPILogic``.

The Platform API (``/api/v1/organization/...``, OAuth2) is tested by its own module, not here.
Where a page is ambiguous the test says so and accepts what the page allows, no more; where the server
differs from a page and the fix is not small, the test is ``xfail(strict=True)`` with the difference.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import time
import zipfile

import aiohttp
import pytest

from blynk_server.devclient import DeviceClient
from blynk_server.eventdefs import EventDef
from blynk_server.model import Datastream, MetaField
from blynk_server.timeutil import rtc_seconds
from tests.integration.conftest import hw_url, running
from tests.integration.test_mail import smtp_server

DOCS = "https://docs.blynk.io/en/blynk.cloud/device-https-api/"
LEGACY = "https://github.com/blynkkk/blynk-server/blob/master/apiary.apib"
PRODUCT = "ESP32 QA"  # the product (template) name in the get page's error example
# The get page's example token and others from the pages: never a token of this server.
DOC_TOKEN = "Rps15JICmtRVbFyS_95houlLbm6xIQ2L"

STREAMS = [
    Datastream("v1", "Temperature", "double", history=True),
    Datastream("v2", "Count", "int", history=True),
    Datastream("v3", "Label", "string", history=True),
    Datastream("v4", "Where", "location", history=True),
    Datastream("v5", "Mode", "enum", enum_values=(0, 1, 2), history=True),
    Datastream("v6", "Switch", "int", min=0, max=1, history=True),  # Blynk's Boolean: 0/1 here
    Datastream("v7", "Spare", "int", history=True),  # never written: "No data"
]
FIELDS = [
    MetaField(1, "Serial Number", "text"),
    MetaField(2, "Floors", "number", default="3"),
    MetaField(3, "Meta Name", "text"),  # the update page's examples: id 3, name "Meta Name"
]


def _ms() -> int:
    return time.time_ns() // 1_000_000


class Dev:
    """A device of the conformance template on a running server, and the calls the tests make."""

    def __init__(self, srv, http: aiohttp.ClientSession, token: str) -> None:
        self.srv, self.http, self.token = srv, http, token

    def url(self, path: str) -> str:
        return hw_url(self.srv, path.replace("{token}", self.token))

    async def call(self, method: str, path: str, **kw) -> tuple[int, str, str]:
        async with self.http.request(method, self.url(path), **kw) as r:
            return r.status, await r.text(), r.content_type

    async def get(self, path: str) -> tuple[int, str]:
        return (await self.call("GET", path))[:2]

    async def error(self, method: str, path: str, **kw) -> tuple[int, str]:
        """Status and ``error.message`` of a Blynk-cloud JSON error body (the whole body checked)."""
        status, text, _ = await self.call(method, path, **kw)
        body = json.loads(text)
        assert set(body) == {"error"} and set(body["error"]) == {"message"}, text
        return status, body["error"]["message"]

    @property
    def state(self):
        return self.srv.domain.device_by_token(self.token)


@pytest.fixture
async def srv(tmp_path):
    async with running(tmp_path / "data") as s:
        yield s


@pytest.fixture
async def dev(srv):
    tpl = await srv.provisioning.create_template(PRODUCT, list(STREAMS), fields=list(FIELDS))
    for code in ("high_temp", "firmware_update"):  # the codes of the pages' examples
        await srv.provisioning.put_event_def(tpl.id, EventDef(code, code))
    record = await srv.provisioning.create_device(tpl.id, "Device")
    async with aiohttp.ClientSession() as http:
        yield Dev(srv, http, record.token)


# --- Get Datastream Value ------------------------------------------------------------------------
# DOCS + get-datastream-value


async def test_get_value_by_pin(dev):
    """``get?token={token}&v1`` (example ``...&v1``) → 200, the value as plain text (the page shows
    ``100.00000`` for a double: the digits after the point are not a documented rule)."""
    assert await dev.get("/external/api/update?token={token}&v1=100") == (200, "")
    status, text = await dev.get("/external/api/get?token={token}&v1")
    assert status == 200 and float(text) == 100.0


async def test_get_value_by_datastream_id(dev):
    """``get?token={token}&dataStreamId=1`` → 200, the value."""
    await dev.get("/external/api/update?token={token}&v1=100")
    status, text = await dev.get("/external/api/get?token={token}&dataStreamId=1")
    assert status == 200 and float(text) == 100.0


@pytest.mark.parametrize(
    ("path", "message"),
    [
        pytest.param(f"/external/api/get?token={DOC_TOKEN}&v1", "Invalid token.", id="invalid-token"),
        pytest.param("/external/api/get?token={token}&x1", "Wrong pin format.", id="wrong-pin-format"),
        # "Typo in dataStreamID" → "Wrong pin format.": a misspelt parameter name is read as a pin name.
        pytest.param("/external/api/get?token={token}&datastreamId=1", "Wrong pin format.", id="typo-in-dataStreamId"),
        pytest.param(
            "/external/api/get?token={token}&dataStreamId=99",
            f"Requested dataStream doesn't exist in the product {PRODUCT}",
            id="datastream-not-in-product",
        ),
    ],
)
async def test_get_value_errors(dev, path, message):
    """get-datastream-value: the 400 bodies of both examples."""
    assert await dev.error("GET", path) == (400, message)


# --- Get Multiple Datastream Values, Get All Datastreams Values ----------------------------------
# DOCS + get-multiple-datastream-values


async def _device(srv, name: str, streams: list[Datastream]) -> str:
    tpl = await srv.provisioning.create_template(name, streams)
    return (await srv.provisioning.create_device(tpl.id, name)).token


async def test_get_multiple_values(srv):
    """Example ``get?token=...&v1&v2&v3&v4`` → 200 ``{"v1":1.0,"v2":2,"v3":3,"v4":"string pin"}``
    ("Returned type depends on the datastream type")."""
    streams = [
        Datastream("v1", "One", "double"),
        Datastream("v2", "Two", "int"),
        Datastream("v3", "Three", "int"),
        Datastream("v4", "Four", "string"),
    ]
    async with aiohttp.ClientSession() as http:
        d = Dev(srv, http, await _device(srv, "Multi", streams))
        await d.get("/external/api/batch/update?token={token}&v1=1&v2=2&v3=3&v4=string%20pin")
        status, text, ctype = await d.call("GET", "/external/api/get?token={token}&v1&v2&v3&v4")
    assert (status, ctype) == (200, "application/json")
    body = json.loads(text)
    assert body == {"v1": 1.0, "v2": 2, "v3": 3, "v4": "string pin"}
    assert isinstance(body["v1"], float) and isinstance(body["v2"], int)


async def test_get_multiple_values_errors(dev):
    """The 400 bodies: ``Invalid token.``, ``Wrong pin format.``"""
    assert await dev.error("GET", f"/external/api/get?token={DOC_TOKEN}&v1&v2") == (400, "Invalid token.")
    assert await dev.error("GET", "/external/api/get?token={token}&v1&x2") == (400, "Wrong pin format.")


async def test_get_all(srv):
    """Example ``getAll?token=...`` → 200, every datastream that has a value (analog, digital and
    virtual pins), the page's body ``{"a0":1,...,"d3":0,"v0":1,"v1":1.0,"v2":"string","v3":1,
    "v4":[12.0,11.0]}``."""
    expected = {"a0": 1, "a1": 1, "a2": 1, "a3": 1, "d0": 1, "d1": 1, "d2": 1, "d3": 0}
    expected |= {"v0": 1, "v1": 1.0, "v2": "string", "v3": 1, "v4": [12.0, 11.0]}
    kinds = {"v1": "double", "v2": "string", "v4": "location"}
    streams = [Datastream(pin, pin.upper(), kinds.get(pin, "int")) for pin in expected]
    streams.append(Datastream("v9", "Unset", "int"))  # no value: not in the answer
    async with aiohttp.ClientSession() as http:
        d = Dev(srv, http, await _device(srv, "All", streams))
        query = "&".join(f"{p}={v}" for p, v in expected.items() if p != "v4") + "&v4=12.0&v4=11.0"
        assert (await d.get("/external/api/batch/update?token={token}&" + query))[0] == 200
        status, text, ctype = await d.call("GET", "/external/api/getAll?token={token}")
        assert await d.error("GET", f"/external/api/getAll?token={DOC_TOKEN}") == (400, "Invalid token.")
    assert (status, ctype) == (200, "application/json")
    assert json.loads(text) == expected


# --- Update Datastream Value ---------------------------------------------------------------------
# DOCS + update-datastream-value


async def test_update_by_pin(dev):
    """Example ``update?token=ffujYGgbf805tgsf&v1=100`` → 200, empty body; the value is stored."""
    assert await dev.get("/external/api/update?token={token}&v1=100") == (200, "")
    assert float((await dev.get("/external/api/get?token={token}&v1"))[1]) == 100.0


async def test_update_by_datastream_id(dev):
    """Example ``update?token=...&dataStreamId=1&value=100`` → 200 empty."""
    assert await dev.get("/external/api/update?token={token}&dataStreamId=1&value=100") == (200, "")
    assert float((await dev.get("/external/api/get?token={token}&v1"))[1]) == 100.0


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/external/api/update?token={token}&dataStreamId=4&value=24.03&value=49.84", id="by-dataStreamId"),
        pytest.param("/external/api/update?token={token}&pin=V4&value=24.03&value=49.84", id="by-pin"),
    ],
)
async def test_update_two_values_location(dev, path):
    """The page: "To update Datastreams that have 2 values, for example Location": ``value=lon&value=lat``."""
    assert await dev.get(path) == (200, "")
    status, text, _ = await dev.call("GET", "/external/api/get?token={token}&v4&v1")
    assert json.loads(text)["v4"] == [24.03, 49.84]


# The page is ambiguous: its dataStreamId example (and its pin example in some versions) writes "Value
# doesn't match the Datastream data type" without the final period, the pin example of another version
# with it; both spellings are Blynk's.
TYPE_MISMATCH = {"Value doesn't match the Datastream data type", "Value doesn't match the Datastream data type."}


@pytest.mark.parametrize(
    ("path", "messages"),
    [
        pytest.param(f"/external/api/update?token={DOC_TOKEN}&v1=100", {"Invalid token."}, id="invalid-token"),
        pytest.param("/external/api/update?token={token}&q1=100", {"Wrong pin format."}, id="wrong-pin-format"),
        pytest.param(
            "/external/api/update?token={token}&dataStreamId=one&value=1",
            {"Wrong dataStreamId format."},
            id="wrong-dataStreamId-format",
        ),
        pytest.param("/external/api/update?token={token}&v2=abc", TYPE_MISMATCH, id="value-type-mismatch"),
        pytest.param(
            "/external/api/update?token={token}&v99=1",
            {"No datastream setup for that pin."},
            id="no-datastream-for-pin",
        ),
    ],
)
async def test_update_errors(dev, path, messages):
    """update-datastream-value: every 400 body the page lists."""
    status, message = await dev.error("GET", path)
    assert status == 400 and message in messages


async def test_update_clamps_to_min_max(dev):
    """The value is "bounded with min / max values of datastream settings": V6 is 0..1."""
    assert (await dev.get("/external/api/update?token={token}&v6=5"))[0] == 200
    assert await dev.get("/external/api/get?token={token}&v6") == (200, "1")


async def test_update_trailing_slash_from_widget_pages(dev):
    """Blynk's widget pages (e.g. docs.blynk.io blynk.apps/widgets-displays/level-v) write
    ``/external/api/update/?token={token}&V1=1``."""
    assert await dev.get("/external/api/update/?token={token}&V1=1") == (200, "")
    assert float((await dev.get("/external/api/get?token={token}&v1"))[1]) == 1.0


# --- Update Multiple Datastreams (GET batch/update) ----------------------------------------------
# DOCS + update-multiple-datastreams-api


async def test_batch_update_get(dev):
    """Example ``batch/update?token=...&v1=33&v2=44`` → 200 ``OK``; both values stored (one timestamp)."""
    assert await dev.get("/external/api/batch/update?token={token}&v1=33&v2=44") == (200, "OK")
    _, text, _ = await dev.call("GET", "/external/api/get?token={token}&v1&v2")
    assert json.loads(text) == {"v1": 33.0, "v2": 44}


@pytest.mark.parametrize(
    ("path", "messages"),
    [
        pytest.param(f"/external/api/batch/update?token={DOC_TOKEN}&v1=33", {"Invalid token."}, id="invalid-token"),
        pytest.param("/external/api/batch/update?token={token}&v1=33&q2=44", {"Wrong pin format."}, id="wrong-pin"),
        pytest.param("/external/api/batch/update?token={token}&v1=33&v2=many", TYPE_MISMATCH, id="type-mismatch"),
    ],
)
async def test_batch_update_get_errors(dev, path, messages):
    """The page's 400 bodies."""
    status, message = await dev.error("GET", path)
    assert status == 400 and message in messages


# --- Upload a Set of Timestamped Data (POST batch/update) ----------------------------------------
# DOCS + upload-set-of-data-with-timestamps-api

DOC_BODY = [[1648054765458, 1.0], [1648054825459, 2.0], [1648054885460, 3.0]]


def _now_body(values: list) -> list:
    """The page's body with its timestamps moved to the last minutes (its own are from 2022)."""
    now = _ms()
    return [[now - (len(values) - i) * 60_000, v] for i, v in enumerate(values)]


async def test_batch_post_example_body(dev):
    """Example ``batch/update?token=...&pin=v1``, body ``[[ts,1.0],[ts,2.0],[ts,3.0]]`` → 200; the
    points are history (data/get JSON answers 3 rows)."""
    body = _now_body([p[1] for p in DOC_BODY])
    status, text, _ = await dev.call("POST", "/external/api/batch/update?token={token}&pin=v1", json=body)
    assert (status, text) == (200, "OK")
    _, text, _ = await dev.call("GET", "/external/api/data/get?token={token}&pin=v1&period=DAY&output=JSON")
    assert json.loads(text)["rows"] == 3


async def test_batch_post_doc_timestamps_are_older_than_a_month(dev):
    """The page's literal body (2022 timestamps) under its rule "timestamps could be only one month in
    the past. Older timestamps won't be accepted." → refused, 400, nothing stored."""
    status, _ = await dev.error("POST", "/external/api/batch/update?token={token}&pin=v1", json=DOC_BODY)
    assert status == 400
    assert dev.state.values.get("v1") is None


@pytest.mark.parametrize(
    ("pin", "values", "stored"),
    [
        pytest.param("v3", ["Some value", "Some another value"], "Some another value", id="String"),
        pytest.param("v2", [1, 2], "2", id="Integer"),
        pytest.param("v1", [36.6, 41.2], "41.2", id="Double"),
        pytest.param("v6", [True, False], "0", id="Boolean"),
        pytest.param("v5", [1, 2], "2", id="Enum"),
        pytest.param("v4", [[32.123960, 49.109466]], "32.12396,49.109466", id="Location"),
    ],
)
async def test_batch_post_body_by_datastream_type(dev, pin, values, stored):
    """The page's "Example body based on datastream type" (one row of the page's table each) → 200; the newest
    point is the current value."""
    body = _now_body(values)
    status, text, _ = await dev.call("POST", f"/external/api/batch/update?token={{token}}&pin={pin}", json=body)
    assert (status, text) == (200, "OK")
    assert await dev.get(f"/external/api/get?token={{token}}&{pin}") == (200, stored)


async def test_batch_post_curl_example_needs_json_content_type(dev):
    """cURL example ``-H 'Content-Type: application/json' -d '[[ts,0]]'``: the header is mandatory —
    without it, 400 ``Unknown content type.``; with it, 200 ``OK``."""
    data = json.dumps(_now_body([0]))
    path = "/external/api/batch/update?token={token}&pin=v1"
    assert await dev.error("POST", path, data=data, headers={"Content-Type": "text/plain"}) == (
        400,
        "Unknown content type.",
    )
    assert (await dev.call("POST", path, data=data, headers={"Content-Type": "application/json"}))[:2] == (200, "OK")


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        pytest.param(f"/external/api/batch/update?token={DOC_TOKEN}&pin=v1", 1, "Invalid token.", id="invalid-token"),
        pytest.param("/external/api/batch/update?token={token}&pin=x1", 1, "Wrong pin format.", id="wrong-pin"),
        pytest.param(
            "/external/api/batch/update?token={token}&pin=v2",
            10_001,
            "Too much data in batch. Maximum batch size is 10000 points.",
            id="more-than-10000-points",
        ),
    ],
)
async def test_batch_post_errors(dev, path, body, message):
    """The page's 400 bodies (``Unknown content type.`` in the cURL test above)."""
    points = [[_ms() - 1000 - i, i] for i in range(body)]
    assert await dev.error("POST", path, json=points) == (400, message)


async def test_batch_post_10000_points_a_day(dev):
    """The page: "LIMIT: You can send a max of 10,000 data points per day per device. No matter if you split it
    into multiple sets or send all data once.": 2 × 5,000 pass, the next point is refused (400)."""
    path = "/external/api/batch/update?token={token}&pin=v2"
    base = _ms() - 3_600_000
    for part in range(2):
        body = [[base + part * 5000 + i, i] for i in range(5000)]
        assert (await dev.call("POST", path, json=body))[:2] == (200, "OK")
    status, _ = await dev.error("POST", path, json=[[_ms(), 1]])
    assert status == 400


# --- Update Property -----------------------------------------------------------------------------
# DOCS + update-property (revision ynmC8lZ6FPocTYWigjcO)


@pytest.mark.parametrize(
    ("query", "name", "value"),
    [
        pytest.param("isDisabled=true", "isDisabled", b"true", id="example-isDisabled"),
        pytest.param("label=xxx", "label", b"xxx", id="label"),
        pytest.param("color=%23D3435C", "color", b"#D3435C", id="color"),
    ],
)
async def test_update_property(dev, query, name, value):
    """Example ``update/property?token=...&pin=v1&isDisabled=true`` (properties ``label``,
    ``isDisabled``, ``color``) → 200 empty; the property is kept ("persistent")."""
    assert await dev.get(f"/external/api/update/property?token={{token}}&pin=v1&{query}") == (200, "")
    assert dev.state.properties[("v1", name)] == value


@pytest.mark.parametrize(
    ("path", "message"),
    [
        pytest.param(f"/external/api/update/property?token={DOC_TOKEN}&pin=v1&label=x", "Invalid token.", id="token"),
        pytest.param("/external/api/update/property?token={token}&pin=x1&label=x", "Wrong pin format.", id="pin"),
    ],
)
async def test_update_property_errors(dev, path, message):
    assert await dev.error("GET", path) == (400, message)


# --- Send/Log An Event ---------------------------------------------------------------------------
# DOCS + trigger-events-api (the "Send/Log An Event" page)


@pytest.mark.parametrize(
    ("query", "code", "description"),
    [
        pytest.param("code=high_temp", "high_temp", None, id="code"),
        pytest.param("code=firmware_update&description=test", "firmware_update", "test", id="example-with-description"),
    ],
)
async def test_log_event(dev, query, code, description):
    """Example ``logEvent?token=...&code=firmware_update&description=test`` (``description`` optional)
    → 200 empty; the event is on the device's timeline."""
    assert await dev.get(f"/external/api/logEvent?token={{token}}&{query}") == (200, "")
    events = await dev.srv.domain.events(dev.state, 10)
    assert [(e["code"], e["description"]) for e in events] == [(code, description)]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        pytest.param("", "Event code is not provided.", id="no-code"),
        pytest.param("&code=no_such_event", "Can't find Event with this code in Product template", id="unknown-code"),
    ],
)
async def test_log_event_errors(dev, query, message):
    """The page's 400 bodies for "Typo in code" and "Could not find event code"."""
    assert await dev.error("GET", "/external/api/logEvent?token={token}" + query) == (400, message)


# --- Is Device Connected -------------------------------------------------------------------------
# DOCS + is-device-connected


async def _offline_online(d: Dev, path: str) -> list[tuple[int, str]]:
    """The answers to ``path`` with the device offline, then logged in over the binary protocol."""
    answers = [await d.get(path)]
    host, port = d.srv.hardware.address
    client = await DeviceClient.connect(host, port, d.token)
    try:
        answers.append(await d.get(path))
    finally:
        await client.close()
    return answers


async def test_is_hardware_connected(dev):
    """Example ``isHardwareConnected?token=...`` → 200 ``true`` or ``false``."""
    path = "/external/api/isHardwareConnected?token={token}"
    assert await _offline_online(dev, path) == [(200, "false"), (200, "true")]


async def test_is_hardware_connected_invalid_token(dev):
    assert await dev.error("GET", f"/external/api/isHardwareConnected?token={DOC_TOKEN}") == (400, "Invalid token.")


# --- Get Historical Data From Device -------------------------------------------------------------
# DOCS + get-device-report

LINK = re.compile(r"^https?://[^/]+/device_data_(\d+)_\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d(_[A-Za-z0-9_-]+)?\.zip$")


async def _history(dev: Dev) -> None:
    body = [[_ms() - 120_000, 21.5], [_ms() - 60_000, 22.5]]
    assert (await dev.call("POST", "/external/api/batch/update?token={token}&pin=v1", json=body))[0] == 200


async def _zip_rows(dev: Dev, link: str) -> dict[str, list[list[str]]]:
    async with dev.http.get(link) as r:
        assert r.status == 200
        data = await r.read()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {n: list(csv.reader(io.StringIO(z.read(n).decode()))) for n in z.namelist()}


async def test_data_get_full_example(dev):
    """The page's URL with every parameter (``period``, ``granularityType``, ``sourceType``, ``tzName``,
    ``format``, ``output=FILE``, ``pin``) → 200 ``{"link":"https://server_address/device_data_2592_
    2021-04-13T02-27-11.zip"}`` (here with an unguessable suffix before ``.zip``); a zip of CSVs."""
    await _history(dev)
    q = "period=DAY&granularityType=RAW_DATA&sourceType=AVG&tzName=UTC&format=TS&output=FILE&pin=v1"
    status, text, _ = await dev.call("GET", "/external/api/data/get?token={token}&" + q)
    assert status == 200
    link = json.loads(text)["link"]
    assert LINK.match(link) and int(LINK.match(link).group(1)) == dev.state.id
    rows = next(iter((await _zip_rows(dev, link)).values()))
    assert rows[0] == ["ts", "value"] and [r[1] for r in rows[1:]] == ["21.5", "22.5"]


async def test_data_get_defaults(dev):
    """Every parameter but the token is optional: MONTH, RAW_DATA, AVG, UTC, TS, output FILE, and
    without ``pin``/``dataStreamId`` every datastream."""
    await _history(dev)
    status, text, _ = await dev.call("GET", "/external/api/data/get?token={token}")
    assert status == 200
    files = await _zip_rows(dev, json.loads(text)["link"])
    assert len(files) == 1 and next(iter(files)).startswith("v1")


async def test_data_get_by_datastream_id_json(dev):
    """``dataStreamId`` instead of ``pin``; ``output=JSON`` (the other documented value)."""
    await _history(dev)
    status, text, ctype = await dev.call("GET", "/external/api/data/get?token={token}&dataStreamId=1&output=JSON")
    assert (status, ctype) == (200, "application/json")
    assert json.loads(text)["rows"] == 2


async def test_data_get_use_case(srv):
    """The page's "Use case example": a garage door on V6 with datastream ID 20, today's data by the
    minute, ``YYYY-MM-DD HH:MM:SS``, with the day's events: ``data/get?token=...&period=DAY&
    granularityType=MINUTE&sourceType=AVG&tzName=America/New_York&format=ISO_SIMPLE&sendEvents=true&
    output=FILE&dataStreamId=20`` (the text says Sydney, the URL New York: the URL is the example) →
    a link to a zip with the minutes and the events."""
    tpl = await srv.provisioning.create_template("Garage", [Datastream("v6", "Door", "int", history=True, id=20)])
    await srv.provisioning.put_event_def(tpl.id, EventDef("door_open", "Door open"))
    token = (await srv.provisioning.create_device(tpl.id, "Garage")).token
    async with aiohttp.ClientSession() as http:
        d = Dev(srv, http, token)
        await d.call("POST", "/external/api/batch/update?token={token}&pin=v6", json=[[_ms() - 120_000, 1]])
        assert (await d.get("/external/api/logEvent?token={token}&code=door_open"))[0] == 200
        q = (
            "period=DAY&granularityType=MINUTE&sourceType=AVG&tzName=America/New_York&format=ISO_SIMPLE"
            "&sendEvents=true&output=FILE&dataStreamId=20"
        )
        status, text, _ = await d.call("GET", "/external/api/data/get?token={token}&" + q)
        assert status == 200 and LINK.match(json.loads(text)["link"])
        files = await _zip_rows(d, json.loads(text)["link"])
    minutes = next(rows for name, rows in files.items() if name.startswith("v6"))
    assert len(minutes) == 2 and float(minutes[1][1]) == 1.0  # one minute's average
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:00", minutes[1][0])
    assert [r[1] for r in files["events.csv"][1:]] == ["door_open"]


async def test_data_get_json_output_example(dev):
    """The page's "JSON Output example": ``{"meta": [{"name": "data_stream_name", "type": "String"},
    {"name": "ts", ...}, {"name": "value", "type": "Float64"}], "data": [{"data_stream_name": ..., "ts": ...,
    "value": 1.61...}], "rows": 1, "rows_before_limit_at_least": 1}`` (the page's ``ts`` is unquoted and
    typed ``UInt32``: not JSON as printed, so the ``ts`` type is not checked here)."""
    await _history(dev)
    status, text, _ = await dev.call("GET", "/external/api/data/get?token={token}&pin=v1&output=JSON")
    body = json.loads(text)
    assert status == 200 and set(body) == {"meta", "data", "rows", "rows_before_limit_at_least"}
    assert [m["name"] for m in body["meta"]] == ["data_stream_name", "ts", "value"]
    assert body["meta"][2] == {"name": "value", "type": "Float64"}
    assert [(r["data_stream_name"], r["value"]) for r in body["data"]] == [("Temperature", 21.5), ("Temperature", 22.5)]
    assert body["rows"] == body["rows_before_limit_at_least"] == 2


@pytest.mark.parametrize(
    ("fmt", "pattern"),
    [
        pytest.param("ISO_US", r"\d\d/\d\d/\d\d \d\d:\d\d:\d\d [AP]M", id="ISO_US-04/10/19-11:45:41-AM"),
        pytest.param("ISO_SIMPLE", r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", id="ISO_SIMPLE-2018-06-07-22:01:20"),
        pytest.param("TS", r"\d{13}", id="TS"),
    ],
)
async def test_data_get_formats(dev, fmt, pattern):
    """``format``: TS (default), ISO_US ``04/10/19 11:45:41 AM``, ISO_SIMPLE ``2018-06-07 22:01:20``."""
    await _history(dev)
    status, text, _ = await dev.call("GET", f"/external/api/data/get?token={{token}}&pin=v1&format={fmt}")
    assert status == 200
    rows = next(iter((await _zip_rows(dev, json.loads(text)["link"])).values()))
    assert all(re.fullmatch(pattern, r[0]) for r in rows[1:]), rows


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        pytest.param("/external/api/data/get?pin=v1", 400, "No token provided.", id="no-token"),
        pytest.param(f"/external/api/data/get?token={DOC_TOKEN}&pin=v1", 400, "Invalid token.", id="invalid-token"),
        pytest.param(
            "/external/api/data/get?token={token}&pin=v1&period=THREE_MONTHS&granularityType=RAW_DATA",
            400,
            "Request with incorrect parameters",
            id="RAW_DATA-not-for-THREE_MONTHS",
        ),
        pytest.param("/external/api/data/get?token={token}&pin=x1", 400, "Wrong pin format.", id="wrong-pin"),
        pytest.param(
            "/external/api/data/get?token={token}&pin=v1&period=YEAR",
            500,
            "No enum constant cc.blynk.server.core.model.widgets.outputs.graph.Period.YEAR",
            id="period-YEAR",
        ),
        pytest.param("/external/api/data/get?token={token}&pin=v7", 500, "No data", id="no-data"),
    ],
)
async def test_data_get_errors(dev, path, status, message):
    """Every 400 and 500 body the page lists."""
    assert await dev.error("GET", path) == (status, message)


# --- Get Device Metadata Value -------------------------------------------------------------------
# DOCS + get-device-metafield-value (revision ynmC8lZ6FPocTYWigjcO)


async def test_meta_get_by_id(dev):
    """Example ``device/meta?token=...&metaFieldId=1`` → 200 ``{"type":"Text","value":"device value"}``."""
    assert await dev.get("/external/api/device/meta/update?token={token}&metaFieldId=1&value=device%20value") == (
        200,
        "",
    )
    status, text, _ = await dev.call("GET", "/external/api/device/meta?token={token}&metaFieldId=1")
    assert status == 200 and json.loads(text) == {"type": "Text", "value": "device value"}


async def test_meta_get_by_exact_name(dev):
    """A field by its "exact name (case sensitive)": the name answers, another case does not."""
    await dev.get("/external/api/device/meta/update?token={token}&metaFieldId=1&value=SN-1")
    status, text, _ = await dev.call("GET", "/external/api/device/meta?token={token}&metaFieldId=Serial%20Number")
    assert status == 200 and json.loads(text)["value"] == "SN-1"
    path = "/external/api/device/meta?token={token}&metaFieldId=serial%20number"
    assert await dev.error("GET", path) == (400, "MetaField doesn't exist.")


@pytest.mark.xfail(
    strict=True,
    reason="docs: 'loc.latlon is special hardcoded internal meta field to get device location \"lat lon\"'; "
    "this server has no device location, so device/meta?metaFieldId=loc.latlon answers 400 "
    '"MetaField doesn\'t exist."',
)
async def test_meta_get_loc_latlon(dev):
    status, _ = await dev.get("/external/api/device/meta?token={token}&metaFieldId=loc.latlon")
    assert status == 200


@pytest.mark.parametrize(
    ("path", "message"),
    [
        pytest.param(f"/external/api/device/meta?token={DOC_TOKEN}&metaFieldId=1", "Invalid token.", id="token"),
        pytest.param("/external/api/device/meta?token={token}", "Wrong metaField format.", id="no-metaFieldId"),
        pytest.param(
            "/external/api/device/meta?token={token}&metaFieldId=99", "MetaField doesn't exist.", id="no-field"
        ),
    ],
)
async def test_meta_get_errors(dev, path, message):
    assert await dev.error("GET", path) == (400, message)


# --- Update Device Metadata Value ----------------------------------------------------------------
# DOCS + get-device-metafield-value-1 (the "Update Device Metadata Value" page)


@pytest.mark.parametrize(
    ("query", "ref"),
    [
        pytest.param("metaFieldId=3&value=Sample+value", "3", id="example-metaFieldId"),
        pytest.param("metaFieldName=Meta%20Name&value=Sample%20value", "Meta%20Name", id="example-metaFieldName"),
    ],
)
async def test_meta_update(dev, query, ref):
    """Examples ``device/meta/update?token=...&metaFieldId=3&value=Sample+value`` and
    ``...&metaFieldName=Meta%20Name&value=Sample%20value`` → 200; the value reads back."""
    assert await dev.get(f"/external/api/device/meta/update?token={{token}}&{query}") == (200, "")
    _, text, _ = await dev.call("GET", f"/external/api/device/meta?token={{token}}&metaFieldId={ref}")
    assert json.loads(text) == {"type": "Text", "value": "Sample value"}


async def test_meta_update_number(dev):
    """A number field takes a number (its answer typed)."""
    assert await dev.get("/external/api/device/meta/update?token={token}&metaFieldId=2&value=12") == (200, "")
    _, text, _ = await dev.call("GET", "/external/api/device/meta?token={token}&metaFieldId=2")
    assert json.loads(text)["value"] == 12


@pytest.mark.parametrize(
    ("query", "message"),
    [
        pytest.param("&value=1", "Wrong metaField format", id="no-metaFieldId"),
        pytest.param("&metaFieldId=99&value=1", "MetaField doesn't exist", id="no-field"),
        pytest.param("&metaFieldId=2&value=many", "Wrong value", id="wrong-value"),
    ],
)
async def test_meta_update_errors(dev, query, message):
    """The page's 400 bodies (without the final period device/meta's have)."""
    assert await dev.error("GET", "/external/api/device/meta/update?token={token}" + query) == (400, message)


async def test_meta_update_invalid_token(dev):
    path = f"/external/api/device/meta/update?token={DOC_TOKEN}&metaFieldId=3&value=x"
    assert await dev.error("GET", path) == (400, "Invalid token.")


# --- Upload a File -------------------------------------------------------------------------------
# DOCS + upload-a-file

UPLOAD_URL = re.compile(r"^https?://[^/]+/device_uploads/(\d+)/[^/]+$")


async def _upload(dev: Dev, name: str, data: bytes) -> tuple[int, str]:
    form = aiohttp.FormData()
    form.add_field("upfile", data, filename=name, content_type="application/octet-stream")
    status, text, _ = await dev.call("POST", "/external/api/upload?token={token}", data=form)
    return status, text


async def test_upload_curl_example(dev):
    """``curl -X POST -F upfile=@image.png .../external/api/upload?token={token}`` → 200, the body a URL
    ``https://fra1.blynk.cloud/device_uploads/35587/8vPs4QSrfKOXyxZnXJhz0lA6cax7WQe8.png`` of the file."""
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
    status, url = await _upload(dev, "image.png", png)
    assert status == 200 and UPLOAD_URL.match(url) and url.endswith(".png")
    async with dev.http.get(url) as r:
        assert (r.status, await r.read()) == (200, png)


async def test_upload_raw_multipart_example(dev):
    """The page's raw request: ``Content-Type: multipart/form-data; boundary=someboundary``, one part
    ``name="upfile"; filename="file.png"``, content ``*My awesome poem*`` → 200, a URL."""
    body = (
        b"--someboundary\r\n"
        b'Content-Disposition: form-data; name="upfile"; filename="file.png"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
        b"*My awesome poem*\r\n"
        b"--someboundary--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=someboundary"}
    status, url, _ = await dev.call("POST", "/external/api/upload?token={token}", data=body, headers=headers)
    assert status == 200 and UPLOAD_URL.match(url)
    async with dev.http.get(url) as r:
        assert await r.read() == b"*My awesome poem*"


async def test_upload_invalid_token(dev):
    form = aiohttp.FormData()
    form.add_field("upfile", b"x", filename="a.txt")
    assert await dev.error("POST", f"/external/api/upload?token={DOC_TOKEN}", data=form) == (400, "Invalid token.")


async def test_upload_ten_files_oldest_deleted(dev):
    """The page: "Each device may hold up to 10 files. If the limit is exceeded - the oldest file will be deleted." """
    urls = [(await _upload(dev, f"f{i}.txt", b"%d" % i))[1] for i in range(11)]
    async with dev.http.get(urls[0]) as r:
        assert r.status == 404
    for url in urls[1:]:
        async with dev.http.get(url) as r:
            assert r.status == 200


async def test_upload_same_name_overrides(dev):
    """The page: "Uploading a file with the same specified name, that was uploaded before, would override
    the existing file."
    """
    first = (await _upload(dev, "poem.txt", b"one"))[1]
    second = (await _upload(dev, "poem.txt", b"two"))[1]
    assert first == second
    async with dev.http.get(second) as r:
        assert await r.read() == b"two"


async def test_upload_file_up_to_5mb(dev):
    """ "Each file should be up to 5MB": 5 MB is stored, one byte more is refused (a 4xx; the page gives
    no answer for it) and nothing is kept."""
    five_mb = 5 * 1024 * 1024
    status, url = await _upload(dev, "big.bin", b"x" * five_mb)
    assert status == 200 and UPLOAD_URL.match(url)
    stored = sorted(p for p in (dev.srv.settings.data_dir / "uploads").rglob("*") if p.is_file())
    assert len(stored) == 1
    status, _ = await _upload(dev, "bigger.bin", b"x" * (five_mb + 1))
    assert 400 <= status < 500
    assert sorted(p for p in (dev.srv.settings.data_dir / "uploads").rglob("*") if p.is_file()) == stored


async def test_upload_limit_reached(tmp_path):
    """403 ``{"error":{"message":"File uploads limit has been reached."}}`` once a device used its
    uploads (1,000 on blynk.cloud; 2 here, the ``uploads_per_device`` setting)."""
    async with running(tmp_path / "data", uploads_per_device=2) as srv:
        tpl = await srv.provisioning.create_template(PRODUCT, [Datastream("v1", "V", "int")])
        token = (await srv.provisioning.create_device(tpl.id, "Up")).token
        async with aiohttp.ClientSession() as http:
            d = Dev(srv, http, token)
            assert [(await _upload(d, f"{i}.txt", b"x"))[0] for i in range(2)] == [200, 200]
            form = aiohttp.FormData()
            form.add_field("upfile", b"x", filename="3.txt")
            assert await d.error("POST", "/external/api/upload?token={token}", data=form) == (
                403,
                "File uploads limit has been reached.",
            )


# --- Provision Device ----------------------------------------------------------------------------
# DOCS: the "Provision Device" page of the Device HTTPS API

PROVISION_EXAMPLES = [
    pytest.param("", id="example-token-templateId"),
    pytest.param("&build=Oct+1&ver=1.0.0&type=MCU&fwType=TMPL8sRFwcfqL&blVer=2.27.2&boType=ESP32", id="example-all"),
]


@pytest.mark.parametrize("extra", PROVISION_EXAMPLES)
async def test_provision(srv, extra):
    """Examples ``provision?token=...&templateId=TMPL8sRFwcfqL`` (and with ``build``, ``ver``, ``type``,
    ``fwType``, ``blVer``, ``boType``) → 200 for a device holding a provision token of that template."""
    tpl = await srv.provisioning.create_template(PRODUCT, [Datastream("v1", "V", "int")], template_id="TMPL8sRFwcfqL")
    await srv.device_provisioning.set_allowed(tpl.id, True)
    issued = await srv.device_provisioning.issue_provision_token(tpl.id)
    async with aiohttp.ClientSession() as http:
        d = Dev(srv, http, issued.token)
        assert (await d.get("/external/api/provision?token={token}&templateId=TMPL8sRFwcfqL" + extra))[0] == 200


async def test_provision_invalid_token(srv):
    """400 ``Invalid token.`` ("Could not find a device token"): an unknown token, or a provision token
    presented with another template's id."""
    tpl = await srv.provisioning.create_template(PRODUCT, [Datastream("v1", "V", "int")], template_id="TMPL8sRFwcfqL")
    await srv.device_provisioning.set_allowed(tpl.id, True)
    issued = await srv.device_provisioning.issue_provision_token(tpl.id)
    async with aiohttp.ClientSession() as http:
        d = Dev(srv, http, issued.token)
        assert await d.error("GET", "/external/api/provision?token={token}&templateId=TMPLother") == (
            400,
            "Invalid token.",
        )
        assert await d.error("GET", f"/external/api/provision?token={DOC_TOKEN}&templateId=TMPL8sRFwcfqL") == (
            400,
            "Invalid token.",
        )


# --- Legacy token API (LEGACY: apiary.apib "Blynk HTTP RESTful API") -----------------------------


@pytest.fixture
async def old(srv):
    """A device whose template has V0, V1 and V2 (the legacy server's pins of a project's widgets; V2
    keeps history, as every pin of the legacy server did)."""
    tpl = await srv.provisioning.create_template(
        "Legacy",
        [Datastream("v0", "W", "string"), Datastream("v1", "X", "int"), Datastream("v2", "H", "int", history=True)],
    )
    record = await srv.provisioning.create_device(tpl.id, "Old")
    async with aiohttp.ClientSession() as http:
        yield Dev(srv, http, record.token)


async def test_legacy_get_pin_value_shapes(old):
    """``GET /{auth_token}/get/{pin}`` → 200 JSON array: ``["1"]``, ``["1","2"]``."""
    assert (await old.get("/{token}/update/V1?value=1"))[0] == 200
    status, text, ctype = await old.call("GET", "/{token}/get/V1")
    assert (status, ctype, json.loads(text)) == (200, "application/json", ["1"])
    assert (await old.get("/{token}/update/V0?value=1&value=2"))[0] == 200
    assert json.loads((await old.get("/{token}/get/V0"))[1]) == ["1", "2"]


async def test_legacy_get_pin_value_empty(old):
    """``GET /{auth_token}/get/{pin}`` → 200 ``[]`` for a pin of the project that has no value yet."""
    status, text, _ = await old.call("GET", "/{token}/get/V1")
    assert (status, json.loads(text)) == (200, [])


@pytest.mark.parametrize(
    ("path", "message"),
    [
        pytest.param("/4ae3851817194e2596cf1b7103603ef8/get/D8", "Invalid token.", id="invalid-token"),
        pytest.param("/{token}/get/X8", "Wrong pin format.", id="wrong-pin"),
        # The apiary writes both "Requested pin not exists in app." (get) and "Requested pin doesn't
        # exist in the app." (update); the legacy server's HttpAPILogic sends the second for both.
        pytest.param("/{token}/get/V9", "Requested pin doesn't exist in the app.", id="pin-not-in-app"),
    ],
)
async def test_legacy_get_pin_errors(old, path, message):
    """The 400 ``plain/text`` bodies of "Get pin value"."""
    assert await old.call("GET", path) == (400, message, "text/plain")


async def test_legacy_write_pin_via_get(old):
    """``GET /{auth_token}/update/{pin}?value={value}`` (example ``D8``, ``1``) → 200."""
    assert await old.get("/{token}/update/D8?value=1") == (200, "")
    assert json.loads((await old.get("/{token}/get/D8"))[1]) == ["1"]


@pytest.mark.parametrize("body", [["1"], ["1", "2"]], ids=["one-value", "two-values"])
async def test_legacy_write_pin_via_put(old, body):
    """``PUT /{auth_token}/update/{pin}`` with ``application/json`` ``["1"]`` or ``["1","2"]`` → 200."""
    assert (await old.call("PUT", "/{token}/update/V0", json=body))[0] == 200
    assert json.loads((await old.get("/{token}/get/V0"))[1]) == body


async def test_legacy_put_needs_json(old):
    """500 ``Unexpected content type. Expecting application/json.``"""
    status, text, _ = await old.call("PUT", "/{token}/update/V0", data='["1"]', headers={"Content-Type": "text/plain"})
    assert (status, text) == (500, "Unexpected content type. Expecting application/json.")


async def test_legacy_extra_pin(old):
    """``PUT /{token}/extra/pin/{pin}`` ``[{"value": ..., "timestamp": ms}, …]`` (HttpAPILogic) → 200:
    every point to history with its timestamp, the first one the current value."""
    now = _ms()
    body = [{"value": "7", "timestamp": now - 2000}, {"value": "8", "timestamp": now - 1000}]
    assert (await old.call("PUT", "/{token}/extra/pin/V2", json=body))[0] == 200
    assert json.loads((await old.get("/{token}/get/V2"))[1]) == ["7"]
    store = old.srv.store
    assert await store.run(store.history, old.state.id, "v2") == [(now - 2000, b"7"), (now - 1000, b"8")]


@pytest.mark.parametrize(
    ("query", "name", "value"),
    [
        pytest.param("label=MyNewLabel", "label", b"MyNewLabel", id="label"),
        pytest.param("color=%2323C48E", "color", b"#23C48E", id="color-%23-encoded"),
    ],
)
async def test_legacy_set_widget_property(old, query, name, value):
    """``GET /{auth_token}/update/{pin}?{property}={value}`` (``V0``, ``label=MyNewLabel``; ``#23C48E``
    passed as ``%2323C48E``) → 200."""
    assert (await old.get(f"/{{token}}/update/V0?{query}"))[0] == 200
    assert old.state.properties[("v0", name)] == value


async def test_legacy_is_hardware_connected(old):
    """``GET /{auth_token}/isHardwareConnected`` → 200 ``true``/``false``; 400 ``Invalid token.``"""
    assert await _offline_online(old, "/{token}/isHardwareConnected") == [(200, "false"), (200, "true")]
    assert await old.get("/4ae3851817194e2596cf1b7103603ef8/isHardwareConnected") == (400, "Invalid token.")


async def test_legacy_is_app_connected(old):
    """``GET /{auth_token}/isAppConnected`` → 200 ``false`` (no app connects to this server)."""
    assert await old.get("/{token}/isAppConnected") == (200, "false")


async def test_legacy_notify(old):
    """``POST /{auth_token}/notify`` ``{"body": ...}`` → 200; an empty body → 400 ``Body is empty or
    larger than 255 chars.``; not JSON → 500 ``Unexpected content type. Expecting application/json.``"""
    assert (await old.call("POST", "/{token}/notify", json={"body": "message no less than 255 chars."}))[0] == 200
    assert (await old.call("POST", "/{token}/notify", json={"body": ""}))[:2] == (
        400,
        "Body is empty or larger than 255 chars.",
    )
    assert (await old.call("POST", "/{token}/notify", data="{}", headers={"Content-Type": "text/plain"}))[:2] == (
        500,
        "Unexpected content type. Expecting application/json.",
    )


async def test_legacy_email_without_mail(old):
    """``POST /{auth_token}/email`` ``{"to","title","subj"}``: with no e-mail set up (no SMTP here, the
    legacy "no email widget") → 400 ``No email widget.``"""
    body = {"to": "email", "title": "title", "subj": "subj"}
    assert (await old.call("POST", "/{token}/email", json=body))[:2] == (400, "No email widget.")


async def test_legacy_email_with_mail(tmp_path):
    """``POST /{auth_token}/email`` ``{"to": "email", "title": "title", "subj": "subj"}`` → 200 (``title``
    is the mail's body); missing ``to``/``subj`` → 400 ``Email body is wrong. Missing or empty fields 'to',
    'subj'.``"""
    async with smtp_server() as (port, inbox):
        settings = {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_starttls": False}
        async with running(tmp_path / "data", **settings) as srv:
            token = await _device(srv, "Mail", [Datastream("v1", "V", "int")])
            async with aiohttp.ClientSession() as http:
                d = Dev(srv, http, token)
                body = {"to": "owner@example.com", "title": "title", "subj": "subj"}
                assert (await d.call("POST", "/{token}/email", json=body))[0] == 200
                _, rcpt, msg = await inbox.next()
                assert rcpt == ["owner@example.com"] and msg["Subject"] == "subj"
                assert msg.get_content().strip() == "title"
                assert (await d.call("POST", "/{token}/email", json={"title": "x"}))[:2] == (
                    400,
                    "Email body is wrong. Missing or empty fields 'to', 'subj'.",
                )


async def test_legacy_pin_history_data(old):
    """``GET /{auth_token}/data/{pin}`` → 200 ``application/x-gzip`` (the legacy server answers with a
    redirect to the ``.csv.gz``, followed here): gzipped CSV of the pin's history."""
    tpl = await old.srv.provisioning.create_template("Hist", [Datastream("v8", "H", "double", history=True)])
    token = (await old.srv.provisioning.create_device(tpl.id, "H")).token
    d = Dev(old.srv, old.http, token)
    point = [[_ms() - 1000, 1.5]]
    assert (await d.call("POST", "/external/api/batch/update?token={token}&pin=v8", json=point))[0] == 200
    async with old.http.get(d.url("/{token}/data/V8")) as r:
        assert r.status == 200
        text = gzip.decompress(await r.read()).decode()
    assert "1.5" in text


async def test_legacy_rtc(old):
    """``GET /{auth_token}/rtc`` (HttpAPILogic) → 200 ``[<seconds>]``, the device's wall clock (UTC for
    a device without a timezone)."""
    before = rtc_seconds(None)
    status, text = await old.get("/{token}/rtc")
    after = rtc_seconds(None)
    (seconds,) = json.loads(text)
    assert status == 200 and before <= seconds <= after
