"""The OTA state machine in-process: a real ``OtaService`` over a tmp_path ``OtaDB``, a fake domain,
the hub with fake links for devices, an inline ``run_db``/``submit_db`` that guards every database
use, and fake clocks. No sockets, no sleeps."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
from datetime import UTC, datetime

import pytest

from blynk_server.config import Settings
from blynk_server.domain import DeviceState
from blynk_server.hub import Hub
from blynk_server.model import DeviceRecord, Template
from blynk_server.ota import status as st
from blynk_server.ota.db import OtaDB
from blynk_server.ota.registry import firmware_path
from blynk_server.ota.service import INFO_DELAY, OTA_MSG_ID, Download, Grant, OtaService, Refusal
from blynk_server.ota.shipments import ShipmentError
from protocol import Command

TPL = "TMPLota"
NOON = datetime(2026, 6, 1, 12, 0, tzinfo=UTC).timestamp()
REQUEST_TIMEOUT = 300.0


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeLink:
    """A connected device as the hub and OTA see it (``hub.DeviceLink``)."""

    def __init__(self, dev: DeviceState, buff_in: int | None = 1024, host: str | None = "10.0.0.5") -> None:
        self.device = dev
        self.info_acked = True
        self.buff_in = buff_in
        self.host = host
        self.pushed: list[tuple[int, bytes, int | None]] = []
        self.closed: str | None = None

    def local_host(self) -> str | None:
        return self.host

    def push(self, command: int, body: bytes, msg_id: int | None = None) -> bool:
        self.pushed.append((command, body, msg_id))
        return True

    def close(self, reason: str) -> None:
        self.closed = reason

    def urls(self) -> list[str]:
        return [b.split(b"\0")[1].decode() for c, b, m in self.pushed if c == Command.INTERNAL and m == OTA_MSG_ID]


class Guard:
    """Counts database work and fails it when it does not come through run_db/submit_db."""

    def __init__(self) -> None:
        self.inside = False
        self.calls = 0

    @contextlib.contextmanager
    def door(self):
        self.inside, was = True, self.inside
        self.calls += 1
        try:
            yield
        finally:
            self.inside = was

    def check(self) -> None:
        assert self.inside, "database used outside run_db/submit_db"


class GuardedConnection:
    """Wraps OtaDB's connection: every use must be inside the guard's door."""

    def __init__(self, conn, guard: Guard) -> None:
        self._conn, self._guard = conn, guard

    def __getattr__(self, name):
        self._guard.check()
        return getattr(self._conn, name)

    def __enter__(self):
        self._guard.check()
        return self._conn.__enter__()

    def __exit__(self, *exc):
        return self._conn.__exit__(*exc)


class Domain:
    """The domain's memory as OTA reads it (on the loop)."""

    def __init__(self) -> None:
        self.on_device_info: list = []
        self.on_device_offline: list = []
        self.by_id: dict[int, DeviceState] = {}

    def template(self, template_id: str) -> Template | None:
        return Template(template_id, template_id) if template_id == TPL else None

    def device(self, device_id: int) -> DeviceState | None:
        return self.by_id.get(device_id)

    def devices(self, template_id: str | None = None) -> list[DeviceState]:
        return sorted(
            (d for d in self.by_id.values() if template_id is None or d.record.template_id == template_id),
            key=lambda d: d.id,
        )

    def device_by_token(self, token: str) -> DeviceState | None:
        return next((d for d in self.by_id.values() if d.token == token), None)


