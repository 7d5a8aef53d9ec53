"""A device's pin write, the telemetry hot path: the device it changes (``DeviceState``), the value's
rules (``coerce_value``), the write itself (``PinWriter.write``: the pin's value, its write-behind rows,
the count, the reaction it may cause) and the counters it adds to (``DomainStats``). ``Domain`` holds
one ``DeviceState`` per device, one ``DomainStats`` and one ``PinWriter``, and every pin write goes
through it; the device core calls it once per well-formed write.

Cython builds the compiled twin ``_pinwrite_c`` from this file (``_pinwrite_c.pxd``: ``DomainStats``,
``DeviceState`` and ``PinWriter`` extension types whose fields the write reads and adds to without an
attribute lookup, ``coerce_value`` and ``write`` C functions as well as Python ones), and
``protocol.twins`` picks one of the two for the domain; the compiled device core calls the compiled
``write`` in C. A lone ``vw`` read of the compiled core runs about 4,000 instructions, the write most
of them (callgrind, benchmarks/RESULTS.md, issue 12 step 13); its time is mostly the memory it touches,
which compiling does not change. This file is the one source of behaviour and, as it is, the
pure-Python twin. Two twins may be loaded at once: only the domain makes ``DeviceState`` and
``PinWriter`` objects, of the twin it picked, so a check of a device's class (``events.py``) compares
like with like; the error both raise, ``InvalidValue``, is ``errors``'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blynk_server.errors import InvalidValue
from blynk_server.model import MAX_TS_MS
from blynk_server.reactions import VALUE, Happening
from protocol.body import SEP

try:
    import cython  # compiling: Cython's own; with Cython installed, its pure-Python stand-in
except ImportError:  # no Cython here: this is the pure-Python twin
    from blynk_server import nocython as cython

if TYPE_CHECKING:
    from blynk_server.model import Datastream, DeviceRecord, Template

MAX_STRING_VALUE = 1024  # blynk.cloud limit for one value


def check_ts(ts: int) -> None:
    """Refuse a timestamp outside 0..MAX_TS_MS: beyond 2^63 SQLite cannot store it and the write-behind
    batch holding it would fail for every device."""
    if not 0 <= ts <= MAX_TS_MS:
        raise InvalidValue("Timestamp is out of range.")


def _format_number(x: float) -> bytes:
    return str(int(x)).encode() if x == int(x) and abs(x) < 1e15 else repr(x).encode()


# The datastream types coerce_value tells apart, as small ints: one lookup per write, not up to five
# string comparisons. Any other type is a number.
STRING, LOCATION, INT, ENUM, NUMBER = 0, 1, 2, 3, 4
_KINDS = {"string": STRING, "location": LOCATION, "int": INT, "enum": ENUM}
_NOT_INT = float("nan")


def coerce_value(ds: Datastream | None, raw: bytes) -> bytes:
    """Validate ``raw`` against the datastream: type check, min/max clamp. No datastream: as-is.

    Every type is capped at ``MAX_STRING_VALUE`` bytes: a number with 30,000 decimals is stored as sent."""
    if len(raw) > MAX_STRING_VALUE:
        raise InvalidValue(f"Value is longer than {MAX_STRING_VALUE} bytes.")
    kind = _KINDS.get(ds.type, NUMBER) if ds is not None else STRING
    if kind == STRING:
        return raw
    if kind == LOCATION:
        parts = raw.split(SEP)
        try:
            lon, lat = [float(p) for p in parts]  # a list, not a generator: Cython compiles no closure here
        except ValueError:
            raise InvalidValue("Value doesn't match the Datastream data type.") from None
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise InvalidValue("Value doesn't match the Datastream data type.")
        return raw
    integral = kind in (INT, ENUM)
    # An integer as str(int) writes it ("1234", the usual telemetry) is read without float()'s parser.
    x = _int_value(raw) if type(raw) is bytes else _NOT_INT
    canonical = x == x
    if not canonical:
        try:
            x = float(raw)  # compiled, a C double (``_pinwrite_c.pxd``): no float object unless one is returned
        except ValueError:
            raise InvalidValue("Value doesn't match the Datastream data type.") from None
        if x - x != 0.0:  # NaN or infinite (x - x is NaN): C arithmetic when compiled, not a call of math.isfinite
            raise InvalidValue("Value doesn't match the Datastream data type.")
        if integral and x != int(x):
            x = float(round(x))
    if kind == ENUM and ds.enum_values and int(x) not in ds.enum_values:
        raise InvalidValue("Value doesn't match the Datastream data type.")
    clamped = x
    low, high = ds.min, ds.max
    if low is not None and clamped < low:
        clamped = low
    if high is not None and clamped > high:
        clamped = high
    if integral:
        if clamped == x and canonical:
            return raw  # already as str(int) writes it: kept, not made again
        return str(int(clamped)).encode()
    return raw.strip() if clamped == x else _format_number(clamped)


def _int_value(raw: bytes) -> float:
    """The value of ``raw`` when it is an integer as ``str(int)`` writes it (``-12``, ``0``; no sign
    ``+``, no leading zero, no space) of at most 15 digits, which a double holds exactly, so that
    ``str(int(float(raw)))`` is ``raw``; NaN for anything else."""
    n = len(raw)
    start = 1 if n > 1 and raw[0] == 45 else 0  # b"-"
    if n == start or n - start > 15:
        return _NOT_INT
    if raw[start] == 48:  # b"0": only "0" itself
        return 0.0 if n == 1 else _NOT_INT
    value = 0.0
    for i in range(start, n):
        c = raw[i]
        if c < 48 or c > 57:
            return _NOT_INT
        value = value * 10.0 + (c - 48)  # exact: below 10**15 < 2**53
    return -value if start else value


class DomainStats:
    """The domain's counters; the metrics collector reads them at scrape time. Here, not in domain.py,
    so that compiled they are C integers the pin write adds to without an attribute lookup."""

    __slots__ = (
        "writes",
        "invalid_writes",
        "events",
        "events_rejected",
        "events_undeclared",
        "properties_rejected",
        "meta_rejected",
        "http_writes_delivered",
        "info_cache_bytes",
        "info_cache_entries",
    )

    def __init__(self) -> None:
        self.writes = 0
        self.invalid_writes = 0  # includes out-of-range timestamps
        self.events = 0
        self.events_rejected = 0  # every refused event, undeclared codes included
        self.events_undeclared = 0
        self.properties_rejected = 0
        self.meta_rejected = 0
        self.http_writes_delivered = 0
        self.info_cache_bytes = 0  # estimated bytes of the shared info messages (gauge)
        self.info_cache_entries = 0


class DeviceState:
    """A device as the running server sees it. ``__slots__`` is for the pure twin (compiled, the layout
    is ``_pinwrite_c.pxd``'s and ``__slots__`` only a class attribute)."""

    __slots__ = (
        "id",
        "record",
        "template",
        "values",
        "properties",
        "meta",
        "online",
        "last_event_ms",
        "events_day",
        "events_today",
        "deleted",
    )

    def __init__(self, record: DeviceRecord, template: Template) -> None:
        self.id: int = record.id  # never changes; the record's own int object, read without a lookup
        self.record = record
        self.template = template
        self.values: dict[str, tuple[bytes, int]] = {}  # pin key -> (value, ts ms)
        self.properties: dict[tuple[str, str], bytes] = {}
        self.meta: dict[str, str] = {}
        self.online = False
        self.last_event_ms: dict[str, int] = {}  # code -> ts; at most max_event_codes
        self.events_day = 0  # the UTC day (ms // DAY_MS) events_today counts
        self.events_today = 0
        self.deleted = False  # removed by provisioning: writes still under way are dropped

    @property
    def token(self) -> str:
        return self.record.token


class PinWriter:
    """What a pin write changes besides the device: the store's write-behind batch, the domain's
    counters, the reactions (automations, webhooks) that watch the pin."""

    __slots__ = ("store", "stats", "reactions", "pending", "watched")

    def __init__(self, store, stats, reactions) -> None:
        self.store = store
        self.stats = stats
        self.reactions = reactions
        # Held here so that a write looks neither up (compiled: C fields): the store's one-item list
        # holding its pending batch's values (re-pointed when the writer takes the batch), and the set
        # of watched pins (changed in place, never replaced).
        self.pending = store.pending_cell
        self.watched = reactions.watched

    def write(self, dev: DeviceState, key: str, raw: bytes, ts: int) -> bytes | InvalidValue | None:
        """Pin ``key`` (``"v1"``) of ``dev`` set to ``raw`` at ``ts``, checked against its datastream and
        written behind. Returns the stored value, the refusal (returned, not raised: a device's write
        is answered, not unwound), or None when the device was deleted meanwhile (nothing stored)."""
        if dev.deleted:
            return None
        template = dev.template
        datastreams = template.datastreams  # compiled, the dicts are typed: C calls, not method lookups
        ds = datastreams.get(key)
        try:
            check_ts(ts)
            value = coerce_value(ds, raw)
        except InvalidValue as exc:
            self.stats.invalid_writes += 1
            return exc
        row = (value, ts)
        device_id = dev.id
        pending_key = (device_id, key)
        if cython.compiled:
            # Tuples of atomic objects (bytes and an int; an int and a str), out of the collector's sight
            # as it would put them at its next pass: else each device's live value, its pending row and
            # key, and the dicts they make tracked, are walked by every young collection (29,000 tuples
            # and 10,000 dicts of the 72,600 objects of the one after a 10,000-device login storm).
            blynk_untrack(row)  # noqa: F821 - C, declared in _pinwrite_c.pxd
            blynk_untrack(pending_key)  # noqa: F821
        values = dev.values
        values[key] = row
        # The store's write-behind, stored into as its put_row does, without the call (a Python one, the
        # store being Python). The key is made first: between reading the store's dict and storing into
        # it nothing may allocate (SqliteStore._take swaps the dict at any switch of threads).
        pending = self.pending[0]
        pending[pending_key] = row
        if ds is not None and ds.history:
            self.store.put_history(device_id, key, ts, value)
        self.stats.writes += 1
        watched = self.watched
        if watched and (template.id, key) in watched:
            reactions = self.reactions
            reactions.emit(Happening(VALUE, dev, ts, pin=key, value=value, depth=reactions.depth))
        return value
