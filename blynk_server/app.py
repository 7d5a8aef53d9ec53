"""Composition root: takes the data dir's lock, builds the store, hub, domain, provisioning, listeners,
OTA and HTTP apps, each given what it uses; starts and stops them in order. A graceful stop closes
sessions and flushes every pending write (or says what it could not)."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

import protocol
from blynk_server import apikey, hot_path_implementation
from blynk_server.automations import Automations
from blynk_server.automations import add_admin_routes as add_automation_routes
from blynk_server.config import Settings
from blynk_server.control import CONTROL_SOCKET, DataDirBusy, DataDirLock, listen_socket
from blynk_server.cpuslice import request_slice
from blynk_server.device_provisioning import DeviceProvisioning
from blynk_server.device_provisioning import add_admin_routes as add_provision_routes
from blynk_server.domain import PINWRITE_IMPLEMENTATION, Domain
from blynk_server.events import EventsService
from blynk_server.events import add_admin_routes as add_event_routes
from blynk_server.export import Exports
from blynk_server.hardware.server import HardwareServer
from blynk_server.http.admin import build_admin_app
from blynk_server.http.frontend import HttpFrontend, build_device_app
from blynk_server.http.platform_api import Platform, PlatformStats
from blynk_server.http.platform_api import add_admin_routes as add_oauth_client_routes
from blynk_server.http.platform_api import add_routes as add_platform_routes
from blynk_server.http.stats import HttpStats
from blynk_server.hub import Hub
from blynk_server.looplag import LoopLag
from blynk_server.mailer import Mailer
from blynk_server.metrics import Sources, build_registry, render
from blynk_server.model import Datastream
from blynk_server.oauth import OAuthClients
from blynk_server.ota.service import OtaService
from blynk_server.outbox import Outbox
from blynk_server.provisioning import Provisioning, new_template_id
from blynk_server.store import SqliteStore
from blynk_server.store.retention import Retention
from blynk_server.store.sqlite import CloseReport, Snapshot, StoreUnavailable
from blynk_server.uploads import Uploads
from blynk_server.webhooks import Webhooks
from blynk_server.webhooks import add_admin_routes as add_webhook_routes

log = logging.getLogger(__name__)

API_KEY_SETTING = "admin_api_key"
API_KEY_FILE = "admin-api-key"


@dataclass(slots=True)
class Prepared:
    """What start-up read and wrote on the store's thread, for the loop to act on."""

    snapshot: Snapshot | None = None
    replayed: int = 0
    recovery_files: int = 0
    api_key_hash: str = ""
    new_key: str | None = None  # the admin API key made on this start (printed once)
    quickstart: tuple[str, str] | None = None  # (template id, token) made on an empty data dir


def prepare(store: SqliteStore, data_dir: Path) -> Prepared:
    """On the store's thread, before anything listens: check the database takes writes, replay the
    recovery files a failed stop left, make the admin API key and the Quickstart device on a first
    start, and read everything the domain holds."""
    store.check_writable()
    replayed, files = store.replay_recovery()
    out = Prepared(None, replayed, len(files))
    stored = store.get_setting(API_KEY_SETTING)
    if stored is None:
        key = apikey.new_key()
        stored = apikey.hash_key(key)
        store.set_setting(API_KEY_SETTING, stored)
        path = data_dir / API_KEY_FILE
        path.write_text(key + "\n")
        os.chmod(path, 0o600)
        out.new_key = key
    elif not apikey.is_hashed(stored):  # a data dir from before keys were hashed
        stored = apikey.hash_key(stored)
        store.set_setting(API_KEY_SETTING, stored)
    out.api_key_hash = stored
    if store.get_setting("initialized") is None:
        store.set_setting("initialized", "1")
        if not store.list_templates():
            tid = new_template_id()
            store.create_template(tid, "Quickstart", QUICKSTART_DATASTREAMS)
            out.quickstart = (tid, store.create_device(tid, "Quickstart Device").token)
    out.snapshot = store.load_all()
    return out


