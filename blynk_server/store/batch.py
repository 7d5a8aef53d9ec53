"""One write-behind batch and how it reaches SQLite: all of it in one transaction, and when some rows
cannot be stored, only those rows are left out.

A row the database refuses for what it holds (an integer over 64 bits, text that is not UTF-8, a value
of a type SQLite has no column for) must never stop the batch it came in: before this, one GROUP
timestamp above 2^63 raised ``OverflowError`` in the writer thread, which rolled back every device's
writes and died. ``write_batch`` first tries the batch whole (the usual case, one commit); if a row is
refused it rolls back and writes each table's rows again under savepoints, halving a failing run until
the bad rows are alone, and returns those. Errors of the environment (disk full, read-only file,
locked, I/O) are not the rows' fault: they propagate, and the caller keeps the batch for a retry.
"""

from __future__ import annotations

import functools
import itertools
import operator
import sqlite3
from collections.abc import Callable, Set
from dataclasses import dataclass, field
from typing import NamedTuple

# What binding or storing one row can raise because of the row itself.
DATA_ERRORS = (
    OverflowError,  # an int outside SQLite's 64 bits
    ValueError,  # e.g. UnicodeEncodeError of a lone surrogate
    TypeError,
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,  # "Error binding parameter" (Python 3.11)
    sqlite3.DataError,
)

# Binding a ``bytes`` parameter, the sqlite3 module looks for an adapter; with none registered it asks
# its protocol type for ``__adapt__``, which raises and clears an AttributeError, message formatted,
# for every value. A flush of 10,000 pin values into the rowid table of before took 159 M instructions
# without this adapter, 137 M with it (``benchmarks/values_flush.py``).
# An identity adapter for exact ``bytes`` is found in the registry first, and the same object is bound
# as before. sqlite3 adapters are process-wide: this one changes nothing any connection stores.
sqlite3.register_adapter(bytes, bytes.__bytes__)

# ("log", device_id, code, description, ts, level) | ("clear", device_id, code, resolve_all, ts); a log row
# without its level (a recovery file of an older version) is stored as "info".
EventRow = tuple


@dataclass(slots=True)
class Batch:
    """Pending rows by table: values, properties, device rows and meta keep the newest per key;
    history and events keep every row, in order."""

    values: dict[tuple[int, str], tuple[bytes, int]] = field(default_factory=dict)
    props: dict[tuple[int, str, str], tuple[bytes, int]] = field(default_factory=dict)
    history: list[tuple[int, str, int, bytes]] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    devices: dict[int, tuple[int | None, str | None]] = field(default_factory=dict)  # id -> (last_seen, info)
    meta: dict[tuple[int, str], str] = field(default_factory=dict)
    timezones: dict[int, str | None] = field(default_factory=dict)  # device id -> time zone name

    def __len__(self) -> int:
        return (
            len(self.values)
            + len(self.props)
            + len(self.history)
            + len(self.events)
            + len(self.devices)
            + len(self.meta)
            + len(self.timezones)
        )

    def merge_older(self, older: Batch, max_rows: int) -> int:
        """Take back the rows of a failed flush: a newer value for a key wins, older history and events
        go first. Keeps at most ``max_rows`` history and event rows, dropping the oldest; returns how
        many were dropped."""
        for mine, theirs in (
            (self.values, older.values),
            (self.props, older.props),
            (self.devices, older.devices),
            (self.meta, older.meta),
            (self.timezones, older.timezones),
        ):
            for k, v in theirs.items():
                mine.setdefault(k, v)
        self.history[:0] = older.history
        self.events[:0] = older.events
        excess = len(self.history) + len(self.events) - max_rows
        if excess <= 0:
            return 0
        from_history = min(excess, len(self.history))
        del self.history[:from_history]
        del self.events[: excess - from_history]
        return excess

    def drop_devices(self, ids: Set[int]) -> int:
        """Remove every row of the devices ``ids`` (deleted meanwhile); returns how many went."""
        before = len(self)
        self.values = {k: v for k, v in self.values.items() if k[0] not in ids}
        self.props = {k: v for k, v in self.props.items() if k[0] not in ids}
        self.history = [r for r in self.history if r[0] not in ids]
        self.events = [e for e in self.events if e[1] not in ids]
        self.devices = {k: v for k, v in self.devices.items() if k not in ids}
        self.meta = {k: v for k, v in self.meta.items() if k[0] not in ids}
        self.timezones = {k: v for k, v in self.timezones.items() if k not in ids}
        return before - len(self)

    def tables(self) -> list[tuple[str, list[tuple]]]:
        """Each table's rows as flat tuples, in the order they are written. The two big ones are built
        by C loops (key + value tuples joined by ``operator.add``): this runs on the writer thread
        holding the GIL, and a Python loop over 10,000 values kept the event loop waiting."""
        return [
            ("pin_values", list(itertools.starmap(operator.add, self.values.items()))),
            ("properties", list(itertools.starmap(operator.add, self.props.items()))),
            ("history", self.history),
            ("events", self.events),
            ("devices", [(d, seen, info) for d, (seen, info) in self.devices.items()]),
            ("device_meta", [(d, n, v) for (d, n), v in self.meta.items()]),
            ("timezones", [(tz, d) for d, tz in self.timezones.items()]),
        ]


class Rejected(NamedTuple):
    table: str
    row: tuple
    error: BaseException

    @property
    def device_id(self) -> object:
        return self.row[1] if self.table in ("events", "timezones") else self.row[0]


