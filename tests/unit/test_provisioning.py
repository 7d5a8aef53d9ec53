"""Provisioning: one token rule, one datastream parser, changes stored and applied to the live domain,
with SQLite kept off the event loop's thread."""

from __future__ import annotations

import pytest

from blynk_server.config import Settings
from blynk_server.domain import Domain, InvalidValue
from blynk_server.hub import Hub
from blynk_server.model import Datastream
from blynk_server.provisioning import (
    Conflict,
    NewDevice,
    NotFound,
    ProvisioningError,
    check_token,
    datastream_from_json,
    parse_datastream_spec,
)
from protocol.body import Pin


class ClosingLink:
    def __init__(self) -> None:
        self.closed: list[str] = []

    def close(self, reason: str) -> None:
        self.closed.append(reason)


@pytest.mark.parametrize("token", ["short", "x" * 65, "has space12", "ümlaut123", "a/b/c/d/e"])
def test_token_rule_refuses(token):
    with pytest.raises(ProvisioningError):
        check_token(token)


@pytest.mark.parametrize("token", ["abcdefgh", "A-b_C-d_" * 8, "0123456789"])
def test_token_rule_accepts(token):
    check_token(token)


def test_spec_and_json_forms_parse_to_the_same_datastream():
    spec = parse_datastream_spec("pin=V3,name=Temp,type=double,min=-40,max=125,default=0,history,sync")
    as_json = datastream_from_json(
        "v3", {"name": "Temp", "type": "double", "min": -40, "max": 125, "default": 0, "history": True, "sync": True}
    )
    assert spec == as_json == Datastream("v3", "Temp", "double", -40.0, 125.0, "0", (), True, True)
    assert datastream_from_json(None, "pin=v1,type=enum,enum=0|1|2").enum_values == (0, 1, 2)


@pytest.mark.parametrize(
    "spec",
    [
        "name=x",
        "pin=v300",
        "pin=v1,type=blob",
        "pin=v1,min=5,max=1",
        "pin=v1,min=nan",
        "pin=v1,colour=red",
        "pin=v1,enum=a|b",
        "pin=v1,max=1e999",
    ],
)
def test_bad_datastream_specs_are_refused(spec):
    with pytest.raises(ProvisioningError):
        parse_datastream_spec(spec)


async def test_created_device_logs_in_at_once_and_is_stored(prov):
    tpl = await prov.create_template("T", [Datastream("v1", "V", "int")])
    record = await prov.create_device(tpl.id, "d1", "token-0001")
    assert prov.domain.authenticate("token-0001").id == record.id
    stored = await prov.store.run(prov.store.get_device_by_token, "token-0001")
    assert stored.id == record.id


async def test_import_is_all_or_none(prov):
    tpl = await prov.create_template("T", [])
    await prov.create_device(tpl.id, "first", "token-0001")
    with pytest.raises(Conflict):
        await prov.import_devices([NewDevice(tpl.id, "a", "token-0002"), NewDevice(tpl.id, "b", "token-0001")])
    with pytest.raises(NotFound):
        await prov.import_devices([NewDevice("TMPLnone", "a", "token-0003")])
    assert prov.domain.authenticate("token-0002") is None
    assert len(await prov.store.run(prov.store.list_devices)) == 1


async def test_delete_closes_the_session_refuses_the_token_and_drops_writes_under_way(prov):
    tpl = await prov.create_template("T", [Datastream("v1", "V", "int")])
    record = await prov.create_device(tpl.id, "d", "token-0001")
    dev = prov.domain.device(record.id)
    link = ClosingLink()
    prov.domain.hub.attach(record.id, link)
    prov.domain.write_pin(dev, Pin("v", 1), b"5")

    await prov.delete_device(record.id)

    assert link.closed == ["device deleted"]
    assert prov.domain.authenticate("token-0001") is None and prov.domain.device(record.id) is None
    with pytest.raises(InvalidValue):
        prov.domain.write_pin(dev, Pin("v", 1), b"6")  # a request that still holds the device
    assert prov.domain.write_value(dev, "v1", b"7", 1) is None  # its session's write: dropped, unanswered
    rows = await prov.store.run(prov.store.rows_of_device, record.id)
    assert sum(rows.values()) == 0, rows
    with pytest.raises(NotFound):
        await prov.delete_device(record.id)


async def test_template_changes_reach_devices_in_memory(prov):
    tpl = await prov.create_template("T", [])
    record = await prov.create_device(tpl.id, "d")
    dev = prov.domain.device(record.id)
    with pytest.raises(InvalidValue):
        prov.domain.write_pin(dev, Pin("v", 2), b"50")  # an API write needs a datastream
    await prov.put_datastream(tpl.id, Datastream("v2", "Level", "int", 0, 10))
    assert prov.domain.write_pin(dev, Pin("v", 2), b"50") == b"10"
    await prov.delete_datastream(tpl.id, "v2")
    assert "v2" not in dev.template.datastreams
    with pytest.raises(Conflict):
        await prov.delete_template(tpl.id)
    await prov.delete_device(record.id)
    await prov.delete_template(tpl.id)
    assert prov.domain.template(tpl.id) is None
    assert await prov.store.run(prov.store.get_template, tpl.id) is None


async def test_a_restart_loads_what_provisioning_made(prov, tmp_path):
    tpl = await prov.create_template("T", [Datastream("v1", "V", "int", 0, 100)])
    record = await prov.create_device(tpl.id, "d", "token-0001")
    prov.domain.write_pin(prov.domain.device(record.id), Pin("v", 1), b"42")
    prov.domain.meta_write(prov.domain.device(record.id), "Location", "Lab", create=True)
    snapshot = await prov.store.run(prov.store.load_all)  # pending rows included
    fresh = Domain(prov.store, Hub(), Settings())
    fresh.load_snapshot(snapshot)
    dev = fresh.authenticate("token-0001")
    assert dev.values["v1"][0] == b"42" and dev.meta == {"Location": "Lab"}
    assert dev.template.datastreams["v1"].max == 100
