"""Retention: history points and events older than their limit are deleted by a background thread.

The thread has its own connection and deletes in short transactions of at most ``batch_rows`` rows,
found through the indexes (``history_by_pin``, ``events_by_device``), so the write-behind thread waits
for the database lock at most one short transaction, and the event loop never waits at all. Finding
the old rows is reads only (WAL: they block no one); only the DELETEs take the write lock.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from blynk_server.model import now_ms
from blynk_server.store.sqlite import connect

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


class _Table:
    """How to walk one table's old rows group by group through its index: the SQL, built once."""

    __slots__ = ("name", "start", "next_group_sql", "old_rows_sql", "delete_sql")

    def __init__(self, name: str, key: str, group: tuple[str, ...], start: tuple) -> None:
        cols = ", ".join(group)
        self.name = name
        self.start = start  # a group key below every real one
        # The next distinct value of the index's leading columns: one index seek.
        self.next_group_sql = (
            f"SELECT {cols} FROM {name} WHERE ({cols}) > ({', '.join('?' * len(group))}) ORDER BY {cols} LIMIT 1"
        )
        where = " AND ".join(f"{c} = ?" for c in group)
        self.old_rows_sql = f"SELECT {key} FROM {name} WHERE {where} AND ts < ? LIMIT ?"
        # The ts check again: a rowid read a moment ago can only have been reused by a newer row.
        self.delete_sql = f"DELETE FROM {name} WHERE {key} IN (SELECT value FROM json_each(?)) AND ts < ?"


HISTORY = _Table("history", "rowid", ("device_id", "pin"), (-1, ""))
EVENTS = _Table("events", "id", ("device_id",), (-1,))


class RetentionStats:
    """Plain counters read by the metrics collector at scrape time."""

    __slots__ = (
        "runs",
        "history_rows",
        "event_rows",
        "seconds_total",
        "last_seconds",
        "longest_transaction_seconds",
        "errors",
    )

    def __init__(self) -> None:
        self.runs = 0  # completed passes
        self.history_rows = 0  # history rows deleted, in total
        self.event_rows = 0  # event rows deleted, in total
        self.seconds_total = 0.0  # wall time of the passes
        self.last_seconds = 0.0
        self.longest_transaction_seconds = 0.0  # the longest single DELETE transaction seen
        self.errors = 0  # passes that failed (retried at the next interval)


class _Stopped(Exception):
    pass