class World:
    def __init__(self, tmp_path) -> None:
        self.guard = Guard()
        self.clock = Clock(1000.0)
        self.wall = Clock(NOON)
        self.hub = Hub()
        self.domain = Domain()
        self.settings = Settings(data_dir=tmp_path, host="0.0.0.0", port=8080)
        self.settings.ota_request_timeout = REQUEST_TIMEOUT
        self.ota = self.service()

    def service(self) -> OtaService:
        return OtaService(
            self.settings,
            self.domain,
            self.hub,
            self.run_db,
            self.submit_db,
            lambda: ("0.0.0.0", 8080),
            clock=self.clock,
            wall_clock=self.wall,
        )

    async def run_db(self, fn, *args):
        with self.guard.door():
            return fn(*args)

    def submit_db(self, fn, *args) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self.guard.door():
            fut.set_result(fn(*args))
        return fut

    async def start(self, ota: OtaService | None = None) -> OtaService:
        ota = ota or self.ota
        await ota.start()
        ota.db._conn = GuardedConnection(ota.db._conn, self.guard)
        return ota

    def db(self) -> OtaDB:
        """The test's own look at the tables (through the guard's door)."""
        return self.ota.db

    def firmware(self, version: str = "2.0.0", fw_type: str = TPL, build: str | None = None, size: int = 4096):
        data = bytes(range(256)) * (size // 256)
        with self.guard.door():
            fw = self.ota.db.add_firmware(
                {
                    "sha256": hashlib.sha256(data + version.encode()).hexdigest(),
                    "md5": hashlib.md5(data).hexdigest(),
                    "size": len(data),
                    "type": fw_type,
                    "version": version,
                    "build": build,
                }
            )
        path = firmware_path(self.settings.data_dir, fw)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return fw

    def device(self, did: int, version: str = "1.0.0", fw_type: str = TPL, tz: str | None = None) -> DeviceState:
        rec = DeviceRecord(did, f"token{did}", f"d{did}", TPL, 0, info=self.info(version, fw_type), timezone=tz)
        dev = self.domain.by_id[did] = DeviceState(rec, Template(TPL, TPL))
        return dev

    @staticmethod
    def info(version: str, fw_type: str = TPL, build: str | None = None) -> dict:
        return {"firmware_version": version, "firmware_type": fw_type, "build": build, "template_id": TPL}

    def login(self, did: int, version: str | None = None) -> FakeLink:
        """The device connects (again), its info answered: OTA looks at it."""
        dev = self.domain.by_id[did]
        if version is not None:
            dev.record.info = self.info(version)
        link = FakeLink(dev)
        self.hub.attach(did, link)
        self.ota.device_ready(dev)
        return link

    def logout(self, did: int) -> None:
        link = self.hub.link(did)
        self.hub.detach(did, link)
        for hook in self.domain.on_device_offline:
            hook(self.domain.by_id[did])

    async def ship(self, fw, **fields):
        return await self.ota.create_shipment({"name": "s1", "firmware": fw.id, "template": TPL, **fields})

    def status(self, sid: int, did: int) -> str:
        e = self.ota.entry(sid, did)
        return e.status if e is not None else ""

    async def reported(self, sid: int, did: int) -> str:
        rep = await self.ota.report(sid)
        return next(d["status"] for d in rep["devices"] if d["device_id"] == did)

    def download(self, did: int, sid: int, secret: str, *, complete: bool = True) -> Download | Refusal:
        """A whole download through the service, as the HTTP handler drives it."""
        grant = self.ota.admit(f"fw_{sid}_{secret}.bin", f"token{did}")
        if isinstance(grant, Refusal):
            return grant
        size = grant.fw.size
        dl = self.ota.begin_download(grant, 0, size - 1, mobile=False)
        if isinstance(dl, Refusal):
            return dl
        half = size // 2
        self.ota.progress(dl, half, half, 0.0)
        if complete:
            self.ota.progress(dl, size, size - half, 0.01)
            self.ota.end_download(dl)
        else:
            self.ota.end_download(dl, "connection closed")
        return dl


@pytest.fixture
async def w(tmp_path):
    world = World(tmp_path)
    await world.start()
    yield world
    await world.ota.stop()
    assert world.guard.calls > 0


async def test_login_sends_the_ota_command_and_records_it(w):
    fw = w.firmware()
    w.device(1)
    ship = await w.ship(fw)
    link = w.login(1)
    assert len(link.urls()) == 1
    url = link.urls()[0]
    # A wildcard listener: the URL names the address the device reached us on.
    assert url == f"http://10.0.0.5:8080/static/fw_{ship.id}_{ship.secret}.bin?token=token1"
    assert w.status(ship.id, 1) == st.REQUEST_SENT
    assert w.ota.stats.commands_sent == 1
    rep = await w.ota.report(ship.id)  # flushed before the read
    dev = rep["devices"][0]
    assert dev["status"] == st.REQUEST_SENT
    assert [t["status"] for t in dev["timeline"]] == [st.STARTED, st.REQUEST_SENT]
    assert ship.secret not in str(rep)


async def test_a_sent_command_waits_for_the_request_timeout(w):
    fw = w.firmware()
    w.device(1)
    ship = await w.ship(fw)
    link = w.login(1)
    w.ota.kick(ship.id)
    assert len(link.urls()) == 1  # it has the command: not again while the request may still come
    w.clock.t += REQUEST_TIMEOUT + 1
    w.ota.kick(ship.id)
    assert len(link.urls()) == 2


async def test_the_info_of_the_login_a_command_went_to_does_not_send_it_again(w):
    """A shipment's start sends the command to an online device; that device's answered info may be
    considered just after (a loaded server): same login, so not again. A new login gets it again."""
    fw = w.firmware()
    dev = w.device(1)
    dev.record.last_seen = 1_000  # the login time (Domain.set_online)
    link = FakeLink(dev)
    w.hub.attach(1, link)
    ship = await w.ship(fw)  # the start kicks: the online device gets the command
    assert len(link.urls()) == 1
    w.ota.device_ready(dev)  # the info of that same login
    assert len(link.urls()) == 1 and w.status(ship.id, 1) == st.REQUEST_SENT
    dev.record.last_seen = 2_000  # it reconnected
    w.ota.device_ready(dev)
    assert len(link.urls()) == 2


async def test_a_login_resends_and_a_frame_too_big_fails(w):
    fw = w.firmware()
    w.device(1)
    ship = await w.ship(fw)
    w.login(1)
    link = w.login(1)  # reconnects on the old firmware before downloading: it gets the URL again
    assert len(link.urls()) == 1
    w.logout(1)
    dev = w.domain.by_id[1]
    small = FakeLink(dev, buff_in=64)
    w.hub.attach(1, small)
    w.clock.t += REQUEST_TIMEOUT + 1
    w.ota.device_ready(dev)
    assert small.urls() == []
    assert w.status(ship.id, 1) == st.UPLOAD_FAILURE


async def test_download_then_success_on_next_login_finishes_a_listed_shipment(w):
    fw = w.firmware("2.0.0")
    w.device(1)
    ship = await w.ship(fw, devices=[1])
    w.login(1)
    dl = w.download(1, ship.id, ship.secret)
    assert isinstance(dl, Download)
    assert w.status(ship.id, 1) == st.FIRMWARE_UPLOADED
    s = w.ota.stats
    assert (s.downloads_started, s.downloads_completed, s.downloads_in_flight, s.bytes_served) == (1, 1, 0, fw.size)
    w.logout(1)
    w.login(1, version="2.0.0")
    assert ship.id not in w.ota.shipments and ship.id not in w.ota.entries  # every target settled
    assert await w.reported(ship.id, 1) == st.SUCCESS
    rep = await w.ota.report(ship.id)
    assert rep["shipment"]["state"] == st.FINISHED
    assert rep["devices"][0]["attempts"] == 1 and rep["devices"][0]["bytes"] == fw.size


async def test_rollback_after_delivery_or_success(w):
    fw = w.firmware("2.0.0")
    w.device(1)
    w.device(2)
    ship = await w.ship(fw)
    w.login(1)
    w.login(2)
    w.download(1, ship.id, ship.secret)
    w.login(1, version="1.0.0")  # delivered, but the device still runs the old one
    assert w.status(ship.id, 1) == st.ROLLBACK
    w.download(2, ship.id, ship.secret)
    w.login(2, version="2.0.0")
    assert w.status(ship.id, 2) == st.SUCCESS
    w.login(2, version="1.0.0")
    assert w.status(ship.id, 2) == st.ROLLBACK


async def test_a_broken_download_fails_and_the_next_login_retries(w):
    fw = w.firmware()
    w.device(1)
    ship = await w.ship(fw)
    w.login(1)
    w.download(1, ship.id, ship.secret, complete=False)
    assert w.status(ship.id, 1) == st.UPLOAD_FAILURE
    assert w.ota.stats.downloads_failed == 1 and w.ota.stats.downloads_in_flight == 0
    link = w.login(1)
    assert len(link.urls()) == 1


async def test_attempts_limit_and_reset(w):
    fw = w.firmware()
    w.device(1)
    ship = await w.ship(fw, attempts=2, reset="10s")
    w.login(1)
    for _ in range(2):
        assert isinstance(w.download(1, ship.id, ship.secret, complete=False), Download)
    refused = w.download(1, ship.id, ship.secret)
    assert isinstance(refused, Refusal) and refused.status == 429
    assert w.status(ship.id, 1) == st.DOWNLOAD_LIMIT
    assert w.ota.stats.limit_refusals == 1
    link = w.login(1)
    assert link.urls() == []  # no command past the limit either
    w.wall.t += 10
    link = w.login(1)
    assert len(link.urls()) == 1
    assert isinstance(w.download(1, ship.id, ship.secret), Download)
    assert w.ota.entry(ship.id, 1).attempts == 1


async def test_a_range_resuming_the_open_attempt_is_not_another_attempt(w):
    fw = w.firmware()
    w.device(1)
    ship = await w.ship(fw, attempts=1)
    w.login(1)
    w.download(1, ship.id, ship.secret, complete=False)
    grant = w.ota.admit(f"fw_{ship.id}_{ship.secret}.bin", "token1")
    assert isinstance(grant, Grant)
    dl = w.ota.begin_download(grant, 100, fw.size - 1, mobile=True)
    assert isinstance(dl, Download) and dl.resume
    w.ota.progress(dl, fw.size, fw.size - 100, 0.0)
    w.ota.end_download(dl)
    assert w.status(ship.id, 1) == st.UPLOADED_TO_MOBILE
    assert w.ota.entry(ship.id, 1).attempts == 1


async def test_refusals(w):
    fw = w.firmware(fw_type="OTHER")
    for did in (1, 2, 3):
        w.device(did)
    ship = await w.ship(fw, devices=[1, 3])
    name = f"fw_{ship.id}_{ship.secret}.bin"
    cases = [
        (("fw_x.bin", "token1"), 404),
        ((name, ""), 403),
        ((name, "nope"), 403),
        ((f"fw_{ship.id}_{'A' * 22}.bin", "token1"), 404),
        ((f"fw_{ship.id + 1}_{ship.secret}.bin", "token1"), 404),
        ((name, "token2"), 403),  # not in the device list
        ((name, "token1"), 409),  # type mismatch
    ]
    for args, status in cases:
        r = w.ota.admit(*args)
        assert isinstance(r, Refusal) and r.status == status, (args, r)
    assert w.status(ship.id, 1) == st.TYPE_MISMATCH
    assert w.ota.stats.refusals == len(cases)
    await w.ota.control(ship.id, "pause")
    r = w.ota.admit(name, "token1")
    assert r.status == 409


async def test_user_control_waits_for_approval_which_ignores_the_window(w):
    fw = w.firmware()
    w.device(1)
    w.device(2)
    ship = await w.ship(fw, user_control=True, window="night")  # noon: outside the window
    link = w.login(1)
    assert link.urls() == [] and w.status(ship.id, 1) == st.AWAITING_USER
    with pytest.raises(ShipmentError) as err:
        await w.ota.approve(ship.id, 99)
    assert err.value.status == 404
    await w.ota.approve(ship.name, 1)
    assert len(link.urls()) == 1
    await w.ota.approve(ship.id, 2)  # before it was ever seen: kept for its login
    assert w.status(ship.id, 2) == st.AWAITING_USER
    rep = await w.ota.report(ship.id)
    assert next(d for d in rep["devices"] if d["device_id"] == 2)["status"] == "Pending"
    assert len(w.login(2).urls()) == 1


async def test_window_waits_and_the_tick_sends_when_it_opens(w):
    fw = w.firmware()
    w.device(1)
    w.device(2, tz="Asia/Tokyo")  # noon UTC is 21:00 there: its evening
    ship = await w.ship(fw, window="night")
    a, b = w.login(1), w.login(2)
    assert a.urls() == [] and b.urls() == []
    assert w.status(ship.id, 1) == st.STARTED
    assert w.ota.waiting == {(ship.id, 1), (ship.id, 2)}
    w.ota.tick()
    assert a.urls() == []
    w.wall.t = NOON + 13 * 3600  # 01:00 UTC, 10:00 in Tokyo
    w.ota.tick()
    assert len(a.urls()) == 1 and b.urls() == []
    assert w.ota.waiting == {(ship.id, 2)}
    w.logout(2)
    assert w.ota.waiting == set()


async def test_an_info_arms_a_look_only_while_a_shipment_of_its_template_is_active(w, monkeypatch):
    """A login burst with no shipment arms no timer per device; with one, the device is looked at
    INFO_DELAY after its info's reply (not in the same TCP segment)."""
    armed = []
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "call_later", lambda delay, callback, *args: armed.append((delay, callback, args)))
    dev = w.device(1)
    w.ota._on_info(dev, None)
    assert armed == []
    await w.ship(w.firmware())
    armed.clear()
    w.ota._on_info(dev, None)
    assert armed == [(INFO_DELAY, w.ota.device_ready, (dev,))]