def write_batch(conn: sqlite3.Connection, batch: Batch) -> list[Rejected]:
    """Write ``batch`` in one transaction; return the rows left out for what they hold.

    Raises whatever else goes wrong (``sqlite3.OperationalError`` for a full disk or a read-only
    file): then nothing of the batch was committed."""
    tables = [(name, rows) for name, rows in batch.tables() if rows]
    if not tables:
        return []
    try:
        with transaction(conn):
            for name, rows in tables:
                WRITERS[name](conn, rows)
        return []
    except DATA_ERRORS:
        pass
    rejected: list[Rejected] = []
    with transaction(conn):
        for name, rows in tables:
            _write_isolating(conn, name, rows, rejected)
    return rejected


def _write_isolating(conn: sqlite3.Connection, table: str, rows: list[tuple], rejected: list[Rejected]) -> None:
    conn.execute("SAVEPOINT rows")
    try:
        WRITERS[table](conn, rows)
    except DATA_ERRORS as exc:
        conn.execute("ROLLBACK TO rows")
        conn.execute("RELEASE rows")
        if len(rows) == 1:
            rejected.append(Rejected(table, rows[0], exc))
            return
        mid = len(rows) // 2
        _write_isolating(conn, table, rows[:mid], rejected)
        _write_isolating(conn, table, rows[mid:], rejected)
    else:
        conn.execute("RELEASE rows")


def _values(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    insert_rows(conn, "INSERT OR REPLACE INTO pin_values (device_id, pin, value, ts)", 4, rows)


def _props(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    insert_rows(conn, "INSERT OR REPLACE INTO properties (device_id, pin, name, value, ts)", 5, rows)


def _history(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    """The rows in (device, pin, time) order, arrival order within one time: SQLite sorts them in a
    temporary table, without the GIL. In arrival order, the points of 10,000 devices each landed at a
    random place of the ``history_by_pin`` index; sorted, consecutive rows share pages. 20,000 rows
    into a 600,000-row table: 222 ms of the writer's CPU in arrival order, 136 ms sorted
    (``benchmarks/history_flush.py``; in a much larger table the pages dirtied, one per device, dominate)."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS history_in (device_id INTEGER, pin TEXT, ts INTEGER, value BLOB)")
    conn.execute("DELETE FROM temp.history_in")  # empty unless a statement below failed mid-way
    insert_rows(conn, "INSERT INTO temp.history_in (device_id, pin, ts, value)", 4, rows)
    conn.execute(
        "INSERT INTO history (device_id, pin, ts, value) SELECT device_id, pin, ts, value FROM temp.history_in"
        " ORDER BY device_id, pin, ts, rowid"
    )
    conn.execute("DELETE FROM temp.history_in")


def _events(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    for ev in rows:
        if ev[0] == "log":
            conn.execute(
                "INSERT INTO events (device_id, code, description, ts, level) VALUES (?, ?, ?, ?, ?)",
                ev[1:] if len(ev) == 6 else (*ev[1:], "info"),
            )
        else:
            _, device_id, code, resolve_all, ts = ev
            conn.execute(
                "UPDATE events SET resolved_at = ? WHERE id IN (SELECT id FROM events WHERE"
                " device_id = ? AND code = ? AND resolved_at IS NULL ORDER BY id DESC"
                + ("" if resolve_all else " LIMIT 1")
                + ")",
                (ts, device_id, code),
            )


def _devices(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    for device_id, last_seen, info in rows:
        if info is None:
            conn.execute("UPDATE devices SET last_seen = ? WHERE id = ?", (last_seen, device_id))
        else:
            conn.execute("UPDATE devices SET last_seen = ?, info = ? WHERE id = ?", (last_seen, info, device_id))


def _meta(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    # Only for devices that still exist: a device deleted meanwhile leaves no orphan rows.
    conn.executemany(
        "INSERT OR REPLACE INTO device_meta (device_id, name, value) SELECT ?, ?, ? WHERE EXISTS"
        " (SELECT 1 FROM devices WHERE id = ?)",
        [(d, n, v, d) for d, n, v in rows],
    )


def _timezones(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    conn.executemany("UPDATE devices SET timezone = ? WHERE id = ?", rows)


WRITERS: dict[str, Callable[[sqlite3.Connection, list[tuple]], None]] = {
    "pin_values": _values,
    "properties": _props,
    "history": _history,
    "events": _events,
    "devices": _devices,
    "device_meta": _meta,
    "timezones": _timezones,
}


# SQLite before 3.32 allows 999 parameters per statement, later versions 32,766.
MAX_PARAMETERS = 999 if sqlite3.sqlite_version_info < (3, 32) else 32_766
MAX_ROWS_PER_STATEMENT = 1000  # binding happens under the GIL: keep each statement's share short


def insert_rows(conn: sqlite3.Connection, head: str, width: int, rows: list[tuple]) -> None:
    """``head VALUES (?,..),(?,..)…`` over ``rows`` (tuples of ``width`` values), up to 1,000 rows per
    statement.

    ``executemany`` steps once per row, and each step releases and retakes the GIL, a chance for the
    event loop to wait on this thread: 10,000 pin values a second meant 10,000 hand-offs. Measured
    alone, 10,000 rows cost 45-56 ms of CPU that way and 31 ms in multi-row statements."""
    step = min(MAX_ROWS_PER_STATEMENT, MAX_PARAMETERS // width)
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        conn.execute(_multi_row_sql(head, width, len(chunk)), list(itertools.chain.from_iterable(chunk)))


@functools.lru_cache(maxsize=64)
def _multi_row_sql(head: str, width: int, rows: int) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return f"{head} VALUES {', '.join([one] * rows)}"


class transaction:  # noqa: N801 - used like a function: ``with transaction(conn):``
    """BEGIN IMMEDIATE … COMMIT on an autocommit connection, ROLLBACK on error.

    SQLite rolls a transaction back by itself on some errors (a full disk among them): then there is
    nothing left to roll back, and the original error is the one to raise."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
