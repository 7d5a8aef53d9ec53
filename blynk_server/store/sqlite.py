"""SQLite store: one writer thread owns the database; the event loop never touches it.

Device writes are written behind: the event loop appends them to an in-memory pending ``Batch``
(``put_*``, callable from any thread, never touching disk), and the writer thread commits it every
``flush_interval`` seconds in one transaction. Everything else that uses SQLite (admin changes, reads,
deletes) is a job on that same thread: ``submit`` (a ``concurrent.futures.Future``) and ``run`` (its
awaitable form) queue it, FIFO, between flushes; a job's exception lands in its future and the thread
goes on. One thread, one connection: no lock, no two writers in one process.

Threads. Once ``start_writer`` ran, the connection belongs to the writer thread. A method that uses
SQLite, called from another thread, is queued to the writer and waited for (it blocks that caller);
called from a thread named to ``forbid_thread`` (the server's event loop) it raises
``LoopThreadError`` instead, so a stray synchronous call on the loop is a bug that shows. Without a
writer (a CLI command), everything runs inline in the caller's thread.

A crash loses at most one flush interval of device writes. A flush that fails for the environment
(a full disk, a read-only file) keeps its rows for the next one; rows refused for what they hold are
dropped alone, counted and logged (``batch.write_batch``). A stop runs the queued jobs, flushes
everything, or saves what it could not write to a recovery file that the next start replays
(``recovery``), and says which.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sqlite3
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from concurrent.futures import Future
from dataclasses import dataclass
from importlib import resources
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

from blynk_server.model import (
    NO_ID,
    Datastream,
    DeviceRecord,
    MetaField,
    Template,
    assign_datastream_ids,
    new_token,
    now_ms,
)
from blynk_server.store import recovery
from blynk_server.store.batch import Batch, Rejected, transaction, write_batch

log = logging.getLogger(__name__)
T = TypeVar("T")

DB_NAME = "blynk.sqlite3"
FAILURE_LOG_PERIOD = 60.0  # seconds between log lines of a flush that keeps failing
FINAL_FLUSH_TRIES = 3
_MISSING: Any = object()
DEVICE_TABLES = ("pin_values", "properties", "history", "events", "device_meta")  # rows keyed by device_id


class StoreUnavailable(Exception):
    """The data dir or its database cannot be opened or written; the message says which and why."""


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA temp_store=MEMORY")  # the flush's sorting table (batch._history): no temp file
    return conn


def _migrate(conn: sqlite3.Connection, schema: str) -> None:
    """Bring a data dir made by an older version up to ``schema`` (``CREATE TABLE IF NOT EXISTS``
    leaves existing tables as they were): events gained a level (existing rows read as ``info``,
    without rewriting the table); datastreams gained an id and an alias (existing ones get the default
    id rule, ``model.assign_datastream_ids``, stored once, and their name as alias); pin_values became
    a WITHOUT ROWID table (``_pin_values_without_rowid``)."""
    _pin_values_without_rowid(conn, schema)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    if "level" not in columns:
        conn.execute("ALTER TABLE events ADD COLUMN level TEXT NOT NULL DEFAULT 'info'")
    columns = {row[1] for row in conn.execute("PRAGMA table_info(datastreams)")}
    if "ds_id" not in columns:
        with transaction(conn):
            conn.execute("ALTER TABLE datastreams ADD COLUMN ds_id INTEGER")
            conn.execute("ALTER TABLE datastreams ADD COLUMN alias TEXT")
            templates: dict[str, list[Datastream]] = {}
            for row in conn.execute(f"SELECT template_id, {_DS_COLS} FROM datastreams"):
                templates.setdefault(row[0], []).append(_datastream(row[1:]))
            for tid, streams in templates.items():
                assign_datastream_ids(streams)
                conn.executemany(
                    "UPDATE datastreams SET ds_id = ?, alias = ? WHERE template_id = ? AND pin = ?",
                    [(ds.id, ds.alias, tid, ds.pin) for ds in streams],
                )
            log.info("datastreams of %d templates given ids (the default rule)", len(templates))


def _pin_values_without_rowid(conn: sqlite3.Connection, schema: str) -> None:
    """Copy a rowid pin_values table into the WITHOUT ROWID one of ``schema``, in one transaction.

    Keyed by its primary key alone, the table is one b-tree instead of a table and its index: the
    flush's ``INSERT OR REPLACE`` of 10,000 values finds and rewrites each row once, not a row and an
    index entry (``benchmarks/values_flush.py``)."""
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'pin_values'").fetchone()
    if "WITHOUT ROWID" in sql.upper():
        return
    create = next(s for s in schema.split(";") if s.strip().startswith("CREATE TABLE IF NOT EXISTS pin_values "))
    with transaction(conn):
        conn.execute("ALTER TABLE pin_values RENAME TO pin_values_rowid")
        conn.execute(create)
        rows = conn.execute(
            "INSERT INTO pin_values (device_id, pin, value, ts) SELECT device_id, pin, value, ts FROM pin_values_rowid"
        ).rowcount
        conn.execute("DROP TABLE pin_values_rowid")
    log.info("pin_values rewritten as a WITHOUT ROWID table (%d rows)", rows)


def _private_dir(path: Path) -> None:
    """Create ``path`` (0700) or make an existing one 0700: it holds every device token."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        os.chmod(path, 0o700)


