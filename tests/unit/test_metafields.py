"""Typed template metadata: each type's value check, declarations through provisioning (stored, loaded
again), lookup by id or name, the built-in fields, and what happens to free-form metadata."""

from __future__ import annotations

import pytest

from blynk_server import metafields
from blynk_server.domain import MetaFieldUnknown, MetaValueRefused, device_timezone
from blynk_server.model import MetaField
from blynk_server.provisioning import (
    Conflict,
    NotFound,
    ProvisioningError,
    metafield_from_json,
    parse_metafield_spec,
)
from protocol import Command, Status
from protocol.body import join_fields as hw
from tests.unit import fakes
from tests.unit.fakes import response

world, world_factory = fakes.world, fakes.world_factory

VALID = [
    ("text", {}, "Serial 42", "Serial 42"),
    ("number", {"min": 0, "max": 10}, "7.0", "7"),
    ("number", {}, "-2.5", "-2.5"),
    ("list", {"options": ("a", "b")}, "b", "b"),
    ("switch", {"options": ("on", "off")}, "off", "off"),
    ("timezone", {}, "Europe/Kyiv", "Europe/Kyiv"),
    ("email", {}, "ann@example.com", "ann@example.com"),
    ("phone", {}, "+380 44 123-45-67", "+380 44 123-45-67"),
    ("image", {}, "https://example.com/a.png", "https://example.com/a.png"),
    ("time", {}, "07:30", "07:30"),
    ("range", {}, "08:00-17:30", "08:00-17:30"),
    ("imei", {}, "490154203237518", "490154203237518"),
    ("iccid", {}, "89014103211118510720", "89014103211118510720"),
    ("coordinates", {}, "50.45 30.52", "50.45,30.52"),
    ("contact", {}, '{"lastName": "Lee", "firstName": "Ann"}', '{"firstName":"Ann","lastName":"Lee"}'),
    ("location", {}, "Warehouse 2", "Warehouse 2"),
    ("hotspot", {}, "Blynk ABC", "Blynk ABC"),
    ("device_owner", {}, "ann@example.com", "ann@example.com"),
    ("device_reference", {}, "0042", "42"),
    ("device_name", {}, "Boiler", "Boiler"),
]
INVALID = [
    ("text", {}, "x" * 256),
    ("text", {}, "line\nbreak"),
    ("number", {}, "abc"),
    ("number", {}, "nan"),
    ("number", {"min": 0, "max": 10}, "11"),
    ("list", {"options": ("a", "b")}, "c"),
    ("switch", {"options": ("on", "off")}, "ON"),
    ("timezone", {}, "Mars/Olympus"),
    ("email", {}, "not-an-address"),
    ("phone", {}, "call me"),
    ("image", {}, "ftp://example.com/a.png"),
    ("time", {}, "25:00"),
    ("range", {}, "08:00"),
    ("imei", {}, "12345"),
    ("iccid", {}, "abc"),
    ("coordinates", {}, "91,0"),
    ("coordinates", {}, "1,2,3"),
    ("contact", {}, '{"nickname": "x"}'),
    ("contact", {}, '{"email": "nope"}'),
    ("device_reference", {}, "-1"),
    ("device_name", {}, "   "),
    ("auth_token", {}, "anything"),
]


@pytest.mark.parametrize(("kind", "extra", "value", "canonical"), VALID)
def test_each_type_accepts_and_normalizes(kind, extra, value, canonical):
    assert metafields.check(MetaField(1, "F", kind, **extra), value) == canonical


@pytest.mark.parametrize(("kind", "extra", "value"), INVALID)
def test_each_type_refuses(kind, extra, value):
    with pytest.raises(ValueError):
        metafields.check(MetaField(1, "F", kind, **extra), value)


def test_every_type_is_checked_and_has_a_blynk_name():
    assert set(metafields.TYPES) == {kind for kind, *_ in VALID} | {"auth_token"}
    assert metafields.blynk_type(MetaField(1, "F", "timezone")) == "Tz" and metafields.blynk_type(None) == "Text"


