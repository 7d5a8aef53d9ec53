"""OTA tables in the server's SQLite file, on a connection of their own.

Every method is synchronous. In the running server the connection is used only on the store's writer
thread (``OtaService`` calls through ``run_db`` / ``submit_db``); the CLI uses it directly when no
server runs. Writes are small (a status change is one upsert and one INSERT, batched per loop turn).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from blynk_server.model import now_ms
from blynk_server.store.sqlite import DB_NAME, LoopThreadError, connect

SECRET_BYTES = 16  # 128 bits: the download URL's per-shipment secret (``secrets.token_urlsafe``)

SCHEMA = """
CREATE TABLE IF NOT EXISTS ota_firmware (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    md5 TEXT NOT NULL,
    size INTEGER NOT NULL,
    type TEXT,
    version TEXT,
    build TEXT,
    board TEXT,
    library_version TEXT,
    tag TEXT,
    file_name TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ota_shipments (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    firmware_id INTEGER NOT NULL REFERENCES ota_firmware(id),
    template_id TEXT NOT NULL,
    targets TEXT,
    condition TEXT NOT NULL,
    time_window TEXT NOT NULL,
    attempts_limit INTEGER NOT NULL,
    reset_period REAL NOT NULL,
    rate INTEGER NOT NULL,
    max_in_flight INTEGER NOT NULL,
    user_control INTEGER NOT NULL,
    first_wave_percent REAL NOT NULL,
    max_failure_ratio REAL NOT NULL,
    host_url TEXT,
    wave INTEGER NOT NULL DEFAULT 1,
    wave1 TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    rev INTEGER NOT NULL DEFAULT 1, -- unused since the server stopped polling for CLI changes
    secret TEXT
);
CREATE TABLE IF NOT EXISTS ota_devices (
    shipment_id INTEGER NOT NULL,
    device_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    attempts_since INTEGER NOT NULL DEFAULT 0,
    approved INTEGER NOT NULL DEFAULT 0,
    wave INTEGER NOT NULL DEFAULT 1,
    old_version TEXT,
    bytes INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (shipment_id, device_id)
);
CREATE TABLE IF NOT EXISTS ota_events (
    id INTEGER PRIMARY KEY,
    shipment_id INTEGER NOT NULL,
    device_id INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    status TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS ota_events_by_device ON ota_events (shipment_id, device_id, id);
"""


@dataclass(slots=True)
class Firmware:
    id: int
    sha256: str
    md5: str
    size: int
    type: str | None
    version: str | None
    build: str | None
    board: str | None
    library_version: str | None
    tag: dict | None
    file_name: str | None
    created_at: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class Shipment:
    id: int
    name: str
    firmware_id: int
    template_id: str
    targets: list[int] | None  # None: every device of the template, also ones created later
    condition: str
    time_window: str
    attempts_limit: int
    reset_period: float  # seconds
    rate: int  # bytes/s per device, 0 = unlimited
    max_in_flight: int  # 0 = unlimited
    user_control: bool
    first_wave_percent: float  # 100 = no staged rollout
    max_failure_ratio: float
    host_url: str | None
    wave: int
    wave1: list[int] | None
    state: str
    reason: str | None
    created_at: int
    updated_at: int
    secret: str  # in every download URL of this shipment; never in reports or listings

    def as_dict(self) -> dict:
        d = asdict(self)
        del d["secret"]
        return d


@dataclass(slots=True)
class DeviceOta:
    shipment_id: int
    device_id: int
    status: str
    attempts: int = 0
    attempts_since: int = 0
    approved: bool = False
    wave: int = 1
    old_version: str | None = None
    bytes: int = 0
    updated_at: int = 0
    # Runtime only.
    sent_at: float = 0.0
    sent_login: int | None = None  # the login (its last_seen ms) the ota command went to
    downloading: int = 0
    attempt_open: bool = False


_SHIP_COLS = (
    "id, name, firmware_id, template_id, targets, condition, time_window, attempts_limit, reset_period, rate, "
    "max_in_flight, user_control, first_wave_percent, max_failure_ratio, host_url, wave, wave1, state, reason, "
    "created_at, updated_at, secret"
)
_FW_COLS = "id, sha256, md5, size, type, version, build, board, library_version, tag, file_name, created_at"
_DEV_COLS = "shipment_id, device_id, status, attempts, attempts_since, approved, wave, old_version, bytes, updated_at"


def _shipment(row) -> Shipment:
    r = list(row)
    r[4] = json.loads(r[4]) if r[4] else None
    r[11] = bool(r[11])
    r[16] = json.loads(r[16]) if r[16] else None
    return Shipment(*r)


def _firmware(row) -> Firmware:
    r = list(row)
    r[9] = json.loads(r[9]) if r[9] else None
    return Firmware(*r)


def _device(row) -> DeviceOta:
    r = list(row)
    r[5] = bool(r[5])
    return DeviceOta(*r)


_UPSERT = (
    f"INSERT INTO ota_devices ({_DEV_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (shipment_id, device_id) DO UPDATE SET status = excluded.status,"
    " attempts = excluded.attempts, attempts_since = excluded.attempts_since,"
    " approved = MAX(approved, excluded.approved), wave = excluded.wave,"
    " old_version = excluded.old_version, bytes = excluded.bytes, updated_at = excluded.updated_at"
)


def device_row(d: DeviceOta) -> tuple:
    """The stored columns of an entry, for ``save_devices`` (taken on the loop, written elsewhere)."""
    return (
        d.shipment_id,
        d.device_id,
        d.status,
        d.attempts,
        d.attempts_since,
        int(d.approved),
        d.wave,
        d.old_version,
        d.bytes,
        d.updated_at,
    )


class OtaDB:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / DB_NAME
        self._conn = connect(self.path)
        self._forbidden: frozenset[int] = frozenset()
        self.db.executescript(SCHEMA)
        self._migrate()
        self.lock = threading.Lock()

    def _migrate(self) -> None:
        """Data dirs from before download secrets: add the column and give every shipment its own
        secret (URLs sent before the upgrade stop working; a device gets a new one at its next login).
        In one IMMEDIATE transaction, as the CLI and the server may open the file at the same moment."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            cols = {r[1] for r in self.db.execute("PRAGMA table_info(ota_shipments)")}
            if "secret" not in cols:
                self.db.execute("ALTER TABLE ota_shipments ADD COLUMN secret TEXT")
            for (sid,) in self.db.execute("SELECT id FROM ota_shipments WHERE secret IS NULL").fetchall():
                self.db.execute(
                    "UPDATE ota_shipments SET secret = ? WHERE id = ?", (secrets.token_urlsafe(SECRET_BYTES), sid)
                )

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, refused on a thread ``forbid_thread`` named (the server's event loop)."""
        if threading.get_ident() in self._forbidden:
            raise LoopThreadError("OtaDB used on the event loop thread: go through the store's thread (run_db)")
        return self._conn

    def forbid_thread(self, ident: int) -> None:
        self._forbidden = self._forbidden | {ident}

    def close(self) -> None:
        self.db.close()

    def _q(self, sql: str, args: tuple = ()) -> list:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def _x(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self.lock:
            return self.db.execute(sql, args)

    # --- firmware ---------------------------------------------------------------------------------

    def firmware_by_sha(self, sha256: str) -> Firmware | None:
        rows = self._q(f"SELECT {_FW_COLS} FROM ota_firmware WHERE sha256 = ?", (sha256,))
        return _firmware(rows[0]) if rows else None

    def firmware(self, firmware_id: int) -> Firmware | None:
        rows = self._q(f"SELECT {_FW_COLS} FROM ota_firmware WHERE id = ?", (firmware_id,))
        return _firmware(rows[0]) if rows else None

    def list_firmware(self) -> list[Firmware]:
        return [_firmware(r) for r in self._q(f"SELECT {_FW_COLS} FROM ota_firmware ORDER BY id")]

    def add_firmware(self, fw: dict) -> Firmware:
        cur = self._x(
            "INSERT INTO ota_firmware (sha256, md5, size, type, version, build, board, library_version, tag,"
            " file_name, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                fw["sha256"],
                fw["md5"],
                fw["size"],
                fw.get("type"),
                fw.get("version"),
                fw.get("build"),
                fw.get("board"),
                fw.get("library_version"),
                json.dumps(fw.get("tag")) if fw.get("tag") else None,
                fw.get("file_name"),
                now_ms(),
            ),
        )
        return self.firmware(cur.lastrowid)

    # --- shipments --------------------------------------------------------------------------------

    def add_shipment(self, s: dict) -> Shipment:
        now = now_ms()
        cur = self._x(
            "INSERT INTO ota_shipments (name, firmware_id, template_id, targets, condition, time_window,"
            " attempts_limit, reset_period, rate, max_in_flight, user_control, first_wave_percent,"
            " max_failure_ratio, host_url, wave, wave1, state, created_at, updated_at, secret)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'live', ?, ?, ?)",
            (
                s["name"],
                s["firmware_id"],
                s["template_id"],
                json.dumps(s["targets"]) if s.get("targets") is not None else None,
                s["condition"],
                s["time_window"],
                s["attempts_limit"],
                s["reset_period"],
                s["rate"],
                s["max_in_flight"],
                int(s["user_control"]),
                s["first_wave_percent"],
                s["max_failure_ratio"],
                s.get("host_url"),
                s["wave"],
                json.dumps(s["wave1"]) if s.get("wave1") is not None else None,
                now,
                now,
                secrets.token_urlsafe(SECRET_BYTES),
            ),
        )
        return self.shipment(cur.lastrowid)

    def shipment(self, ref: int | str) -> Shipment | None:
        """By id (an int within SQLite's range: ``shipments.find`` parses user input) or by name."""
        if isinstance(ref, int):
            rows = self._q(f"SELECT {_SHIP_COLS} FROM ota_shipments WHERE id = ?", (ref,))
        else:
            rows = self._q(f"SELECT {_SHIP_COLS} FROM ota_shipments WHERE name = ?", (ref,))
        return _shipment(rows[0]) if rows else None

    def list_shipments(self, state: str | None = None) -> list[Shipment]:
        if state:
            rows = self._q(f"SELECT {_SHIP_COLS} FROM ota_shipments WHERE state = ? ORDER BY id", (state,))
        else:
            rows = self._q(f"SELECT {_SHIP_COLS} FROM ota_shipments ORDER BY id")
        return [_shipment(r) for r in rows]

    def active_shipments(self) -> list[Shipment]:
        rows = self._q(f"SELECT {_SHIP_COLS} FROM ota_shipments WHERE state IN ('live', 'paused') ORDER BY id")
        return [_shipment(r) for r in rows]

    def set_state(
        self,
        shipment_id: int,
        state: str,
        reason: str | None = None,
        wave: int | None = None,
        updated_at: int | None = None,
    ) -> None:
        self._x(
            "UPDATE ota_shipments SET state = ?, reason = ?, wave = COALESCE(?, wave), updated_at = ? WHERE id = ?",
            (state, reason, wave, updated_at if updated_at is not None else now_ms(), shipment_id),
        )

    # --- per-device -------------------------------------------------------------------------------

    def devices(self, shipment_id: int) -> list[DeviceOta]:
        return [
            _device(r)
            for r in self._q(
                f"SELECT {_DEV_COLS} FROM ota_devices WHERE shipment_id = ? ORDER BY device_id", (shipment_id,)
            )
        ]

    def approve(self, shipment_id: int, device_id: int) -> None:
        """Approval from the CLI with no server running (a running server saves its entry instead):
        recorded even before the device has an entry."""
        self._x(
            "INSERT INTO ota_devices (shipment_id, device_id, status, approved, updated_at)"
            " VALUES (?, ?, 'Awaiting user action', 1, ?)"
            " ON CONFLICT (shipment_id, device_id) DO UPDATE SET approved = 1",
            (shipment_id, device_id, now_ms()),
        )

    def save_devices(self, rows: list[tuple], events: list[tuple]) -> None:
        """Upsert many device rows (``device_row``) and append timeline events (shipment, device, ts,
        status, detail) in one transaction: a wave start changes thousands of rows in one loop turn."""
        with self.lock, self.db:
            self.db.execute("BEGIN")  # the connection is in autocommit mode: one transaction for all
            self.db.executemany(_UPSERT, rows)
            self.db.executemany(
                "INSERT INTO ota_events (shipment_id, device_id, ts, status, detail) VALUES (?, ?, ?, ?, ?)", events
            )

    def events(self, shipment_id: int, device_id: int | None = None) -> list[dict]:
        if device_id is None:
            rows = self._q(
                "SELECT device_id, ts, status, detail FROM ota_events WHERE shipment_id = ? ORDER BY id", (shipment_id,)
            )
        else:
            rows = self._q(
                "SELECT device_id, ts, status, detail FROM ota_events WHERE shipment_id = ?"
                " AND device_id = ? ORDER BY id",
                (shipment_id, device_id),
            )
        return [{"device_id": r[0], "ts": r[1], "status": r[2], "detail": r[3]} for r in rows]
