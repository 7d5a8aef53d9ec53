"""Retention measured: ``python -m benchmarks.retention --rows 1000000 [--batch 5000]``.

Deletes that many old history rows with ``Retention.run_once`` while another thread keeps the
write-behind writer committing, and prints rows/s, the longest single DELETE transaction (the time the
writer may wait for the lock) and the writer's flush times before and during the pass.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from blynk_server.model import now_ms
from blynk_server.store import SqliteStore
from blynk_server.store.retention import DAY_MS, Retention

NOW = 1_800_000_000_000


def measure(rows: int, batch_rows: int) -> None:
    """Delete ``rows`` old history rows (100 devices x 10 pins) with ``Retention.run_once`` while another
    thread keeps the write-behind writer committing 1,000-row batches; print rows/s, the longest single
    DELETE transaction, and how long the writer's flushes took before and during the pass."""
    with tempfile.TemporaryDirectory() as tmp:
        s = SqliteStore(Path(tmp) / "data")
        s.create_template("TMPLret", "Retention")
        ids = [s.create_device("TMPLret", f"d{i}").id for i in range(100)]
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