@pytest.mark.parametrize(
    "spec",
    [
        "name=x",  # no id
        "id=1",  # no name
        "id=-1,name=x",
        "id=1,name=x,type=blob",
        "id=1,name=x,type=list",  # a list needs options
        "id=1,name=x,type=switch,options=a|b|c",
        "id=1,name=x,type=text,options=a|b",
        "id=1,name=x,type=number,min=5,max=1",
        "id=1,name=x,type=text,min=1",
        "id=1,name=x,type=number,default=abc",
        "id=1,name=x,type=list,options=a|b,default=c",
        "id=1,name=Auth Token,type=text",  # a built-in's name with another type
        "id=1,name=x,type=device_name,default=Boiler",
        "id=1,name=x,colour=red",
    ],
)
def test_bad_metafield_declarations_are_refused(spec):
    with pytest.raises(ProvisioningError):
        parse_metafield_spec(spec)


def test_spec_and_json_forms_agree():
    spec = parse_metafield_spec("id=3,name=Mode,type=list,options=eco|off,default=eco")
    as_json = metafield_from_json(3, {"name": "Mode", "type": "list", "options": ["eco", "off"], "default": "eco"})
    assert spec == as_json == MetaField(3, "Mode", "list", "eco", ("eco", "off"))


async def test_declarations_are_stored_checked_and_loaded_again(prov):
    fields = [parse_metafield_spec("id=1,name=Serial,type=text"), parse_metafield_spec("id=2,name=Floors,type=number")]
    tpl = await prov.create_template("T", [], None, fields)
    with pytest.raises(Conflict):
        await prov.create_template("U", [], None, [fields[0], MetaField(1, "Other", "text")])
    with pytest.raises(Conflict):  # a field's name does not change: values are stored by it
        await prov.put_metafield(tpl.id, MetaField(2, "Levels", "number"))
    await prov.put_metafield(tpl.id, MetaField(2, "Floors", "number", "3", (), 0.0, 9.0))
    await prov.put_metafield(tpl.id, MetaField(3, "Tz", "timezone", "UTC"))
    await prov.delete_metafield(tpl.id, 1)
    with pytest.raises(NotFound):
        await prov.delete_metafield(tpl.id, 1)
    stored = await prov.store.run(prov.store.get_template, tpl.id)
    assert stored.metafields == prov.domain.template(tpl.id).metafields
    assert sorted(stored.metafields) == [2, 3] and stored.metafields[2].max == 9.0
    listed = {t.id: t for t in await prov.store.run(prov.store.list_templates)}
    assert listed[tpl.id].metafields == stored.metafields


async def test_lookup_by_id_or_name_and_the_builtins(prov):
    tpl = await prov.create_template(
        "T", [], None, [MetaField(7, "12", "text", "by-name"), MetaField(12, "Id", "text")]
    )
    domain = prov.domain
    assert domain.meta_field(tpl, "7").name == "12"
    assert domain.meta_field(tpl, "12").id == 12  # an id before a name
    assert domain.meta_field(tpl, "Id").id == 12
    assert domain.meta_field(tpl, "id") is None  # names are case-sensitive
    assert domain.meta_field(tpl, "Auth Token").type == "auth_token"
    assert domain.meta_field(tpl, "Device Name").type == "device_name"