QUICKSTART_DATASTREAMS = [
    Datastream("v0", "Switch", "int", 0, 1, "0", sync=True),
    Datastream("v1", "Value", "double", history=True),
    Datastream("v2", "Text", "string"),
]


class BlynkServer:
    """The composition root: builds every part with what it needs, starts and stops them in order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.out = sys.stdout
        self.lock = DataDirLock(settings.data_dir)
        self.store: SqliteStore | None = None
        self.hub = Hub()
        self.domain: Domain | None = None
        self.provisioning: Provisioning | None = None
        self.device_provisioning: DeviceProvisioning | None = None
        self.retention: Retention | None = None
        self.hardware: HardwareServer | None = None
        self.http: HttpFrontend | None = None
        self.ota: OtaService | None = None
        self.automations: Automations | None = None
        self.outbox: Outbox | None = None
        self.mailer: Mailer | None = None
        self.webhooks: Webhooks | None = None
        self.events: EventsService | None = None
        self.platform: Platform | None = None
        self.exports: Exports | None = None
        self.uploads: Uploads | None = None
        self.lag = LoopLag()
        self._runners: list[web.AppRunner] = []
        self.admin_address: tuple[str, int] | None = None

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, self._lock_data_dir):
            raise DataDirBusy(s.data_dir, self.lock.holder())
        self.store = store = await loop.run_in_executor(
            None, SqliteStore, s.data_dir, s.flush_interval, s.store_max_pending_rows
        )
        store.forbid_thread(threading.get_ident())  # from here, SQLite on the loop thread raises
        store.start_writer(s.store_writer_nice)
        ready = await store.run(prepare, store, s.data_dir)
        if ready.recovery_files:
            self._say(
                f"Replayed {ready.replayed} rows from {ready.recovery_files} recovery file(s) a previous stop left."
            )
        if ready.new_key is not None:
            self._say(f"Admin API key (also in {s.data_dir / API_KEY_FILE}): {ready.new_key}")
        self.retention = Retention(
            store.path,
            s.history_days,
            s.events_days,
            s.retention_interval,
            first_delay=min(10.0, s.retention_interval),  # after start-up settles; sooner when runs are frequent
        )
        self.retention.start()
        self.domain = domain = Domain(store, self.hub, s)
        domain.load_snapshot(ready.snapshot)
        self.provisioning = Provisioning(store, domain)
        self.device_provisioning = device_provisioning = DeviceProvisioning(self.provisioning, s)
        await device_provisioning.start()  # before the listener: a pending token's first login is checked
        self.outbox = Outbox(store, s)
        self.mailer = Mailer(s, self.outbox)  # registers the "email" deliverer when smtp_host is set
        self.webhooks = webhooks = Webhooks(store, domain, self.outbox, s)
        await webhooks.start()  # registers its deliverer and listens before anything can happen
        await self.outbox.start()
        # Before the listeners: the first logEvent finds its template's codes.
        self.events = events = EventsService(store, domain, self.mailer)
        await events.start()
        webhooks.on_disabled.append(
            lambda hook, reason, device_id: events.webhook_disabled(hook.name, reason, device_id)
        )
        self.hardware = hardware = HardwareServer(s, domain, self.hub, loop)
        hardware.context.mailer = self.mailer
        self.ota = OtaService(s, domain, self.hub, store.run, store.submit, lambda: hardware.address)
        self.ota.on_status.append(events.ota_status)
        await self.ota.start()
        self.ota.db.forbid_thread(threading.get_ident())  # OTA's tables too: only through the store's thread
        self.automations = automations = Automations(store, domain, s, mailer=self.mailer, webhooks=webhooks)
        await self.automations.start()  # before the listener: rules see the first device's values
        self.exports = Exports(
            s.data_dir / "exports", s.data_export_ttl, s.data_export_max_files, s.data_export_max_bytes
        )
        await self.exports.start()
        self.uploads = Uploads(
            store,
            s.data_dir / "uploads",
            s.upload_max_size,
            s.upload_files_per_device,
            s.uploads_per_device,
            s.upload_max_total_bytes,
            alive=lambda device_id: domain.device(device_id) is not None,
        )
        await self.uploads.start()
        clients = OAuthClients(store, s)
        await clients.load()
        self.platform = platform = Platform(
            clients, self.provisioning, self.hub, events, s, PlatformStats(), device_provisioning
        )
        http_stats = HttpStats()
        device_app = build_device_app(
            s,
            http_stats,
            domain,
            self.hub,
            self.ota,
            hardware.new_session,
            mailer=self.mailer,
            exports=self.exports,
            uploads=self.uploads,
            extensions=[lambda app: add_platform_routes(app, platform)] if s.platform_on_device_port else (),
        )
        self.http = HttpFrontend(s, device_app, http_stats)
        hardware.http_handoff = await self.http.start()  # before the listener: the first connection finds it
        await hardware.start()
        self.lag.start(loop)
        registry = build_registry(
            Sources(
                self.hub,
                hardware.stats,
                lambda: len(hardware.sessions),
                domain.stats,
                store,
                self.retention.stats,
                http_stats,
                self.lag,
                turns=hardware.turns,
                ota=self.ota,
                automations=self.automations.stats,
                outbox=self.outbox.stats,
                webhooks=webhooks,
                events=events.stats,
                platform=platform,
                provision=device_provisioning.stats,
            )
        )
        admin = functools.partial(
            build_admin_app,
            self.provisioning,
            self.hub,
            self.ota,
            lambda: render(registry),
            extensions=[
                lambda app: add_webhook_routes(app, webhooks),
                lambda app: add_automation_routes(app, automations),
                lambda app: add_event_routes(app, events, self.provisioning),
                lambda app: add_oauth_client_routes(app, clients),
                lambda app: add_platform_routes(app, platform),
                lambda app: add_provision_routes(app, device_provisioning),
            ],
        )
        self._print_quickstart(ready.quickstart)
        await self._serve_control(await self._runner(admin(None)))  # before "ready": the CLI may ask at once
        runner = await self._runner(admin(ready.api_key_hash, http_stats))
        await web.TCPSite(runner, s.admin_host, s.admin_port).start()
        self.admin_address = runner.addresses[0][:2]
        line = f"blynk-server ready hardware={_hostport(hardware.address)} admin={_hostport(self.admin_address)}"
        if hardware.tls_address:
            line += f" tls={_hostport(hardware.tls_address)}"
        self._say(line)
        log.info(
            "framer: %s, device hot path: %s, pin writes: %s",
            protocol.IMPLEMENTATION,
            hot_path_implementation(),
            PINWRITE_IMPLEMENTATION,
        )

    def _lock_data_dir(self) -> bool:
        data_dir = self.settings.data_dir
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            return self.lock.acquire()
        except OSError as exc:
            raise StoreUnavailable(f"cannot use the data dir {data_dir}: {exc.strerror or exc}") from None

    async def _runner(self, app: web.Application) -> web.AppRunner:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        return runner

    async def _serve_control(self, runner: web.AppRunner) -> None:
        """The admin API on ``<data dir>/control.sock`` for the CLI, without the key: only who can
        enter the private (0700) data dir can reach it. A socket left by a killed server is replaced
        (we hold the data dir's lock, so it is nobody's)."""
        await web.SockSite(runner, listen_socket(self.settings.data_dir)).start()

    def _print_quickstart(self, quickstart: tuple[str, str] | None) -> None:
        if quickstart is None or self.hardware is None or self.hardware.address is None:
            return
        tid, token = quickstart
        port = self.hardware.address[1]
        self._say(
            "Quickstart device created. Put these lines at the top of your sketch:\n"
            f'  #define BLYNK_TEMPLATE_ID "{tid}"\n'
            '  #define BLYNK_TEMPLATE_NAME "Quickstart"\n'
            f'  #define BLYNK_AUTH_TOKEN "{token}"\n'
            f'and connect to this server: Blynk.begin(BLYNK_AUTH_TOKEN, ssid, pass, "<this host>", {port});'
        )

    async def stop(self) -> int:
        """Stop everything; 0 when every pending write was flushed, 1 when some were not (they were saved
        to a recovery file, or lost when even that failed: the log says which)."""
        loop = asyncio.get_running_loop()
        if self.hardware is not None:
            await self.hardware.stop()
            self.hardware.http_handoff = None
        if self.device_provisioning is not None:
            await self.device_provisioning.stop()
        if self.events is not None:  # after the sessions closed (their offline), before the store
            await self.events.stop()
        if self.http is not None:
            await self.http.stop()
        if self.exports is not None:
            await self.exports.stop()
        if self.ota is not None:
            await self.ota.stop()
        if self.automations is not None:
            self.automations.stop()
        if self.outbox is not None:  # after the doors; in flight finish (bounded), the rest stay queued
            await self.outbox.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()
        for runner in self._runners:
            await runner.cleanup()
        (self.settings.data_dir / CONTROL_SOCKET).unlink(missing_ok=True)
        self.lag.stop()
        if self.retention is not None:
            await loop.run_in_executor(None, self.retention.stop)
        code = 0
        if self.store is not None:
            report = await loop.run_in_executor(None, self.store.close)
            code = _report(report)
        self.lock.release()
        return code


def _report(report: CloseReport) -> int:
    if report.ok:
        log.info("stopped; every pending write flushed")
        return 0
    if report.recovery_file is not None:
        log.error(
            "stopped; %d rows could not be written (%s): saved to %s, replayed at the next start",
            report.unwritten,
            report.error,
            report.recovery_file,
        )
    else:
        log.error(
            "stopped; %d rows could not be written (%s) nor saved to a recovery file: LOST",
            report.lost,
            report.error,
        )
    return 1


def _hostport(addr) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT; the exit status (see ``BlynkServer.stop``)."""
    server = BlynkServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tune_threads(settings.loop_slice_us)  # before start: its log line comes before the ready line
    await server.start()
    tune_gc()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        code = await server.stop()
    return code