def _private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600, or make an existing one 0600, whatever the umask. SQLite
    gives its -wal and -shm files the database file's mode."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    if stat.S_IMODE(path.stat().st_mode) != 0o600:
        os.chmod(path, 0o600)


class FlushStats:
    """Plain counters read by the metrics collector at scrape time."""

    __slots__ = (
        "batches",
        "rows",
        "last_batch_rows",
        "seconds_total",
        "last_seconds",
        "errors",
        "rows_rejected",
        "rows_dropped",
    )

    def __init__(self) -> None:
        self.batches = 0
        self.rows = 0
        self.last_batch_rows = 0
        self.seconds_total = 0.0
        self.last_seconds = 0.0
        self.errors = 0  # flushes that failed (their rows kept for the next one)
        self.rows_rejected = 0  # rows the database refused for what they hold, dropped
        self.rows_dropped = 0  # rows dropped because failing flushes kept more than max_pending_rows


@dataclass(slots=True)
class Snapshot:
    """The whole provisioning state, for the domain to load at start (``SqliteStore.load_all``).
    ``values``, ``properties`` and ``meta`` have an entry (maybe empty) for every device."""

    templates: list[Template]
    devices: list[DeviceRecord]
    values: dict[int, dict[str, tuple[bytes, int]]]  # device id -> pin -> (value, ts)
    properties: dict[int, dict[tuple[str, str], bytes]]  # device id -> (pin, name) -> value
    meta: dict[int, dict[str, str]]  # device id -> name -> value


@dataclass(frozen=True)
class CloseReport:
    """What a stop did with the pending rows: all written, saved to ``recovery_file``, or ``lost``."""

    unwritten: int = 0
    recovery_file: Path | None = None
    lost: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.unwritten == 0


class LoopThreadError(RuntimeError):
    """SQLite used from a thread given to ``SqliteStore.forbid_thread`` (the event loop): a bug."""


class StoreClosed(RuntimeError):
    """A job or a method of a store that ``close()`` has stopped."""


def _job_name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _run_job(fut: Future, fn: Callable, args: tuple, kw: dict) -> None:
    if not fut.set_running_or_notify_cancel():  # cancelled while queued (e.g. the awaiting task)
        return
    try:
        result = fn(*args, **kw)
    except BaseException as exc:  # the caller's to see; the writer thread goes on
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _sqlite(method: Callable[..., T]) -> Callable[..., T]:
    """For a method that uses the connection: on the writer thread (or with no writer) it runs inline;
    from another thread it runs as a writer job, waited for; from a forbidden thread it raises."""
    name = method.__name__

    @functools.wraps(method)
    def on_writer(self: SqliteStore, *args, **kw) -> T:
        ident = threading.get_ident()
        if ident == self._writer_ident:
            return method(self, *args, **kw)
        if ident in self._forbidden:
            raise LoopThreadError(_loop_message(name))
        if self._writer is not None:
            return self.submit(method, self, *args, **kw).result()
        if self._closed:
            raise StoreClosed(f"SqliteStore.{name}(): the store {self.path} is closed")
        return method(self, *args, **kw)

    return on_writer


def _loop_message(what: str, fix: str | None = None) -> str:
    fix = fix or f"run it on the writer thread with `await store.run(store.{what}, ...)`"
    return (
        f"SqliteStore.{what} uses SQLite on thread {threading.current_thread().name!r}, which forbid_thread()"
        f" reserved (the event loop must not wait on disk): {fix}"
    )


