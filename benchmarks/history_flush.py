"""The write-behind flush's history rows, sorted or in arrival order:
``python -m benchmarks.history_flush [--devices 10000] [--existing 600000] [--flushes 20]``.

Each flush holds two points of every device (the arrival order shuffled, as telemetry from many
devices arrives) and goes into a history table already holding ``--existing`` rows, in one
transaction, on the store's own schema and connection settings. It prints the median and the range of
the thread CPU time per flush for the rows as ``batch._history`` writes them (sorted by SQLite) and as
they were written before (multi-row INSERTs in arrival order), in alternating flushes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from blynk_server.store import SqliteStore
from blynk_server.store.batch import WRITERS, insert_rows, transaction

T0 = 1_800_000_000_000


def _arrival_order(conn, rows: list[tuple]) -> None:
    insert_rows(conn, "INSERT INTO history (device_id, pin, ts, value)", 4, rows)


def measure(devices: int, existing: int, flushes: int) -> None:
    rng = random.Random(12)
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "data")
        conn = store.db
        with transaction(conn):
            insert_rows(
                conn,
                "INSERT INTO history (device_id, pin, ts, value)",
                4,
                [(rng.randrange(devices), "v1", T0 - i, b"1") for i in range(existing)],
            )
        cpu: dict[str, list[float]] = {"sorted": [], "arrival": []}
        ts = T0
        for i in range(flushes):
            ts += 1000
            rows = [(d, "v1", ts + k * 500, b"%d" % rng.randrange(1000)) for k in range(2) for d in range(devices)]
            rng.shuffle(rows)
            name, write = ("sorted", WRITERS["history"]) if i % 2 else ("arrival", _arrival_order)
            start = time.thread_time()
            with transaction(conn):
                write(conn, rows)
            cpu[name].append(time.thread_time() - start)
        store.close()
    for name, times in cpu.items():
        ms = [t * 1000 for t in times]
        print(
            f"{name}: {len(rows)} rows per flush into {existing:,}+: median {statistics.median(ms):.1f} ms CPU"
            f" (min {min(ms):.1f}, max {max(ms):.1f}, {len(ms)} flushes)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--existing", type=int, default=600_000)
    p.add_argument("--flushes", type=int, default=20)
    a = p.parse_args()
    measure(a.devices, a.existing, a.flushes)


if __name__ == "__main__":
    main()
