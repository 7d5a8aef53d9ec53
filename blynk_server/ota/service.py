"""The running side of OTA: decides per device when to send the ``ota`` command, tracks each device's
status through the download and its next login, and keeps shipments' waves and states.

Triggers: a device's info message (``Domain.on_device_info``, after the reply), a shipment starting,
resuming or an approval (for devices already online), and a tick every ``ota_poll_interval`` (0.5 s)
for devices waiting on their time window or on a free in-flight slot. CLI changes reach us through
``OtaDB.revs()``, read on the same tick (``_sync``).
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import time
from typing import TYPE_CHECKING

from blynk_server.model import now_ms
from blynk_server.ota import status as st
from blynk_server.ota.db import DeviceOta, Firmware, OtaDB, Shipment
from blynk_server.ota.registry import firmware_path, remove_stale_uploads
from protocol import Command
from protocol.body import ota_body

if TYPE_CHECKING:
    from blynk_server.app import BlynkServer
    from blynk_server.domain import DeviceState

log = logging.getLogger(__name__)

OTA_MSG_ID = 7777  # non-zero (msg id 0 makes the library drop the link); the legacy server's choice


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


class OtaService:
    def __init__(self, server: BlynkServer) -> None:
        self.server = server
        self.settings = server.settings
        self.db = OtaDB(self.settings.data_dir)
        self.stats = OtaStats()
        self.shipments: dict[int, Shipment] = {}
        self.firmware: dict[int, Firmware] = {}
        self.entries: dict[int, dict[int, DeviceOta]] = {}  # shipment id -> device id -> entry
        self.waiting: set[tuple[int, int]] = set()  # (shipment, device) online and blocked by window or cap
        self._revs: dict[int, int] = {}
        self._targets: dict[int, frozenset[int]] = {}  # shipment id -> its device list, for lookups
        self._task: asyncio.Task | None = None
        self._dirty: dict[tuple[int, int], DeviceOta] = {}
        self._events: list[tuple] = []
        self._flush_scheduled = False

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        domain = self.server.domain
        assert domain is not None
        domain.on_device_info.append(self._on_info)
        domain.on_device_offline.append(self._on_offline)
        remove_stale_uploads(self.settings.data_dir)
        self._sync()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.flush()
        self.db.close()

    async def _run(self) -> None:
        interval = self.settings.ota_poll_interval
        while True:
            await asyncio.sleep(interval)
            try:
                self._sync()
                self._tick()
            except Exception:
                log.exception("ota housekeeping failed")

    def _sync(self) -> None:
        """Load shipments that are new or changed in the database (by the CLI, the admin API or a restart)."""
        revs = self.db.revs()
        for sid in list(self.shipments):
            if sid not in revs:
                ship = self.db.shipment(sid)
                self._drop(sid, ship.state if ship else "deleted")
        for sid, rev in revs.items():
            if self._revs.get(sid) == rev:
                continue
            self._revs[sid] = rev
            self.reload(sid)

    def reload(self, sid: int) -> None:
        ship = self.db.shipment(sid)
        if ship is None or ship.state not in (st.LIVE, st.PAUSED):
            self._drop(sid, ship.state if ship else "deleted")
            return
        self._revs[sid] = ship.rev
        old = self.shipments.get(sid)
        self.shipments[sid] = ship
        if ship.targets is not None:
            self._targets[sid] = frozenset(ship.targets)
        if ship.firmware_id not in self.firmware:
            fw = self.db.firmware(ship.firmware_id)
            if fw is None:
                log.error("shipment without firmware shipment=%d firmware=%d", sid, ship.firmware_id)
                return
            self.firmware[fw.id] = fw
        known = self.entries.setdefault(sid, {})
        for row in self.db.devices(sid):
            mine = known.get(row.device_id)
            if mine is None:
                known[row.device_id] = row
            elif row.approved and not mine.approved:
                mine.approved = True
        if old is None:
            log.info("shipment loaded shipment=%d name=%s state=%s", sid, ship.name, ship.state)
        if ship.state == st.LIVE:
            self.kick(sid)

    def _drop(self, sid: int, state: str) -> None:
        if self.shipments.pop(sid, None) is not None:
            log.info("shipment no longer active shipment=%d state=%s", sid, state)
        self.entries.pop(sid, None)
        self._revs.pop(sid, None)
        self._targets.pop(sid, None)
        self.waiting = {w for w in self.waiting if w[0] != sid}

    # --- triggers -----------------------------------------------------------------------------------

    def _online_devices(self, template_id: str) -> list[DeviceState]:
        out = []
        for link in self.server.hub.links():
            dev = getattr(link, "device", None)
            if dev is not None and dev.record.template_id == template_id and getattr(link, "info_acked", True):
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
        # After the info's reply, and not in the same TCP segment (blynklib reads one frame per recv).
        asyncio.get_running_loop().call_later(0.05, self._after_info, dev)

    def _after_info(self, dev: DeviceState) -> None:
        if not self.server.hub.is_online(dev.id):
            return
        for ship in list(self.shipments.values()):
            if ship.template_id == dev.record.template_id:
                try:
                    self._consider(ship, dev, login=True)
                except Exception:
                    log.exception("ota consider failed shipment=%d device=%d", ship.id, dev.id)

    def _on_offline(self, dev: DeviceState) -> None:
        self.waiting = {w for w in self.waiting if w[1] != dev.id}

    def _tick(self) -> None:
        for sid, did in list(self.waiting):
            ship = self.shipments.get(sid)
            dev = self.server.domain.device(did) if ship else None
            if ship is None or dev is None or not self.server.hub.is_online(did):
                self.waiting.discard((sid, did))
                continue
            self._consider(ship, dev, login=False)

    # --- the per-device state machine -------------------------------------------------------------

    def entry(self, sid: int, did: int, create: bool = False) -> DeviceOta | None:
        per = self.entries.setdefault(sid, {})
        e = per.get(did)
        if e is None and create:
            ship = self.shipments[sid]
            wave = 1 if ship.wave1 is None or did in ship.wave1 else 2
            e = per[did] = DeviceOta(sid, did, "", wave=wave, updated_at=now_ms())
        return e

    def set_status(self, e: DeviceOta, status: str, detail: str | None = None) -> None:
        e.status = status
        e.updated_at = now_ms()
        self._queue(e, (e.shipment_id, e.device_id, e.updated_at, status, detail))
        log.info(
            "ota status shipment=%d device=%d status=%r%s",
            e.shipment_id,
            e.device_id,
            status,
            f" detail={detail!r}" if detail else "",
        )
        self._after_status(e)

    def save(self, e: DeviceOta) -> None:
        e.updated_at = now_ms()
        self._queue(e, None)

    def _queue(self, e: DeviceOta, event: tuple | None) -> None:
        """Writes made in one loop turn go to SQLite together, at the end of the turn (still on the
        loop, so anything read afterwards sees them)."""
        self._dirty[(e.shipment_id, e.device_id)] = e
        if event is not None:
            self._events.append(event)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        rows, self._dirty = list(self._dirty.values()), {}
        events, self._events = self._events, []
        if rows or events:
            self.db.save_devices(rows, events)

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
        waiting_for_device = time.monotonic() - e.sent_at < self.settings.ota_request_timeout
        if status in (st.REQUEST_SENT, st.FIRMWARE_REQUESTED) and not login and waiting_for_device:
            return  # the device has it; wait for its download or its next login
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
        tz = dev.record.timezone or dev.meta.get("Timezone")
        if not e.approved and not st.in_window(ship.time_window, tz, time.time()):
            self.waiting.add((ship.id, did))
            return
        if ship.max_in_flight and self.in_flight(ship.id) >= ship.max_in_flight:
            self.waiting.add((ship.id, did))
            return
        self.waiting.discard((ship.id, did))
        self._send(ship, fw, dev, e)

    def _attempts_left(self, ship: Shipment, e: DeviceOta) -> bool:
        if e.attempts and now_ms() - e.attempts_since >= ship.reset_period * 1000:
            e.attempts = 0
            e.attempts_since = 0
            self.save(e)
        return e.attempts < ship.attempts_limit

    def in_flight(self, sid: int) -> int:
        timeout = self.settings.ota_request_timeout
        now = time.monotonic()
        return sum(
            1
            for e in self.entries.get(sid, {}).values()
            if e.downloading or (e.status in (st.REQUEST_SENT, st.FIRMWARE_REQUESTED) and now - e.sent_at < timeout)
        )

    def _send(self, ship: Shipment, fw: Firmware, dev: DeviceState, e: DeviceOta) -> None:
        url = self.download_url(ship, dev)
        body = ota_body(url)
        link = self.server.hub.link(dev.id)
        buff_in = getattr(link, "buff_in", None)
        if buff_in is not None and len(body) + 5 > buff_in:
            self.set_status(e, st.UPLOAD_FAILURE, f"ota URL ({len(body) + 5} bytes) exceeds buff-in {buff_in}")
            return
        if e.old_version is None:
            e.old_version = (dev.record.info or {}).get("firmware_version")
        if not self.server.hub.send(dev.id, Command.INTERNAL, body, OTA_MSG_ID):
            log.info("ota command not delivered shipment=%d device=%d", ship.id, dev.id)
            return
        self.stats.commands_sent += 1
        e.sent_at = time.monotonic()
        self.set_status(e, st.REQUEST_SENT, url.split("?", 1)[0].replace(ship.secret, "<secret>"))

    def base_url(self, ship: Shipment, dev: DeviceState) -> str:
        """Per-shipment host > --external-url > the address this device reached us on (a wildcard
        listener has no single address; the socket's local address is the one the device can reach)."""
        if ship.host_url:
            return ship.host_url.rstrip("/")
        if self.settings.external_url:
            return self.settings.external_url.rstrip("/")
        hw = self.server.hardware
        host, port = (hw.address if hw and hw.address else (self.settings.host, self.settings.port))[:2]
        if host in ("0.0.0.0", "::", ""):
            link = self.server.hub.link(dev.id)
            transport = getattr(link, "transport", None)
            sock = transport.get_extra_info("sockname") if transport is not None else None
            host = sock[0] if sock else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def download_url(self, ship: Shipment, dev: DeviceState) -> str:
        """``<base>/static/fw_<shipment id>_<secret>.bin?token=<token>``: the shipment's secret makes the
        URL unguessable; the token says which device asks. Still a ``.bin`` path with a ``token``
        query, as Edgent and the client libraries expect."""
        return f"{self.base_url(ship, dev)}/static/fw_{ship.id}_{ship.secret}.bin?token={dev.token}"

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
                ship.wave = 2
                self.db.set_state(ship.id, st.LIVE, None, wave=2)
                self._revs[ship.id] = ship.rev = ship.rev + 1
                asyncio.get_running_loop().call_soon(self.kick, ship.id)
                return
        if ship.targets is not None and all(
            (x := entries.get(d)) is not None and x.status in st.SETTLED for d in ship.targets
        ):
            self._set_state(ship, st.FINISHED, "every target settled")

    def _set_state(self, ship: Shipment, state: str, reason: str | None) -> None:
        log.info("shipment state shipment=%d state=%s reason=%s", ship.id, state, reason)
        self.db.set_state(ship.id, state, reason)
        ship.state = state
        ship.reason = reason
        ship.rev += 1
        self._revs[ship.id] = ship.rev
        if state not in (st.LIVE, st.PAUSED):
            # Keep the entries in memory until the running downloads end; the poll drops the rest.
            self.shipments.pop(ship.id, None)
            self.waiting = {w for w in self.waiting if w[0] != ship.id}

    # --- files ----------------------------------------------------------------------------------

    def open_image(self, fw: Firmware) -> mmap.mmap:
        """The image mapped read-only, to slice chunks from: the page cache holds it once however many
        devices download it, nothing is copied into the process, and nothing stays after the
        shipments end (the caller closes the map)."""
        with open(firmware_path(self.settings.data_dir, fw), "rb") as fh:
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