# Young-generation threshold and how many young and middle collections come before an older one.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Fewer, later garbage collections, and none of them over what the server loaded at start.

    With 10,000 sessions the heap holds about a million tracked objects, and a full collection of it
    stopped the event loop for 55-128 ms. At CPython's default thresholds (700, 10, 10) that happened
    every few seconds under telemetry load: probe ping p99 was 34 ms at 10,000 devices x 2 writes/s,
    and 11 ms with these thresholds (benchmarks/RESULTS.md). The hot path's short-lived tuples die
    before a young collection sees them, so raising the thresholds barely grows memory."""
    gc.collect()
    gc.freeze()  # modules, templates, the listeners: alive for good, no need to scan them again
    gc.set_threshold(*GC_THRESHOLDS)


# Seconds another thread may hold the GIL while the event loop waits for it (CPython's default: 0.005).
GIL_SWITCH_INTERVAL = 0.001


def tune_threads(loop_slice_us: int) -> None:
    """Hand the GIL and the CPU back to the event loop sooner when a worker thread (the store writer,
    retention, a data/get query) runs: called on the loop's thread.

    The loop asks for the GIL after every poll; at the default interval it could wait 5 ms each time a
    worker held it. With 1,000 devices pinging while data/get calls of 10,000 points ran back to back,
    their ping p99 was 35 ms at 5 ms and 13 ms at 1 ms (benchmarks/RESULTS.md, "Hostile devices").
    Only threads that compete pay for the extra switches; the loop alone never does. The short
    scheduler slice does the same for the CPU, where the worker shares the loop's core (``cpuslice``)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    if loop_slice_us:
        why_not = request_slice(loop_slice_us)
        if why_not is None:
            log.info("event loop thread: a %d microsecond scheduler slice", loop_slice_us)
        else:
            log.info("event loop thread keeps the kernel's scheduler slice: %s", why_not)


def run(settings: Settings) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where supported
        uvloop = None
    if uvloop is not None:
        return uvloop.run(serve(settings))
    return asyncio.run(serve(settings))  # pragma: no cover
