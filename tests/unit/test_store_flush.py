"""The write-behind store never stops: bad rows are dropped alone, failed flushes keep their rows,
and a stop that cannot write saves them to a recovery file the next start replays."""

from __future__ import annotations

import os
import sqlite3
import stat
from importlib import resources

import pytest

from blynk_server.store import recovery
from blynk_server.store.sqlite import DB_NAME, SqliteStore, StoreUnavailable


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "data")
    tpl = s.create_template("TMPLunit", "Unit")
    devices = [s.create_device(tpl.id, f"d{i}") for i in range(3)]
    yield s, [d.id for d in devices]
    s.close()  # a second close (after the test's own) does nothing


def _rows(s: SqliteStore, sql: str, args: tuple = ()) -> list[tuple]:
    """On the writer thread when one runs (its connection is that thread's), inline otherwise."""
    return s.submit(lambda: s.db.execute(sql, args).fetchall()).result()


def test_a_row_sqlite_cannot_hold_is_dropped_alone(store):
    s, (a, b, c) = store
    s.put_row(a, "v1", (b"1", 1000))
    s.put_history(a, "v1", 2**63, b"1")  # over 64 bits: OverflowError when bound
    s.put_history(b, "v1", 1000, b"2")
    s.put_event(c, "\udcff", None, 1000)  # a lone surrogate cannot be encoded
    s.put_event(c, "ok", None, 1001)
    s.put_meta(b, "Name", "x")
    s.flush_now()
    assert s.stats.rows_rejected == 2
    assert s.stats.errors == 0
    assert _rows(s, "SELECT device_id, ts FROM history ORDER BY device_id") == [(b, 1000)]
    assert _rows(s, "SELECT code FROM events") == [("ok",)]
    assert _rows(s, "SELECT device_id, pin, value FROM pin_values") == [(a, "v1", b"1")]
    assert _rows(s, "SELECT device_id, name, value FROM device_meta") == [(b, "Name", "x")]
    s.put_row(b, "v2", (b"later", 2000))  # the store keeps working after the bad rows
    s.flush_now()
    assert _rows(s, "SELECT value FROM pin_values WHERE device_id = ? AND pin = 'v2'", (b,)) == [(b"later",)]


def test_the_writer_thread_survives_bad_rows(store):
    s, (a, _, _) = store
    s.start_writer()
    s.put_history(a, "v1", -(2**70), b"x")
    s.flush_now()
    s.put_row(a, "v1", (b"after", 5))
    s.flush_now()
    assert s.stats.rows_rejected == 1
    assert _rows(s, "SELECT value FROM pin_values") == [(b"after",)]
    assert s.close().ok


def test_a_failing_flush_keeps_its_rows_for_the_next_one(store):
    s, (a, b, _) = store
    s.put_row(a, "v1", (b"old", 1))
    s.put_history(a, "v1", 1, b"old")
    s.db.execute("PRAGMA query_only = ON")  # every write now fails as on a read-only file
    s.flush_now()
    assert s.stats.errors == 1
    assert s.pending() == 2
    s.put_row(a, "v1", (b"new", 2))  # newer than the kept row: it wins
    s.db.execute("PRAGMA query_only = OFF")
    s.flush_now()
    assert s.pending() == 0
    assert _rows(s, "SELECT value FROM pin_values") == [(b"new",)]
    assert _rows(s, "SELECT value FROM history") == [(b"old",)]


def test_rows_kept_while_flushes_fail_are_bounded(store):
    s, (a, _, _) = store
    s.max_pending_rows = 10
    s.db.execute("PRAGMA query_only = ON")
    for i in range(25):
        s.put_history(a, "v1", i, b"x")
    s.flush_now()
    assert s.pending() == 10
    assert s.stats.rows_dropped == 15
    s.db.execute("PRAGMA query_only = OFF")
    s.flush_now()
    assert [ts for (ts,) in _rows(s, "SELECT ts FROM history ORDER BY ts")] == list(range(15, 25))


def test_history_is_written_sorted_with_arrival_order_kept_within_one_time(store):
    """The flush sorts history by (device, pin, time) before it reaches the index (batch._history); every
    row is stored, and two points of one pin at the same millisecond stay in the order they came."""
    s, (a, b, c) = store
    arrivals = []
    for ts in (30, 10, 20, 10):  # out of order, and 10 twice
        for dev in (c, a, b):
            arrivals.append((dev, ts, f"{dev}@{ts}#{len(arrivals)}".encode()))
    for dev, ts, value in arrivals:
        s.put_history(dev, "v1", ts, value)
    s.flush_now()
    assert s.stats.rows_rejected == 0 and s.pending() == 0
    for dev in (a, b, c):
        expected = sorted([(ts, v) for d, ts, v in arrivals if d == dev], key=lambda p: p[0])  # stable
        assert s.history(dev, "v1") == expected
    stored = _rows(s, "SELECT device_id, ts FROM history ORDER BY rowid")
    assert stored == sorted(stored)  # inserted in index order
    assert _rows(s, "SELECT count(*) FROM temp.history_in") == [(0,)]  # the sorting table is left empty


def test_a_history_row_refused_by_a_constraint_is_dropped_alone(store):
    """A NOT NULL value fails the sorted INSERT … SELECT as a whole: the rows are written again in halves
    until the bad one is alone."""
    s, (a, b, _) = store
    for i in range(8):
        s.put_history(a if i % 2 else b, "v1", i, None if i == 5 else b"%d" % i)
    s.flush_now()
    assert s.stats.rows_rejected == 1
    assert [ts for (ts,) in _rows(s, "SELECT ts FROM history ORDER BY ts")] == [0, 1, 2, 3, 4, 6, 7]


