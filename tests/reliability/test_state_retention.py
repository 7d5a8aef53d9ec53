"""Retention (issue 10, finding 6): history and events older than their limit are deleted by a
background thread in small transactions, while the write-behind writer keeps committing.
(The measurement of a large pass is ``python -m benchmarks.retention``.)
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from blynk_server.model import now_ms
from blynk_server.store import SqliteStore
from blynk_server.store.retention import DAY_MS, Retention

NOW = 1_800_000_000_000


def make_store(data_dir: Path, devices: int = 3) -> tuple[SqliteStore, list[int]]:
    store = SqliteStore(data_dir)
    store.create_template("TMPLret", "Retention")
    return store, [store.create_device("TMPLret", f"d{i}").id for i in range(devices)]


def fill(store: SqliteStore, ids: list[int], pins: int, per_pin: int, ts0: int, step: int = 1) -> None:
    """``per_pin`` history points on each of ``pins`` pins of each device, and as many events, from ts0."""
    rows = [(d, f"v{p}", ts0 + i * step, b"1") for d in ids for p in range(pins) for i in range(per_pin)]
    events = [(d, f"c{i % 3}", None, ts0 + i * step) for d in ids for i in range(per_pin)]
    store.db.execute("BEGIN")
    store.db.executemany("INSERT INTO history (device_id, pin, ts, value) VALUES (?, ?, ?, ?)", rows)
    store.db.executemany("INSERT INTO events (device_id, code, description, ts) VALUES (?, ?, ?, ?)", events)
    store.db.execute("COMMIT")


def count(path: Path, sql: str, args: tuple = ()) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def store(tmp_path):
    s, ids = make_store(tmp_path / "data")
    yield s, ids
    s.close()


def test_old_rows_deleted_recent_kept_in_small_batches(store):
    s, ids = store
    old = NOW - 40 * DAY_MS
    fill(s, ids, pins=4, per_pin=50, ts0=old)  # 600 old history rows, 150 old events
    fill(s, ids, pins=4, per_pin=10, ts0=NOW - DAY_MS)  # recent: kept
    retention = Retention(s.path, history_days=30, events_days=7, batch_rows=7)  # batches span groups
    assert retention.run_once(NOW) == (600, 150)
    assert count(s.path, "SELECT COUNT(*) FROM history") == 120
    assert count(s.path, "SELECT COUNT(*) FROM history WHERE ts < ?", (NOW - 30 * DAY_MS,)) == 0
    assert count(s.path, "SELECT COUNT(*) FROM events") == 30
    assert retention.stats.history_rows == 600 and retention.stats.event_rows == 150
    assert retention.run_once(NOW) == (0, 0)  # idempotent
    assert retention.stats.runs == 2


def test_each_limit_on_its_own_and_zero_keeps_forever(store):
    s, ids = store
    fill(s, ids, pins=1, per_pin=5, ts0=NOW - 100 * DAY_MS)
    assert Retention(s.path, history_days=0, events_days=0).run_once(NOW) == (0, 0)
    assert Retention(s.path, history_days=0, events_days=50).run_once(NOW) == (0, 15)
    assert Retention(s.path, history_days=50, events_days=0).run_once(NOW) == (15, 0)
    idle = Retention(s.path, history_days=0, events_days=0)
    idle.start()  # both 0: no thread at all
    assert idle._thread is None
    idle.stop()


def test_background_thread_runs_while_the_writer_commits(store):
    s, ids = store
    s.start_writer()
    fill(s, ids, pins=2, per_pin=3000, ts0=now_ms() - 60 * DAY_MS)  # 18,000 old rows
    retention = Retention(s.path, history_days=30, events_days=30, interval=3600, first_delay=0, batch_rows=500)
    stop = threading.Event()
    written = [0]

    def writer() -> None:  # the write-behind thread keeps getting recent rows to commit
        while not stop.is_set():
            for _ in range(200):
                s.put_history(ids[0], "v9", now_ms(), b"2")
            written[0] += 200
            s.flush_now()

    t = threading.Thread(target=writer)
    t.start()
    try:
        retention.start()
        assert retention.wait_runs(1, timeout=60)
    finally:
        retention.stop()
        stop.set()
        t.join(30)
    s.flush_now()
    assert retention.stats.history_rows == 18_000
    assert retention.stats.event_rows == 9_000
    assert retention.stats.errors == 0
    assert count(s.path, "SELECT COUNT(*) FROM history WHERE pin = 'v9'") == written[0] > 0
    assert count(s.path, "SELECT COUNT(*) FROM history WHERE pin != 'v9'") == 0
    assert retention.stats.longest_transaction_seconds > 0


def test_stop_interrupts_a_running_pass_and_never_hangs(store):
    s, ids = store
    fill(s, ids, pins=10, per_pin=5000, ts0=NOW - 60 * DAY_MS)  # 150,000 old rows
    retention = Retention(s.path, history_days=30, events_days=0, first_delay=0, batch_rows=100)
    retention.start()
    thread = retention._thread
    retention.stop(timeout=10)
    assert thread is not None and not thread.is_alive()
    assert retention._thread is None
    conn = sqlite3.connect(s.path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    retention.stop()  # twice is fine


# --- measurement ------------------------------------------------------------------------------------