async def test_a_device_going_offline_leaves_every_shipments_waits(w):
    fw = w.firmware()
    for did in (1, 2):
        w.device(did)
    first = await w.ship(fw, window="night")
    second = await w.ota.create_shipment({"name": "s2", "firmware": fw.id, "template": TPL, "window": "night"})
    w.login(1)
    w.login(2)
    assert w.ota.waiting == {(first.id, 1), (first.id, 2), (second.id, 1), (second.id, 2)}
    w.logout(1)
    assert w.ota.waiting == {(first.id, 2), (second.id, 2)}


async def test_in_flight_cap_frees_a_slot_on_completion_or_request_timeout(w):
    fw = w.firmware()
    for did in (1, 2, 3):
        w.device(did)
    ship = await w.ship(fw, max_in_flight=1)
    links = {did: w.login(did) for did in (1, 2, 3)}
    assert [len(links[d].urls()) for d in (1, 2, 3)] == [1, 0, 0]
    assert w.ota.in_flight(ship.id) == 1
    w.ota.tick()
    assert [len(links[d].urls()) for d in (1, 2, 3)] == [1, 0, 0]
    w.download(1, ship.id, ship.secret)  # delivered: its slot is free
    w.ota.tick()
    assert sum(len(links[d].urls()) for d in (2, 3)) == 1
    w.clock.t += REQUEST_TIMEOUT + 1  # that one never downloads: its slot expires
    w.ota.tick()
    assert [len(links[d].urls()) for d in (2, 3)] == [1, 1]


