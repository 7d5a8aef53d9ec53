"""The admin API: the key on every route (taken from openapi.json), CRUD, values, events, metadata."""

from __future__ import annotations

import asyncio
import importlib.util
import re

import pytest

from blynk_server.devclient import DeviceClient
from blynk_server.http.openapi_platform import PLATFORM


@pytest.fixture
def admin(server):
    return f"http://{server.admin_host}:{server.admin_port}"


@pytest.fixture
def auth(server):
    return {"Authorization": f"Bearer {server.api_key}"}


async def test_openapi_is_open_and_every_keyed_route_refuses_without_key(admin, http, server):
    async with http.session.get(f"{admin}/api/openapi.json") as r:
        assert r.status == 200
        spec = await r.json()
    assert spec["openapi"].startswith("3.")
    if importlib.util.find_spec("blynk_server.ota.http") is not None:
        assert any(p.startswith("/api/ota/") for p in spec["paths"]), "OTA admin routes are listed too"
    keyed = 0
    for path, ops in spec["paths"].items():
        url = admin + re.sub(r"\{[^}]+\}", "1", path)
        for method, op in ops.items():
            public = op.get("security") == []
            if op.get("security") == PLATFORM:  # OAuth2 bearer routes: the API key does not open them
                for headers in ({}, {"Authorization": f"Bearer {server.api_key}"}):
                    assert (await http.error(url, method.upper(), headers=headers, json={})) == (
                        401,
                        "Invalid or expired access token.",
                    ), (method, path)
                continue
            if path == "/oauth2/token":  # client credentials only (tests/integration/test_platform_api.py)
                status, _, _ = await http.fetch("POST", url, headers={"Authorization": f"Bearer {server.api_key}"})
                assert status == 400
                continue
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"X-API-Key": "wrong"},
                {"Authorization": "Basic x"},
            ):
                status, body, resp = await http.fetch(method.upper(), url, headers=headers, json={})
                if public:
                    assert status == 200, (method, path)
                else:
                    assert status == 401, (method, path, headers)
                    assert (await http.error(url, method.upper(), headers=headers)) == (
                        401,
                        "Missing or invalid API key.",
                    )
            keyed += not public
    assert keyed >= 14
    # Routes in the app but not in the document would escape this test: an unknown path is 401, not 404.
    assert (await http.fetch("GET", f"{admin}/api/nothing"))[0] == 401


async def test_both_key_headers_accepted(admin, http, server):
    for headers in ({"Authorization": f"Bearer {server.api_key}"}, {"X-API-Key": server.api_key}):
        assert (await http.fetch("GET", f"{admin}/api/templates", headers=headers))[0] == 200


async def test_template_and_datastream_crud(admin, http, auth, unique):
    body = {"id": unique, "name": "T", "datastreams": [{"pin": "V1", "type": "int", "min": 0, "max": 10}]}
    status, _, resp = await http.fetch("POST", f"{admin}/api/templates", json=body, headers=auth)
    assert status == 201
    assert (await http.fetch("POST", f"{admin}/api/templates", json=body, headers=auth))[0] == 409
    async with http.session.get(f"{admin}/api/templates/{unique}", headers=auth) as r:
        tpl = await r.json()
    assert tpl["datastreams"][0]["pin"] == "V1" and tpl["datastreams"][0]["max"] == 10
    ds = {"type": "double", "history": True}
    assert (await http.fetch("PUT", f"{admin}/api/templates/{unique}/datastreams/V2", json=ds, headers=auth))[0] == 200
    assert await http.error(
        f"{admin}/api/templates/{unique}/datastreams/V3", "PUT", json={"type": "x"}, headers=auth
    ) == (
        400,
        "type must be one of int, double, string, enum, location.",
    )
    async with http.session.get(f"{admin}/api/templates", headers=auth) as r:
        assert unique in [t["id"] for t in await r.json()]
    status = (await http.fetch("DELETE", f"{admin}/api/templates/{unique}/datastreams/V2", headers=auth))[0]
    assert status == 204
    assert (await http.fetch("DELETE", f"{admin}/api/templates/{unique}/datastreams/V2", headers=auth))[0] == 404
    assert (await http.fetch("DELETE", f"{admin}/api/templates/{unique}", headers=auth))[0] == 204
    assert await http.error(f"{admin}/api/templates/{unique}", headers=auth) == (404, "Template not found.")


