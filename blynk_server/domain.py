"""Domain rules shared by every door (device session, WebSocket, device and legacy HTTP APIs, admin
API, CLI).

``Domain`` holds every template and device in memory (loaded once at start; provisioning changes both
the store and this copy), with each device's latest values, properties, metadata and online state, and
writes changes behind through the store. So a login, a lookup or a write never waits on SQLite; reads
of history and events run on the store's thread. Each rule exists once here: a pin write from a device
goes through ``write_value``/``write_key``, from an API or a bridge through ``write_pin``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

from blynk_server import metafields
from blynk_server.config import Settings
from blynk_server.errors import InvalidValue
from blynk_server.eventdefs import TemplateEvents
from blynk_server.history import Fetched, HistoryQuery, fetch_many, run_json_many
from blynk_server.hub import Hub
from blynk_server.model import (
    Datastream,
    DeviceRecord,
    MetaField,
    Template,
    assign_datastream_ids,
    now_ms,
)
from blynk_server.reactions import EVENT, Happening, Reactions
from blynk_server.store import SqliteStore
from blynk_server.store.sqlite import Snapshot
from protocol import Command, Status, twins
from protocol.body import SEP, Pin, hardware_write_raw

log = logging.getLogger(__name__)

# A pin write (the device state, the value rules and the write): pinwrite.py compiled, or as it is
# (protocol.twins).
(_pinwrite,), PINWRITE_IMPLEMENTATION = twins.select([("blynk_server._pinwrite_c", "blynk_server.pinwrite")])
PinWriter = _pinwrite.PinWriter
DeviceState = _pinwrite.DeviceState  # a device as the running server sees it; the pin writer's class
DomainStats = _pinwrite.DomainStats  # the domain's counters; the pin writer's class (C integers compiled)
coerce_value = _pinwrite.coerce_value
check_ts = _pinwrite.check_ts

MAX_EVENT_DESCRIPTION = 300
MIN_EVENT_INTERVAL_MS = 1000
DAY_MS = 86_400_000
REFUSAL_LOG_INTERVAL = 60.0  # seconds between INFO lines about refused state (the rest go to DEBUG)


class LimitExceeded(InvalidValue):
    """Over a per-device limit on stored state (properties, metadata)."""

    status = Status.ILLEGAL_COMMAND_BODY


class MetaFieldUnknown(InvalidValue):
    """A metadata name or id the device's template does not declare (and no stored value has)."""


class MetaValueRefused(InvalidValue):
    """A metadata value its field's type refuses, or a read-only field (the device API's ``Wrong value``)."""


# Fields every template answers by name without declaring them (Blynk: "Auth Token" is reserved and
# read-only; "Device Name" and the device timezone are in every product). A declared field of the
# same name takes their place. Negative ids: never a declared field's.
BUILTIN_FIELDS = {
    "Auth Token": MetaField(-1, "Auth Token", "auth_token"),
    "Device Name": MetaField(-2, "Device Name", "device_name"),
    "Timezone": MetaField(-3, "Timezone", "timezone"),
}


class EventRejected(InvalidValue):
    """An event whose body breaks a rule (code, description, distinct codes)."""

    status = Status.ILLEGAL_COMMAND_BODY


class EventQuotaExceeded(EventRejected):
    """An event over a rate (its definition's ``every_s``, at least 1 s; events per day)."""

    status = Status.QUOTA_LIMIT


class EventNotDeclared(EventRejected):
    """A code the device's template does not declare (or a system code, which only the server logs):
    refused as Blynk does, status 2 on the device, 400 over HTTP."""

    status = Status.ILLEGAL_COMMAND


def _seconds(ms: int) -> str:
    """``1 second``, ``2.5 seconds``: an event interval in a refusal's message."""
    n = ms / 1000
    return "1 second" if n == 1 else f"{n:g} seconds"


def _check_live(dev: DeviceState) -> None:
    """Refuse a change to a device deleted while the request that holds it was under way."""
    if dev.deleted:
        raise InvalidValue("Invalid token.")