async def test_device_name_renames_auth_token_is_read_only_timezone_is_the_devices(prov):
    tpl = await prov.create_template("T", [], None, [MetaField(1, "Zone", "timezone", "Europe/Kyiv")])
    record = await prov.create_device(tpl.id, "old name", "token-0001")
    dev = prov.domain.device(record.id)
    domain = prov.domain
    assert device_timezone(dev) == "Europe/Kyiv"  # the declared field's default
    domain.meta_write(dev, "Zone", "America/New_York")
    assert device_timezone(dev) == dev.record.timezone == "America/New_York"
    with pytest.raises(MetaValueRefused):
        domain.meta_write(dev, "Zone", "Nowhere/Else")
    domain.meta_write(dev, "Device Name", "Boiler room")
    assert domain.meta_read(dev, "Device Name")[1] == dev.record.name == "Boiler room"
    assert domain.meta_read(dev, "Auth Token")[1] == "token-0001"
    with pytest.raises(MetaValueRefused):
        domain.meta_write(dev, "Auth Token", "stolen")
    await prov.store.run(prov.store.flush_now)
    stored = await prov.store.run(prov.store.get_device, record.id)
    assert (stored.name, stored.timezone) == ("Boiler room", "America/New_York")  # a restart loads both


async def test_free_form_metadata_before_and_after_declaring(prov):
    """A template without fields keeps free-form metadata; once it declares one, undeclared names are
    refused for writes but what was stored stays readable, and a field declared with a stored name
    takes that value."""
    tpl = await prov.create_template("T", [])
    record = await prov.create_device(tpl.id, "d")
    dev = prov.domain.device(record.id)
    domain = prov.domain
    assert domain.meta_write(dev, "Serial", "A1", create=True) is None
    assert domain.meta_write(dev, "Room", "attic", create=True) is None
    with pytest.raises(MetaFieldUnknown):
        domain.meta_write(dev, "Floor", "2")  # not created without ``create`` (the HTTP API)
    await prov.put_metafield(tpl.id, MetaField(1, "Serial", "text"))
    assert domain.meta_read(dev, "1") == (dev.template.metafields[1], "A1")
    assert domain.meta_read(dev, "Room") == (None, "attic")
    with pytest.raises(MetaFieldUnknown):
        domain.meta_write(dev, "Room", "cellar", create=True)
    assert domain.meta_read(dev, "Nothing") is None


def test_the_device_meta_command_uses_the_typed_fields(world):
    world.domain.put_metafield("TMPLunit", MetaField(1, "Floors", "number", "3"))
    dev = world.login()
    assert dev.request(Command.INTERNAL, hw("meta", "get", "Floors")) == [
        (Command.INTERNAL, 2, hw("meta", "Floors", "3"))
    ]
    assert dev.request(Command.INTERNAL, hw("meta", "set", "Floors", "many")) == [response(3, Status.ILLEGAL_COMMAND)]
    assert dev.request(Command.INTERNAL, hw("meta", "set", "Floors", "4")) == [response(4, Status.SUCCESS)]
    assert dev.request(Command.INTERNAL, hw("meta", "set", "Room", "attic")) == [response(5, Status.ILLEGAL_COMMAND)]
    assert dev.request(Command.INTERNAL, hw("meta", "set", "Auth Token", "x")) == [response(6, Status.ILLEGAL_COMMAND)]
    token = dev.request(Command.INTERNAL, hw("meta", "get", "Auth Token"))
    assert token == [(Command.INTERNAL, 7, hw("meta", "Auth Token", world.token))]
    assert world.domain.meta_read(world.domain.device(world.device_id), "Floors")[1] == "4"


def test_hostile_declarations_and_stale_values_answer_cleanly():
    with pytest.raises(ProvisioningError):
        metafield_from_json(1, {"name": "L", "type": "list", "options": ["\ud800"]})
    with pytest.raises(ProvisioningError):
        metafield_from_json(1, {"name": "\ud800", "type": "text"})
    with pytest.raises(ProvisioningError):
        metafield_from_json(1, {"name": "L", "type": "list", "options": ["x" * 600, "y" * 600]})
    # A value stored (free-form) before the field was declared a number answers as text.
    assert metafields.typed(MetaField(1, "N", "number"), "inf") == "inf"
    assert metafields.typed(MetaField(1, "C", "coordinates"), "somewhere") == "somewhere"
