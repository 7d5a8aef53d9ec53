"""``pinwrite``: a device's pin write (the value rules and ``PinWriter.write``), each test on the pure
twin and, where built, the compiled one (``_pinwrite_c``): the two behave alike."""

from __future__ import annotations

import gc
import importlib

import pytest

from blynk_server.errors import InvalidValue
from blynk_server.model import MAX_TS_MS, Datastream
from blynk_server.reactions import VALUE
from protocol import twins


@pytest.fixture(params=["python", "compiled"])
def pinwrite(request):
    if request.param == "python":
        return importlib.import_module("blynk_server.pinwrite")
    if twins.extensions_off() or importlib.util.find_spec("blynk_server._pinwrite_c") is None:
        pytest.skip("the compiled pin writer is not built")
    return importlib.import_module("blynk_server._pinwrite_c")


DOUBLE = Datastream(pin="v1", name="t", type="double", min=-40, max=125)
INT = Datastream(pin="v2", name="n", type="int")
ENUM = Datastream(pin="v3", name="e", type="enum", enum_values=(0, 1))
LOCATION = Datastream(pin="v4", name="l", type="location")

CASES = [
    (None, b" any\0thing ", b" any\0thing "),  # no datastream: as sent
    (DOUBLE, b"21.5", b"21.5"),
    (DOUBLE, b" 21.5 ", b"21.5"),
    (DOUBLE, b"200", b"125"),  # clamped
    (DOUBLE, b"-1e3", b"-40"),
    (INT, b"7.6", b"8"),  # rounded
    (INT, b"2.5", b"2"),  # half to even, as Python's round()
    (INT, b"-2.5", b"-2"),
    (INT, b"1e20", b"100000000000000000000"),
    (DOUBLE, b"-41", b"-40"),
    (DOUBLE, b"125", b"125"),
    (ENUM, b"1", b"1"),
    (ENUM, b"01", b"1"),
    (LOCATION, b"13.4\x0052.5", b"13.4\x0052.5"),
]
REFUSED = [
    (DOUBLE, b"abc"),
    (DOUBLE, b"nan"),
    (DOUBLE, b"inf"),
    (DOUBLE, b"-inf"),
    (DOUBLE, b"1e400"),  # infinite once parsed
    (ENUM, b"2"),
    (LOCATION, b"13.4"),
    (LOCATION, b"200\x000"),
    (None, b"x" * 1025),
]


@pytest.mark.parametrize(("ds", "raw", "stored"), CASES)
def test_a_value_is_stored_as_its_datastream_says(pinwrite, ds, raw, stored):
    assert pinwrite.coerce_value(ds, raw) == stored


INTEGERS = [b"42", b"-42", b"0", b"-0", b"007", b"-007", b"+5", b" 5", b"5 ", b"9" * 15, b"-" + b"9" * 15]
INTEGERS += [b"9" * 16, b"1234567890123456789", b"5.0", b"1e3", b"0x10".replace(b"x", b"")]


@pytest.mark.parametrize("raw", INTEGERS)
def test_an_integer_is_stored_as_str_of_int_writes_it(pinwrite, raw):
    """An int datastream stores ``str(int(...))`` of the parsed number; a value already written that
    way (at most 15 digits: a double holds it exactly) is kept as it came, the same object."""
    stored = pinwrite.coerce_value(INT, raw)
    assert stored == str(int(float(raw))).encode()
    assert (stored is raw) == (stored == raw)


@pytest.mark.parametrize("raw", INTEGERS)
def test_a_number_datastream_stores_an_integer_as_sent(pinwrite, raw):
    """A number (double) datastream without limits stores the value as sent, spaces stripped, whether
    it is read by the integers' own parser (``42``) or by ``float()`` (``007``, ``1e3``)."""
    plain = Datastream(pin="v6", name="d", type="double")
    assert pinwrite.coerce_value(plain, raw) == raw.strip()


@pytest.mark.parametrize(("ds", "raw"), REFUSED)
def test_a_value_its_datastream_refuses(pinwrite, ds, raw):
    with pytest.raises(InvalidValue):
        pinwrite.coerce_value(ds, raw)