async def test_first_wave_failures_pause_and_resume_moves_on(w):
    fw = w.firmware("2.0.0")
    for did in (1, 2, 3, 4):
        w.device(did)
    ship = await w.ship(fw, first_wave=50, max_failure_ratio=0.4)
    assert ship.wave1 == [1, 2] and ship.wave == 1
    links = {did: w.login(did) for did in (1, 2, 3, 4)}
    assert [len(links[d].urls()) for d in (1, 2, 3, 4)] == [1, 1, 0, 0]
    r = w.ota.admit(f"fw_{ship.id}_{ship.secret}.bin", "token3")
    assert isinstance(r, Refusal) and r.status == 409  # second wave, not yet
    w.download(1, ship.id, ship.secret)
    w.login(1, version="1.0.0")  # rollback: 1 of 2 failed > 0.4
    assert w.status(ship.id, 1) == st.ROLLBACK
    assert ship.state == st.PAUSED and ship.reason.startswith("first wave failures 1/2")
    assert w.login(2).urls() == []  # paused: nothing sent
    resumed = await w.ota.control(ship.id, "resume")
    assert resumed.state == st.LIVE and resumed.wave == 2
    assert len(links[3].urls()) == 1 and len(links[4].urls()) == 1
    rep = await w.ota.report(ship.id)
    assert rep["shipment"]["state"] == st.LIVE and rep["shipment"]["wave"] == 2


