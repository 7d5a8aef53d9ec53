"""Typed template metadata over the device HTTPS API, the admin API and the CLI: fields declared on
the template (CLI ``--metafield``), read and written by Blynk's numeric id or by exact name, answered
with their type and a value of that type's shape (issue 13, item 3)."""

from __future__ import annotations

import json

import pytest

from tests.http.conftest import Device

FIELDS = (
    "id=1,name=Serial Number,type=text,default=none",
    "id=2,name=Floors,type=number,min=0,max=200,default=3",
    "id=3,name=Mode,type=list,options=eco|comfort|off,default=eco",
    "id=4,name=Device Name,type=device_name",
    "id=5,name=Timezone,type=timezone,default=Europe/Kyiv",
    "id=6,name=Site,type=coordinates",
)


@pytest.fixture(scope="module")
def template(server) -> str:
    args = ["template", "create", "--id", "TMPLmeta", "--name", "Meta", "--datastream", "pin=V1"]
    for spec in FIELDS:
        args += ["--metafield", spec]
    created = json.loads(server.cli(*args).stdout)
    assert [mf["id"] for mf in created["metafields"]] == [1, 2, 3, 4, 5, 6]
    return created["id"]


@pytest.fixture
def device(server, template) -> Device:
    return Device(server, template, server.new_device(template, "boiler"))


def _admin(device: Device) -> tuple[str, dict]:
    return f"{device.admin}/api", {"Authorization": f"Bearer {device.srv.api_key}"}


async def test_read_by_id_or_name_with_the_field_type(device, http):
    for query in ("metaFieldId=1", "metaFieldId=Serial%20Number", "metaFieldName=Serial%20Number"):
        status, body, _ = await http.fetch("GET", device.ext("device/meta", query))
        assert (status, json.loads(body)) == (200, {"type": "Text", "value": "none"})  # the default
    assert json.loads((await http.fetch("GET", device.ext("device/meta", "metaFieldId=2")))[1]) == {
        "type": "Number",
        "value": 3,
    }
    assert json.loads((await http.fetch("GET", device.ext("device/meta", "metaFieldId=Mode")))[1]) == {
        "type": "List",
        "value": "eco",
    }
    assert await http.error(device.ext("device/meta", "metaFieldId=9")) == (400, "MetaField doesn't exist.")
    assert await http.error(device.ext("device/meta", "metaFieldId=serial%20number")) == (
        400,
        "MetaField doesn't exist.",
    )  # names are case-sensitive
    assert await http.error(device.ext("device/meta")) == (400, "Wrong metaField format.")


async def test_update_checks_the_value_by_type(device, http):
    ok = (200, "")
    assert (await http.fetch("GET", device.ext("device/meta/update", "metaFieldId=2&value=12.5")))[:2] == ok
    assert json.loads((await http.fetch("GET", device.ext("device/meta", "metaFieldId=Floors")))[1])["value"] == 12.5
    for bad in ("metaFieldId=2&value=abc", "metaFieldId=2&value=201", "metaFieldId=3&value=turbo"):
        assert await http.error(device.ext("device/meta/update", bad)) == (400, "Wrong value"), bad
    assert (await http.fetch("GET", device.ext("device/meta/update", "metaFieldId=Mode&value=off")))[:2] == ok
    assert (await http.fetch("GET", device.ext("device/meta/update", "metaFieldId=6&value=50.45,30.52")))[:2] == ok
    assert json.loads((await http.fetch("GET", device.ext("device/meta", "metaFieldId=6")))[1]) == {
        "type": "Coordinates",
        "value": {"lat": 50.45, "lon": 30.52},
    }
    assert await http.error(device.ext("device/meta/update", "metaFieldId=Nope&value=1")) == (
        400,
        "MetaField doesn't exist",
    )
    # Undeclared names are not created once the template declares fields.
    assert await http.error(device.ext("device/meta/update", "metaFieldName=Room&value=1")) == (
        400,
        "MetaField doesn't exist",
    )


async def test_device_name_renames_and_auth_token_is_read_only(device, http):
    assert (await http.fetch("GET", device.ext("device/meta/update", "metaFieldId=4&value=Kitchen")))[0] == 200
    api, auth = _admin(device)
    devices = json.loads((await http.fetch("GET", f"{api}/devices?token={device.token}", headers=auth))[1])
    assert devices[0]["name"] == "Kitchen"
    assert json.loads((await http.fetch("GET", device.ext("device/meta", "metaFieldId=4")))[1]) == {
        "type": "DeviceName",
        "value": "Kitchen",
    }
    token = json.loads((await http.fetch("GET", device.ext("device/meta", "metaFieldId=Auth%20Token")))[1])
    assert token["value"] == device.token
    assert await http.error(device.ext("device/meta/update", "metaFieldId=Auth%20Token&value=x")) == (
        400,
        "Wrong value",
    )
    assert await http.error(device.ext("device/meta/update", "metaFieldId=4&value=%20")) == (400, "Wrong value")


async def test_admin_api_declares_lists_and_deletes_metafields(device, http):
    api, auth = _admin(device)
    url = f"{api}/templates/{device.tid}/metafields/7"
    body = {"name": "Contact", "type": "contact", "default": '{"firstName": "Ann"}'}
    status, text, _ = await http.fetch("PUT", url, json=body, headers=auth)
    assert status == 200 and json.loads(text)["default"] == '{"firstName":"Ann"}'
    tpl = json.loads((await http.fetch("GET", f"{api}/templates/{device.tid}", headers=auth))[1])
    assert {mf["id"]: mf["type"] for mf in tpl["metafields"]}[7] == "contact"
    assert json.loads((await http.fetch("GET", device.ext("device/meta", "metaFieldId=7")))[1]) == {
        "type": "Contact",
        "value": {"firstName": "Ann"},
    }
    assert (await http.fetch("PUT", url, json={"name": "Other", "type": "text"}, headers=auth))[0] == 409
    bad = {"name": "L", "type": "list"}  # a list without options
    assert (await http.fetch("PUT", f"{api}/templates/{device.tid}/metafields/8", json=bad, headers=auth))[0] == 400
    assert (await http.fetch("DELETE", url, headers=auth))[0] == 204
    assert (await http.fetch("DELETE", url, headers=auth))[0] == 404
    assert await http.error(device.ext("device/meta", "metaFieldId=7")) == (400, "MetaField doesn't exist.")


async def test_admin_device_meta_lists_declared_fields_typed(device, http):
    api, auth = _admin(device)
    did = json.loads((await http.fetch("GET", f"{api}/devices?token={device.token}", headers=auth))[1])[0]["id"]
    status, body, _ = await http.fetch("PUT", f"{api}/devices/{did}/meta/2", json={"value": 7}, headers=auth)
    assert (status, json.loads(body)) == (200, {"name": "Floors", "value": 7})
    meta = json.loads((await http.fetch("GET", f"{api}/devices/{did}/meta", headers=auth))[1])
    assert meta["Floors"] == 7 and meta["Serial Number"] == "none" and meta["Timezone"] == "Europe/Kyiv"
    status, body, _ = await http.fetch(
        "PUT", f"{api}/devices/{did}/meta/Timezone", json={"value": "Mars"}, headers=auth
    )
    assert status == 400 and "time zone" in json.loads(body)["error"]["message"]