class Retention:
    """Deletes history older than ``history_days`` and events older than ``events_days`` (0 = keep
    forever) from the database at ``db_path``: first ``first_delay`` s after ``start()``, then every
    ``interval`` s. ``stop()`` interrupts a running pass and returns within about a second."""

    def __init__(
        self,
        db_path: Path,
        history_days: float,
        events_days: float,
        interval: float = 3600.0,
        first_delay: float = 10.0,
        batch_rows: int = 5000,
    ) -> None:
        self.path = Path(db_path)
        self.history_days = history_days
        self.events_days = events_days
        self.interval = max(1.0, interval)
        self.first_delay = first_delay
        self.batch_rows = batch_rows
        self.stats = RetentionStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._conn_lock = threading.Lock()  # interrupt() must not meet a closed connection
        self._passed = threading.Condition()  # notified after each pass, for wait_runs()

    @property
    def enabled(self) -> bool:
        return self.history_days > 0 or self.events_days > 0

    def start(self) -> None:
        """Start the background thread (nothing to do when both limits are 0)."""
        if not self.enabled or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="blynk-retention", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread: the running statement is interrupted, the pass abandoned (what it deleted
        stays deleted; each transaction is whole)."""
        self._stop.set()
        with self._conn_lock:
            if self._conn is not None:
                self._conn.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("retention thread did not stop within %.1f s", timeout)
            self._thread = None

    def wait_runs(self, runs: int, timeout: float) -> bool:
        """Block until ``stats.runs`` reaches ``runs`` (tests, and anything that must see a pass done)."""
        with self._passed:
            return self._passed.wait_for(lambda: self.stats.runs >= runs, timeout)

    def run_once(self, now: int | None = None) -> tuple[int, int]:
        """One pass on the caller's thread with a connection of its own (tests, tools): the
        (history, event) rows deleted."""
        conn = connect(self.path)
        try:
            return self._pass(conn, now_ms() if now is None else now)
        finally:
            conn.close()

    # --- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            conn = connect(self.path)
        except sqlite3.Error:
            self.stats.errors += 1
            log.exception("retention: cannot open %s; no retention this run of the server", self.path)
            return
        with self._conn_lock:
            self._conn = conn
        try:
            wait = self.first_delay
            while not self._stop.wait(wait):
                wait = self.interval
                try:
                    self._pass(conn, now_ms())
                except _Stopped:
                    break
                except sqlite3.Error:
                    if self._stop.is_set():  # interrupted by stop()
                        break
                    self.stats.errors += 1
                    log.exception("retention pass failed; retried in %.0f s", self.interval)
        finally:
            with self._conn_lock:
                self._conn = None
                conn.close()

    def _pass(self, conn: sqlite3.Connection, now: int) -> tuple[int, int]:
        start = time.perf_counter()
        history = self._purge(conn, HISTORY, now - int(self.history_days * DAY_MS)) if self.history_days > 0 else 0
        events = self._purge(conn, EVENTS, now - int(self.events_days * DAY_MS)) if self.events_days > 0 else 0
        elapsed = time.perf_counter() - start
        s = self.stats
        with self._passed:
            s.runs += 1
            s.history_rows += history
            s.event_rows += events
            s.seconds_total += elapsed
            s.last_seconds = elapsed
            self._passed.notify_all()
        if history or events:
            log.info(
                "retention: deleted %d history rows (older than %g days) and %d events (older than %g days)"
                " in %.2f s; longest transaction %.1f ms",
                history,
                self.history_days,
                events,
                self.events_days,
                elapsed,
                s.longest_transaction_seconds * 1000,
            )
        return history, events

    def _purge(self, conn: sqlite3.Connection, table: _Table, cutoff: int) -> int:
        """Delete ``table``'s rows with ts < ``cutoff``, at most ``batch_rows`` per transaction."""
        deleted = 0
        pending: list[int] = []
        key = table.start
        while True:
            if self._stop.is_set():
                raise _Stopped
            row = conn.execute(table.next_group_sql, key).fetchone()
            if row is None:
                break
            key = tuple(row)
            while True:  # this group's old rows, a batch's remainder at a time
                want = self.batch_rows - len(pending)
                pending.extend(r[0] for r in conn.execute(table.old_rows_sql, (*key, cutoff, want)))
                if len(pending) < self.batch_rows:
                    break
                deleted += self._delete(conn, table, pending, cutoff)
                pending = []
                if self._stop.is_set():
                    raise _Stopped
        if pending:
            deleted += self._delete(conn, table, pending, cutoff)
        return deleted

    def _delete(self, conn: sqlite3.Connection, table: _Table, ids: list[int], cutoff: int) -> int:
        """One transaction; its time is counted from when it holds the write lock to its commit."""
        param = _json_ints(ids)
        conn.execute("BEGIN IMMEDIATE")  # waits (busy_timeout) while the write-behind thread commits
        t0 = time.perf_counter()
        try:
            count = conn.execute(table.delete_sql, (param, cutoff)).rowcount
        except BaseException:
            if conn.in_transaction:  # an interrupted DELETE has rolled back already
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        elapsed = time.perf_counter() - t0
        if elapsed > self.stats.longest_transaction_seconds:
            self.stats.longest_transaction_seconds = elapsed
        return count


def _json_ints(ids: list[int]) -> str:
    return "[" + ",".join(map(str, ids)) + "]"
