"""The device API's files, in process (the whole server on the test's loop, real HTTP on 127.0.0.1):
``data/get`` with its default ``output=FILE`` (a link to a zip of CSVs) and without a pin (every
datastream), the daily points limit of ``batch/update``, ``upload`` (``upfile``) and its limits, and
the export store's bounds and expiry."""

from __future__ import annotations

import csv
import io
import time
import zipfile

import aiohttp
import pytest

from blynk_server.export import Exports
from blynk_server.model import Datastream
from tests.integration.conftest import hw_url, running


def _ms() -> int:
    return time.time_ns() // 1_000_000


async def _device(srv) -> str:
    tpl = await srv.provisioning.create_template(
        "Files",
        [
            Datastream("v1", "Temperature", "double"),
            Datastream("v2", "Label", "string"),
            Datastream("v3", "Where", "location"),
            Datastream("v4", "Empty", "int"),
            Datastream("v5", "Counted", "int", id=300),  # an id apart from its pin, as Blynk's
        ],
    )
    return (await srv.provisioning.create_device(tpl.id, "Logger")).token


async def _batch(http, srv, token: str, pin: str, points: list) -> None:
    async with http.post(hw_url(srv, f"/external/api/batch/update?token={token}&pin={pin}"), json=points) as r:
        assert r.status == 200, await r.text()


@pytest.fixture
async def srv(tmp_path):
    async with running(
        tmp_path / "data", data_export_max_files=3, upload_max_size=1000, upload_files_per_device=2
    ) as s:
        yield s


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def _zip(http, link: str) -> dict[str, list[list[str]]]:
    async with http.get(link) as r:
        assert r.status == 200 and r.content_type == "application/zip"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        data = await r.read()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n: list(csv.reader(io.StringIO(zf.read(n).decode()))) for n in zf.namelist()}


async def test_data_get_file_is_a_link_to_a_zip_of_csv(srv, http):
    token = await _device(srv)
    now = _ms()
    await _batch(http, srv, token, "v1", [[now - 2000, 1.5], [now - 1000, 2.5]])
    await _batch(http, srv, token, "v2", [[now - 1500, "a,b"]])
    await _batch(http, srv, token, "v3", [[now - 500, [32.1, 49.1]]])
    # The documented default: output=FILE → {"link": ".../device_data_<id>_<time>....zip"}.
    async with http.get(hw_url(srv, f"/external/api/data/get?token={token}&pin=v1")) as r:
        assert r.status == 200
        link = (await r.json())["link"]
    host, port = srv.hardware.address
    assert link.startswith(f"http://{host}:{port}/device_data_") and link.endswith(".zip")
    assert await _zip(http, link) == {
        "v1_Temperature.csv": [["ts", "value"], [str(now - 2000), "1.5"], [str(now - 1000), "2.5"]]
    }
    # No pin: every datastream with data, one CSV each (multi-value joined with commas), ISO_SIMPLE times;
    # sendEvents=true adds the device's events of the period.
    srv.domain.log_event(srv.domain.authenticate(token), "notify", "Hello")
    async with http.get(hw_url(srv, f"/external/api/data/get?token={token}&format=ISO_SIMPLE&sendEvents=true")) as r:
        files = await _zip(http, (await r.json())["link"])
    assert sorted(files) == ["events.csv", "v1_Temperature.csv", "v2_Label.csv", "v3_Where.csv"]
    assert files["events.csv"][0] == ["ts", "code", "level", "description"]
    assert files["events.csv"][1][1:] == ["notify", "info", "Hello"]
    assert files["v2_Label.csv"][1][1] == "a,b" and files["v3_Where.csv"][1][1] == "32.1,49.1"
    assert len(files["v1_Temperature.csv"][1][0]) == len("2018-06-07 22:01:20")
    # dataStreamId is the datastream's own id (300 is V5).
    await _batch(http, srv, token, "v5", [[now - 100, 7]])
    async with http.get(hw_url(srv, f"/external/api/data/get?token={token}&dataStreamId=300")) as r:
        assert await _zip(http, (await r.json())["link"]) == {
            "v5_Counted.csv": [["ts", "value"], [str(now - 100), "7"]]
        }
    # Unknown or altered names are not found; the link is the only key.
    assert (await http.get(link.replace("device_data_", "device_data_0"))).status == 404


