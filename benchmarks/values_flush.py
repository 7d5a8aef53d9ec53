"""The write-behind flush of pin values (and of history rows), as written now and as on main:
``python -m benchmarks.values_flush [--devices 10000] [--flushes 20] [--variants main,now,...]``.

Each variant has its own store in a temporary data dir (the store's schema and connection settings;
``main``'s pin_values table rebuilt as the rowid table it was). Every store starts with a value of
each of ``--devices`` devices; each flush writes one new value per device (the arrival order shuffled,
as in the 10,000-device load test) with ``batch.write_batch``. The variants take turns flush by flush
(A and B in the same run, the same batches); it prints the process CPU time per flush (min, median).

- ``main``: rowid table, ``INSERT OR REPLACE``, no bytes adapter (the code before issue 12's flush step)
- ``adapter``: rowid table, ``INSERT OR REPLACE``, the identity bytes adapter of ``batch``
- ``upsert``: rowid table, ``INSERT … ON CONFLICT DO UPDATE``, the adapter
- ``now``: WITHOUT ROWID table, ``INSERT OR REPLACE``, the adapter (the code now)
- ``wr-upsert``: WITHOUT ROWID table, ``INSERT … ON CONFLICT DO UPDATE``, the adapter

Instructions instead of CPU time, one variant at a time: ``valgrind --tool=callgrind
--toggle-collect=sys_call_tracing python -m benchmarks.values_flush --variants now --flushes 10``
counts the flushes alone (divide by ``--flushes``).

``--history``: instead, flushes of two history points per device (shuffled, as
``benchmarks/history_flush.py``) into a history table of ``--existing`` rows, ``main`` (no adapter)
against ``now``.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from blynk_server.store import SqliteStore
from blynk_server.store.batch import WRITERS, Batch, _multi_row_sql, insert_rows, transaction, write_batch

T0 = 1_800_000_000_000
ADAPTER_KEY = (bytes, sqlite3.PrepareProtocol)
ADAPTER = sqlite3.adapters[ADAPTER_KEY]
ROWID_TABLE = (
    "CREATE TABLE pin_values (device_id INTEGER NOT NULL, pin TEXT NOT NULL, value BLOB NOT NULL,"
    " ts INTEGER NOT NULL, PRIMARY KEY (device_id, pin))"
)
UPSERT = " ON CONFLICT (device_id, pin) DO UPDATE SET value = excluded.value, ts = excluded.ts"


def _upsert(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    head = "INSERT INTO pin_values (device_id, pin, value, ts)"
    for start in range(0, len(rows), 1000):
        chunk = rows[start : start + 1000]
        conn.execute(_multi_row_sql(head, 4, len(chunk)) + UPSERT, list(itertools.chain.from_iterable(chunk)))


REPLACE = WRITERS["pin_values"]
VARIANTS: dict[str, tuple[bool, Callable, bool]] = {  # name: (rowid table, pin_values writer, adapter)
    "main": (True, REPLACE, False),
    "adapter": (True, REPLACE, True),
    "upsert": (True, _upsert, True),
    "now": (False, REPLACE, True),
    "wr-upsert": (False, _upsert, True),
}


def _flush(store: SqliteStore, batch: Batch, writer: Callable, adapter: bool) -> float:
    """CPU seconds of ``write_batch`` with the given pin_values writer, with or without the adapter."""
    WRITERS["pin_values"] = writer
    if not adapter:
        del sqlite3.adapters[ADAPTER_KEY]
    try:
        start = time.process_time()
        assert write_batch(store.db, batch) == []
        return time.process_time() - start
    finally:
        sqlite3.adapters[ADAPTER_KEY] = ADAPTER
        WRITERS["pin_values"] = REPLACE


def _values(rng: random.Random, devices: int, ts: int) -> Batch:
    ids = list(range(1, devices + 1))
    rng.shuffle(ids)
    batch = Batch()
    for d in ids:
        batch.values[(d, "v1")] = (b"%d" % rng.randrange(10_000), ts + d % 500)
    return batch


def measure_values(names: list[str], devices: int, flushes: int) -> dict[str, list[float]]:
    rng = random.Random(12)
    cpu: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        stores = {}
        for name in names:
            store = stores[name] = SqliteStore(Path(tmp) / name)
            if VARIANTS[name][0]:
                store.db.execute("DROP TABLE pin_values")
                store.db.execute(ROWID_TABLE)
            write_batch(store.db, _values(rng, devices, T0))
        batches = [_values(rng, devices, T0 + (i + 1) * 1000) for i in range(flushes)]

        def flush_all() -> None:
            for i, batch in enumerate(batches):
                for name in names if i % 2 else names[::-1]:
                    _, writer, adapter = VARIANTS[name]
                    cpu[name].append(_flush(stores[name], Batch(values=batch.values.copy()), writer, adapter))

        sys.call_tracing(flush_all, ())  # callgrind --toggle-collect=sys_call_tracing counts only this
        for store in stores.values():
            store.close()
    return cpu


def measure_history(existing: int, devices: int, flushes: int) -> dict[str, list[float]]:
    rng = random.Random(12)
    cpu: dict[str, list[float]] = {"main": [], "now": []}
    with tempfile.TemporaryDirectory() as tmp:
        stores = {name: SqliteStore(Path(tmp) / name) for name in cpu}
        old = [(rng.randrange(devices), "v1", T0 - i, b"1") for i in range(existing)]
        for store in stores.values():
            with transaction(store.db):
                insert_rows(store.db, "INSERT INTO history (device_id, pin, ts, value)", 4, old)
        ts = T0
        for i in range(flushes):
            ts += 1000
            history = [(d, "v1", ts + k * 500, b"%d" % rng.randrange(1000)) for k in range(2) for d in range(devices)]
            rng.shuffle(history)
            for name in ("main", "now") if i % 2 else ("now", "main"):
                cpu[name].append(_flush(stores[name], Batch(history=list(history)), REPLACE, name == "now"))
        for store in stores.values():
            store.close()
    return cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--flushes", type=int, default=20)
    p.add_argument("--variants", default="main,now", help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--history", action="store_true", help="measure flushes of history rows instead")
    p.add_argument("--existing", type=int, default=600_000, help="history rows already stored (--history)")
    a = p.parse_args()
    if a.history:
        cpu = measure_history(a.existing, a.devices, a.flushes)
        what = f"{2 * a.devices:,} history rows into {a.existing:,}+"
    else:
        cpu = measure_values(a.variants.split(","), a.devices, a.flushes)
        what = f"{a.devices:,} pin values into {a.devices:,}"
    for name, times in cpu.items():
        ms = [t * 1000 for t in times]
        print(
            f"{name}: {what}: min {min(ms):.1f} ms, median {statistics.median(ms):.1f} ms CPU per flush"
            f" ({len(ms)} flushes)"
        )


if __name__ == "__main__":
    main()