async def test_first_wave_done_rolls_out_to_the_rest(w):
    fw = w.firmware("2.0.0")
    for did in (1, 2, 3):
        w.device(did)
    ship = await w.ship(fw, first_wave=34)
    assert ship.wave1 == [1, 2]
    links = {did: w.login(did) for did in (1, 2, 3)}
    for did in (1, 2):
        w.download(did, ship.id, ship.secret)
        w.login(did, version="2.0.0")
    assert ship.wave == 2 and ship.state == st.LIVE
    assert links[3].urls() == []
    await asyncio.sleep(0)  # the next wave is kicked on the next loop turn
    assert len(links[3].urls()) == 1


async def test_version_condition_and_type_mismatch_settle(w):
    fw = w.firmware("2.0.0")
    w.device(1, version="3.0.0")
    w.device(2, fw_type="OTHER")
    ship = await w.ship(fw, devices=[1, 2])
    assert w.login(1).urls() == [] and w.login(2).urls() == []
    assert ship.state == st.FINISHED
    assert await w.reported(ship.id, 1) == st.VERSION_MISMATCH
    assert await w.reported(ship.id, 2) == st.TYPE_MISMATCH


async def test_pause_cancel_and_their_rules(w):
    fw = w.firmware()
    w.device(1)
    ship = await w.ship(fw)
    paused = await w.ota.control("s1", "pause")
    assert paused.state == st.PAUSED
    assert w.login(1).urls() == []
    with pytest.raises(ShipmentError) as err:
        await w.ota.control(ship.id, "pause")
    assert err.value.status == 409
    await w.ota.control(ship.id, "resume")
    assert len(w.hub.link(1).urls()) == 1  # resuming kicks the online devices
    await w.ota.control(ship.id, "cancel")
    assert ship.id not in w.ota.shipments and ship.id not in w.ota.entries
    with pytest.raises(ShipmentError) as err:
        await w.ota.control(ship.id, "resume")  # from the database: cancelled stays cancelled
    assert err.value.status == 409
    with pytest.raises(ShipmentError) as err:
        await w.ota.approve(ship.id, 1)
    assert err.value.status == 409
    with pytest.raises(ShipmentError) as err:
        await w.ota.control("9" * 30, "pause")
    assert err.value.status == 404
    assert [s.state for s in await w.ota.list_shipments()] == [st.CANCELLED]