async def test_data_get_json_every_datastream_and_parameters(srv, http):
    token = await _device(srv)
    now = _ms()
    await _batch(http, srv, token, "v1", [[now - 2000, 1], [now - 1000, 3]])
    await _batch(http, srv, token, "v2", [[now - 1500, "x"]])
    base = f"/external/api/data/get?token={token}&output=JSON"
    async with http.get(hw_url(srv, base + "&period=DAY")) as r:
        out = await r.json()
    assert [(d["dataStreamId"], d["pin"], d["value"]) for d in out["data"]] == [
        (1, "v1", 1.0),
        (1, "v1", 3.0),
        (2, "v2", "x"),
    ]
    assert out["rows"] == 3 and [m["name"] for m in out["meta"]] == ["ts", "dataStreamId", "pin", "value"]
    async with http.get(hw_url(srv, base + "&sendEvents=true&granularityType=DAILY&sourceType=SUM")) as r:
        assert r.status == 200
    for bad in ("output=CSV", "sendEvents=maybe", "tzName=Mars/Base"):
        async with http.get(hw_url(srv, f"/external/api/data/get?token={token}&{bad}")) as r:
            assert (r.status, (await r.json())["error"]["message"]) == (400, "Request with incorrect parameters")
    async with http.get(hw_url(srv, f"/external/api/data/get?token={token}&pin=v4")) as r:
        assert (r.status, (await r.json())["error"]["message"]) == (500, "No data")


async def test_batch_points_per_day_is_per_device(tmp_path, http):
    async with running(tmp_path / "data", batch_points_per_day=5) as srv:
        a, b = await _device(srv), await _device(srv)
        now = _ms()
        await _batch(http, srv, a, "v1", [[now - i, i] for i in range(4)])
        url = hw_url(srv, f"/external/api/batch/update?token={a}&pin=v1")
        async with http.post(url, json=[[now, 1], [now, 2]]) as r:
            assert r.status == 400
            assert (await r.json())["error"]["message"] == (
                "Daily limit of 5 data points per device is reached (1 left for today, UTC)."
            )
        await _batch(http, srv, a, "v1", [[now, 9]])  # the one left
        await _batch(http, srv, b, "v1", [[now - i, i] for i in range(5)])  # another device's own 5
        old = now - 32 * 24 * 3600 * 1000
        async with http.post(hw_url(srv, f"/external/api/batch/update?token={b}&pin=v2"), json=[[old, "x"]]) as r:
            assert (await r.json())["error"]["message"] == "Timestamp is more than 1 month old."


def _form(name: str, content: bytes, field: str = "upfile") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field(field, content, filename=name, content_type="application/octet-stream")
    return form


