"""Plain records: templates, datastreams, devices. The rules that use them live in ``domain``."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

DATASTREAM_TYPES = ("int", "double", "string", "enum", "location")
# Datastream ids (Blynk's ``dataStreamId``): 0..int32, as the cloud's. Without an explicit id a virtual
# pin ``Vn`` takes ``n`` (so ``dataStreamId=N`` still means ``VN`` in every set-up made before ids);
# a digital/analog pin, or a ``Vn`` whose ``n`` is taken, the lowest free id from ``FIRST_FREE_ID``.
MAX_DATASTREAM_ID = 2**31 - 1
FIRST_FREE_ID = 256
NO_ID = -1  # a datastream not given an id yet: ``assign_datastream_ids`` applies the default rule


# The largest timestamp accepted anywhere (9999-12-31T23:59:59.999Z): fits SQLite's 64-bit integers and
# Python's datetime, so no stored value can break a flush or a query.
MAX_TS_MS = 253_402_300_799_999


def now_ms() -> int:
    """Wall-clock UTC milliseconds, the unit of every stored timestamp.

    From the float clock, not ``time_ns() // 1_000_000``: a quotient keeps the size of its dividend, so
    every timestamp that way was a 36-byte int (48 with the allocator's rounding) where 32 fit; each
    session keeps one (its ``last_seen``), every stored value another. A double holds the milliseconds
    of any date up to year 9999 exactly; the clock's own resolution is far finer than a millisecond."""
    return int(time.time() * 1000)


def new_token() -> str:
    """32-character URL-safe token (24 random bytes in base64), as the Blynk cloud issues.

    Never starting with "-", so it can be passed on a command line without being taken for a flag."""
    while True:
        token = secrets.token_urlsafe(24)
        if not token.startswith("-"):
            return token


@dataclass(slots=True)
class Datastream:
    """A virtual/digital/analog pin of a template, with its type and limits."""

    pin: str  # storage key: "v5", "d3", "a0"
    name: str
    type: str = "string"
    min: float | None = None
    max: float | None = None
    default: str | None = None
    enum_values: tuple[int, ...] = ()
    history: bool = False  # keep raw history
    sync: bool = False  # sent on HARDWARE_SYNC with an empty body (syncAll)
    id: int = NO_ID  # Blynk's dataStreamId, unique in the template (see MAX_DATASTREAM_ID)
    alias: str = ""  # Blynk's alias, unique in the template; the name when not given

    def __post_init__(self) -> None:
        if not self.alias:
            self.alias = self.name

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "pin": self.pin.upper(),
            "name": self.name,
            "alias": self.alias,
            "type": self.type,
            "min": self.min,
            "max": self.max,
            "default": self.default,
            "enum_values": list(self.enum_values),
            "history": self.history,
            "sync": self.sync,
        }


def _pin_order(ds: Datastream) -> tuple[bool, str, int]:
    return ds.pin[0] != "v", ds.pin[0], int(ds.pin[1:])


def assign_datastream_ids(datastreams: Iterable[Datastream]) -> None:
    """Give every datastream of one template still without an id (``NO_ID``) the default id, in
    place: ``Vn`` gets ``n`` when no other datastream has it, any other the lowest free id from
    ``FIRST_FREE_ID`` (virtual pins first, then in pin order, so the result does not depend on the
    order given). The one rule provisioning, the store's migration and its loads apply."""
    streams = sorted(datastreams, key=_pin_order)
    taken = {ds.id for ds in streams if ds.id != NO_ID}
    later = []
    for ds in streams:
        if ds.id != NO_ID:
            continue
        n = int(ds.pin[1:])
        if ds.pin[0] == "v" and n not in taken:
            ds.id = n
            taken.add(n)
        else:
            later.append(ds)
    free = FIRST_FREE_ID
    for ds in later:
        while free in taken:
            free += 1
        ds.id = free
        taken.add(free)


@dataclass(slots=True)
class MetaField:
    """A metadata field a template declares (Blynk's metafield): each device of the template has a
    value of it, checked by its type (``metafields.check``); ``default`` until one is set."""

    id: int  # 0..MAX_DATASTREAM_ID, unique in the template
    name: str  # unique in the template, case-sensitive (devices ask by name)
    type: str  # one of metafields.TYPES
    default: str | None = None
    options: tuple[str, ...] = ()  # list and switch: the allowed values
    min: float | None = None  # number: optional bounds
    max: float | None = None

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "default": self.default,
            "options": list(self.options),
            "min": self.min,
            "max": self.max,
        }


@dataclass(slots=True)
class Template:
    id: str
    name: str
    created_at: int = 0
    datastreams: dict[str, Datastream] = field(default_factory=dict)  # by pin key
    metafields: dict[int, MetaField] = field(default_factory=dict)  # by id

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "created_at": self.created_at,
            "datastreams": [ds.as_dict() for ds in self.datastreams.values()],
            "metafields": [mf.as_dict() for _, mf in sorted(self.metafields.items())],
        }


@dataclass(slots=True)
class DeviceRecord:
    """A device row as stored: identity, template, and what it last reported."""

    id: int
    token: str
    name: str
    template_id: str
    created_at: int
    last_seen: int | None = None
    info: dict | None = None
    timezone: str | None = None

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "token": self.token,
            "name": self.name,
            "template_id": self.template_id,
            "created_at": self.created_at,
            "last_seen": self.last_seen,
            "info": self.info,
            "timezone": self.timezone,
        }
