"""Per-device state limits and value checks of the domain, in process: nothing a device sends can grow
its state without bound or hand the store a value SQLite cannot hold."""

from __future__ import annotations

import dataclasses
import json
import time
import tracemalloc

import pytest

from blynk_server.config import Settings
from blynk_server.domain import (
    Domain,
    EventQuotaExceeded,
    EventRejected,
    InvalidValue,
    LimitExceeded,
    _info_cost,
)
from blynk_server.eventdefs import EventDef
from blynk_server.hub import Hub
from blynk_server.model import MAX_TS_MS, Datastream, now_ms
from blynk_server.store import SqliteStore
from protocol import Status
from protocol.body import DeviceInfo, Pin

V1 = Pin("v", 1)


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "data")
    s.create_template("TMPLu", "Unit", [Datastream("v1", "T", "double", history=True), Datastream("v2", "S")])
    yield s
    s.close()


def make_domain(store: SqliteStore, **limits) -> Domain:
    domain = Domain(store, Hub(), dataclasses.replace(Settings(), **limits))
    domain.load_snapshot(store.load_all())
    return domain


def declare(domain: Domain, *codes: str) -> None:
    """Declare event codes on the unit template (a device may log only those)."""
    for code in codes:
        domain.event_defs.put("TMPLu", EventDef(code, code))


def new_device(domain: Domain):
    return domain.add_device(domain.store.create_device("TMPLu", "d"))


def count(store: SqliteStore, table: str) -> int:
    store.flush_now()
    return store.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


# --- timestamps and values ------------------------------------------------------------------------


@pytest.mark.parametrize("ts", [-1, MAX_TS_MS + 1, 2**63, 2**64 + 5])
def test_out_of_range_timestamps_never_reach_the_store(store, ts):
    domain = make_domain(store)
    dev = new_device(domain)
    with pytest.raises(InvalidValue, match="Timestamp"):
        domain.write_key(dev, "v1", b"1", ts)
    with pytest.raises(InvalidValue, match="Timestamp"):
        domain.write_history(dev, V1, [(1_700_000_000_000, b"1"), (ts, b"2")])
    refused = [domain.write_value(dev, key, raw, ts) for key, raw in (("v1", b"1"), ("v2", b"x"))]
    assert all(isinstance(exc, InvalidValue) and exc.status == Status.ILLEGAL_COMMAND for exc in refused)
    assert store.pending() == 0
    assert dev.values == {}
    domain.write_key(dev, "v1", b"2", MAX_TS_MS)  # the edge is accepted
    assert count(store, "history") == 1


def test_numbers_are_capped_in_length_like_strings(store):
    domain = make_domain(store)
    dev = new_device(domain)
    with pytest.raises(InvalidValue, match="longer than 1024"):
        domain.write_key(dev, "v1", b"0." + b"1" * 30_000)


# --- properties -----------------------------------------------------------------------------------


def test_property_names_per_pin_capped_existing_ones_still_update(store):
    domain = make_domain(store, max_properties_per_pin=3)
    dev = new_device(domain)
    for i in range(3):
        domain.set_property(dev, [V1], f"p{i}", [b"x"])
    with pytest.raises(LimitExceeded, match="at most 3 properties") as exc:
        domain.set_property(dev, [V1], "p3", [b"x"])
    assert exc.value.status == Status.ILLEGAL_COMMAND_BODY
    domain.set_property(dev, [V1], "p0", [b"updated"])  # an existing name: fine
    domain.set_property(dev, [Pin("v", 2)], "p3", [b"x"])  # another pin has its own budget
    assert dev.properties[("v1", "p0")] == b"updated"
    assert len(dev.properties) == 4
    assert count(store, "properties") == 4
    assert domain.stats.properties_rejected == 1


def test_properties_per_device_capped_and_all_or_nothing(store):
    domain = make_domain(store, max_properties_per_device=4)
    dev = new_device(domain)
    domain.set_property(dev, [Pin("v", n) for n in range(3)], "label", [b"a"])
    with pytest.raises(LimitExceeded, match="at most 4 properties"):
        domain.set_property(dev, [Pin("v", n) for n in range(3, 6)], "label", [b"a"])
    assert len(dev.properties) == 3  # none of the refused message was applied


def test_property_name_and_value_size(store):
    domain = make_domain(store, max_property_size=16)
    dev = new_device(domain)
    domain.set_property(dev, [V1], "n" * 16, [b"12345678", b"1234567"])  # 8 + NUL + 7 = 16 bytes
    with pytest.raises(LimitExceeded, match="value is longer than 16"):
        domain.set_property(dev, [V1], "n", [b"x" * 17])
    with pytest.raises(LimitExceeded, match="name is longer than 16"):
        domain.set_property(dev, [V1], "é" * 9, [b"x"])  # 18 UTF-8 bytes
    with pytest.raises(InvalidValue, match="UTF-8"):
        domain.set_property(dev, [V1], "\ud800", [b"x"])  # SQLite cannot encode a lone surrogate


# --- events ---------------------------------------------------------------------------------------


