"""The legacy token API's calls beyond pins, in process (real HTTP on 127.0.0.1): ``notify`` (the event
``notify``), ``email`` (a real SMTP inbox; ``No email widget.`` when e-mail is off), ``rtc``,
``data/{pin}`` (a redirect to a gzipped CSV, as the legacy server) and ``isAppConnected``."""

from __future__ import annotations

import gzip
import json
import time

import aiohttp
import pytest

from blynk_server.model import Datastream
from blynk_server.timeutil import rtc_seconds
from tests.integration.conftest import hw_url, running
from tests.integration.test_mail import smtp_server


async def _device(srv) -> str:
    tpl = await srv.provisioning.create_template("Legacy", [Datastream("v1", "Value", "double", history=True)])
    return (await srv.provisioning.create_device(tpl.id, "Old")).token


@pytest.fixture
async def srv(tmp_path):
    async with running(tmp_path / "data") as s:
        yield s


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def _call(http, method: str, url: str, **kw) -> tuple[int, str, str]:
    async with http.request(method, url, **kw) as r:
        return r.status, await r.text(), r.content_type


async def test_notify_logs_the_notify_event(srv, http):
    token = await _device(srv)
    url = hw_url(srv, f"/{token}/notify")
    assert (await _call(http, "POST", url, json={"body": "Door open"}))[0] == 200
    dev = srv.domain.authenticate(token)
    events = await srv.domain.events(dev, 10)
    assert [(e["code"], e["description"]) for e in events] == [("notify", "Door open")]
    wrong = (400, "Body is empty or larger than 255 chars.", "text/plain")
    assert await _call(http, "POST", url, json={"body": ""}) == wrong
    assert await _call(http, "POST", url, json={"body": "x" * 256}) == wrong
    assert await _call(http, "POST", url, json=["not", "an", "object"]) == wrong
    assert (await _call(http, "POST", url, data="{}"))[:2] == (
        500,
        "Unexpected content type. Expecting application/json.",
    )
    assert (await _call(http, "POST", hw_url(srv, "/nope/notify"), json={"body": "x"}))[:2] == (400, "Invalid token.")


async def test_email_off_and_on(tmp_path, http):
    async with running(tmp_path / "off") as srv:
        token = await _device(srv)
        body = {"to": "me@example.com", "subj": "Hi", "title": "Hello"}
        assert (await _call(http, "POST", hw_url(srv, f"/{token}/email"), json=body))[:2] == (400, "No email widget.")
    async with smtp_server() as (port, inbox):
        settings = {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_starttls": False}
        async with running(tmp_path / "on", **settings) as srv:
            token = await _device(srv)
            url = hw_url(srv, f"/{token}/email")
            assert (await _call(http, "POST", url, json=body))[0] == 200
            _, rcpt, msg = await inbox.next()
            assert rcpt == ["me@example.com"] and msg["Subject"] == "Hi"
            assert msg.get_content().strip() == "Hello"
            missing = {"subj": "Hi", "title": "x"}
            assert (await _call(http, "POST", url, json=missing))[:2] == (
                400,
                "Email body is wrong. Missing or empty fields 'to', 'subj'.",
            )


async def test_rtc_and_is_app_connected(srv, http):
    token = await _device(srv)
    before = rtc_seconds(None)
    status, body, kind = await _call(http, "GET", hw_url(srv, f"/{token}/rtc"))
    after = rtc_seconds(None)
    assert status == 200 and kind == "application/json"
    (secs,) = json.loads(body)
    assert before <= secs <= after
    assert await _call(http, "GET", hw_url(srv, f"/{token}/isAppConnected")) == (200, "false", "application/json")


async def test_data_pin_redirects_to_a_gzipped_csv(srv, http):
    token = await _device(srv)
    dev_id = srv.domain.authenticate(token).id
    minute = (time.time_ns() // 1_000_000 - 120_000) // 60_000 * 60_000
    points = [{"value": "1", "timestamp": minute + 1000}, {"value": "3", "timestamp": minute + 2000}]
    points.append({"value": "10", "timestamp": minute + 60_000})
    assert (await _call(http, "PUT", hw_url(srv, f"/{token}/extra/pin/V1"), json=points))[0] == 200
    async with http.get(hw_url(srv, f"/{token}/data/V1"), allow_redirects=False) as r:
        assert r.status == 301
        location = r.headers["Location"]
    assert location.startswith(f"/{dev_id}_v1_") and location.endswith(".csv.gz")
    async with http.get(hw_url(srv, location)) as r:
        assert r.status == 200
        text = gzip.decompress(await r.read()).decode()
    # The legacy lines: value (a Java double), the minute's ts, the device id; minute averages, no header.
    assert text == f"2.0,{minute},{dev_id}\n10.0,{minute + 60_000},{dev_id}\n"
    assert await _call(http, "GET", hw_url(srv, f"/{token}/data/V9")) == (400, "No data for pin.", "text/plain")
    assert (await _call(http, "GET", hw_url(srv, f"/{token}/data/Q1")))[:2] == (400, "Wrong pin format.")