class Store:
    """The store as the pin writer uses it: ``pending_cell`` (its item stored into, as
    ``SqliteStore.put_row`` does) and ``put_history``."""

    def __init__(self) -> None:
        self.pending_values: dict[tuple, tuple] = {}
        self.pending_cell = [self.pending_values]
        self.history: list[tuple] = []

    def put_history(self, device_id, pin, ts, value) -> None:
        self.history.append((device_id, pin, ts, value))


class Reactions:
    depth = 0

    def __init__(self, watched=()) -> None:
        self.watched = set(watched)
        self.emitted: list = []

    def emit(self, happening) -> None:
        self.emitted.append(happening)


class Template:
    id = "TMPL"
    datastreams = {"v1": DOUBLE, "v5": Datastream(pin="v5", name="h", type="string", history=True)}


class Record:
    id = 42


def device(pinwrite):
    """A device of the twin under test (its ``DeviceState``: the compiled writer takes no other)."""
    return pinwrite.DeviceState(Record(), Template())


def writer(pinwrite, watched=()):
    store, stats, reactions = Store(), pinwrite.DomainStats(), Reactions(watched)
    return pinwrite.PinWriter(store, stats, reactions), store, stats, reactions


def test_a_write_sets_the_value_writes_it_behind_and_counts_it(pinwrite):
    pins, store, stats, reactions = writer(pinwrite, watched=[("TMPL", "v5")])
    dev = device(pinwrite)
    assert pins.write(dev, "v1", b"300", 1000) == b"125"
    assert pins.write(dev, "v5", b"on", 2000) == b"on"
    assert dev.values == {"v1": (b"125", 1000), "v5": (b"on", 2000)}
    assert store.pending_values == {(42, "v1"): (b"125", 1000), (42, "v5"): (b"on", 2000)}
    assert store.pending_values[42, "v5"] is dev.values["v5"]  # one row for the device and the write-behind batch
    assert store.history == [(42, "v5", 2000, b"on")]  # only v5 keeps history
    assert stats.writes == 2 and stats.invalid_writes == 0
    assert [(h.kind, h.pin, h.value) for h in reactions.emitted] == [(VALUE, "v5", b"on")]  # only v5 is watched


def test_a_write_leaves_the_collector_nothing_to_walk(pinwrite):
    """Compiled, a write's row and batch key (atomic objects only) are untracked when made, so the
    device's values and the batch stay out of young collections; the pure twin leaves that to the
    collector's next pass, after which neither twin's value is tracked."""
    pins, store, _, _ = writer(pinwrite)
    dev = device(pinwrite)
    pins.write(dev, "v1", b"21.5", 1000)
    row = dev.values["v1"]
    (key,) = store.pending_values
    compiled = pinwrite.__name__.endswith("_c")
    assert gc.is_tracked(row) is not compiled and gc.is_tracked(key) is not compiled
    assert gc.is_tracked(dev.values) is not compiled  # a dict of untracked values is not tracked either
    gc.collect()
    assert not gc.is_tracked(dev.values["v1"]) and dev.values == {"v1": (b"21.5", 1000)}  # the collector agrees


@pytest.mark.parametrize(("key", "raw", "ts"), [("v1", b"abc", 1000), ("v1", b"1", -1), ("v1", b"1", MAX_TS_MS + 1)])
def test_a_refused_write_is_returned_counted_and_changes_nothing(pinwrite, key, raw, ts):
    pins, store, stats, _ = writer(pinwrite)
    dev = device(pinwrite)
    refused = pins.write(dev, key, raw, ts)
    assert isinstance(refused, InvalidValue)
    assert dev.values == {} and store.pending_values == {} and stats.invalid_writes == 1 and stats.writes == 0


def test_a_deleted_devices_write_is_dropped_uncounted(pinwrite):
    pins, store, stats, _ = writer(pinwrite)
    dev = device(pinwrite)
    dev.deleted = True
    assert pins.write(dev, "v1", b"1", 1000) is None
    assert dev.values == {} and store.pending_values == {} and stats.writes == stats.invalid_writes == 0
