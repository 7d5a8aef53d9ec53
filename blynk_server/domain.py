"""Domain rules shared by every door (device session, HTTP API, admin API, CLI).

``Domain`` holds the live state of devices in memory (latest values, properties, online state) and
writes it behind through the store. Each rule exists once here: a pin write from a device, from the
HTTP API or from a bridge goes through ``write_pin``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from blynk_server.hub import Hub
from blynk_server.model import Datastream, DeviceRecord, Template, now_ms
from blynk_server.store import SqliteStore
from protocol import Command
from protocol.body import SEP, Pin, hardware_write_raw

log = logging.getLogger(__name__)

MAX_STRING_VALUE = 1024  # blynk.cloud limit for one value
MAX_EVENT_DESCRIPTION = 300
MIN_EVENT_INTERVAL_MS = 1000
MAX_SHARED_INFOS = 10_000  # distinct info messages kept for sharing
TEMPLATE_TTL_S = 5.0  # re-read a template at most this often, so CLI edits reach a running server


class InvalidValue(ValueError):
    """A value that does not fit its datastream; the message is the one the Blynk cloud gives."""


class EventRejected(ValueError):
    pass


@dataclass(slots=True, eq=False)
class DeviceState:
    """A device as the running server sees it."""

    record: DeviceRecord
    template: Template
    values: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # pin key -> (value, ts ms)
    properties: dict[tuple[str, str], bytes] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    online: bool = False
    last_event_ms: dict[str, int] = field(default_factory=dict)
    template_loaded: float = 0.0

    @property
    def id(self) -> int:
        return self.record.id

    @property
    def token(self) -> str:
        return self.record.token


def _format_number(x: float) -> bytes:
    return str(int(x)).encode() if x == int(x) and abs(x) < 1e15 else repr(x).encode()


def coerce_value(ds: Datastream | None, raw: bytes) -> bytes:
    """Validate ``raw`` against the datastream: type check, min/max clamp. No datastream: as-is."""
    kind = ds.type if ds is not None else "string"
    if kind == "string":
        if len(raw) > MAX_STRING_VALUE:
            raise InvalidValue(f"Value is longer than {MAX_STRING_VALUE} bytes.")
        return raw
    if kind == "location":
        parts = raw.split(SEP)
        try:
            lon, lat = (float(p) for p in parts)
        except ValueError:
            raise InvalidValue("Value doesn't match the Datastream data type.") from None
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise InvalidValue("Value doesn't match the Datastream data type.")
        return raw
    try:
        x = float(raw)
    except ValueError:
        raise InvalidValue("Value doesn't match the Datastream data type.") from None
    if not math.isfinite(x):
        raise InvalidValue("Value doesn't match the Datastream data type.")
    integral = kind == "int" or kind == "enum"
    if integral:
        if x != int(x):
            x = float(round(x))
        if kind == "enum" and ds.enum_values and int(x) not in ds.enum_values:
            raise InvalidValue("Value doesn't match the Datastream data type.")
    clamped = x
    low, high = ds.min, ds.max
    if low is not None and clamped < low:
        clamped = low
    if high is not None and clamped > high:
        clamped = high
    if integral:
        return str(int(clamped)).encode()
    return raw.strip() if clamped == x else _format_number(clamped)


class DomainStats:
    """Plain counters; the metrics collector reads them at scrape time."""

    __slots__ = ("writes", "invalid_writes", "events", "events_rejected", "http_writes_delivered")

    def __init__(self) -> None:
        self.writes = 0
        self.invalid_writes = 0
        self.events = 0
        self.events_rejected = 0
        self.http_writes_delivered = 0


class Domain:
    def __init__(self, store: SqliteStore, hub: Hub) -> None:
        self.store = store
        self.hub = hub
        self.stats = DomainStats()
        self._by_id: dict[int, DeviceState] = {}
        self._by_token: dict[str, DeviceState] = {}
        self._templates: dict[str, tuple[Template, float]] = {}
        # Devices on the same firmware send the same info message: they share one (read-only) dict
        # of it, instead of ~800 bytes of dict and strings each.
        self._infos: dict[str, dict] = {}
        # Hooks other parts subscribe to (OTA wants to know about info messages and logins).
        self.on_device_info: list[Callable[[DeviceState, object], None]] = []
        self.on_device_offline: list[Callable[[DeviceState], None]] = []

    # --- lookup ------------------------------------------------------------------------------

    def template(self, template_id: str) -> Template | None:
        cached = self._templates.get(template_id)
        now = time.monotonic()
        if cached and now - cached[1] < TEMPLATE_TTL_S:
            return cached[0]
        tpl = self.store.get_template(template_id)
        if tpl is None:
            self._templates.pop(template_id, None)
            return None
        self._templates[template_id] = (tpl, now)
        for dev in self._by_id.values():
            if dev.record.template_id == template_id:
                dev.template = tpl
        return tpl

    def invalidate_template(self, template_id: str) -> None:
        self._templates.pop(template_id, None)
        self.template(template_id)

    def authenticate(self, token: str) -> DeviceState | None:
        """The device for ``token``, confirmed against the store (so CLI-made devices log in at once,
        and deleted ones do not)."""
        record = self.store.get_device_by_token(token)
        if record is None:
            stale = self._by_token.pop(token, None)
            if stale is not None:
                self._by_id.pop(stale.id, None)
            return None
        dev = self._by_token.get(token)
        if dev is None or dev.id != record.id:
            dev = self._load(record)
        else:
            tpl = self.template(record.template_id)
            if tpl is not None:
                dev.template = tpl
        return dev

    def device_by_token(self, token: str) -> DeviceState | None:
        """For HTTP: the in-memory device, loading it from the store on first use."""
        dev = self._by_token.get(token)
        if dev is not None:
            return dev
        return self.authenticate(token)

    def device(self, device_id: int) -> DeviceState | None:
        dev = self._by_id.get(device_id)
        if dev is not None:
            return dev
        record = self.store.get_device(device_id)
        return self._load(record) if record else None

    def _load(self, record: DeviceRecord) -> DeviceState:
        tpl = self.template(record.template_id) or Template(record.template_id, record.template_id)
        dev = DeviceState(
            record,
            tpl,
            values=self.store.load_values(record.id),
            properties=self.store.load_properties(record.id),
            meta=self.store.load_meta(record.id),
        )
        self._by_id[record.id] = dev
        self._by_token[record.token] = dev
        return dev

    def forget(self, device_id: int) -> None:
        """Drop a deleted device from memory and close its session."""
        dev = self._by_id.pop(device_id, None)
        if dev is not None:
            self._by_token.pop(dev.token, None)
        self.hub.close(device_id, "device deleted")

    # --- online state -------------------------------------------------------------------------

    def set_online(self, dev: DeviceState) -> None:
        dev.online = True
        dev.record.last_seen = now_ms()
        self.store.put_device_seen(dev.id, dev.record.last_seen)

    def set_offline(self, dev: DeviceState) -> None:
        dev.online = False
        dev.record.last_seen = now_ms()
        self.store.put_device_seen(dev.id, dev.record.last_seen)
        for hook in self.on_device_offline:
            hook(dev)

    def set_info(self, dev: DeviceState, info) -> None:
        as_json = json.dumps(info.as_dict(), sort_keys=True)
        shared = self._infos.get(as_json)
        if shared is None:
            shared = json.loads(as_json)
            if len(self._infos) < MAX_SHARED_INFOS:
                self._infos[as_json] = shared
        dev.record.info = shared
        self.store.put_device_seen(dev.id, now_ms(), as_json)
        for hook in self.on_device_info:
            try:
                hook(dev, info)
            except Exception:
                log.exception("device info hook failed device=%d", dev.id)

    # --- pins -------------------------------------------------------------------------------

    def write_pin(self, dev: DeviceState, pin: Pin, raw: bytes, ts: int | None = None, deliver: bool = False) -> bytes:
        """Store a pin value (validated against its datastream); ``deliver`` also sends it to the
        device when it is online. Returns the stored value."""
        value = self.write_key(dev, pin.key, raw, ts)
        if deliver and self.hub.send(dev.id, Command.HARDWARE, hardware_write_raw(pin, value)):
            self.stats.http_writes_delivered += 1
        return value

    def write_keys(self, dev: DeviceState, writes: list, ts: int) -> list | None:
        """Several ``(key, raw, tag)`` writes of one device from one read, in order, under the rules of
        ``write_key``: the device hot path, one call per read instead of one per frame. Returns the
        ``(tag, key, error)`` of the rejected ones, or None when all were stored."""
        datastreams = dev.template.datastreams
        values = dev.values
        store = self.store
        put_value = store.put_value
        device_id = dev.record.id
        failed = None
        stored = 0
        for key, raw, tag in writes:
            ds = datastreams.get(key)
            try:
                value = coerce_value(ds, raw)
            except InvalidValue as exc:
                self.stats.invalid_writes += 1
                if failed is None:
                    failed = []
                failed.append((tag, key, exc))
                continue
            values[key] = (value, ts)
            put_value(device_id, key, value, ts)
            if ds is not None and ds.history:
                store.put_history(device_id, key, ts, value)
            stored += 1
        self.stats.writes += stored
        return failed

    def write_key(self, dev: DeviceState, key: str, raw: bytes, ts: int | None = None) -> bytes:
        """``write_pin`` without delivery, by pin key (``"v1"``): the device hot path, which has the key
        at hand and should not build a ``Pin`` per frame. Returns the stored value."""
        ds = dev.template.datastreams.get(key)
        try:
            value = coerce_value(ds, raw)
        except InvalidValue:
            self.stats.invalid_writes += 1
            raise
        ts = ts or now_ms()
        dev.values[key] = (value, ts)
        device_id = dev.record.id
        self.store.put_value(device_id, key, value, ts)
        if ds is not None and ds.history:
            self.store.put_history(device_id, key, ts, value)
        self.stats.writes += 1
        return value

    def write_history(self, dev: DeviceState, pin: Pin, points: list[tuple[int, bytes]]) -> None:
        """Timestamped points (batch import): each goes to history; the newest becomes the value."""
        key = pin.key
        ds = dev.template.datastreams.get(key)
        coerced = [(ts, coerce_value(ds, raw)) for ts, raw in points]
        for ts, value in coerced:
            self.store.put_history(dev.id, key, ts, value)
        if coerced:
            ts, value = max(coerced, key=lambda p: p[0])
            current = dev.values.get(key)
            if current is None or current[1] <= ts:
                dev.values[key] = (value, ts)
                self.store.put_value(dev.id, key, value, ts)

    def read_pin(self, dev: DeviceState, pin_key: str) -> bytes | None:
        stored = dev.values.get(pin_key)
        if stored is not None:
            return stored[0]
        ds = dev.template.datastreams.get(pin_key)
        return ds.default.encode() if ds is not None and ds.default is not None else None

    def sync_values(self, dev: DeviceState, pins: list[Pin] | None) -> list[tuple[Pin, bytes]]:
        """What HARDWARE_SYNC sends: every sync-flagged datastream (empty body) or the listed pins;
        nothing for pins without a value."""
        if pins is None:
            keys = [k for k, ds in dev.template.datastreams.items() if ds.sync]
            pins = [Pin(k[0], int(k[1:])) for k in keys]
        out = []
        for pin in pins:
            value = self.read_pin(dev, pin.key)
            if value is not None:
                out.append((pin, value))
        return out

    def set_property(self, dev: DeviceState, pins, name: str, values: list[bytes]) -> None:
        value = SEP.join(values)
        ts = now_ms()
        for pin in pins:
            dev.properties[(pin.key, name)] = value
            self.store.put_property(dev.id, pin.key, name, value, ts)

    # --- events, metadata -----------------------------------------------------------------------

    def log_event(self, dev: DeviceState, code: str, description: str | None) -> None:
        """Log an event with the cloud's limits: description ≤ 300 chars, ≥ 1 s between events of
        one code (reference protocol.md §7.2)."""
        if not code:
            raise EventRejected("Event code is not provided.")
        if description is not None and len(description) > MAX_EVENT_DESCRIPTION:
            self.stats.events_rejected += 1
            raise EventRejected(f"Event description is longer than {MAX_EVENT_DESCRIPTION} characters.")
        ts = now_ms()
        last = dev.last_event_ms.get(code)
        if last is not None and ts - last < MIN_EVENT_INTERVAL_MS:
            self.stats.events_rejected += 1
            raise EventRejected("Events of one code must be at least 1 second apart.")
        dev.last_event_ms[code] = ts
        self.store.put_event(dev.id, code, description, ts)
        self.stats.events += 1

    def clear_event(self, dev: DeviceState, code: str, resolve_all: bool) -> None:
        self.store.put_event_clear(dev.id, code, resolve_all, now_ms())

    def meta_get(self, dev: DeviceState, name: str) -> str | None:
        if name == "Auth Token":
            return dev.token
        return dev.meta.get(name)

    def meta_set(self, dev: DeviceState, name: str, value: str) -> None:
        dev.meta[name] = value
        self.store.set_meta(dev.id, name, value)
        if name in ("Timezone", "timezone"):
            dev.record.timezone = value
            self.store.set_device_timezone(dev.id, value)