async def test_upload_stores_serves_and_bounds(srv, http):
    token = await _device(srv)
    url = hw_url(srv, f"/external/api/upload?token={token}")
    async with http.post(url, data=_form("../../etc/poem.txt", b"My awesome poem")) as r:
        assert r.status == 200
        link = await r.text()
    host, port = srv.hardware.address
    dev_id = srv.domain.authenticate(token).id
    prefix = f"http://{host}:{port}/device_uploads/{dev_id}/"
    assert link.startswith(prefix) and link.endswith(".txt") and len(link) == len(prefix) + 32 + 4
    async with http.get(link) as r:
        assert (r.status, await r.read(), r.content_type) == (200, b"My awesome poem", "text/plain")
        assert r.headers["Content-Security-Policy"] == "sandbox"
    stored = srv.settings.data_dir / "uploads" / str(dev_id) / link.rsplit("/", 1)[1]
    assert stored.stat().st_mode & 0o111 == 0  # never executable
    # HTML is a download, never a page; the same name again replaces the file at the same link.
    async with http.post(url, data=_form("x.html", b"<script>alert(1)</script>")) as r:
        html = await r.text()
    async with http.get(html) as r:
        assert r.content_type == "application/octet-stream" and "attachment" in r.headers["Content-Disposition"]
    async with http.post(url, data=_form("poem.txt", b"v2")) as r:
        assert await r.text() == link
    async with http.get(link) as r:
        assert await r.read() == b"v2"
    # Two files per device here: a third deletes the oldest (the HTML one).
    async with http.post(url, data=_form("c.png", b"\x89PNG")) as r:
        assert r.status == 200
    assert (await http.get(html)).status == 404
    # Over upload_max_size: 413, nothing kept; a form without upfile: 400; a bad token: 400.
    async with http.post(url, data=_form("big.bin", b"x" * 1001)) as r:
        assert r.status == 413 and "too large" in (await r.json())["error"]["message"]
    assert sorted(p.name for p in stored.parent.iterdir() if p.name.startswith(".")) == []
    async with http.post(url, data=_form("a.txt", b"1", field="other")) as r:
        assert r.status == 400
    async with http.post(hw_url(srv, "/external/api/upload?token=nope"), data=_form("a.txt", b"1")) as r:
        assert (r.status, (await r.json())["error"]["message"]) == (400, "Invalid token.")


async def test_uploads_per_device_limit_survives_a_restart(tmp_path, http):
    data = tmp_path / "data"
    async with running(data, uploads_per_device=2) as srv:
        token = await _device(srv)
        url = hw_url(srv, f"/external/api/upload?token={token}")
        for i in range(2):
            async with http.post(url, data=_form(f"{i}.txt", b"1")) as r:
                assert r.status == 200
                link = (await r.text()).rsplit("/", 2)
    async with running(data, uploads_per_device=2) as srv:
        url = hw_url(srv, f"/external/api/upload?token={token}")
        async with http.post(url, data=_form("3.txt", b"1")) as r:
            assert (r.status, (await r.json())["error"]["message"]) == (403, "File uploads limit has been reached.")
        async with http.get(hw_url(srv, f"/device_uploads/{link[1]}/{link[2]}")) as r:
            assert r.status == 200  # the index survived too
        await srv.provisioning.delete_device(int(link[1]))
        async with http.get(hw_url(srv, f"/device_uploads/{link[1]}/{link[2]}")) as r:
            assert r.status == 404  # a deleted device's files are not served
    async with running(data) as srv:
        assert not (data / "uploads" / link[1]).exists()  # and are removed at the next start
        assert await srv.store.run(srv.store.query, "SELECT COUNT(*) FROM upload_counts") == [(0,)]


async def test_exports_are_bounded_and_expire(tmp_path):
    now = [1000.0]
    exports = Exports(tmp_path / "exports", ttl=60, max_files=2, max_bytes=10_000, clock=lambda: now[0])
    await exports.start()
    try:
        names = [exports.new_name(f"f{i}", "zip") for i in range(3)]
        for name in names:
            await exports.build(name, lambda fh: fh.write(b"z" * 100))
        assert exports.file(names[0]) is None  # over max_files: the oldest went
        assert exports.file(names[2]) == tmp_path / "exports" / names[2]
        now[0] += 61
        assert exports.file(names[2]) is None  # expired
        assert exports.sweep() == 2
        assert exports.file("../etc/passwd.zip") is None
    finally:
        await exports.stop()
    assert not any(p.name.startswith(".") for p in (tmp_path / "exports").iterdir())


async def test_export_files_are_not_json(srv, http):
    """A missing export is a plain 404 (no token path to confuse)."""
    async with http.get(hw_url(srv, "/device_data_1_2021-04-13T02-27-11_abc.zip")) as r:
        assert r.status == 404