async def test_datastream_change_applies_to_http_api_at_once(admin, http, auth, unique, server):
    await http.fetch("POST", f"{admin}/api/templates", json={"id": unique}, headers=auth)
    async with http.session.post(f"{admin}/api/devices", json={"template_id": unique}, headers=auth) as r:
        token = (await r.json())["token"]
    url = f"http://{server.host}:{server.port}/external/api/update?token={token}&v1=500"
    assert (await http.error(url))[1] == "No datastream setup for that pin."
    ds = {"type": "int", "max": 100}
    await http.fetch("PUT", f"{admin}/api/templates/{unique}/datastreams/v1", json=ds, headers=auth)
    assert (await http.fetch("GET", url))[0] == 200
    get = f"http://{server.host}:{server.port}/external/api/get?token={token}&v1"
    assert (await http.fetch("GET", get))[1] == "100"


async def test_device_crud_online_values_events_meta(admin, http, auth, unique, server):
    await http.fetch(
        "POST",
        f"{admin}/api/templates",
        json={"id": unique, "datastreams": [{"pin": "v1", "type": "int"}]},
        headers=auth,
    )
    await http.fetch("POST", f"{admin}/api/templates/{unique}/events", json={"code": "door"}, headers=auth)
    token = "T" * 20 + unique[-12:].rjust(12, "x")
    async with http.session.post(
        f"{admin}/api/devices", json={"template_id": unique, "name": "d1", "token": token}, headers=auth
    ) as r:
        assert r.status == 201
        dev = await r.json()
    assert dev["token"] == token and dev["online"] is False
    assert await http.error(
        f"{admin}/api/devices", "POST", json={"template_id": unique, "token": token}, headers=auth
    ) == (
        409,
        "A device with that token already exists.",
    )
    assert await http.error(f"{admin}/api/devices", "POST", json={"template_id": "nope"}, headers=auth) == (
        404,
        "Template 'nope' not found.",
    )
    assert (await http.fetch("DELETE", f"{admin}/api/templates/{unique}", headers=auth))[0] == 409
    did = dev["id"]
    client = await DeviceClient.connect(server.host, server.port, token)
    try:
        async with http.session.get(f"{admin}/api/devices?template_id={unique}", headers=auth) as r:
            listed = await r.json()
        assert [(d["id"], d["online"]) for d in listed] == [(did, True)]
        assert listed[0]["last_seen"]
        client.virtual_write(1, 5)
        await client.ping()
        async with http.session.get(f"{admin}/api/devices/{did}/values", headers=auth) as r:
            assert (await r.json())["v1"]["value"] == "5"
        async with http.session.put(f"{admin}/api/devices/{did}/values/V1", json={"value": 8}, headers=auth) as r:
            assert r.status == 200
        frame = await client.expect(lambda f: f[0] == 20)
        assert frame[1] != 0 and frame[2] == b"vw\x001\x008"
        client.send(64, b"door\x00opened")
        await client.ping()
        async with http.session.get(f"{admin}/api/devices/{did}/events", headers=auth) as r:
            events = await r.json()
        assert [(e["code"], e["description"]) for e in events] == [("door", "opened"), ("online", None)]
        assert (await http.fetch("PUT", f"{admin}/api/devices/{did}/meta/Room", json={"value": "K"}, headers=auth))[
            0
        ] == 200
        async with http.session.get(f"{admin}/api/devices/{did}/meta", headers=auth) as r:
            assert (await r.json())["Room"] == "K"
        async with http.session.get(f"{admin}/api/devices/{did}", headers=auth) as r:
            shown = await r.json()
        assert shown["online"] is True and shown["name"] == "d1"
        assert (await http.fetch("DELETE", f"{admin}/api/devices/{did}", headers=auth))[0] == 204
        await asyncio.wait_for(client.closed.wait(), 5)  # the live session was closed
    finally:
        await client.close()
    assert await http.error(f"{admin}/api/devices/{did}", headers=auth) == (404, "Device not found.")
    assert await http.error(f"{admin}/api/devices/abc", headers=auth) == (404, "Device not found.")
    assert (await http.fetch("DELETE", f"{admin}/api/templates/{unique}", headers=auth))[0] == 204