def check_text(text: str, limit: int, what: str) -> None:
    """Refuse text over ``limit`` UTF-8 bytes, or that SQLite cannot store (lone surrogates)."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidValue(f"{what} is not valid UTF-8.") from None
    if size > limit:
        raise LimitExceeded(f"{what} is longer than {limit} bytes.")


def _info_cost(as_json: str) -> int:
    """Estimated bytes one cached info message holds: the JSON key, its parsed copy, and ~80 bytes of
    object overhead per string (two quotes each); measured with tracemalloc within 10%."""
    return 2 * len(as_json) + 40 * as_json.count('"')


class Domain:
    def __init__(self, store: SqliteStore, hub: Hub, settings: Settings | None = None) -> None:
        self.store = store
        self.hub = hub
        self.stats = DomainStats()
        # Per-device limits (the defaults without ``settings``), copied once: read on every property,
        # event and metadata message.
        settings = settings or Settings()
        self.max_properties_per_pin = settings.max_properties_per_pin
        self.max_properties_per_device = settings.max_properties_per_device
        self.max_property_size = settings.max_property_size
        self.max_event_code = settings.max_event_code
        self.max_event_codes = settings.max_event_codes
        self.events_per_day = settings.events_per_day
        self.max_meta_fields = settings.max_meta_fields
        self.max_meta_size = settings.max_meta_size
        self.info_cache_limit = settings.info_cache_bytes
        self._by_id: dict[int, DeviceState] = {}
        self._by_token: dict[str, DeviceState] = {}
        self._templates: dict[str, Template] = {}
        self._ds_by_id: dict[str, dict[int, Datastream]] = {}  # template id -> datastream id -> datastream
        self._mf_by_name: dict[str, dict[str, MetaField]] = {}  # template id -> metafield name -> metafield
        # Devices on the same firmware send the same info message: they share one (read-only) dict
        # of it, instead of ~800 bytes of dict and strings each. Bounded by estimated bytes, oldest
        # first out, so distinct 30 KB messages cannot grow it (a device keeps its own copy). The value
        # keeps the JSON text too: the write-behind row of each login holds that one string, not a copy
        # of its own (~300 bytes a device until the flush, which a login burst left as holes in the heap).
        self._infos: OrderedDict[str, tuple[str, dict]] = OrderedDict()
        self._refusals = 0  # refusals not yet reported in an INFO line
        self._next_refusal_log = 0.0
        # What happens to devices, for notifications, webhooks and automations (reactions.py).
        self.reactions = Reactions()
        # A device's pin write, the telemetry hot path: compiled where built (pinwrite.py).
        self.pins = PinWriter(store, self.stats, self.reactions)
        # The events each template declares (eventdefs.py): filled at start by the events service and
        # changed by provisioning; ``log_event`` refuses a code not in it.
        self.event_defs = TemplateEvents()
        # Hooks other parts subscribe to (OTA wants to know about info messages and logins; the events
        # service about logins and disconnections, for the online/offline timeline).
        self.on_device_info: list[Callable[[DeviceState, object], None]] = []
        self.on_device_online: list[Callable[[DeviceState], None]] = []
        self.on_device_offline: list[Callable[[DeviceState], None]] = []
        # Dynamic provisioning (device_provisioning.py) sets these for devices issued a provision token
        # and not activated yet: ``login_gate`` refuses the login of one whose token expired,
        # ``activation_check`` its info message when ``tmpl`` is not its template. None: no device waits.
        self.login_gate: Callable[[DeviceState], bool] | None = None
        self.activation_check: Callable[[DeviceState, str | None], bool] | None = None

    # --- lookup (memory only: the domain holds every template and device, loaded once at start) ------

    def load_snapshot(self, snapshot: Snapshot) -> None:
        """Take every stored template and device (``SqliteStore.load_all``, read on the store's thread)."""
        self._templates = {}
        self._ds_by_id = {}
        for tpl in snapshot.templates:
            self.put_template(tpl)
        for record in snapshot.devices:
            dev = self.add_device(record)
            dev.values = snapshot.values.get(record.id, {})
            dev.properties = snapshot.properties.get(record.id, {})
            dev.meta = snapshot.meta.get(record.id, {})

    def templates(self) -> list[Template]:
        return sorted(self._templates.values(), key=lambda t: t.id)

    def template(self, template_id: str) -> Template | None:
        return self._templates.get(template_id)

    def datastream_by_id(self, template: Template, ds_id: int) -> Datastream | None:
        """The datastream of Blynk's ``dataStreamId`` in ``template``, or None."""
        by_id = self._ds_by_id.get(template.id)
        return by_id.get(ds_id) if by_id is not None else None

    def _index(self, tpl: Template) -> None:
        """Keep ``datastream_by_id`` in step with ``tpl.datastreams`` (a template built in code may
        come without ids: the default rule gives them)."""
        assign_datastream_ids(tpl.datastreams.values())
        self._ds_by_id[tpl.id] = {ds.id: ds for ds in tpl.datastreams.values()}
        self._mf_by_name[tpl.id] = {mf.name: mf for mf in tpl.metafields.values()}

    def devices(self, template_id: str | None = None) -> list[DeviceState]:
        devs = self._by_id.values()
        if template_id is not None:
            devs = [d for d in devs if d.record.template_id == template_id]
        return sorted(devs, key=lambda d: d.id)

    def authenticate(self, token: str) -> DeviceState | None:
        """The device a login with ``token`` opens, or None (unknown, deleted, or its provision token
        expired before it was activated)."""
        dev = self._by_token.get(token)
        if dev is not None and self.login_gate is not None and not self.login_gate(dev):
            return None
        return dev

    def device_by_token(self, token: str) -> DeviceState | None:
        """The device of ``token``, or None (unknown or deleted)."""
        return self._by_token.get(token)

    def activate(self, dev: DeviceState, template_id: str | None) -> bool:
        """False when ``dev`` awaits activation and its info's ``tmpl`` is not its template's id."""
        return self.activation_check is None or self.activation_check(dev, template_id)

    def device(self, device_id: int) -> DeviceState | None:
        return self._by_id.get(device_id)

    # --- provisioning's changes (``Provisioning`` stores them, then applies them here) ------------

    def put_template(self, tpl: Template) -> None:
        self._templates[tpl.id] = tpl
        self._index(tpl)
        for dev in self._by_id.values():
            if dev.record.template_id == tpl.id:
                dev.template = tpl

    def remove_template(self, template_id: str) -> None:
        self._templates.pop(template_id, None)
        self._ds_by_id.pop(template_id, None)
        self._mf_by_name.pop(template_id, None)
        self.event_defs.drop_template(template_id)  # its rows went with the template (ON DELETE CASCADE)

    def put_datastream(self, template_id: str, ds: Datastream) -> None:
        """Add or replace a datastream in place: every device of the template sees it at its next write."""
        tpl = self._templates[template_id]
        tpl.datastreams = {**tpl.datastreams, ds.pin: ds}
        self._index(tpl)

    def delete_datastream(self, template_id: str, pin_key: str) -> None:
        tpl = self._templates[template_id]
        tpl.datastreams = {k: v for k, v in tpl.datastreams.items() if k != pin_key}
        self._index(tpl)

    def put_metafield(self, template_id: str, mf: MetaField) -> None:
        """Declare or replace a metafield: devices' values are read and checked against it at once."""
        tpl = self._templates[template_id]
        tpl.metafields = {**tpl.metafields, mf.id: mf}
        self._index(tpl)

    def delete_metafield(self, template_id: str, metafield_id: int) -> None:
        tpl = self._templates[template_id]
        tpl.metafields = {k: v for k, v in tpl.metafields.items() if k != metafield_id}
        self._index(tpl)

    def add_device(self, record: DeviceRecord) -> DeviceState:
        tpl = self._templates.get(record.template_id) or Template(record.template_id, "")
        dev = DeviceState(record, tpl)
        self._by_id[record.id] = dev
        self._by_token[record.token] = dev
        return dev

    def replace_token(self, device_id: int, token: str) -> None:
        """Give a device a new token: the old one is refused on every door from now on, and a session
        logged in with it is closed."""
        dev = self._by_id[device_id]
        self._by_token.pop(dev.token, None)
        dev.record.token = token
        self._by_token[token] = dev
        self.hub.close(device_id, "token replaced")

    def remove_device(self, device_id: int, reason: str) -> None:
        """Forget a device and close its session at once: from here on every door refuses its token,
        and its writes still under way (a batch between two yields) are not stored."""
        dev = self._by_id.pop(device_id, None)
        if dev is None:
            return
        self._by_token.pop(dev.token, None)
        dev.deleted = True
        log.info("device removed device=%d reason=%s", device_id, reason)
        self.hub.close(device_id, reason)

    # --- reads from the store (on its thread; they include rows not written yet) -------------------

    async def history_json(self, query: HistoryQuery) -> bytes:
        """The JSON answer of a history query (raises ``NoHistory`` when the period is empty)."""
        return await self.store.run(query.run, self.store)

    async def history_json_many(self, queries: list[HistoryQuery], budget: int) -> bytes:
        """The JSON answer of several pins' queries, ``budget`` rows in all (``history.json_many``)."""
        return await self.store.run(run_json_many, queries, self.store, budget)

    async def history_fetch(self, queries: list[HistoryQuery], budget: int) -> list[Fetched]:
        """The rows of several pins' queries, ``budget`` rows in all (``history.fetch_many``)."""
        return await self.store.run(fetch_many, queries, self.store, budget)

    async def events(self, dev: DeviceState, limit: int) -> list[dict]:
        """The device's events, newest first."""
        return await self.store.run(self.store.events, dev.id, limit)

    # --- online state -------------------------------------------------------------------------

    def set_online(self, dev: DeviceState) -> None:
        dev.online = True
        dev.record.last_seen = now_ms()
        self.store.put_device_seen(dev.id, dev.record.last_seen)
        for hook in self.on_device_online:
            try:
                hook(dev)
            except Exception:
                log.exception("device online hook failed device=%d", dev.id)

    def set_offline(self, dev: DeviceState) -> None:
        dev.online = False
        dev.record.last_seen = now_ms()
        self.store.put_device_seen(dev.id, dev.record.last_seen)
        for hook in self.on_device_offline:
            hook(dev)

    def set_info(self, dev: DeviceState, info) -> None:
        as_json = json.dumps(info.as_dict(), sort_keys=True)
        cached = self._infos.get(as_json)
        if cached is None:
            shared = json.loads(as_json)
            self._share_info(as_json, shared)
        else:
            as_json, shared = cached
        dev.record.info = shared
        self.store.put_device_seen(dev.id, now_ms(), as_json)
        for hook in self.on_device_info:
            try:
                hook(dev, info)
            except Exception:
                log.exception("device info hook failed device=%d", dev.id)

    def _share_info(self, as_json: str, shared: dict) -> None:
        """Cache ``shared`` (and its JSON text) under its JSON text, within ``info_cache_limit`` bytes."""
        cost = _info_cost(as_json)
        limit = self.info_cache_limit
        if cost > limit:
            return
        infos = self._infos
        stats = self.stats
        infos[as_json] = (as_json, shared)
        stats.info_cache_bytes += cost
        while stats.info_cache_bytes > limit:
            old, _ = infos.popitem(last=False)
            stats.info_cache_bytes -= _info_cost(old)
        stats.info_cache_entries = len(infos)

    # --- refusals -----------------------------------------------------------------------------

    def _refused(self, dev: DeviceState, exc: InvalidValue) -> InvalidValue:
        """Log a refusal (one INFO line per ``REFUSAL_LOG_INTERVAL`` with the count since the last
        line, the others at DEBUG: a hostile device must not fill the log) and return it to raise."""
        self._refusals += 1
        now = time.monotonic()
        if now >= self._next_refusal_log:
            log.info("refused device=%d: %s (%d refusals since the last line)", dev.id, exc, self._refusals)
            self._refusals = 0
            self._next_refusal_log = now + REFUSAL_LOG_INTERVAL
        else:
            log.debug("refused device=%d: %s", dev.id, exc)
        return exc

    # --- pins -------------------------------------------------------------------------------

    def write_pin(
        self,
        dev: DeviceState,
        pin: Pin,
        raw: bytes,
        ts: int | None = None,
        deliver: bool = False,
        needs_datastream: bool = True,
    ) -> bytes:
        """Store a pin value from outside the device (an API, a bridge), validated against its
        datastream; ``deliver`` also sends it to the device when it is online. Returns the stored value.

        A pin without a datastream is refused unless ``needs_datastream`` is False: the legacy token
        API and bridges, which predate datastreams, and the device's own writes (``write_value``) take
        any pin."""
        if needs_datastream and pin.key not in dev.template.datastreams:
            self.stats.invalid_writes += 1
            raise InvalidValue("No datastream setup for that pin.")
        value = self.write_key(dev, pin.key, raw, ts)
        if deliver and self.hub.send(dev.id, Command.HARDWARE, hardware_write_raw(pin, value)):
            self.stats.http_writes_delivered += 1
        return value

    def write_value(self, dev: DeviceState, key: str, raw: bytes, ts: int) -> bytes | InvalidValue | None:
        """A device's write of pin ``key`` (``"v1"``) at ``ts``: ``PinWriter.write`` (pinwrite.py). Returns
        the stored value, the refusal (returned, not raised: a device's write is answered, not
        unwound), or None when the device was deleted meanwhile (its session is closing)."""
        return self.pins.write(dev, key, raw, ts)

    def write_key(self, dev: DeviceState, key: str, raw: bytes, ts: int | None = None) -> bytes:
        """``write_value`` raising its refusal (and refusing a deleted device): the API's write by pin
        key, without delivery. Returns the stored value (what reactions to it wrote after it aside)."""
        try:
            _check_live(dev)
        except InvalidValue:
            self.stats.invalid_writes += 1
            raise
        done = self.write_value(dev, key, raw, ts or now_ms())
        if isinstance(done, InvalidValue):
            raise done
        return done

    def write_history(
        self, dev: DeviceState, pin: Pin, points: list[tuple[int, bytes]], needs_datastream: bool = True
    ) -> None:
        """Timestamped points (batch import): each goes to history; the newest becomes the value.
        All or nothing: one bad point (value or timestamp) refuses the batch. A pin without a
        datastream as in ``write_pin``."""
        key = pin.key
        ds = dev.template.datastreams.get(key)
        try:
            _check_live(dev)
            if ds is None and needs_datastream:
                raise InvalidValue("No datastream setup for that pin.")
            for ts, _ in points:
                check_ts(ts)
            coerced = [(ts, coerce_value(ds, raw)) for ts, raw in points]
        except InvalidValue:
            self.stats.invalid_writes += 1
            raise
        for ts, value in coerced:
            self.store.put_history(dev.id, key, ts, value)
        if coerced:
            ts, value = max(coerced, key=lambda p: p[0])
            current = dev.values.get(key)
            if current is None or current[1] <= ts:
                row = (value, ts)
                dev.values[key] = row
                self.store.put_row(dev.id, key, row)

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
        """Set a widget property on pins, all or none. Existing names may always be updated; a new
        name beyond ``max_properties_per_pin`` on a pin, or ``max_properties_per_device`` in all,
        raises LimitExceeded, as does a name or value over ``max_property_size`` bytes."""
        _check_live(dev)
        value = SEP.join(values)
        limit = self.max_property_size
        props = dev.properties
        keys = list(dict.fromkeys((pin.key, name) for pin in pins))
        try:
            if len(value) > limit:
                raise LimitExceeded(f"Property value is longer than {limit} bytes.")
            check_text(name, limit, "Property name")
            new = [k for k in keys if k not in props]
            if new:
                if len(props) + len(new) > self.max_properties_per_device:
                    raise LimitExceeded(f"A device may have at most {self.max_properties_per_device} properties.")
                per_pin = Counter(p for p, _ in props)
                for pin_key, _ in new:
                    if per_pin[pin_key] >= self.max_properties_per_pin:
                        raise LimitExceeded(f"A pin may have at most {self.max_properties_per_pin} properties.")
        except InvalidValue as exc:
            self.stats.properties_rejected += 1
            raise self._refused(dev, exc) from None
        ts = now_ms()
        for key in keys:
            if props.get(key) != value:
                props[key] = value
                self.store.put_property(dev.id, key[0], name, value, ts)

    # --- events, metadata -----------------------------------------------------------------------

    def log_event(self, dev: DeviceState, code: str, description: str | None) -> None:
        """Log an event a device (or an API) sends, as Blynk does: the code must be one the device's
        template declares, or the built-in ``notify`` (``EventNotDeclared`` otherwise, status 2); at
        most one event of a code per the definition's ``every_s`` and never two within 1 s (the cloud's
        floor); ``events_per_day`` per device; description ≤ 300 chars. And this server's: code ≤
        ``max_event_code`` chars, ≤ ``max_event_codes`` distinct codes per device (counted since the
        server started), so ``last_event_ms`` stays small. Stored with the definition's level, and
        emitted as an EVENT happening (the description sent, else the definition's)."""
        if not code:
            raise EventRejected("Event code is not provided.")
        _check_live(dev)
        ts = now_ms()
        try:
            self._check_event_code(code)
            edef = self.event_defs.loggable(dev.template.id, code)
            if edef is None:
                self.stats.events_undeclared += 1
                raise EventNotDeclared(f"Event code {code!r} is not declared by the device's template.")
            if description is not None:
                if len(description) > MAX_EVENT_DESCRIPTION:
                    raise EventRejected(f"Event description is longer than {MAX_EVENT_DESCRIPTION} characters.")
                check_text(description, 4 * MAX_EVENT_DESCRIPTION, "Event description")
            seen = dev.last_event_ms
            last = seen.get(code)
            if last is None:
                if len(seen) >= self.max_event_codes:
                    raise EventRejected(f"A device may use at most {self.max_event_codes} event codes.")
            else:
                interval = max(MIN_EVENT_INTERVAL_MS, int(edef.every_s * 1000))
                if ts - last < interval:
                    raise EventQuotaExceeded(f"Events of one code must be at least {_seconds(interval)} apart.")
            day = ts // DAY_MS
            if dev.events_day != day:
                dev.events_day = day
                dev.events_today = 0
            if self.events_per_day and dev.events_today >= self.events_per_day:
                raise EventQuotaExceeded(f"A device may log at most {self.events_per_day} events a day.")
        except InvalidValue as exc:
            self.stats.events_rejected += 1
            raise self._refused(dev, exc) from None
        dev.events_today += 1
        seen[code] = ts
        level = edef.level
        self.store.put_event(dev.id, code, description, ts, level)
        self.stats.events += 1
        reactions = self.reactions
        reactions.emit(
            Happening(
                EVENT,
                dev,
                ts,
                code=code,
                level=level,
                description=description if description is not None else edef.description or None,
                depth=reactions.depth,
            )
        )

    def put_system_event(self, dev: DeviceState, code: str, ts: int, description: str | None, level: str) -> None:
        """Record an event the server itself logs (online, offline, ota): no declaration, no rate or
        daily limit. Nothing for a deleted device. The caller emits what it means."""
        if dev.deleted:
            return
        self.store.put_event(dev.id, code, description, ts, level)
        self.stats.events += 1

    def _check_event_code(self, code: str) -> None:
        if len(code) > self.max_event_code:
            raise EventRejected(f"Event code is longer than {self.max_event_code} characters.")
        check_text(code, 4 * self.max_event_code, "Event code")

    def clear_event(self, dev: DeviceState, code: str, resolve_all: bool) -> None:
        """Resolve the latest (or every) open event of ``code``; a code no event can have is refused."""
        try:
            self._check_event_code(code)
        except InvalidValue as exc:
            self.stats.events_rejected += 1
            raise self._refused(dev, exc) from None
        self.store.put_event_clear(dev.id, code, resolve_all, now_ms())

    # Metadata. A template's declared fields (``Template.metafields``) are typed: a value is checked by
    # ``metafields.check``; "Device Name" renames the device, "Auth Token" is its token (read-only), a
    # timezone field is the device's timezone. Values are stored per device by field name, so a value
    # kept before its field was declared is the field's value from then on. A template that declares
    # no field keeps the free-form metadata of earlier versions (any name, text; the device may create
    # names); once it declares one, only declared names (and the built-ins) may be written, while
    # values stored under other names stay readable by name (nothing stored is lost).

    def meta_field(self, template: Template, ref: str) -> MetaField | None:
        """The field ``ref`` names: a declared field's id (digits), else a declared field's name, else a
        built-in name (``BUILTIN_FIELDS``). None when none matches."""
        if ref.isascii() and ref.isdigit() and len(ref) <= 10:
            mf = template.metafields.get(int(ref))
            if mf is not None:
                return mf
        by_name = self._mf_by_name.get(template.id)
        mf = by_name.get(ref) if by_name is not None else None
        return mf if mf is not None else BUILTIN_FIELDS.get(ref)

    def meta_value(self, dev: DeviceState, field: MetaField) -> str:
        """The device's value of ``field``: its stored value, else the field's default, else empty;
        the device's name, token or timezone for those types."""
        kind = field.type
        if kind == "auth_token":
            return dev.token
        if kind == "device_name":
            return dev.record.name
        if kind == "timezone":
            return dev.record.timezone or dev.meta.get(field.name) or field.default or ""
        value = dev.meta.get(field.name)
        if value is None:
            value = field.default
        return value if value is not None else ""

    def meta_read(self, dev: DeviceState, ref: str) -> tuple[MetaField | None, str] | None:
        """``(field, value)`` of a declared or built-in field, ``(None, value)`` of a value stored under
        an undeclared name (free-form), None when there is neither: what every door reads."""
        field = self.meta_field(dev.template, ref)
        if field is not None:
            return field, self.meta_value(dev, field)
        value = dev.meta.get(ref)
        return None if value is None else (None, value)

    def meta_write(self, dev: DeviceState, ref: str, value: str, create: bool = False) -> MetaField | None:
        """Write the field ``ref`` names (``meta_set``). An undeclared name is free-form text on a template
        that declares no field: an existing name, or a new one with ``create`` (the device's own
        ``meta set``, as before); otherwise ``MetaFieldUnknown``. Returns the field (None: free-form)."""
        field = self.meta_field(dev.template, ref)
        if field is not None:
            self.meta_set(dev, field, value)
            return field
        if dev.template.metafields or (not create and ref not in dev.meta):
            self.stats.meta_rejected += 1
            raise MetaFieldUnknown("MetaField doesn't exist")
        self._meta_put(dev, ref, value)
        return None

    def meta_set(self, dev: DeviceState, field: MetaField, value: str) -> None:
        """Set the device's value of ``field``, checked by its type (``MetaValueRefused``); "Auth Token"
        is refused, a ``device_name`` renames the device, a ``timezone`` becomes its timezone."""
        _check_live(dev)
        try:
            check_text(value, self.max_meta_size, "Metadata value")
            value = metafields.check(field, value)
        except ValueError as exc:  # InvalidValue (over the size) included
            self.stats.meta_rejected += 1
            refusal = exc if isinstance(exc, InvalidValue) else MetaValueRefused(str(exc))
            raise self._refused(dev, refusal) from None
        if field.type == "device_name":
            if dev.record.name != value:
                dev.record.name = value
                self.store.submit(self.store.rename_device, dev.id, value).add_done_callback(_log_failure)
            return
        self._meta_put(dev, field.name, value)
        if field.type == "timezone" and dev.record.timezone != value:
            dev.record.timezone = value
            self.store.put_device_timezone(dev.id, value)

    def _meta_put(self, dev: DeviceState, name: str, value: str) -> None:
        """Store a metadata value by name, written behind. A new name beyond ``max_meta_fields``, or a
        name or value over ``max_meta_size`` bytes, raises LimitExceeded; an unchanged value writes
        nothing."""
        _check_live(dev)
        meta = dev.meta
        current = meta.get(name)
        if current == value:
            return
        try:
            check_text(name, self.max_meta_size, "Metadata name")
            check_text(value, self.max_meta_size, "Metadata value")
            if current is None and len(meta) >= self.max_meta_fields:
                raise LimitExceeded(f"A device may have at most {self.max_meta_fields} metadata fields.")
        except InvalidValue as exc:
            self.stats.meta_rejected += 1
            raise self._refused(dev, exc) from None
        meta[name] = value
        self.store.put_meta(dev.id, name, value)


def device_timezone(dev: DeviceState) -> str | None:
    """The device's timezone: its timezone metadata, else a declared timezone field's default."""
    tz = dev.record.timezone or dev.meta.get("Timezone")
    if tz:
        return tz
    for mf in dev.template.metafields.values():
        if mf.type == "timezone" and mf.default:
            return mf.default
    return None


def _log_failure(fut) -> None:
    """A store job nobody awaits (a rename written behind): its failure is logged, not lost."""
    exc = None if fut.cancelled() else fut.exception()
    if exc is not None:
        log.error("store job failed: %s: %s", type(exc).__name__, exc)
