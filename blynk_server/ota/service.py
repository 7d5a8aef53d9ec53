"""The running side of OTA: decides per device when to send the ``ota`` command, tracks each device's
status through the download and its next login, and keeps shipments' waves and states.

The service's memory is authoritative for active (live and paused) shipments and their devices while
the server runs: shipments change only through its methods (``create_shipment``, ``control``,
``approve``, called by the admin API, which is also how the CLI reaches a running server), and a
download changes a device's status only through ``admit``, ``begin_download``, ``progress`` and
``end_download``. SQLite is never touched on the event loop: reads go through ``run_db`` (awaited, on
the store's writer thread) and writes through ``submit_db`` (the same thread, FIFO, not awaited), so a
read submitted after a write sees it.

Triggers: a device's info message (``Domain.on_device_info``, after the reply), a shipment starting,
resuming or an approval (for devices already online), and a tick every ``ota_poll_interval`` for
devices waiting on their time window or on a free in-flight slot.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import mmap
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blynk_server.domain import device_timezone
from blynk_server.ota import registry
from blynk_server.ota import shipments as ships
from blynk_server.ota import status as st
from blynk_server.ota.db import DeviceOta, Firmware, OtaDB, Shipment, device_row
from blynk_server.ota.registry import firmware_path, remove_stale_uploads
from protocol import Command
from protocol.body import ota_body

if TYPE_CHECKING:
    from blynk_server.config import Settings
    from blynk_server.domain import DeviceState, Domain
    from blynk_server.hub import Hub
    from blynk_server.model import DeviceRecord, Template

log = logging.getLogger(__name__)

OTA_MSG_ID = 7777  # non-zero (msg id 0 makes the library drop the link); the legacy server's choice
INFO_DELAY = 0.05  # seconds after the info's reply: not in the same TCP segment (blynklib reads one frame per recv)
FW_PATH = re.compile(r"^fw_(\d{1,19})_([A-Za-z0-9_-]{1,64})\.bin$")

RunDb = Callable[..., Awaitable[Any]]  # await run_db(fn, *args): fn(*args) on the store's writer thread
SubmitDb = Callable[..., concurrent.futures.Future]  # submit_db(fn, *args): the same, not awaited (FIFO)


class OtaStats:
    """Plain counters for /metrics."""

    __slots__ = (
        "bytes_served",
        "downloads_in_flight",
        "downloads_started",
        "downloads_completed",
        "downloads_failed",
        "commands_sent",
        "limit_refusals",
        "refusals",
        "max_send_gap",
    )

    def __init__(self) -> None:
        self.bytes_served = 0
        self.downloads_in_flight = 0
        self.downloads_started = 0
        self.downloads_completed = 0
        self.downloads_failed = 0
        self.commands_sent = 0
        self.limit_refusals = 0
        self.refusals = 0  # downloads refused as not allowed: bad path, token or secret, not a target
        self.max_send_gap = 0.0  # seconds: the longest pause between two chunks of one download


@dataclass(slots=True, frozen=True)
class Refusal:
    """A download that is not served: the HTTP status and the message the door encodes."""

    status: int
    message: str


@dataclass(slots=True)
class Grant:
    """A device allowed to fetch a shipment's image (``admit``); no attempt is counted yet."""

    ship: Shipment
    fw: Firmware
    dev: DeviceState
    entry: DeviceOta


@dataclass(slots=True)
class Download:
    """One running download (``begin_download`` .. ``end_download``): bytes ``start..end`` of the
    image, mapped read-only in ``data``."""

    grant: Grant
    start: int
    end: int  # inclusive
    mobile: bool
    resume: bool
    data: mmap.mmap


@dataclass(slots=True)
class _Loaded:
    db: OtaDB
    shipments: list[Shipment]
    firmware: dict[int, Firmware]
    rows: dict[int, list[DeviceOta]]


