"""Retention (issue 10, finding 6): history and events older than their limit are deleted by a
background thread in small transactions, while the write-behind writer keeps committing.

Run as a script to measure it (1,000,000 old history rows deleted while
a writer is busy):  python -m tests.reliability.test_state_retention --rows 1000000
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import threading
import time
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


def measure(rows: int, batch_rows: int) -> None:
    """Delete ``rows`` old history rows (100 devices x 10 pins) with ``Retention.run_once`` while another
    thread keeps the write-behind writer committing 1,000-row batches; print rows/s, the longest single
    DELETE transaction, and how long the writer's flushes took before and during the pass."""
    with tempfile.TemporaryDirectory() as tmp:
        s, ids = make_store(Path(tmp) / "data", devices=100)
        per_pin = rows // (len(ids) * 10)
        t0 = time.perf_counter()
        rows_old = [
            (d, f"v{p}", NOW - 400 * DAY_MS + i, b"21.5") for d in ids for p in range(10) for i in range(per_pin)
        ]
        s.db.execute("BEGIN")
        s.db.executemany("INSERT INTO history (device_id, pin, ts, value) VALUES (?, ?, ?, ?)", rows_old)
        s.db.execute("COMMIT")
        del rows_old
        print(f"inserted {per_pin * 1000:,} old rows in {time.perf_counter() - t0:.1f} s")
        s.flush_interval = 0.05
        s.start_writer()
        stop = threading.Event()
        phase = ["before"]
        flushes: dict[str, list[float]] = {"before": [], "during": []}

        def writer() -> None:
            while not stop.is_set():
                for _ in range(1000):
                    s.put_history(ids[0], "v99", now_ms(), b"1")
                f0 = time.perf_counter()
                s.flush_now()
                flushes[phase[0]].append(time.perf_counter() - f0)

        t = threading.Thread(target=writer)
        t.start()
        time.sleep(2)  # a baseline of the writer alone
        phase[0] = "during"
        retention = Retention(s.path, history_days=365, events_days=0, batch_rows=batch_rows)
        t0 = time.perf_counter()
        deleted, _ = retention.run_once(NOW)
        elapsed = time.perf_counter() - t0
        stop.set()
        t.join()
        s.close()
        for name, xs in flushes.items():
            xs.sort()
            print(
                f"writer flushes {name}: n={len(xs)} p50={xs[len(xs) // 2] * 1000:.1f} ms"
                f" p99={xs[int(len(xs) * 0.99)] * 1000:.1f} ms max={xs[-1] * 1000:.1f} ms"
            )
        print(
            f"deleted {deleted:,} rows in {elapsed:.2f} s = {deleted / elapsed:,.0f} rows/s;"
            f" batch {batch_rows}; longest transaction {retention.stats.longest_transaction_seconds * 1000:.1f} ms"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=measure.__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()
    measure(args.rows, args.batch)
