"""Events beyond what a device logs: the system events on each device's timeline (online, offline
after the template's offline-ignore period, OTA status changes), e-mails to each event's recipients,
and the timeline query with its admin API routes.

``EventsService`` is built by the composition root with the store, the domain and (optionally) the
mailer. It hooks the domain's online/offline hooks and listens to its reactions: an EVENT happening
(``Domain.log_event``) or a system event of a code whose definition names recipients becomes one
``mailer.send`` (which only enqueues: nothing here waits on delivery). Offline timers run on the loop
given (the tests give a fake one and move its clock).

Presence. A device that disconnects is recorded ``offline`` only once it stays away for its template's
``offline_ignore_s``; if it comes back sooner neither that offline nor the next online is recorded.
The last recorded presence of every device is read at start, so a restart within the period makes no
offline/online pair either: a device last recorded online gets a fresh period at start. The offline
event carries the time of the disconnection.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from blynk_server.domain import DeviceState, Domain
from blynk_server.eventdefs import LEVELS, OFFLINE, ONLINE, OTA, WEBHOOK, EventDef, load_rows
from blynk_server.http.common import INT64_MAX, ApiError, device_or_404, json_object
from blynk_server.model import MAX_TS_MS, now_ms
from blynk_server.provisioning import Provisioning, event_def_from_json
from blynk_server.reactions import EVENT, Happening
from blynk_server.reactions import OFFLINE as OFFLINE_KIND
from blynk_server.reactions import ONLINE as ONLINE_KIND
from blynk_server.store import SqliteStore
from protocol.body import BodyError, parse_uint

log = logging.getLogger(__name__)

MAX_PAGE = 1000  # rows of one timeline page
DEFAULT_PAGE = 100
MAIL_LOG_INTERVAL = 60.0  # seconds between log lines about e-mails that could not be queued
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class Mailer(Protocol):
    """What this module needs of ``mailer.Mailer`` (PLAN14): ``send`` enqueues, never blocks; it
    raises when e-mail is off (no SMTP host)."""

    def send(self, to: list[str], subject: str, body: str) -> None: ...


class Timers(Protocol):
    """What the service needs of the event loop (asyncio's, or the tests' fake one)."""

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Any: ...


class EventsStats:
    """Plain counters; the metrics collector reads them at scrape time."""

    __slots__ = ("system", "offline_ignored", "offline_pending", "mails", "mails_failed")

    def __init__(self) -> None:
        self.system = {ONLINE: 0, OFFLINE: 0, OTA: 0, WEBHOOK: 0}  # system events recorded, by code
        self.offline_ignored = 0  # disconnections followed by a reconnect within the ignore period
        self.offline_pending = 0  # devices away, inside their ignore period (gauge)
        self.mails = 0  # e-mails handed to the mailer
        self.mails_failed = 0  # e-mails the mailer refused (e-mail off, bad address)


def event_metrics(stats: EventsStats) -> Iterator[Metric]:
    """The families ``metrics.py`` adds to a scrape."""
    system = CounterMetricFamily("blynk_system_events", "System events recorded on timelines", labels=["code"])
    for code, n in stats.system.items():
        system.add_metric([code], n)
    yield system
    yield CounterMetricFamily(
        "blynk_offline_ignored",
        "Disconnections not recorded: the device came back within its offline-ignore period",
        value=stats.offline_ignored,
    )
    yield GaugeMetricFamily(
        "blynk_devices_offline_pending", "Devices away, inside their offline-ignore period", value=stats.offline_pending
    )
    mails = CounterMetricFamily("blynk_event_mails", "Event e-mails handed to the mailer", labels=["result"])
    mails.add_metric(["queued"], stats.mails)
    mails.add_metric(["refused"], stats.mails_failed)
    yield mails


@dataclass(slots=True)
class _Away:
    """A device gone, not yet recorded offline."""

    handle: Any
    ts: int  # when it went


MAIL_VALUES = 20  # datastream values listed in an event's e-mail


def compose_mail(dev: DeviceState, edef: EventDef, h: Happening) -> tuple[str, str]:
    """Subject and body of an event's e-mail: the device's name and id, the event's name, code, level,
    description and time (ISO, UTC), and the device's latest datastream values (by name, at most
    ``MAIL_VALUES``). Never the device's token."""
    name = _CONTROL.sub(" ", dev.record.name).strip() or f"Device {dev.id}"
    event_name = _CONTROL.sub(" ", edef.name).strip() or h.code
    level = h.level or edef.level
    when = datetime.fromtimestamp(h.ts / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    subject = f"[{level}] {name}: {event_name}"
    lines = [
        f"Device: {dev.record.name} (id {dev.id}, template {dev.record.template_id})",
        f"Event: {edef.name} ({h.code})",
        f"Level: {level}",
        f"Time: {when}",
    ]
    description = h.description or edef.description
    if description:
        lines.append(f"Description: {description}")
    datastreams = dev.template.datastreams
    values = [
        f"  {ds.name} ({key.upper()}): {dev.values[key][0].decode('utf-8', 'replace').replace(chr(0), ', ')}"
        for key, ds in list(datastreams.items())[:MAIL_VALUES]
        if key in dev.values
    ]
    if values:
        lines += ["Values:", *values]
    return subject, "\n".join(lines) + "\n"


class Presence:
    """Device id -> is its last recorded presence online, as one byte per id: a dict of 15,000 online
    devices cost ~40 bytes each (a twentieth of an idle session). Device ids are SQLite's AUTOINCREMENT,
    never chosen by a client, so the bytes are at most the devices ever created."""

    __slots__ = ("_flags",)

    def __init__(self) -> None:
        self._flags = bytearray()

    def get(self, device_id: int) -> bool:
        flags = self._flags
        return 0 <= device_id < len(flags) and flags[device_id] == 1

    def set(self, device_id: int, online: bool) -> None:
        if device_id < 0:
            raise ValueError(f"device id {device_id}")
        flags = self._flags
        if device_id >= len(flags):
            if not online:
                return
            flags.extend(bytes(device_id + 1 - len(flags)))
        flags[device_id] = online


class EventsService:
    def __init__(
        self,
        store: SqliteStore,
        domain: Domain,
        mailer: Mailer | None = None,
        *,
        loop: Timers | None = None,
        wall_ms: Callable[[], int] = now_ms,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``loop`` runs the offline timers (the running loop at ``start`` when None); ``wall_ms`` stamps
        system events; ``clock`` spaces e-mails of system events (``every_s``) and log lines."""
        self.store = store
        self.domain = domain
        self.mailer = mailer
        self.loop = loop
        self.wall_ms = wall_ms
        self.clock = clock
        self.stats = EventsStats()
        self._online = Presence()  # which devices' last recorded presence is online
        self._away: dict[int, _Away] = {}
        self._last_mail: dict[tuple[int, str], float] = {}  # (device, system code) -> clock
        self._next_mail_log = 0.0

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the definitions and every device's last presence (on the store's thread), then hook
        into the domain. Before the listeners start: the first logEvent finds its template's codes."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        self.install(await self.store.run(load_state, self.store))

    def install(self, state: tuple) -> None:
        """Take ``load_state``'s answer (the tests call it directly, without a writer thread)."""
        rows, settings, presence = state
        domain = self.domain
        domain.event_defs.load(rows, settings)
        domain.on_device_online.append(self.device_online)
        domain.on_device_offline.append(self.device_offline)
        domain.reactions.listen(self._on_happening)
        for device_id, code in presence:
            dev = domain.device(device_id)
            if dev is None:
                continue
            self._online.set(device_id, code == ONLINE)
            if code == ONLINE and not dev.online:  # it was online when the server stopped (or died)
                self._went_away(dev, dev.record.last_seen or self.wall_ms())

    async def stop(self) -> None:
        """Forget the devices inside their ignore period (after the listeners stopped): their last
        recorded presence is online, so the next start gives them a fresh period."""
        for away in self._away.values():
            away.handle.cancel()
        self._away.clear()
        self.stats.offline_pending = 0

    # --- presence -------------------------------------------------------------------------------

    def device_online(self, dev: DeviceState) -> None:
        away = self._away.pop(dev.id, None)
        if away is not None:  # back within the ignore period: neither the offline nor this online
            away.handle.cancel()
            self.stats.offline_ignored += 1
            self.stats.offline_pending = len(self._away)
            return
        if self._online.get(dev.id):  # a second login replacing the first
            return
        self._record_presence(dev, ONLINE, self.wall_ms())

    def device_offline(self, dev: DeviceState) -> None:
        if dev.deleted:
            self._forget(dev.id)
            return
        if not self._online.get(dev.id) or dev.id in self._away:
            return
        self._went_away(dev, self.wall_ms())

    def _went_away(self, dev: DeviceState, ts: int) -> None:
        ignore = self.domain.event_defs.offline_ignore_s(dev.template.id)
        if ignore <= 0:
            self._record_presence(dev, OFFLINE, ts)
            return
        assert self.loop is not None, "start() or a loop first"
        self._away[dev.id] = _Away(self.loop.call_later(ignore, self._offline_due, dev), ts)
        self.stats.offline_pending = len(self._away)

    def _offline_due(self, dev: DeviceState) -> None:
        away = self._away.pop(dev.id, None)
        self.stats.offline_pending = len(self._away)
        if away is None or dev.deleted:
            return
        self._record_presence(dev, OFFLINE, away.ts)

    def _forget(self, device_id: int) -> None:
        away = self._away.pop(device_id, None)
        if away is not None:
            away.handle.cancel()
        self._online.set(device_id, False)
        self.stats.offline_pending = len(self._away)

    def _record_presence(self, dev: DeviceState, code: str, ts: int) -> None:
        edef = self.domain.event_defs.get(dev.template.id, code)
        assert edef is not None  # a built-in
        self.domain.put_system_event(dev, code, ts, None, edef.level)
        self._online.set(dev.id, code == ONLINE)
        self.stats.system[code] += 1
        reactions = self.domain.reactions
        kind = ONLINE_KIND if code == ONLINE else OFFLINE_KIND
        reactions.emit(Happening(kind, dev, ts, code=code, level=edef.level, depth=reactions.depth))

    # --- OTA ------------------------------------------------------------------------------------

    def ota_status(self, shipment_id: int, device_id: int, status: str, detail: str | None, failed: bool) -> None:
        """``OtaService.on_status`` hook: a shipment's status change of a device, on its timeline as an
        ``ota`` event (level warning for a failure, else the definition's) and an EVENT happening."""
        dev = self.domain.device(device_id)
        if dev is None:
            return
        edef = self.domain.event_defs.get(dev.template.id, OTA)
        assert edef is not None
        level = "warning" if failed and edef.level == "info" else edef.level
        description = f"shipment {shipment_id}: {status}" + (f" ({detail})" if detail else "")
        description = description[:300]
        ts = self.wall_ms()
        self.domain.put_system_event(dev, OTA, ts, description, level)
        self.stats.system[OTA] += 1
        reactions = self.domain.reactions
        reactions.emit(Happening(EVENT, dev, ts, code=OTA, level=level, description=description, depth=reactions.depth))

    def webhook_disabled(self, name: str, reason: str, device_id: int | None) -> None:
        """``Webhooks.on_disabled`` hook: consecutive failures disabled a webhook. As Blynk does, an event
        says so, on the timeline of the device whose call failed last (a ``webhook`` system event)."""
        dev = self.domain.device(device_id) if device_id is not None else None
        if dev is None:
            return
        edef = self.domain.event_defs.get(dev.template.id, WEBHOOK)
        assert edef is not None
        description = f"webhook {name} disabled: {reason}"[:300]
        ts = self.wall_ms()
        self.domain.put_system_event(dev, WEBHOOK, ts, description, edef.level)
        self.stats.system[WEBHOOK] += 1
        reactions = self.domain.reactions
        reactions.emit(
            Happening(EVENT, dev, ts, code=WEBHOOK, level=edef.level, description=description, depth=reactions.depth)
        )

    # --- notifications --------------------------------------------------------------------------

    def _on_happening(self, h: Happening) -> None:
        if h.code is None or self.mailer is None:
            return
        dev = h.device
        if not isinstance(dev, DeviceState):
            return
        edef = self.domain.event_defs.get(dev.template.id, h.code)
        if edef is None or not edef.emails:
            return
        if h.kind != EVENT or h.code == OTA:  # system events: every_s spaces the e-mails, not the events
            key = (dev.id, h.code)
            now = self.clock()
            last = self._last_mail.get(key)
            if last is not None and now - last < edef.every_s:
                return
            self._last_mail[key] = now
        subject, body = compose_mail(dev, edef, h)
        try:
            self.mailer.send(list(edef.emails), subject, body)
        except Exception as exc:  # e-mail off (MailOff), a refused address: the event stays recorded
            self.stats.mails_failed += 1
            now = self.clock()
            if now >= self._next_mail_log:
                self._next_mail_log = now + MAIL_LOG_INTERVAL
                log.warning("event e-mail not sent device=%d code=%s: %s", dev.id, h.code, exc)
            return
        self.stats.mails += 1

    # --- timeline -------------------------------------------------------------------------------

    async def timeline(self, dev: DeviceState, query: TimelineQuery) -> dict:
        """One page of the device's timeline: ``{"events": [...], "next_cursor": str | None}``, each
        event with its definition's name (the code when it has none any more)."""
        rows, cursor = await self.store.run(
            self.store.timeline,
            dev.id,
            query.since,
            query.until,
            query.levels,
            query.codes,
            query.limit,
            query.before,
        )
        return timeline_page(self.domain, dev.template.id, rows, cursor)


def load_state(store: SqliteStore) -> tuple:
    """On the store's thread: the definitions, the settings, and each device's last presence event."""
    rows, settings = load_rows(store)
    presence = store.query(
        "SELECT d.id, (SELECT code FROM events e WHERE e.device_id = d.id AND e.code IN ('online', 'offline')"
        " ORDER BY e.ts DESC, e.id DESC LIMIT 1) FROM devices d"
    )
    return rows, settings, [(d, c) for d, c in presence if c is not None]


def timeline_page(domain: Domain, template_id: str, rows: list[dict], cursor: tuple[int, int] | None) -> dict:
    defs = domain.event_defs
    for row in rows:
        edef = defs.get(template_id, row["code"])
        row["name"] = edef.name if edef is not None else row["code"]
    return {"events": rows, "next_cursor": format_cursor(cursor)}


# --- the query ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimelineQuery:
    since: int = 0
    until: int | None = None
    levels: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()
    limit: int = DEFAULT_PAGE
    before: tuple[int, int] | None = None


def format_cursor(cursor: tuple[int, int] | None) -> str | None:
    return None if cursor is None else f"{cursor[0]}.{cursor[1]}"


def parse_cursor(text: str) -> tuple[int, int]:
    ts, _, rowid = text.partition(".")
    try:
        return parse_uint(ts, MAX_TS_MS), parse_uint(rowid, INT64_MAX)
    except BodyError:
        raise ValueError("cursor is not one this server gave.") from None


def parse_timeline_query(q) -> TimelineQuery:
    """The admin API's query string (``since``, ``until`` in ms; ``level``, ``code`` comma-separated or
    repeated; ``limit`` ≤ 1000; ``cursor`` from the previous page). Raises ValueError with a message."""

    def ms(name: str) -> int | None:
        raw = q.get(name)
        if raw is None or raw == "":
            return None
        try:
            return parse_uint(raw, MAX_TS_MS)
        except BodyError:
            raise ValueError(f"{name} must be a time in milliseconds.") from None

    def many(name: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v for raw in q.getall(name, []) for v in raw.split(",") if v))

    levels = many("level")
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}.")
    codes = many("code")
    if len(codes) > 100:
        raise ValueError("At most 100 codes in one query.")
    limit = DEFAULT_PAGE
    if q.get("limit"):
        try:
            limit = max(1, min(MAX_PAGE, parse_uint(q["limit"], INT64_MAX)))
        except BodyError:
            raise ValueError("limit must be an integer.") from None
    cursor = q.get("cursor")
    return TimelineQuery(ms("since") or 0, ms("until"), levels, codes, limit, parse_cursor(cursor) if cursor else None)