def _lower_priority(nice: int) -> None:
    """This thread's nice value ``nice`` above the process's: on Linux a thread is a task of its own, so
    the event loop keeps its priority. Elsewhere, or without the right (a container's seccomp), it
    stays as it is, logged once."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
    except (AttributeError, OSError) as exc:
        log.info("store writer keeps the event loop's CPU priority: %s", exc)


class SqliteStore:
    def __init__(self, data_dir: Path | str, flush_interval: float = 1.0, max_pending_rows: int = 1_000_000) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self.flush_interval = flush_interval
        self.max_pending_rows = max_pending_rows  # history/event rows kept while flushes fail
        self._forbidden: frozenset[int] = frozenset()
        try:
            _private_dir(self.data_dir)
            _private_file(self.path)
            self._db = connect(self.path)
            schema = resources.files("blynk_server.store").joinpath("schema.sql").read_text()
            self._db.executescript(schema)
            _migrate(self._db, schema)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot use the data dir {self.data_dir}: {_reason(exc)}") from None
        # Pending write-behind rows (see batch.Batch); taken whole, on the writer thread only.
        self._pending = Batch()
        # The batch's pin values, the hot table, as the one item of a list that ``_take`` re-points:
        # the pin writer (pinwrite.py) holds the list and stores into its item itself, as ``put_row``
        # does (compiled: no Python call and no attribute lookup per write).
        self.pending_cell: list[dict] = [self._pending.values]
        self.stats = FlushStats()
        self._writer: threading.Thread | None = None
        self._writer_ident: int | None = None
        self._jobs: deque[tuple[Future, Callable, tuple, dict]] = deque()
        self._cond = threading.Condition()  # guards _jobs, _closed and _writer; wakes the writer
        self._closed = False
        self._deleted: set[int] = set()  # devices deleted by this process: their late rows are dropped
        self._last_failure_log = -1e9
        self._failures_unlogged = 0
        self._last_error = ""  # why the last flush failed, for the stop's report

    @property
    def db(self) -> sqlite3.Connection:
        """The connection (the writer thread's once it runs). Refused on a forbidden thread."""
        if threading.get_ident() in self._forbidden:
            caller = sys._getframe(1).f_code.co_name
            raise LoopThreadError(_loop_message("db", f"{caller}() must run on the writer thread (store.run)"))
        return self._db

    def forbid_thread(self, ident: int) -> None:
        """From now on, any use of SQLite from thread ``ident`` raises ``LoopThreadError`` (the server
        names its event loop thread). The ``put_*`` methods, ``submit``, ``run`` and ``pending`` stay
        callable from it. For the thread's lifetime: a thread started after it ends may get its ident."""
        if ident == self._writer_ident:
            raise ValueError("the writer thread cannot be forbidden: it is the one that uses SQLite")
        self._forbidden = self._forbidden | {ident}

    # --- lifecycle ---------------------------------------------------------------------------

    @_sqlite
    def check_writable(self) -> None:
        """Raise ``StoreUnavailable`` unless the database takes a write (a server must not start on a
        data dir it cannot persist to)."""
        try:
            with transaction(self.db):
                self.db.execute(
                    "INSERT OR REPLACE INTO settings (key, value) VALUES ('last_start', ?)", (str(now_ms()),)
                )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot write the database {self.path}: {_reason(exc)}") from None

    @_sqlite
    def replay_recovery(self) -> tuple[int, list[Path]]:
        """Write the rows of every recovery file a failed stop left, then remove the files.
        Returns (rows, files). Raises ``StoreUnavailable`` when they cannot be written."""
        files = recovery.find(self.data_dir)
        total = 0
        for path in files:
            try:
                batch = recovery.load(path)
                rejected = write_batch(self.db, batch)
            except (recovery.RecoveryError, OSError, sqlite3.Error) as exc:
                raise StoreUnavailable(f"cannot replay the recovery file {path}: {_reason(exc)}") from None
            self._count_rejected(rejected)
            path.unlink()
            total += len(batch)
            log.warning("replayed %d rows from %s (rows a previous stop could not write)", len(batch), path)
        return total, files

    def start_writer(self, nice: int = 0) -> None:
        """Start the writer thread (the server does; a CLI command works inline without it). From now on
        the connection is used on that thread only. ``nice`` > 0 lowers its CPU priority below the
        event loop's (Linux, per thread): under saturation a flush gets the smaller share of the core.
        That the loop, woken, preempts a running flush is the loop's short slice (``cpuslice``)."""
        with self._cond:
            if self._closed:
                raise StoreClosed(f"the store {self.path} is closed")
            if self._writer is not None:
                raise RuntimeError("the store's writer thread is already running")
            self._writer = threading.Thread(
                target=self._run_writer, args=(nice,), name="blynk-store-writer", daemon=True
            )
            self._writer.start()
            self._writer_ident = self._writer.ident

    def submit(self, fn: Callable[..., T], /, *args, **kw) -> Future[T]:
        """Run ``fn(*args, **kw)`` on the writer thread, after the jobs queued before it (FIFO), between
        flushes; its result or exception lands in the returned future. Without a writer it runs now,
        inline, and the future is done. After ``close()`` the future fails with ``StoreClosed``.
        A job must not wait for a job it submits (the writer would wait for itself): it calls the
        store's methods directly, they run inline on the writer thread."""
        fut: Future[T] = Future()
        with self._cond:
            if self._closed:
                fut.set_exception(StoreClosed(f"the store {self.path} is closed: {_job_name(fn)} was not run"))
                return fut
            if self._writer is not None:
                self._jobs.append((fut, fn, args, kw))
                self._cond.notify()
                return fut
        _run_job(fut, fn, args, kw)
        return fut

    async def run(self, fn: Callable[..., T], /, *args, **kw) -> T:
        """``submit`` awaited: the event loop's way to use the store (cancelling the awaiting task
        cancels the job if it has not started)."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kw))

    def close(self) -> CloseReport:
        """Run the queued jobs, flush every pending write and close the connection. Rows that cannot be
        written are saved to a recovery file in the data dir; the report says how many, and where (or
        that they are lost). Blocks: on a server, call it from an executor. A second close does nothing."""
        ident = threading.get_ident()
        if self._closed:
            return CloseReport()
        if ident in self._forbidden:
            raise LoopThreadError(_loop_message("close()", "it waits for the writer: call it from an executor"))
        if ident == self._writer_ident:
            raise RuntimeError("SqliteStore.close() from a job on the writer thread would wait for itself")
        with self._cond:
            if self._closed:
                return CloseReport()
            self._closed = True  # new jobs are refused; the writer drains the queued ones, then stops
            writer = self._writer
            self._cond.notify_all()
        if writer is not None:
            writer.join()
            with self._cond:
                self._writer = None
                self._writer_ident = None
        else:
            self._flush()
        report = self._save_unwritten()
        self._db.close()
        return report

    def _save_unwritten(self) -> CloseReport:
        batch = self._take()
        if not batch:
            return CloseReport()
        error = self._last_error or "unknown error"
        try:
            path = recovery.save(self.data_dir, batch)
        except OSError as exc:
            log.error("could not save %d unwritten rows to a recovery file: %s", len(batch), _reason(exc))
            return CloseReport(len(batch), None, len(batch), error)
        return CloseReport(len(batch), path, 0, error)

    def pending(self) -> int:
        """Rows waiting to be written (the write-behind queue depth)."""
        return len(self._pending)

    @_sqlite
    def flush_now(self) -> None:
        """Write the pending rows now (on the writer thread, waited for). Reads do not need it: they see
        pending rows; tests and tools that look at the database file with their own connection do."""
        self._flush()

    def _run_writer(self, nice: int = 0) -> None:
        self._writer_ident = threading.get_ident()
        if nice > 0:
            _lower_priority(nice)
        due = time.monotonic() + self.flush_interval
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    wait = due - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                job = self._jobs.popleft() if self._jobs else None
                stopping = job is None and self._closed
            if job is not None:
                _run_job(*job)
            if stopping:
                break
            if time.monotonic() >= due:
                try:
                    self._flush()
                except Exception:  # _flush keeps the rows of a failed write; anything else must not end the thread
                    log.exception("store: unexpected error in a flush")
                due = time.monotonic() + self.flush_interval
        for attempt in range(FINAL_FLUSH_TRIES):
            if self._flush() or attempt == FINAL_FLUSH_TRIES - 1:
                break
            time.sleep(0.2 * (attempt + 1))

    def _take(self) -> Batch:
        # The batch swapped, then the pin writer's cell re-pointed at its values: each one statement,
        # atomic under the GIL. The loop goes on storing into the fresh batch; a value stored through
        # the cell between the two went into ``batch``: taken too.
        batch, self._pending = self._pending, Batch()
        self.pending_cell[0] = self._pending.values
        if self._deleted:
            dropped = batch.drop_devices(self._deleted)
            if dropped:
                log.info("store: %d rows of deleted devices dropped", dropped)
        return batch

    def _put_back(self, batch: Batch) -> None:
        """Return the rows of a failed flush to the pending ones (``Batch.merge_older``), bounded."""
        dropped = self._pending.merge_older(batch, self.max_pending_rows)
        if dropped:  # flushes keep failing: the memory stays bounded, the oldest rows go, counted
            self.stats.rows_dropped += dropped
            log.error(
                "store: %d pending rows dropped (more than %d kept while flushes fail)", dropped, self.max_pending_rows
            )

    def _flush(self) -> bool:
        """Write the pending rows; False (rows kept for the next flush) when the database failed."""
        conn = self.db
        batch = self._take()
        rows = len(batch)
        start = time.perf_counter()
        if rows:
            try:
                rejected = write_batch(conn, batch)
            except Exception as exc:  # the environment (disk full, read-only, I/O) or a bug: keep the rows
                self._put_back(batch)
                self.stats.errors += 1
                self._last_error = _reason(exc)
                self._log_failure(rows, exc)
                return False
            self._count_rejected(rejected)
            self._last_error = ""
        elapsed = time.perf_counter() - start
        s = self.stats
        s.batches += 1
        s.rows += rows
        s.last_batch_rows = rows
        s.seconds_total += elapsed
        s.last_seconds = elapsed
        return True

    def _log_failure(self, rows: int, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_failure_log < FAILURE_LOG_PERIOD:
            self._failures_unlogged += 1
            return
        more = f" ({self._failures_unlogged} more failures since the last line)" if self._failures_unlogged else ""
        self._last_failure_log, self._failures_unlogged = now, 0
        if isinstance(exc, sqlite3.Error):
            log.error("store flush failed rows=%d: %s; kept for the next flush%s", rows, _reason(exc), more)
        else:
            log.exception("store flush failed rows=%d; kept for the next flush%s", rows, more)

    def _count_rejected(self, rejected: list[Rejected]) -> None:
        if not rejected:
            return
        self.stats.rows_rejected += len(rejected)
        shown = ", ".join(f"{r.table} device={r.device_id} ({type(r.error).__name__}: {r.error})" for r in rejected[:5])
        more = f" and {len(rejected) - 5} more" if len(rejected) > 5 else ""
        log.error("store dropped %d rows it cannot store: %s%s", len(rejected), shown, more)

    # --- write-behind (callable from any thread, the event loop included; never touches disk) ---
    # Each row goes into the pending batch in one statement, its key and row built before it: the
    # writer swaps the batch at any switch of threads (``_take``), so between reading ``_pending`` and
    # storing into it nothing may allocate (a GC run could call a finalizer, and switch) or call
    # Python code; a row stored after the swap would sit in a batch already taken.

    def put_row(self, device_id: int, pin: str, row: tuple[bytes, int]) -> None:
        """The pin's latest ``(value, ts)``: the same tuple the caller keeps (the device's ``values``),
        one tuple per write instead of two."""
        key = (device_id, pin)
        self.pending_cell[0][key] = row

    def put_property(self, device_id: int, pin: str, name: str, value: bytes, ts: int) -> None:
        key, row = (device_id, pin, name), (value, ts)
        self._pending.props[key] = row

    def put_history(self, device_id: int, pin: str, ts: int, value: bytes) -> None:
        row = (device_id, pin, ts, value)
        self._pending.history.append(row)

    def put_event(self, device_id: int, code: str, description: str | None, ts: int, level: str = "info") -> None:
        row = ("log", device_id, code, description, ts, level)
        self._pending.events.append(row)

    def put_event_clear(self, device_id: int, code: str, resolve_all: bool, ts: int) -> None:
        row = ("clear", device_id, code, resolve_all, ts)
        self._pending.events.append(row)

    def put_meta(self, device_id: int, name: str, value: str) -> None:
        """A device metadata field, written behind (a device's ``meta set`` must not commit on the loop)."""
        key = (device_id, name)
        self._pending.meta[key] = value

    def put_device_timezone(self, device_id: int, tz: str | None) -> None:
        """The device's time zone (from its ``Timezone`` metadata), written behind."""
        self._pending.timezones[device_id] = tz

    def put_device_seen(self, device_id: int, last_seen: int, info_json: str | None = None) -> None:
        """The device's last-seen time and, when given, its info message as JSON."""
        if info_json is None:
            old = self._pending.devices.get(device_id)
            info_json = old[1] if old else None
        row = (last_seen, info_json)
        self._pending.devices[device_id] = row

    # --- admin and reads (on the writer thread: ``await store.run(store.method, ...)``) ----------

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self.db.execute(sql, args).fetchall()

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, args)

    @_sqlite
    def get_setting(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM settings WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    @_sqlite
    def set_setting(self, key: str, value: str) -> None:
        self._exec("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))

    @_sqlite
    def execute_script(self, sql: str) -> None:
        """Create a part's own tables (``CREATE TABLE IF NOT EXISTS``): parts beyond the core (events,
        the outbox, webhooks, automations) keep their schema beside their code. On the writer thread."""
        self.db.executescript(sql)

    @_sqlite
    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Rows of one statement, for a part's own tables (on the writer thread: through ``run``)."""
        return self._query(sql, args)

    @_sqlite
    def execute(self, sql: str, args: tuple = ()) -> int:
        """One statement on a part's own tables, committed; the row id it inserted (or 0)."""
        return self._exec(sql, args).lastrowid or 0

    @_sqlite
    def create_template(
        self, template_id: str, name: str, datastreams: list[Datastream] = (), metafields: list[MetaField] = ()
    ) -> Template:
        with transaction(self.db):
            self.db.execute(
                "INSERT INTO templates (id, name, created_at) VALUES (?, ?, ?)", (template_id, name, now_ms())
            )
            for ds in datastreams:
                self._insert_datastream(template_id, ds)
            for mf in metafields:
                self._insert_metafield(template_id, mf)
        return self.get_template(template_id)  # type: ignore[return-value]

    @_sqlite
    def put_metafield(self, template_id: str, mf: MetaField) -> None:
        with transaction(self.db):
            self._insert_metafield(template_id, mf)

    def _insert_metafield(self, template_id: str, mf: MetaField) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO metafields (template_id, id, name, type, default_value, options, min, max)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                template_id,
                mf.id,
                mf.name,
                mf.type,
                mf.default,
                json.dumps(list(mf.options)) if mf.options else None,
                mf.min,
                mf.max,
            ),
        )

    @_sqlite
    def delete_metafield(self, template_id: str, metafield_id: int) -> bool:
        sql = "DELETE FROM metafields WHERE template_id = ? AND id = ?"
        return self._exec(sql, (template_id, metafield_id)).rowcount > 0

    @_sqlite
    def rename_device(self, device_id: int, name: str) -> None:
        """A device's new name (its ``device_name`` metafield set by the device or an API)."""
        self._exec("UPDATE devices SET name = ? WHERE id = ?", (name, device_id))

    @_sqlite
    def put_datastream(self, template_id: str, ds: Datastream) -> None:
        with transaction(self.db):
            self._insert_datastream(template_id, ds)

    def _insert_datastream(self, template_id: str, ds: Datastream) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO datastreams (template_id, pin, name, type, min, max, default_value,"
            " enum_values, history, sync, ds_id, alias) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                template_id,
                ds.pin,
                ds.name,
                ds.type,
                ds.min,
                ds.max,
                ds.default,
                json.dumps(list(ds.enum_values)) if ds.enum_values else None,
                int(ds.history),
                int(ds.sync),
                None if ds.id == NO_ID else ds.id,
                ds.alias,
            ),
        )

    @_sqlite
    def delete_datastream(self, template_id: str, pin: str) -> bool:
        return self._exec("DELETE FROM datastreams WHERE template_id = ? AND pin = ?", (template_id, pin)).rowcount > 0

    @_sqlite
    def delete_template(self, template_id: str) -> bool:
        return self._exec("DELETE FROM templates WHERE id = ?", (template_id,)).rowcount > 0

    @_sqlite
    def list_templates(self) -> list[Template]:
        templates = {
            tid: Template(tid, name, created)
            for tid, name, created in self._query("SELECT id, name, created_at FROM templates ORDER BY id")
        }
        for row in self._query(f"SELECT template_id, {_DS_COLS} FROM datastreams ORDER BY template_id, pin"):
            tpl = templates.get(row[0])
            if tpl is not None:
                ds = _datastream(row[1:])
                tpl.datastreams[ds.pin] = ds
        for row in self._query(f"SELECT template_id, {_MF_COLS} FROM metafields ORDER BY template_id, id"):
            tpl = templates.get(row[0])
            if tpl is not None:
                mf = _metafield(row[1:])
                tpl.metafields[mf.id] = mf
        for tpl in templates.values():
            assign_datastream_ids(tpl.datastreams.values())  # rows a direct store call left without one
        return list(templates.values())

    @_sqlite
    def get_template(self, template_id: str) -> Template | None:
        rows = self._query("SELECT id, name, created_at FROM templates WHERE id = ?", (template_id,))
        if not rows:
            return None
        tpl = Template(*rows[0])
        for row in self._query(
            f"SELECT {_DS_COLS} FROM datastreams WHERE template_id = ? ORDER BY pin",
            (template_id,),
        ):
            ds = _datastream(row)
            tpl.datastreams[ds.pin] = ds
        assign_datastream_ids(tpl.datastreams.values())
        for row in self._query(f"SELECT {_MF_COLS} FROM metafields WHERE template_id = ? ORDER BY id", (template_id,)):
            mf = _metafield(row)
            tpl.metafields[mf.id] = mf
        return tpl

    @_sqlite
    def create_device(self, template_id: str, name: str, token: str | None = None) -> DeviceRecord:
        token = token or new_token()
        created = now_ms()
        cur = self._exec(
            "INSERT INTO devices (token, name, template_id, created_at) VALUES (?, ?, ?, ?)",
            (token, name, template_id, created),
        )
        return DeviceRecord(cur.lastrowid, token, name, template_id, created)  # type: ignore[arg-type]

    @_sqlite
    def import_devices(self, rows: list[tuple[str, str, str]]) -> list[DeviceRecord]:
        """Create many (template_id, name, token) devices in one transaction: all or none."""
        created = now_ms()
        out = []
        with transaction(self.db):
            for template_id, name, token in rows:
                cur = self.db.execute(
                    "INSERT INTO devices (token, name, template_id, created_at) VALUES (?, ?, ?, ?)",
                    (token, name, template_id, created),
                )
                out.append(DeviceRecord(cur.lastrowid, token, name, template_id, created))  # type: ignore[arg-type]
        return out

    _DEVICE_COLS = "id, token, name, template_id, created_at, last_seen, info, timezone"

    @_sqlite
    def list_devices(self, template_id: str | None = None) -> list[DeviceRecord]:
        if template_id is None:
            rows = self._query(f"SELECT {self._DEVICE_COLS} FROM devices ORDER BY id")
        else:
            rows = self._query(
                f"SELECT {self._DEVICE_COLS} FROM devices WHERE template_id = ? ORDER BY id", (template_id,)
            )
        return [self._fresh(_device(r)) for r in rows]

    @_sqlite
    def get_device(self, device_id: int) -> DeviceRecord | None:
        rows = self._query(f"SELECT {self._DEVICE_COLS} FROM devices WHERE id = ?", (device_id,))
        return self._fresh(_device(rows[0])) if rows else None

    @_sqlite
    def get_device_by_token(self, token: str) -> DeviceRecord | None:
        rows = self._query(f"SELECT {self._DEVICE_COLS} FROM devices WHERE token = ?", (token,))
        return self._fresh(_device(rows[0])) if rows else None

    def _fresh(self, rec: DeviceRecord) -> DeviceRecord:
        """``rec`` with its pending last-seen time, info and time zone (read-your-writes)."""
        seen = self._pending.devices.get(rec.id)
        if seen is not None:
            rec.last_seen = seen[0]
            if seen[1] is not None:
                rec.info = json.loads(seen[1])
        tz = self._pending.timezones.get(rec.id, _MISSING)
        if tz is not _MISSING:
            rec.timezone = tz
        return rec

    @_sqlite
    def delete_device(self, device_id: int) -> bool:
        """Remove the device and every row of it; returns whether it existed.

        The pending batch is written first, on this (the writer) thread, so no row pending for the
        device can land after the delete; then the device's rows in every table go in one
        transaction. Rows put for it afterwards (a session not closed yet) are dropped when taken for a
        flush or a recovery file, never written (``_take``; device ids are never reused)."""
        self._flush()  # when it fails, the device's kept rows are dropped by _take below
        with transaction(self.db):
            for table in DEVICE_TABLES:
                self.db.execute(f"DELETE FROM {table} WHERE device_id = ?", (device_id,))
            existed = self.db.execute("DELETE FROM devices WHERE id = ?", (device_id,)).rowcount > 0
        self._deleted.add(device_id)
        return existed

    @_sqlite
    def rows_of_device(self, device_id: int) -> dict[str, int]:
        """Committed rows of the device by table (``devices`` and every table keyed by device)."""
        return {
            table: self._query(f"SELECT COUNT(*) FROM {table} WHERE {key} = ?", (device_id,))[0][0]
            for table, key in (("devices", "id"), *((t, "device_id") for t in DEVICE_TABLES))
        }

    @_sqlite
    def load_values(self, device_id: int) -> dict[str, tuple[bytes, int]]:
        out = {
            pin: (bytes(value), ts)
            for pin, value, ts in self._query("SELECT pin, value, ts FROM pin_values WHERE device_id = ?", (device_id,))
        }
        for (d, pin), v in self._pending.values.copy().items():  # copy(): atomic while the loop adds keys
            if d == device_id:
                out[pin] = v
        return out

    @_sqlite
    def load_properties(self, device_id: int) -> dict[tuple[str, str], bytes]:
        out = {
            (pin, name): bytes(value)
            for pin, name, value in self._query(
                "SELECT pin, name, value FROM properties WHERE device_id = ?", (device_id,)
            )
        }
        for (d, pin, name), (value, _) in self._pending.props.copy().items():
            if d == device_id:
                out[(pin, name)] = value
        return out

    @_sqlite
    def load_meta(self, device_id: int) -> dict[str, str]:
        out = dict(self._query("SELECT name, value FROM device_meta WHERE device_id = ?", (device_id,)))
        for (d, name), value in self._pending.meta.copy().items():
            if d == device_id:
                out[name] = value
        return out

    @_sqlite
    def load_all(self) -> Snapshot:
        """Every template, device record, and per device its values, properties and metadata (pending
        rows included): what the domain loads at start. A few queries over whole tables; rows of
        devices that do not exist are left out. Consistent without a transaction: this thread is the
        only one that writes these tables."""
        templates = self.list_templates()
        devices = self.list_devices()
        values: dict[int, dict[str, tuple[bytes, int]]] = {d.id: {} for d in devices}
        properties: dict[int, dict[tuple[str, str], bytes]] = {d.id: {} for d in devices}
        meta: dict[int, dict[str, str]] = {d.id: {} for d in devices}
        for did, pin, value, ts in self._query("SELECT device_id, pin, value, ts FROM pin_values"):
            if (of := values.get(did)) is not None:
                of[pin] = (bytes(value), ts)
        for did, pin, name, value in self._query("SELECT device_id, pin, name, value FROM properties"):
            if (of := properties.get(did)) is not None:
                of[(pin, name)] = bytes(value)
        for did, name, value in self._query("SELECT device_id, name, value FROM device_meta"):
            if (of := meta.get(did)) is not None:
                of[name] = value
        pending = self._pending
        for (did, pin), v in pending.values.copy().items():
            if (of := values.get(did)) is not None:
                of[pin] = v
        for (did, pin, name), (value, _) in pending.props.copy().items():
            if (of := properties.get(did)) is not None:
                of[(pin, name)] = value
        for (did, name), value in pending.meta.copy().items():
            if (of := meta.get(did)) is not None:
                of[name] = value
        return Snapshot(templates, devices, values, properties, meta)

    # Read-your-writes. These reads run on the writer thread (or inline with no writer), and only that
    # thread takes the pending batch (``_take`` in ``_flush``): while one runs, a row is either
    # committed or still in ``self._pending`` (a failed flush puts its rows back before returning),
    # never in flight between the two. So a read merges the committed rows with the pending ones,
    # without forcing a flush and without missing or doubling a row. The loop may append to the
    # pending batch meanwhile: those rows are newer, and seen or not like any write racing a read.

    @_sqlite
    def history(
        self, device_id: int, pin: str, since_ms: int = 0, until_ms: int | None = None, limit: int = 100_000
    ) -> list[tuple[int, bytes]]:
        """(ts, value) points of one pin in [since_ms, until_ms], oldest first, at most ``limit``:
        committed rows and pending ones merged (read-your-writes). No row is in flight meanwhile: this
        runs on the writer thread, the only one that takes the pending batch (see above)."""
        until = until_ms if until_ms is not None else 2**62
        rows = [
            (ts, bytes(v))
            for ts, v in self._query(
                "SELECT ts, value FROM history WHERE device_id = ? AND pin = ? AND ts >= ? AND ts <= ?"
                " ORDER BY ts LIMIT ?",
                (device_id, pin, since_ms, until, limit),
            )
        ]
        pending = [
            (ts, v) for d, p, ts, v in self._pending.history if d == device_id and p == pin and since_ms <= ts <= until
        ]
        if pending:  # the first ``limit`` committed rows suffice: any later one has ``limit`` before it
            rows += pending
            rows.sort(key=itemgetter(0))  # stable: a committed row before a pending one of the same ts
            del rows[limit:]
        return rows

    @_sqlite
    def events(self, device_id: int, limit: int = 1000) -> list[dict]:
        """The device's newest ``limit`` events, newest first, pending logs and clears included
        (read-your-writes; on the writer thread, so no row is in flight, see above). An event not yet
        written has ``"id": None``."""
        return self.timeline(device_id, limit=limit)[0]

    @_sqlite
    def timeline(
        self,
        device_id: int,
        since_ms: int = 0,
        until_ms: int | None = None,
        levels: Collection[str] = (),
        codes: Collection[str] = (),
        limit: int = 100,
        before: tuple[int, int] | None = None,
    ) -> tuple[list[dict], tuple[int, int] | None]:
        """One page of the device's events, newest first (by time, then id): in [since_ms, until_ms],
        of the given levels and codes (empty: any), older than the cursor ``before`` (ts, id). Returns
        the rows and the cursor of the next page (None at the end).

        Committed rows and pending ones merged (read-your-writes, on the writer thread: no row is in
        flight). A pending event has ``"id": None``; for ordering and cursors it counts with the id
        the flush will give it (the events table's sequence plus its place among the pending events),
        so a page boundary stays put across a flush. Pending clears resolve what the flush will
        resolve, filters or not."""
        until = until_ms if until_ms is not None else 2**62
        where = "device_id = ? AND ts >= ? AND ts <= ?"
        args: list[Any] = [device_id, since_ms, until]
        if levels:
            where += f" AND level IN ({', '.join('?' * len(levels))})"
            args += list(levels)
        if codes:
            where += f" AND code IN ({', '.join('?' * len(codes))})"
            args += list(codes)
        if before is not None:
            where += " AND (ts < ? OR (ts = ? AND id < ?))"
            args += [before[0], before[0], before[1]]
        rows = self._query(
            "SELECT id, code, description, ts, resolved_at, level FROM events WHERE "
            + where
            + " ORDER BY ts DESC, id DESC LIMIT ?",
            (*args, limit + 1),
        )
        out = [
            ({"id": i, "code": c, "description": d, "ts": ts, "resolved_at": r, "level": lv}, i)
            for i, c, d, ts, r, lv in rows
        ]
        pending = self._pending.events
        if any(ev[1] == device_id for ev in pending):
            out += self._pending_page(device_id, since_ms, until, set(levels), set(codes), before, out)
            out.sort(key=lambda row: (row[0]["ts"], row[1]), reverse=True)
        more = len(out) > limit
        del out[limit:]
        cursor = (out[-1][0]["ts"], out[-1][1]) if more and out else None
        return [row for row, _ in out], cursor

    def _pending_page(
        self,
        device_id: int,
        since_ms: int,
        until: int,
        levels: set[str],
        codes: set[str],
        before: tuple[int, int] | None,
        committed: list[tuple[dict, int]],
    ) -> list[tuple[dict, int]]:
        """The pending events of the page (with the id each will get), and the pending clears applied
        to them and to ``committed``."""
        seq = self._query("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
        next_id = (seq[0][0] if seq else 0) + 1
        ops: list[tuple] = []  # this device's logs (with their future id) and clears, in order
        for ev in self._pending.events:
            if ev[0] == "log":
                if ev[1] == device_id:
                    ops.append((next_id, ev))
                next_id += 1
            elif ev[1] == device_id:
                ops.append((None, ev))
        resolved = self._pending_clears(device_id, ops)
        out = []
        for vid, ev in ops:
            if vid is None:
                continue
            _, _, code, description, ts, *rest = ev
            level = rest[0] if rest else "info"
            if not since_ms <= ts <= until or (levels and level not in levels) or (codes and code not in codes):
                continue
            if before is not None and (ts, vid) >= before:
                continue
            row = {"id": None, "code": code, "description": description, "ts": ts, "resolved_at": None}
            row["level"] = level
            out.append((row, vid))
        for row, vid in (*committed, *out):
            if vid in resolved:
                row["resolved_at"] = resolved[vid]
        return out

    def _pending_clears(self, device_id: int, ops: list[tuple]) -> dict[int, int]:
        """id -> resolved_at for what the pending clears will resolve (``batch._events``: the newest
        unresolved event of the code, or all of them)."""
        cleared = {ev[2] for vid, ev in ops if vid is None}
        if not cleared:
            return {}
        open_ids: dict[str, list[int]] = {
            code: [
                i
                for (i,) in self._query(
                    "SELECT id FROM events WHERE device_id = ? AND code = ? AND resolved_at IS NULL ORDER BY id",
                    (device_id, code),
                )
            ]
            for code in cleared
        }
        resolved: dict[int, int] = {}
        for vid, ev in ops:
            code = ev[2]
            if code not in cleared:
                continue
            if vid is not None:
                open_ids[code].append(vid)
                continue
            _, _, _, resolve_all, ts = ev
            ids = open_ids[code]
            if resolve_all:
                resolved.update((i, ts) for i in ids)
                ids.clear()
            elif ids:
                resolved[ids.pop()] = ts
        return resolved


_DS_COLS = "pin, name, type, min, max, default_value, enum_values, history, sync, ds_id, alias"


def _datastream(row: tuple) -> Datastream:
    """A row of ``_DS_COLS``; a NULL id (a row of a direct store call, or before the migration) is
    ``NO_ID``, which the caller fills with ``assign_datastream_ids``."""
    pin, name, typ, mn, mx, default, enum_values, history, sync, ds_id, alias = row
    return Datastream(
        pin,
        name,
        typ,
        mn,
        mx,
        default,
        tuple(json.loads(enum_values)) if enum_values else (),
        bool(history),
        bool(sync),
        NO_ID if ds_id is None else ds_id,
        alias or "",
    )


_MF_COLS = "id, name, type, default_value, options, min, max"


def _metafield(row: tuple) -> MetaField:
    mid, name, typ, default, options, mn, mx = row
    return MetaField(mid, name, typ, default, tuple(json.loads(options)) if options else (), mn, mx)


def _device(row: tuple) -> DeviceRecord:
    did, token, name, tpl, created, seen, info, tz = row
    return DeviceRecord(did, token, name, tpl, created, seen, json.loads(info) if info else None, tz)


def _reason(exc: BaseException) -> str:
    """One line for an operator: the OS or SQLite error, without a traceback."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


__all__ = ["CloseReport", "LoopThreadError", "Snapshot", "SqliteStore", "StoreClosed", "StoreUnavailable", "new_token"]
