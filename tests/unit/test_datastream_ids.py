"""Datastream ids (Blynk's ``dataStreamId``), distinct from pins: the default rule, explicit ids and
aliases through provisioning, ``Domain.datastream_by_id``, and data dirs made before ids."""

from __future__ import annotations

import sqlite3

import pytest

from blynk_server.config import Settings
from blynk_server.domain import Domain
from blynk_server.hub import Hub
from blynk_server.model import NO_ID, Datastream, assign_datastream_ids
from blynk_server.provisioning import (
    Conflict,
    ProvisioningError,
    datastream_from_json,
    parse_datastream_spec,
)
from blynk_server.store.sqlite import DB_NAME, SqliteStore


def test_default_rule_virtual_pin_number_else_lowest_free_from_256():
    streams = [Datastream("d3", "D"), Datastream("v9", "Nine", id=5), Datastream("v5", "Five"), Datastream("a0", "A")]
    assign_datastream_ids(streams)
    assert [ds.id for ds in streams] == [258, 5, 256, 257]  # 5 is taken: v5, then a0, then d3 from 256


def test_spec_and_json_take_id_and_alias():
    spec = parse_datastream_spec("pin=V7,id=20,alias=Level,type=int")
    assert (spec.id, spec.alias) == (20, "Level")
    assert spec == datastream_from_json("v7", {"id": 20, "alias": "Level", "type": "int"})
    plain = parse_datastream_spec("pin=v7,name=Temp")
    assert (plain.id, plain.alias) == (NO_ID, "Temp")
    for bad in ("pin=v1,id=-1", "pin=v1,id=x", "pin=v1,id=2147483648", "pin=v1,alias=" + "a" * 101):
        with pytest.raises(ProvisioningError):
            parse_datastream_spec(bad)
    with pytest.raises(ProvisioningError):
        datastream_from_json("v1", {"id": True})


async def test_provisioning_assigns_keeps_and_refuses_duplicates(prov):
    tpl = await prov.create_template(
        "T", [parse_datastream_spec("pin=v7,id=1"), parse_datastream_spec("pin=v1"), parse_datastream_spec("pin=d2")]
    )
    ids = {k: ds.id for k, ds in tpl.datastreams.items()}
    assert ids == {"v7": 1, "v1": 256, "d2": 257}
    assert prov.domain.datastream_by_id(tpl, 1).pin == "v7" and prov.domain.datastream_by_id(tpl, 7) is None
    # Replacing a datastream without an id keeps its id; a new one gets the rule's.
    await prov.put_datastream(tpl.id, parse_datastream_spec("pin=v7,type=int"))
    await prov.put_datastream(tpl.id, parse_datastream_spec("pin=v9"))
    assert prov.domain.datastream_by_id(tpl, 1).type == "int" and prov.domain.datastream_by_id(tpl, 9).pin == "v9"
    # An explicit new id moves it; the old id no longer answers.
    await prov.put_datastream(tpl.id, parse_datastream_spec("pin=v9,id=40"))
    assert prov.domain.datastream_by_id(tpl, 9) is None and prov.domain.datastream_by_id(tpl, 40).pin == "v9"
    with pytest.raises(Conflict):
        await prov.put_datastream(tpl.id, parse_datastream_spec("pin=v3,id=40"))
    with pytest.raises(Conflict):
        await prov.put_datastream(tpl.id, parse_datastream_spec("pin=v3,alias=V7"))  # v7's alias (its name)
    with pytest.raises(Conflict):
        await prov.create_template("U", [parse_datastream_spec("pin=v1,id=3"), parse_datastream_spec("pin=v2,id=3")])
    await prov.delete_datastream(tpl.id, "v9")
    assert prov.domain.datastream_by_id(tpl, 40) is None
    # What a restart loads is what was answered.
    fresh = await prov.store.run(prov.store.get_template, tpl.id)
    assert {k: (ds.id, ds.alias) for k, ds in fresh.datastreams.items()} == {
        k: (ds.id, ds.alias) for k, ds in prov.domain.template(tpl.id).datastreams.items()
    }


OLD_DATASTREAMS = """
CREATE TABLE templates (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE datastreams (
    template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
    pin TEXT NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL, min REAL, max REAL, default_value TEXT,
    enum_values TEXT, history INTEGER NOT NULL DEFAULT 0, sync INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (template_id, pin)
);
INSERT INTO templates VALUES ('TMPLold', 'Old', 0);
INSERT INTO datastreams (template_id, pin, name, type) VALUES
    ('TMPLold', 'v3', 'Temp', 'double'), ('TMPLold', 'd4', 'Relay', 'int'), ('TMPLold', 'v0', 'Switch', 'int');
"""


def test_a_data_dir_made_before_ids_migrates_with_the_default_rule(tmp_path):
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.executescript(OLD_DATASTREAMS)
    conn.close()
    store = SqliteStore(tmp_path)
    try:
        stored = store.query("SELECT pin, ds_id, alias FROM datastreams ORDER BY pin")
        assert stored == [("d4", 256, "Relay"), ("v0", 0, "Switch"), ("v3", 3, "Temp")]
        domain = Domain(store, Hub(), Settings())
        domain.load_snapshot(store.load_all())
        tpl = domain.template("TMPLold")
        assert domain.datastream_by_id(tpl, 3).name == "Temp" and domain.datastream_by_id(tpl, 256).pin == "d4"
        assert tpl.metafields == {}  # the metafields table came with the schema: none declared yet
    finally:
        store.close()
    SqliteStore(tmp_path).close()  # a second open finds the columns and leaves the ids alone