# --- admin API --------------------------------------------------------------------------------------


def add_admin_routes(app: web.Application, service: EventsService, provisioning: Provisioning) -> None:
    """Template events CRUD, the template's offline-ignore period, and a device's timeline."""
    domain = provisioning.domain

    async def list_events(request: web.Request) -> web.Response:
        defs = provisioning.event_defs(request.match_info["template_id"])
        return web.json_response([d.as_dict() for d in defs])

    async def create_event(request: web.Request) -> web.Response:
        tid = request.match_info["template_id"]
        d = event_def_from_json(await json_object(request), domain.max_event_code)
        await provisioning.put_event_def(tid, d, replace=False)
        return web.json_response(d.as_dict(), status=201)

    async def put_event(request: web.Request) -> web.Response:
        tid = request.match_info["template_id"]
        body = await json_object(request)
        body["code"] = request.match_info["code"]
        d = event_def_from_json(body, domain.max_event_code)
        await provisioning.put_event_def(tid, d, replace=True)
        return web.json_response(d.as_dict())

    async def delete_event(request: web.Request) -> web.Response:
        await provisioning.delete_event_def(request.match_info["template_id"], request.match_info["code"])
        return web.Response(status=204)

    async def get_settings(request: web.Request) -> web.Response:
        tid = request.match_info["template_id"]
        provisioning.template(tid)
        return web.json_response({"offline_ignore_s": domain.event_defs.offline_ignore_s(tid)})

    async def put_settings(request: web.Request) -> web.Response:
        tid = request.match_info["template_id"]
        body = await json_object(request)
        seconds = await provisioning.set_offline_ignore(tid, body.get("offline_ignore_s"))
        return web.json_response({"offline_ignore_s": seconds})

    async def timeline(request: web.Request) -> web.Response:
        dev = device_or_404(domain, request)
        try:
            query = parse_timeline_query(request.query)
        except ValueError as exc:
            raise ApiError(str(exc)) from None
        return web.json_response(await service.timeline(dev, query))

    r = app.router
    r.add_get("/api/templates/{template_id}/events", list_events)
    r.add_post("/api/templates/{template_id}/events", create_event)
    r.add_put("/api/templates/{template_id}/events/{code}", put_event)
    r.add_delete("/api/templates/{template_id}/events/{code}", delete_event)
    r.add_get("/api/templates/{template_id}/event-settings", get_settings)
    r.add_put("/api/templates/{template_id}/event-settings", put_settings)
    r.add_get("/api/devices/{device_id}/timeline", timeline)


__all__ = [
    "EventsService",
    "EventsStats",
    "TimelineQuery",
    "add_admin_routes",
    "compose_mail",
    "event_metrics",
    "load_state",
    "parse_timeline_query",
]