def test_event_code_length_and_distinct_codes(store):
    domain = make_domain(store, max_event_code=8, max_event_codes=3)
    declare(domain, "a", "b", "c", "d")
    dev = new_device(domain)
    with pytest.raises(EventRejected, match="longer than 8") as exc:
        domain.log_event(dev, "c" * 9, None)
    assert exc.value.status == Status.ILLEGAL_COMMAND_BODY
    for code in ("a", "b", "c"):
        domain.log_event(dev, code, None)
    with pytest.raises(EventRejected, match="at most 3 event codes"):
        domain.log_event(dev, "d", None)
    with pytest.raises(EventQuotaExceeded, match="1 second apart") as quota:
        domain.log_event(dev, "a", None)  # a known code is still rate-limited, not refused as new
    assert quota.value.status == Status.QUOTA_LIMIT
    assert len(dev.last_event_ms) == 3
    with pytest.raises(EventRejected, match="longer than 8"):
        domain.clear_event(dev, "c" * 9, True)
    assert count(store, "events") == 3


def test_events_per_day(store, monkeypatch):
    domain = make_domain(store, events_per_day=5)
    declare(domain, *(f"c{i}" for i in range(10)))
    dev = new_device(domain)
    clock = [1_700_000_000_000]
    monkeypatch.setattr("blynk_server.domain.now_ms", lambda: clock[0])
    for i in range(5):
        domain.log_event(dev, f"c{i}", None)
    with pytest.raises(EventQuotaExceeded, match="at most 5 events a day") as exc:
        domain.log_event(dev, "c9", None)
    assert exc.value.status == Status.QUOTA_LIMIT
    clock[0] += 86_400_000  # the next UTC day: a fresh budget
    domain.log_event(dev, "c0", None)
    assert count(store, "events") == 6
    assert domain.stats.events_rejected == 1


def test_events_per_day_zero_means_no_limit(store, monkeypatch):
    domain = make_domain(store, events_per_day=0)
    declare(domain, "c")
    dev = new_device(domain)
    clock = [1_700_000_000_000]
    monkeypatch.setattr("blynk_server.domain.now_ms", lambda: clock[0])
    for _ in range(150):
        clock[0] += 1000
        domain.log_event(dev, "c", None)
    assert count(store, "events") == 150


# --- metadata ---------------------------------------------------------------------------------------


def test_meta_fields_and_sizes(store, monkeypatch):
    domain = make_domain(store, max_meta_fields=2, max_meta_size=10)
    dev = new_device(domain)
    commits = []
    monkeypatch.setattr(store, "put_device_timezone", lambda *a: commits.append(a))
    domain.meta_write(dev, "Timezone", "UTC", create=True)
    domain.meta_write(dev, "Timezone", "UTC")  # unchanged: no write at all
    domain.meta_write(dev, "Room", "K", create=True)
    with pytest.raises(LimitExceeded, match="at most 2 metadata fields") as exc:
        domain.meta_write(dev, "Floor", "1", create=True)
    assert exc.value.status == Status.ILLEGAL_COMMAND_BODY
    domain.meta_write(dev, "Room", "L")  # an existing field may change
    with pytest.raises(LimitExceeded, match="value is longer than 10"):
        domain.meta_write(dev, "Room", "x" * 11, create=True)
    with pytest.raises(LimitExceeded, match="name is longer than 10"):
        domain.meta_write(dev, "n" * 11, "x", create=True)
    assert commits == [(dev.id, "UTC")]  # the timezone column is written (behind) once, on the change
    assert dev.meta == {"Timezone": "UTC", "Room": "L"}
    assert domain.stats.meta_rejected == 3


# --- the shared info cache --------------------------------------------------------------------------


def test_info_cache_is_bounded_by_bytes(store):
    domain = make_domain(store, info_cache_bytes=200_000)
    devices = [new_device(domain) for _ in range(3)]
    for i in range(40):  # 40 distinct ~30 KB info messages
        domain.set_info(devices[i % 3], DeviceInfo(build=str(i), extra={"x": "y" * 30_000}))
    assert domain.stats.info_cache_bytes <= 200_000
    assert 0 < domain.stats.info_cache_entries <= 200_000 // 60_000
    assert sum(_info_cost(k) for k in domain._infos) == domain.stats.info_cache_bytes
    a, b = new_device(domain), new_device(domain)
    domain.set_info(a, DeviceInfo(build="same"))
    domain.set_info(b, DeviceInfo(build="same"))
    assert a.record.info is b.record.info  # identical small ones are still shared


def test_devices_sharing_an_info_share_its_pending_row_text(store):
    """The write-behind row of each device's info holds the cached JSON text, not a copy per login: a
    burst of logins leaves no per-login strings waiting for the flush."""
    domain = make_domain(store)
    a, b = new_device(domain), new_device(domain)
    domain.set_info(a, DeviceInfo(build="same"))
    domain.set_info(b, DeviceInfo(build="same"))
    row_a, row_b = store._pending.devices[a.id], store._pending.devices[b.id]
    assert row_a[1] == json.dumps(DeviceInfo(build="same").as_dict(), sort_keys=True)
    assert row_a[1] is row_b[1]


def test_now_ms_is_the_wall_clock_in_milliseconds_as_a_normalized_int():
    """From the float clock: the same milliseconds as time_ns() // 10**6 (give or take the one the two
    reads straddle), and an int the size of its value, not of a nanosecond dividend."""
    before = time.time_ns() // 1_000_000
    ms = now_ms()
    after = time.time_ns() // 1_000_000
    assert type(ms) is int and before - 1 <= ms <= after

    def allocated(make) -> int:
        """The bytes the allocator was asked for the int ``make`` returns."""
        tracemalloc.start()
        try:
            value = make()
            snapshot = tracemalloc.take_snapshot()
            where = tracemalloc.get_object_traceback(value)
        finally:
            tracemalloc.stop()
        return next(t.size for t in snapshot.traces if t.traceback == where)

    assert allocated(now_ms) == allocated(lambda: int(str(ms)))