def test_pin_values_keep_the_newest_value_of_each_pin_as_a_blob(store):
    """The flush replaces a stored value; bytes are bound as they are (``batch``'s identity adapter)."""
    s, (a, b, _) = store
    s.put_row(a, "v1", (b"old", 1))
    s.put_row(b, "v1", (b"\x00\xff", 1))
    s.flush_now()
    s.put_row(a, "v1", (b"", 2))
    s.put_row(a, "v2", (b"x", 2))
    s.flush_now()
    assert _rows(s, "SELECT device_id, pin, typeof(value), value, ts FROM pin_values ORDER BY device_id, pin") == [
        (a, "v1", "blob", b"", 2),
        (a, "v2", "blob", b"x", 2),
        (b, "v1", "blob", b"\x00\xff", 1),
    ]


def test_a_rowid_pin_values_table_of_an_older_data_dir_becomes_without_rowid(tmp_path):
    schema = resources.files("blynk_server.store").joinpath("schema.sql").read_text()
    older = schema.replace(") WITHOUT ROWID;", ");")  # pin_values as versions before it was made
    assert older != schema
    (tmp_path / "data").mkdir()
    conn = sqlite3.connect(tmp_path / "data" / DB_NAME)
    conn.executescript(older)
    conn.executemany(
        "INSERT INTO pin_values (device_id, pin, value, ts) VALUES (?, ?, ?, ?)",
        [(1, "v1", b"\x00\xffold", 5), (1, "v2", b"2", 6), (2, "v1", b"", 7)],
    )
    conn.commit()
    conn.close()

    s = SqliteStore(tmp_path / "data")
    tables = dict(_rows(s, "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name LIKE 'pin_values%'"))
    assert list(tables) == ["pin_values"] and tables["pin_values"].endswith("WITHOUT ROWID")
    assert s.load_values(1) == {"v1": (b"\x00\xffold", 5), "v2": (b"2", 6)}
    assert s.load_values(2) == {"v1": (b"", 7)}
    s.put_row(1, "v1", (b"new", 8))
    s.flush_now()
    assert s.close().ok
    s = SqliteStore(tmp_path / "data")  # a second start finds the table as it is and leaves it
    assert s.load_values(1) == {"v1": (b"new", 8), "v2": (b"2", 6)}
    assert s.close().ok


def test_a_stop_that_cannot_write_saves_a_recovery_file_replayed_next_start(tmp_path):
    s = SqliteStore(tmp_path / "data")
    tpl = s.create_template("TMPLunit", "Unit")
    dev = s.create_device(tpl.id, "d").id
    s.put_row(dev, "v1", (b"\x00\xffbinary", 7))
    s.put_history(dev, "v1", 7, b"\x00\xffbinary")
    s.put_event(dev, "overheat", "too hot", 8)
    s.put_event_clear(dev, "overheat", True, 9)
    s.put_property(dev, "v1", "label", b"Temp", 10)
    s.put_meta(dev, "Location", "garden")
    s.put_device_seen(dev, 11, '{"fw": "1.0"}')
    s.put_device_timezone(dev, "Europe/Kyiv")
    s.db.execute("PRAGMA query_only = ON")
    report = s.close()
    assert not report.ok
    assert report.unwritten == 8 and report.lost == 0
    assert report.recovery_file is not None and report.recovery_file.exists()
    assert "readonly" in report.error
    assert stat.S_IMODE(report.recovery_file.stat().st_mode) == 0o600

    s2 = SqliteStore(tmp_path / "data")
    rows, files = s2.replay_recovery()
    assert (rows, files) == (8, [report.recovery_file])
    assert not report.recovery_file.exists()
    assert s2.load_values(dev) == {"v1": (b"\x00\xffbinary", 7)}
    assert s2.history(dev, "v1") == [(7, b"\x00\xffbinary")]
    assert [(e["code"], e["resolved_at"]) for e in s2.events(dev)] == [("overheat", 9)]
    assert s2.load_properties(dev) == {("v1", "label"): b"Temp"}
    assert s2.load_meta(dev) == {"Location": "garden"}
    assert s2.get_device(dev).last_seen == 11
    assert s2.get_device(dev).timezone == "Europe/Kyiv"
    assert s2.close().ok


def test_a_stop_that_cannot_save_either_reports_the_rows_lost(tmp_path, monkeypatch):
    s = SqliteStore(tmp_path / "data")
    s.put_history(1, "v1", 1, b"x")
    s.db.execute("PRAGMA query_only = ON")

    def no_space(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(recovery, "save", no_space)
    report = s.close()
    assert (report.unwritten, report.lost, report.recovery_file) == (1, 1, None)


def test_a_corrupt_recovery_file_stops_the_start_with_its_name(tmp_path):
    s = SqliteStore(tmp_path / "data")
    bad = tmp_path / "data" / "recovery-1.jsonl"
    bad.write_text('["v", 1, "v1", "not base64!", 1]\n')
    with pytest.raises(StoreUnavailable, match="recovery-1.jsonl:1"):
        s.replay_recovery()
    assert bad.exists()
    s.close()


def test_a_data_dir_that_is_a_file_is_one_clear_error(tmp_path):
    path = tmp_path / "not-a-dir"
    path.write_text("")
    with pytest.raises(StoreUnavailable, match="cannot use the data dir"):
        SqliteStore(path)


def test_data_dir_and_database_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        s = SqliteStore(tmp_path / "data")
        s.put_row(1, "v1", (b"x", 1))
        s.flush_now()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    for f in (tmp_path / "data").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    s.close()
    # An existing data dir made public is made private again.
    os.chmod(tmp_path / "data", 0o755)
    os.chmod(tmp_path / "data" / "blynk.sqlite3", 0o644)
    SqliteStore(tmp_path / "data").close()
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "data" / "blynk.sqlite3").stat().st_mode) == 0o600