def _load(data_dir: Path) -> _Loaded:
    """On the writer thread at start: the tables, and every active shipment with its devices."""
    remove_stale_uploads(data_dir)
    db = OtaDB(data_dir)
    active = db.active_shipments()
    firmware = {}
    for fid in {s.firmware_id for s in active}:
        fw = db.firmware(fid)
        if fw is not None:
            firmware[fid] = fw
    return _Loaded(db, active, firmware, {s.id: db.devices(s.id) for s in active})


class _Catalog:
    """``shipments.Catalog`` answered from the domain's memory, taken on the loop for one template
    (and the devices a request names), so the database work on the writer thread never reads the
    domain while the loop changes it."""

    def __init__(self, domain: Domain, template_id: object, named: object = None) -> None:
        tpl = domain.template(template_id) if isinstance(template_id, str) else None
        self.template = tpl
        self.records = {d.id: d.record for d in domain.devices(tpl.id)} if tpl is not None else {}
        if isinstance(named, list) and len(named) <= ships.MAX_TARGETS:
            for ref in named:
                try:
                    did = ships.parse_id(ref, "device")
                except ships.ShipmentError:
                    continue  # shipments.create says so
                dev = domain.device(did)
                if dev is not None:
                    self.records[did] = dev.record

    def get_template(self, template_id: str) -> Template | None:
        return self.template if self.template is not None and self.template.id == template_id else None

    def get_device(self, device_id: int) -> DeviceRecord | None:
        return self.records.get(device_id)

    def list_devices(self, template_id: str | None = None) -> list[DeviceRecord]:
        return sorted(
            (r for r in self.records.values() if template_id is None or r.template_id == template_id),
            key=lambda r: r.id,
        )


def _log_write_failure(fut: concurrent.futures.Future) -> None:
    exc = fut.exception()
    if exc is not None:
        log.error("ota write failed: %s", exc, exc_info=exc)