async def test_state_survives_a_restart(w):
    fw = w.firmware()
    w.device(1)
    w.device(2)
    ship = await w.ship(fw, user_control=True)
    await w.ota.approve(ship.id, 1)
    w.login(1)
    w.download(1, ship.id, ship.secret)
    await w.ota.control(ship.id, "pause")
    await w.ota.stop()
    w.domain.on_device_info.clear()
    w.domain.on_device_offline.clear()
    w.ota = again = await w.start(w.service())
    loaded = again.shipments[ship.id]
    assert loaded.state == st.PAUSED and loaded.secret == ship.secret
    e = again.entry(ship.id, 1)
    assert (e.status, e.attempts, e.approved) == (st.FIRMWARE_UPLOADED, 1, True)
    w.login(1, version="2.0.0")
    assert w.status(ship.id, 1) == st.SUCCESS  # a paused shipment still records the outcome
    await again.control(ship.id, "resume")
    assert w.login(2).urls() == [] and w.status(ship.id, 2) == st.AWAITING_USER


async def test_metrics_counts(w):
    from blynk_server.ota.metrics import ota_metrics

    fw = w.firmware()
    w.device(1)
    w.device(2)
    await w.ship(fw)
    w.login(1)
    w.login(2)
    families = {f.name: f for f in ota_metrics(w.ota)}
    samples = [(s.labels["shipment"], s.labels["status"], s.value) for s in families["blynk_ota_devices"].samples]
    assert samples == [("s1", st.REQUEST_SENT, 2)]
    assert families["blynk_ota_commands_sent"].samples[0].value == 2


async def test_the_guard_sees_database_use_outside_run_db(w):
    with pytest.raises(AssertionError, match="outside run_db"):
        w.ota.db.list_firmware()
