"""Composition root: builds the store, hub, domain, listeners and HTTP apps; starts and stops them
in order. A graceful stop closes sessions and flushes every pending write."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import signal
import string
import sys

from aiohttp import web

import protocol
from blynk_server import apikey, hot_path_implementation
from blynk_server.config import Settings
from blynk_server.domain import Domain
from blynk_server.hardware.server import HardwareServer
from blynk_server.http.admin import build_admin_app
from blynk_server.http.frontend import HttpFrontend
from blynk_server.hub import Hub
from blynk_server.model import Datastream
from blynk_server.store import SqliteStore
from blynk_server.store.retention import Retention

log = logging.getLogger(__name__)

API_KEY_SETTING = "admin_api_key"
API_KEY_FILE = "admin-api-key"


def _template_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "TMPL" + "".join(secrets.choice(alphabet) for _ in range(8))


class BlynkServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: SqliteStore | None = None
        self.hub = Hub()
        self.domain: Domain | None = None
        self.retention: Retention | None = None
        self.hardware: HardwareServer | None = None
        self.http: HttpFrontend | None = None
        self.ota = None  # OtaService, built in start() once the domain exists
        self._admin_runner: web.AppRunner | None = None
        self.admin_address: tuple[str, int] | None = None
        self.api_key_hash: str = ""  # "sha256:<hex>" of the admin API key (apikey.check_key)
        self.out = sys.stdout
        self._quickstart: tuple[str, str] | None = None

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _first_start(self) -> None:
        """On an empty data dir: a Quickstart template and device, and the admin API key."""
        store = self.store
        assert store is not None
        stored = store.get_setting(API_KEY_SETTING)
        if stored is None:
            key = apikey.new_key()
            stored = apikey.hash_key(key)
            store.set_setting(API_KEY_SETTING, stored)
            path = self.settings.data_dir / API_KEY_FILE
            path.write_text(key + "\n")
            os.chmod(path, 0o600)
            self._say(f"Admin API key (also in {path}): {key}")
        elif not apikey.is_hashed(stored):  # a data dir from before keys were hashed
            stored = apikey.hash_key(stored)
            store.set_setting(API_KEY_SETTING, stored)
        self.api_key_hash = stored
        if store.get_setting("initialized") is not None:
            return
        store.set_setting("initialized", "1")
        if store.list_templates():
            return
        tid = _template_id()
        store.create_template(
            tid,
            "Quickstart",
            [
                Datastream("v0", "Switch", "int", 0, 1, "0", sync=True),
                Datastream("v1", "Value", "double", history=True),
                Datastream("v2", "Text", "string"),
            ],
        )
        device = store.create_device(tid, "Quickstart Device")
        self._quickstart = (tid, device.token)

    def _print_quickstart(self) -> None:
        if self._quickstart is None or self.hardware is None or self.hardware.address is None:
            return
        tid, token = self._quickstart
        port = self.hardware.address[1]
        self._say(
            "Quickstart device created. Put these lines at the top of your sketch:\n"
            f'  #define BLYNK_TEMPLATE_ID "{tid}"\n'
            '  #define BLYNK_TEMPLATE_NAME "Quickstart"\n'
            f'  #define BLYNK_AUTH_TOKEN "{token}"\n'
            f'and connect to this server: Blynk.begin(BLYNK_AUTH_TOKEN, ssid, pass, "<this host>", {port});'
        )

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        self.store = SqliteStore(s.data_dir, s.flush_interval, s.store_max_pending_rows)
        self.store.check_writable()
        replayed, files = self.store.replay_recovery()
        if files:
            self._say(f"Replayed {replayed} rows from {len(files)} recovery file(s) a previous stop left.")
        self._first_start()
        self.store.start_writer()
        self.retention = Retention(
            self.store.path,
            s.history_days,
            s.events_days,
            s.retention_interval,
            first_delay=min(10.0, s.retention_interval),  # after start-up settles; sooner when runs are frequent
        )
        self.retention.start()
        self.domain = Domain(self.store, self.hub, s)
        self.hardware = HardwareServer(s, self.domain, self.hub, loop)
        self.http = HttpFrontend(self)
        await self.http.start()  # before the listener, so the first HTTP connection finds the app
        await self.hardware.start()
        from blynk_server.ota.service import OtaService

        self.ota = OtaService(self)
        self.ota.start()
        self._print_quickstart()
        self._admin_runner = web.AppRunner(build_admin_app(self), access_log=None)
        await self._admin_runner.setup()
        site = web.TCPSite(self._admin_runner, s.admin_host, s.admin_port)
        await site.start()
        self.admin_address = self._admin_runner.addresses[0][:2]
        line = f"blynk-server ready hardware={_hostport(self.hardware.address)} admin={_hostport(self.admin_address)}"
        if self.hardware.tls_address:
            line += f" tls={_hostport(self.hardware.tls_address)}"
        self._say(line)
        log.info("framer: %s, device hot path: %s", protocol.IMPLEMENTATION, hot_path_implementation())

    async def stop(self) -> int:
        """Stop everything; 0 when every pending write was flushed, 1 when some were not (they were saved
        to a recovery file, or lost when even that failed: the log says which)."""
        if self.hardware is not None:
            await self.hardware.stop()
        if self.http is not None:
            await self.http.stop()
        if self.ota is not None:
            await self.ota.stop()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        if self.retention is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.retention.stop)
        if self.store is None:
            return 0
        report = await asyncio.get_running_loop().run_in_executor(None, self.store.close)
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
    await server.start()
    tune_gc()
    tune_threads()
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


def tune_threads() -> None:
    """Hand the GIL back to the event loop sooner when a worker thread (the store writer, retention, a
    data/get query) runs Python code.

    The loop asks for the GIL after every poll; at the default interval it could wait 5 ms each time a
    worker held it. With 1,000 devices pinging while data/get calls of 10,000 points ran back to back,
    their ping p99 was 35 ms at 5 ms and 13 ms at 1 ms (benchmarks/RESULTS.md, "Hostile devices").
    Only threads that compete pay for the extra switches; the loop alone never does."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)


def run(settings: Settings) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where supported
        uvloop = None
    if uvloop is not None:
        return uvloop.run(serve(settings))
    return asyncio.run(serve(settings))  # pragma: no cover