class OtaService:
    def __init__(
        self,
        settings: Settings,
        domain: Domain,
        hub: Hub,
        run_db: RunDb,
        submit_db: SubmitDb,
        hardware_address: Callable[[], tuple[str, int] | None],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``domain`` is read on the loop only (devices, templates, tokens, and its info/offline
        hooks); ``clock`` times the request timeout; ``wall_clock`` the time windows, attempt resets
        and timestamps."""
        self.settings = settings
        self.domain = domain
        self.hub = hub
        self.run_db = run_db
        self.submit_db = submit_db
        self.hardware_address = hardware_address
        self.clock = clock
        self.wall_clock = wall_clock
        self.db: OtaDB | None = None  # opened on the writer thread by start()
        self.stats = OtaStats()
        self.shipments: dict[int, Shipment] = {}  # the live and paused ones
        self.firmware: dict[int, Firmware] = {}
        self.entries: dict[int, dict[int, DeviceOta]] = {}  # shipment id -> device id -> entry
        self.waiting: set[tuple[int, int]] = set()  # (shipment, device) online and blocked by window or cap
        self._targets: dict[int, frozenset[int]] = {}  # shipment id -> its device list, for lookups
        self._task: asyncio.Task | None = None
        self._dirty: dict[tuple[int, int], DeviceOta] = {}
        self._events: list[tuple] = []
        self._flush_scheduled = False
        # Told of every status change: (shipment id, device id, status, detail, failed). The events
        # service puts them on the device's timeline; OTA does not know it.
        self.on_status: list[Callable[[int, int, str, str | None, bool], None]] = []

    def now_ms(self) -> int:
        return int(self.wall_clock() * 1000)

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the tables and load the active shipments (one ``run_db``), then hook into the domain
        and start the tick."""
        loaded = await self.run_db(_load, self.settings.data_dir)
        self.db = loaded.db
        for ship in loaded.shipments:
            fw = loaded.firmware.get(ship.firmware_id)
            if fw is None:
                log.error("shipment without firmware shipment=%d firmware=%d", ship.id, ship.firmware_id)
                continue
            self._install(ship, fw, loaded.rows.get(ship.id, []))
        self.domain.on_device_info.append(self._on_info)
        self.domain.on_device_offline.append(self._on_offline)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.db is not None:
            self.flush()
            await self.run_db(self.db.close)

    async def _run(self) -> None:
        interval = self.settings.ota_poll_interval
        while True:
            await asyncio.sleep(interval)
            try:
                self.tick()
            except Exception:
                log.exception("ota housekeeping failed")

    def _install(self, ship: Shipment, fw: Firmware, rows: list[DeviceOta]) -> None:
        self.shipments[ship.id] = ship
        self.firmware[fw.id] = fw
        if ship.targets is not None:
            self._targets[ship.id] = frozenset(ship.targets)
        self.entries[ship.id] = {row.device_id: row for row in rows}
        log.info("shipment loaded shipment=%d name=%s state=%s", ship.id, ship.name, ship.state)
        if ship.state == st.LIVE:
            self.kick(ship.id)

    def _drop(self, sid: int) -> None:
        """A shipment that is no longer active. A running download keeps its own entry and ends
        normally; its status is still saved."""
        self.shipments.pop(sid, None)
        self.entries.pop(sid, None)
        self._targets.pop(sid, None)
        self.waiting = {w for w in self.waiting if w[0] != sid}

    # --- shipments: the only way they change while the server runs ---------------------------------

    def _need_db(self) -> OtaDB:
        if self.db is None:
            raise RuntimeError("OtaService.start() has not run")
        return self.db

    async def add_firmware(
        self,
        upload: registry.Upload,
        file_name: str | None,
        type_: str | None,
        version: str | None,
        build: str | None,
    ) -> tuple[Firmware, bool]:
        """Keep a received image: hashing and the tag scan in a worker thread, the row on the writer
        thread. Returns (firmware, created)."""
        db = self._need_db()
        prepared = await asyncio.to_thread(registry.prepare, upload, file_name, type_, version, build)
        return await self.run_db(registry.record, db, self.settings.data_dir, prepared)

    async def list_firmware(self) -> list[Firmware]:
        return await self.run_db(self._need_db().list_firmware)

    async def list_shipments(self, state: str | None = None) -> list[Shipment]:
        self.flush()
        return await self.run_db(self._need_db().list_shipments, state)

    async def report(self, ref: str | int) -> dict:
        ship = await self.find(ref)
        catalog = _Catalog(self.domain, ship.template_id)
        self.flush()  # read-your-writes: the pending rows go before the read, on the same thread
        return await self.run_db(ships.report, self._need_db(), catalog, ship.id)

    async def create_shipment(self, fields: dict) -> Shipment:
        """Validate and store a live shipment (``shipments.create``), then act on it at once."""
        db = self._need_db()
        catalog = _Catalog(self.domain, fields.get("template"), fields.get("devices"))

        def create() -> tuple[Shipment, Firmware | None]:
            ship = ships.create(db, catalog, **fields)
            return ship, db.firmware(ship.firmware_id)

        ship, fw = await self.run_db(create)
        if fw is not None:
            self._install(ship, fw, [])
        return ship

    async def find(self, ref: str | int) -> Shipment:
        """An active shipment from memory, else any from the database (ShipmentError 404 if none)."""
        key = ships.parse_ref(ref)
        for ship in self.shipments.values():
            if ship.id == key or ship.name == key:
                return ship
        return await self.run_db(ships.find, self._need_db(), ref)

    async def control(self, ref: str | int, action: str) -> Shipment:
        """pause / resume / cancel (``shipments.transition`` says what each does and when)."""
        ship = await self.find(ref)  # from memory when active; a finished or cancelled one stays so
        state, reason, wave = ships.transition(ship, action)
        self._set_state(ship, state, reason, wave)
        if state == st.LIVE:
            self.kick(ship.id)
        return ship

    async def approve(self, ref: str | int, device: object) -> Shipment:
        """A user's go-ahead for one device of a user-controlled shipment (kept even before the device
        has an entry; it then also ignores the shipment's time window)."""
        ship = await self.find(ref)
        did = ships.parse_id(device, "device")
        ships.check_active(ship)
        dev = self.domain.device(did)
        ships.check_target(ship, did, dev.record if dev is not None else None)
        e = self.entry(ship.id, did, create=True)
        if not e.approved:
            e.approved = True
            if not e.status:
                e.status = st.AWAITING_USER  # no event: the report shows it Pending until it is seen
            self.save(e)
        self.kick(ship.id)
        return ship

    # --- triggers -----------------------------------------------------------------------------------

    def _online_devices(self, template_id: str) -> list[DeviceState]:
        out = []
        for link in self.hub.links():
            dev = link.device
            if dev is not None and dev.record.template_id == template_id and link.info_acked:
                out.append(dev)
        return out

    def kick(self, sid: int) -> None:
        """Consider every online device of a live shipment now (start, resume, approval, next wave)."""
        ship = self.shipments.get(sid)
        if ship is None or ship.state != st.LIVE:
            return
        for dev in self._online_devices(ship.template_id):
            if dev.record.info is not None:
                self._consider(ship, dev, login=False)

    def _on_info(self, dev: DeviceState, info) -> None:
        """Look at the device once its info's reply has gone, if a shipment of its template is active:
        a login burst with none arms no timer per device."""
        template_id = dev.record.template_id
        if any(ship.template_id == template_id for ship in self.shipments.values()):
            asyncio.get_running_loop().call_later(INFO_DELAY, self.device_ready, dev)

    def device_ready(self, dev: DeviceState) -> None:
        """The device's info message was answered: what its report means for every shipment of its
        template (Success, Rollback), and whether it gets the ``ota`` command now."""
        if not self.hub.is_online(dev.id):
            return
        for ship in list(self.shipments.values()):
            if ship.template_id == dev.record.template_id:
                try:
                    self._consider(ship, dev, login=True)
                except Exception:
                    log.exception("ota consider failed shipment=%d device=%d", ship.id, dev.id)

    def _on_offline(self, dev: DeviceState) -> None:
        """Its waits end: one lookup per active shipment (a pass over every wait made a disconnect
        storm during a large wave quadratic)."""
        for sid in self.shipments:
            self.waiting.discard((sid, dev.id))

    def tick(self) -> None:
        """Devices waiting on their time window or a free in-flight slot get another look."""
        for sid, did in list(self.waiting):
            ship = self.shipments.get(sid)
            link = self.hub.link(did) if ship is not None else None
            dev = link.device if link is not None else None
            if ship is None or dev is None:
                self.waiting.discard((sid, did))
                continue
            self._consider(ship, dev, login=False)

    # --- the per-device state machine -------------------------------------------------------------

    def entry(self, sid: int, did: int, create: bool = False) -> DeviceOta | None:
        per = self.entries.get(sid)
        e = per.get(did) if per is not None else None
        if e is None and create:
            ship = self.shipments[sid]
            wave = 1 if ship.wave1 is None or did in ship.wave1 else 2
            e = self.entries.setdefault(sid, {})[did] = DeviceOta(sid, did, "", wave=wave, updated_at=self.now_ms())
        return e

    def set_status(self, e: DeviceOta, status: str, detail: str | None = None) -> None:
        e.status = status
        e.updated_at = self.now_ms()
        self._queue(e, (e.shipment_id, e.device_id, e.updated_at, status, detail))
        log.info(
            "ota status shipment=%d device=%d status=%r%s",
            e.shipment_id,
            e.device_id,
            status,
            f" detail={detail!r}" if detail else "",
        )
        for hook in self.on_status:
            try:
                hook(e.shipment_id, e.device_id, status, detail, status in st.FAILURES)
            except Exception:
                log.exception("ota status hook failed device=%d", e.device_id)
        self._after_status(e)

    def save(self, e: DeviceOta) -> None:
        e.updated_at = self.now_ms()
        self._queue(e, None)

    def _queue(self, e: DeviceOta, event: tuple | None) -> None:
        """Writes made in one loop turn go to the writer thread together, at the end of the turn."""
        self._dirty[(e.shipment_id, e.device_id)] = e
        if event is not None:
            self._events.append(event)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Hand the rows and events changed since the last flush to the writer thread (rows copied
        here: the entries keep changing on the loop)."""
        self._flush_scheduled = False
        if not self._dirty and not self._events:
            return
        rows = [device_row(e) for e in self._dirty.values()]
        events, self._dirty, self._events = self._events, {}, []
        self.submit_db(self._need_db().save_devices, rows, events).add_done_callback(_log_write_failure)

    def is_target(self, ship: Shipment, dev: DeviceState) -> bool:
        """A device of the shipment's template and, when the shipment lists devices, in that list."""
        if dev.record.template_id != ship.template_id:
            return False
        return ship.targets is None or dev.id in self._targets.get(ship.id, ship.targets)

    @staticmethod
    def type_matches(fw: Firmware, dev: DeviceState) -> tuple[bool, str]:
        """Whether the image's type is the device's (its fw-type, else its template), and that type."""
        info = dev.record.info or {}
        dev_type = info.get("firmware_type") or info.get("template_id") or dev.record.template_id
        return not fw.type or dev_type == fw.type, dev_type

    def _consider(self, ship: Shipment, dev: DeviceState, login: bool) -> None:
        did = dev.id
        if not self.is_target(ship, dev):
            return
        fw = self.firmware.get(ship.firmware_id)
        if fw is None:
            return
        info = dev.record.info or {}
        version, build = info.get("firmware_version"), info.get("build")
        e = self.entry(ship.id, did)
        status = e.status if e is not None else ""
        # 1. What the device's report says about an update already under way.
        if login and e is not None:
            new = st.runs_new_firmware(fw.version, fw.build, version, build)
            if status == st.SUCCESS and not new:
                self.set_status(e, st.ROLLBACK, f"reported {version} after running {fw.version}")
                return
            if status in st.DELIVERY_STATUSES and new:
                self.set_status(e, st.SUCCESS, f"reported {version}")
                return
            if status in st.DELIVERED and not new:
                self.set_status(e, st.ROLLBACK, f"firmware delivered, device still reports {version}")
                return
        if status in (st.SUCCESS, st.ROLLBACK, st.TYPE_MISMATCH):
            return
        if ship.state != st.LIVE:
            return
        if e is None:
            e = self.entry(ship.id, did, create=True)
        if ship.wave == 1 and e.wave != 1:
            return
        if e.downloading:
            return
        waiting_for_device = self.clock() - e.sent_at < self.settings.ota_request_timeout
        same_login = e.sent_login is not None and e.sent_login == dev.record.last_seen
        if status in (st.REQUEST_SENT, st.FIRMWARE_REQUESTED) and waiting_for_device and (not login or same_login):
            # The device has it (a login's info may be considered just after a shipment's start sent the
            # command on that same connection): wait for its download or its next login.
            return
        if status in st.DELIVERED and not login:
            return
        # 2. Eligibility.
        matches, dev_type = self.type_matches(fw, dev)
        if not matches:
            self.set_status(e, st.TYPE_MISMATCH, f"device type {dev_type}, firmware type {fw.type}")
            return
        if not st.condition_met(ship.condition, fw.version, fw.build, version, build):
            if status != st.VERSION_MISMATCH:
                self.set_status(
                    e,
                    st.VERSION_MISMATCH,
                    f"{ship.condition}: device {version} ({build}), firmware {fw.version} ({fw.build})",
                )
            return
        if not self._attempts_left(ship, e):
            if status != st.DOWNLOAD_LIMIT:
                self.set_status(e, st.DOWNLOAD_LIMIT, f"{e.attempts} attempts of {ship.attempts_limit}")
            return
        if ship.user_control and not e.approved:
            if status != st.AWAITING_USER:
                self.set_status(e, st.AWAITING_USER)
            return
        if status in ("", st.VERSION_MISMATCH, st.AWAITING_USER, st.DOWNLOAD_LIMIT):
            self.set_status(e, st.STARTED)
        tz = device_timezone(dev)
        if not e.approved and not st.in_window(ship.time_window, tz, self.wall_clock()):
            self.waiting.add((ship.id, did))
            return
        if ship.max_in_flight and self.in_flight(ship.id) >= ship.max_in_flight:
            self.waiting.add((ship.id, did))
            return
        self.waiting.discard((ship.id, did))
        self._send(ship, fw, dev, e)

    def _attempts_left(self, ship: Shipment, e: DeviceOta) -> bool:
        if e.attempts and self.now_ms() - e.attempts_since >= ship.reset_period * 1000:
            e.attempts = 0
            e.attempts_since = 0
            self.save(e)
        return e.attempts < ship.attempts_limit

    def in_flight(self, sid: int) -> int:
        timeout = self.settings.ota_request_timeout
        now = self.clock()
        return sum(
            1
            for e in self.entries.get(sid, {}).values()
            if e.downloading or (e.status in (st.REQUEST_SENT, st.FIRMWARE_REQUESTED) and now - e.sent_at < timeout)
        )

    def _send(self, ship: Shipment, fw: Firmware, dev: DeviceState, e: DeviceOta) -> None:
        url = self.download_url(ship, dev)
        body = ota_body(url)
        link = self.hub.link(dev.id)
        buff_in = link.buff_in if link is not None else None
        if buff_in is not None and len(body) + 5 > buff_in:
            self.set_status(e, st.UPLOAD_FAILURE, f"ota URL ({len(body) + 5} bytes) exceeds buff-in {buff_in}")
            return
        if e.old_version is None:
            e.old_version = (dev.record.info or {}).get("firmware_version")
        if not self.hub.send(dev.id, Command.INTERNAL, body, OTA_MSG_ID):
            log.info("ota command not delivered shipment=%d device=%d", ship.id, dev.id)
            return
        self.stats.commands_sent += 1
        e.sent_at = self.clock()
        e.sent_login = dev.record.last_seen
        self.set_status(e, st.REQUEST_SENT, url.split("?", 1)[0].replace(ship.secret, "<secret>"))

    def base_url(self, ship: Shipment, dev: DeviceState) -> str:
        """Per-shipment host > --external-url > the address this device reached us on (a wildcard
        listener has no single address; the connection's local address is the one the device can reach)."""
        if ship.host_url:
            return ship.host_url.rstrip("/")
        if self.settings.external_url:
            return self.settings.external_url.rstrip("/")
        host, port = (self.hardware_address() or (self.settings.host, self.settings.port))[:2]
        if host in ("0.0.0.0", "::", ""):
            link = self.hub.link(dev.id)
            host = (link.local_host() if link is not None else None) or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def download_url(self, ship: Shipment, dev: DeviceState) -> str:
        """``<base>/static/fw_<shipment id>_<secret>.bin?token=<token>``: the shipment's secret makes the
        URL unguessable; the token says which device asks. Still a ``.bin`` path with a ``token``
        query, as Edgent and the client libraries expect."""
        return f"{self.base_url(ship, dev)}/static/fw_{ship.id}_{ship.secret}.bin?token={dev.token}"

    # --- downloads ------------------------------------------------------------------------------

    def _refuse(self, status: int, message: str) -> Refusal:
        self.stats.refusals += 1
        return Refusal(status, message)

    def admit(self, name: str, token: str) -> Grant | Refusal:
        """May the device with ``token`` fetch ``name`` (the URL's file name)? In order: a malformed
        name 404, no or an unknown token 403, an unknown or inactive shipment or a wrong secret 404,
        a paused one 409, not a target 403, the second wave while the first runs 409, a type mismatch
        or a device already at Success 409. Each refusal is counted."""
        m = FW_PATH.match(name)
        if m is None:
            return self._refuse(404, "Not found.")
        if not token:
            return self._refuse(403, "A device token is required (?token=).")
        dev = self.domain.device_by_token(token)
        if dev is None:
            return self._refuse(403, "Invalid token.")
        ship = self.shipments.get(int(m.group(1)))
        fw = self.firmware.get(ship.firmware_id) if ship is not None else None
        if ship is None or fw is None or not hmac.compare_digest(ship.secret.encode(), m.group(2).encode()):
            return self._refuse(404, "No such firmware shipment, or it is no longer active.")
        if ship.state != st.LIVE:
            return self._refuse(409, f"The shipment is {ship.state}.")
        if not self.is_target(ship, dev):
            return self._refuse(403, "This device is not a target of the shipment.")
        if ship.wave == 1 and ship.wave1 is not None and dev.id not in ship.wave1:
            return self._refuse(409, "Not yet: this device is in the shipment's second wave.")
        e = self.entry(ship.id, dev.id, create=True)
        matches, dev_type = self.type_matches(fw, dev)
        if not matches and e.status != st.TYPE_MISMATCH:
            self.set_status(e, st.TYPE_MISMATCH, f"device type {dev_type}, firmware type {fw.type}")
        if e.status in (st.TYPE_MISMATCH, st.SUCCESS):
            return self._refuse(409, f"No update for this device: {e.status}.")
        return Grant(ship, fw, dev, e)

    def begin_download(self, grant: Grant, start: int, end: int, mobile: bool) -> Download | Refusal:
        """Start sending bytes ``start..end``: an attempt (429 past the shipment's limit) unless it
        resumes the open one, the image mapped (503 if it cannot be read), status Firmware requested."""
        ship, fw, e = grant.ship, grant.fw, grant.entry
        resume = start > 0 and e.attempt_open
        if not resume:
            if not self._attempts_left(ship, e):
                self.stats.limit_refusals += 1
                if e.status != st.DOWNLOAD_LIMIT:
                    self.set_status(e, st.DOWNLOAD_LIMIT, f"{e.attempts} attempts of {ship.attempts_limit}")
                return Refusal(
                    429, f"Download limit reached: {ship.attempts_limit} attempts per {ship.reset_period:g} s."
                )
            if e.attempts == 0:
                e.attempts_since = self.now_ms()
            e.attempts += 1
            e.attempt_open = True
            e.bytes = 0
            if e.old_version is None:
                e.old_version = (grant.dev.record.info or {}).get("firmware_version")
        try:
            data = self.open_image(fw)
        except (OSError, ValueError) as exc:  # removed from the data dir, or truncated to nothing
            log.error("ota firmware file unreadable firmware=%d error=%s", fw.id, type(exc).__name__)
            self.set_status(e, st.UPLOAD_FAILURE, "the firmware file cannot be read on the server")
            return Refusal(503, "The firmware file cannot be read on the server.")
        detail = f"bytes {start}-{end}" + (" (mobile)" if mobile else "") + (" resume" if resume else "")
        if e.status != st.FIRMWARE_REQUESTED or resume:
            self.set_status(e, st.FIRMWARE_REQUESTED, detail)
        else:
            self.save(e)
        e.downloading += 1
        self.stats.downloads_in_flight += 1
        self.stats.downloads_started += 1
        return Download(grant, start, end, mobile, resume, data)

    def progress(self, dl: Download, pos: int, sent: int, gap: float) -> None:
        """``sent`` more bytes went out, up to ``pos``, ``gap`` seconds after the previous chunk."""
        dl.grant.entry.bytes = pos
        self.stats.bytes_served += sent
        if gap > self.stats.max_send_gap:
            self.stats.max_send_gap = gap

    def end_download(self, dl: Download, failure: str | None = None) -> None:
        """The download ended: completely (``failure`` None) or not ("stalled", "connection closed")."""
        e, size = dl.grant.entry, dl.grant.fw.size
        e.downloading -= 1
        self.stats.downloads_in_flight -= 1
        dl.data.close()
        if failure is not None:
            self.stats.downloads_failed += 1
            self.save(e)
            if e.status not in st.SETTLED:
                self.set_status(e, st.UPLOAD_FAILURE, f"{failure} after {e.bytes} of {size} bytes")
            log.info(
                "ota download failed shipment=%d device=%d reason=%s bytes=%d",
                e.shipment_id,
                e.device_id,
                failure,
                e.bytes,
            )
            return
        self.stats.downloads_completed += 1
        if dl.end + 1 == size:
            e.attempt_open = False
            self.set_status(e, st.UPLOADED_TO_MOBILE if dl.mobile else st.FIRMWARE_UPLOADED, f"{e.bytes} bytes")
        else:
            self.save(e)

    def open_image(self, fw: Firmware) -> mmap.mmap:
        """The image mapped read-only, to slice chunks from: the page cache holds it once however many
        devices download it, nothing is copied into the process, and nothing stays after the
        download ends (``end_download`` closes the map)."""
        with open(firmware_path(self.settings.data_dir, fw), "rb") as fh:
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)

    # --- waves and shipment completion ----------------------------------------------------------

    def _after_status(self, e: DeviceOta) -> None:
        ship = self.shipments.get(e.shipment_id)
        if ship is None or ship.state != st.LIVE:
            return
        entries = self.entries.get(ship.id, {})
        if ship.wave == 1 and ship.wave1 is not None:
            members = [entries.get(d) for d in ship.wave1]
            failed = sum(1 for m in members if m is not None and m.status in st.FAILURES)
            if ship.wave1 and failed / len(ship.wave1) > ship.max_failure_ratio:
                reason = f"first wave failures {failed}/{len(ship.wave1)} exceed {ship.max_failure_ratio:g}"
                self._set_state(ship, st.PAUSED, reason)
                return
            if all(m is not None and m.status in st.SETTLED for m in members):
                log.info("first wave done, rolling out to the rest shipment=%d", ship.id)
                self._set_state(ship, st.LIVE, None, wave=2)
                asyncio.get_running_loop().call_soon(self.kick, ship.id)
                return
        if ship.targets is not None and all(
            (x := entries.get(d)) is not None and x.status in st.SETTLED for d in ship.targets
        ):
            self._set_state(ship, st.FINISHED, "every target settled")

    def _set_state(self, ship: Shipment, state: str, reason: str | None, wave: int | None = None) -> None:
        """Memory first (it is what the running server acts on), then the row, on the writer thread
        after every write submitted before."""
        log.info("shipment state shipment=%d state=%s reason=%s", ship.id, state, reason)
        ship.state = state
        ship.reason = reason
        ship.updated_at = self.now_ms()
        if wave is not None:
            ship.wave = wave
        self.submit_db(self._need_db().set_state, ship.id, state, reason, wave, ship.updated_at).add_done_callback(
            _log_write_failure
        )
        if state not in (st.LIVE, st.PAUSED):
            self._drop(ship.id)

    # --- for /metrics -----------------------------------------------------------------------------

    def status_counts(self) -> Iterator[tuple[str, str, int]]:
        """(shipment name, status, devices) for every active shipment."""
        for sid, entries in list(self.entries.items()):
            ship = self.shipments.get(sid)
            if ship is None:
                continue
            counts: dict[str, int] = {}
            for e in list(entries.values()):
                if e.status:
                    counts[e.status] = counts.get(e.status, 0) + 1
            for status, n in sorted(counts.items()):
                yield ship.name, status, n
