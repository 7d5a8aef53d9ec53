"""The store's threads: SQLite only on the writer thread (never on a forbidden one), jobs queued to it in
order, reads that see pending rows, a device delete that leaves no row behind, and the start-up load.

Real SQLite in tmp_path; nothing sleeps: every wait is on a future. The writer's periodic flush is set
an hour apart, so a row is flushed only when a test asks for it."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from blynk_server.model import Datastream
from blynk_server.store.sqlite import DEVICE_TABLES, LoopThreadError, Snapshot, SqliteStore, StoreClosed

WAIT = 30  # seconds: only a bound against a hang, never reached when the store works


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "data", flush_interval=3600)
    s.create_template("TMPLunit", "Unit", [Datastream("v1", "Temp", "double", history=True)])
    ids = [s.create_device("TMPLunit", f"d{i}").id for i in range(2)]
    s.start_writer()
    yield s, ids
    with ThreadPoolExecutor(1) as other:  # the test's thread may be forbidden: close from another one
        other.submit(s.close).result(WAIT)


def on_writer(s: SqliteStore, fn, *args):
    return s.submit(fn, *args).result(WAIT)


def zero_rows() -> dict[str, int]:
    return dict.fromkeys(("devices", *DEVICE_TABLES), 0)


# --- the loop-thread guard --------------------------------------------------------------------


def test_sqlite_from_a_forbidden_thread_raises_and_names_the_method(store):
    s, (a, _) = store
    with ThreadPoolExecutor(1) as loop_thread:
        s.forbid_thread(loop_thread.submit(threading.get_ident).result(WAIT))

        def on_loop(fn, *args):
            return loop_thread.submit(fn, *args).result(WAIT)

        for name, args in (
            ("get_setting", ("k",)),
            ("get_device", (a,)),
            ("history", (a, "v1")),
            ("events", (a,)),
            ("load_all", ()),
            ("delete_device", (a,)),
            ("flush_now", ()),
        ):
            with pytest.raises(LoopThreadError, match=rf"SqliteStore\.{name}\b.*store\.run"):
                on_loop(getattr(s, name), *args)
        with pytest.raises(LoopThreadError, match=r"close\(\).*executor"):
            on_loop(s.close)
        with pytest.raises(LoopThreadError, match=r"SqliteStore\.db"):
            on_loop(lambda: s.db.execute("SELECT 1"))
        # The write-behind methods and the job queue stay open to the loop thread.
        on_loop(s.put_row, a, "v1", (b"1", 1))
        on_loop(s.put_history, a, "v1", 1, b"1")
        on_loop(s.put_meta, a, "Name", "x")
        assert on_loop(s.pending) == 3
        assert on_loop(lambda: s.submit(s.get_device, a).result(WAIT)).id == a
        # Nothing tripped on the writer thread, nor on this (not forbidden) one.
        assert s.get_device(a).id == a
        assert on_writer(s, s.load_values, a) == {"v1": (b"1", 1)}
        assert s.close().ok  # while the forbidden thread lives: a later thread may reuse its ident


def test_the_writer_thread_cannot_be_forbidden(store):
    s, _ = store
    with pytest.raises(ValueError):
        s.forbid_thread(s.submit(threading.get_ident).result(WAIT))


def test_a_loop_that_forbids_itself_uses_the_store_through_run(store):
    s, (a, _) = store

    async def main():
        s.forbid_thread(threading.get_ident())
        with pytest.raises(LoopThreadError):
            s.get_device(a)
        s.put_history(a, "v1", 5, b"5")  # on the loop, in memory
        assert (await s.run(s.get_device, a)).name == "d0"
        assert await s.run(s.history, a, "v1") == [(5, b"5")]
        with pytest.raises(KeyError):
            await s.run({}.__getitem__, "missing")

    asyncio.run(main())


def test_a_method_called_from_another_thread_runs_on_the_writer(store):
    s, (a, _) = store
    writer = on_writer(s, threading.get_ident)
    seen: list[int] = []
    query = s._query
    s._query = lambda *args: (seen.append(threading.get_ident()), query(*args))[1]
    assert s.get_device(a).id == a  # called on the test's thread
    assert seen == [writer]


# --- the job queue ----------------------------------------------------------------------------


def test_jobs_run_in_order_on_the_writer_and_a_failing_one_does_not_stop_it(store):
    s, _ = store
    done: list[int] = []

    def job(i: int) -> int:
        if i == 5:
            raise ValueError("job 5 fails")
        done.append(i)
        return threading.get_ident()

    futures = [s.submit(job, i) for i in range(10)]
    with pytest.raises(ValueError, match="job 5 fails"):
        futures[5].result(WAIT)
    idents = {f.result(WAIT) for i, f in enumerate(futures) if i != 5}
    assert done == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert idents == {s.submit(threading.get_ident).result(WAIT)} != {threading.get_ident()}


def test_keyword_arguments_reach_the_job(store):
    s, (a, _) = store
    s.put_history(a, "v1", 1, b"1")
    s.put_history(a, "v1", 2, b"2")
    assert s.submit(s.history, a, "v1", limit=1).result(WAIT) == [(1, b"1")]


def test_close_runs_the_queued_jobs_then_flushes_and_refuses_later_jobs(store):
    s, (a, _) = store
    gate = threading.Event()
    first = s.submit(gate.wait, WAIT)  # holds the writer until the rest is queued
    queued = [s.submit(s.put_row, a, "v1", (str(i).encode(), i)) for i in range(3)]
    with ThreadPoolExecutor(1) as other:
        closing = other.submit(s.close)
        gate.set()
        report = closing.result(WAIT)
    assert report.ok and first.result(WAIT) is True
    assert [f.result(WAIT) for f in queued] == [None, None, None]
    late = s.submit(s.get_device, a)
    with pytest.raises(StoreClosed, match="closed"):
        late.result(WAIT)
    with pytest.raises(StoreClosed):
        asyncio.run(s.run(s.get_device, a))
    with pytest.raises(StoreClosed):
        s.get_device(a)
    reopened = SqliteStore(s.data_dir)
    assert reopened.load_values(a) == {"v1": (b"2", 2)}  # the jobs' write was flushed at the stop
    reopened.close()


def test_without_a_writer_jobs_run_inline(tmp_path):
    s = SqliteStore(tmp_path / "data")
    fut = s.submit(threading.get_ident)
    assert fut.done() and fut.result() == threading.get_ident()
    failing = s.submit(int, "x")
    assert failing.done() and isinstance(failing.exception(), ValueError)
    assert asyncio.run(s.run(s.get_setting, "nothing")) is None
    assert s.close().ok
    assert isinstance(s.submit(threading.get_ident).exception(), StoreClosed)


# --- read-your-writes -------------------------------------------------------------------------


def test_history_merges_pending_points_without_a_flush_and_without_duplicates(store):
    s, (a, b) = store
    for ts in (10, 30, 50):
        s.put_history(a, "v1", ts, f"c{ts}".encode())
    on_writer(s, s.flush_now)
    for ts in (20, 40, 60):
        s.put_history(a, "v1", ts, f"p{ts}".encode())
    s.put_history(b, "v1", 25, b"other device")
    s.put_history(a, "v2", 25, b"other pin")
    batches = s.stats.batches
    merged = [(10, b"c10"), (20, b"p20"), (30, b"c30"), (40, b"p40"), (50, b"c50"), (60, b"p60")]
    assert on_writer(s, s.history, a, "v1") == merged
    assert on_writer(s, s.history, a, "v1", 15, 45) == merged[1:4]
    assert on_writer(s, s.history, a, "v1", 0, None, 4) == merged[:4]  # the limit after the merge
    assert s.stats.batches == batches and s.pending() == 5  # nothing was flushed for it
    on_writer(s, s.flush_now)
    assert on_writer(s, s.history, a, "v1") == merged


def test_history_sees_rows_a_failed_flush_kept_exactly_once(store):
    s, (a, _) = store
    s.put_history(a, "v1", 1, b"1")
    on_writer(s, lambda: s.db.execute("PRAGMA query_only = ON"))
    on_writer(s, s.flush_now)
    assert s.stats.errors == 1 and s.pending() == 1
    assert on_writer(s, s.history, a, "v1") == [(1, b"1")]
    on_writer(s, lambda: s.db.execute("PRAGMA query_only = OFF"))


def _events(s: SqliteStore, device_id: int, limit: int = 1000) -> list[tuple]:
    return [(e["code"], e["ts"], e["resolved_at"]) for e in on_writer(s, s.events, device_id, limit)]


def test_events_merge_pending_logs_and_clears_as_the_flush_will_write_them(store):
    s, (a, b) = store
    s.put_event(a, "hot", "first", 1)
    s.put_event(a, "hot", "older, left alone", 0)
    on_writer(s, s.flush_now)
    s.put_event(a, "hot", "second", 2)
    s.put_event(a, "cold", None, 3)
    s.put_event_clear(a, "hot", False, 4)  # the newest unresolved "hot": the pending one
    s.put_event(b, "hot", "other device", 4)
    # Newest first by time (then by id): the "older" event logged last comes last.
    pending = [("cold", 3, None), ("hot", 2, 4), ("hot", 1, None), ("hot", 0, None)]
    assert _events(s, a) == pending
    events = on_writer(s, s.events, a)
    assert [e["id"] for e in events[:2]] == [None, None] and all(e["id"] for e in events[2:])
    s.put_event_clear(a, "hot", True, 5)  # every unresolved "hot", committed ones included
    resolved = [("cold", 3, None), ("hot", 2, 4), ("hot", 1, 5), ("hot", 0, 5)]
    assert _events(s, a) == resolved
    assert _events(s, a, 2) == resolved[:2]
    on_writer(s, s.flush_now)
    assert _events(s, a) == resolved  # what the flush wrote is what was shown, once
    assert _events(s, b) == [("hot", 4, None)]


def test_device_reads_see_pending_values_properties_meta_and_last_seen(store):
    s, (a, _) = store
    s.put_row(a, "v1", (b"1", 1))
    s.put_property(a, "v1", "label", b"Temp", 1)
    s.put_meta(a, "Location", "garden")
    s.put_device_seen(a, 77, '{"fw": "1.0"}')
    s.put_device_timezone(a, "Europe/Kyiv")
    rec = on_writer(s, s.get_device, a)
    assert (rec.last_seen, rec.info, rec.timezone) == (77, {"fw": "1.0"}, "Europe/Kyiv")
    assert on_writer(s, s.load_values, a) == {"v1": (b"1", 1)}
    assert on_writer(s, s.load_properties, a) == {("v1", "label"): b"Temp"}
    assert on_writer(s, s.load_meta, a) == {"Location": "garden"}


# --- device delete ----------------------------------------------------------------------------


def _fill(s: SqliteStore, device_id: int, ts: int) -> None:
    s.put_row(device_id, "v1", (b"x", ts))
    s.put_property(device_id, "v1", "label", b"x", ts)
    s.put_history(device_id, "v1", ts, b"x")
    s.put_event(device_id, "hot", None, ts)
    s.put_meta(device_id, "Location", "x")
    s.put_device_seen(device_id, ts, '{"fw": "1"}')
    s.put_device_timezone(device_id, "UTC")


def test_delete_device_with_pending_rows_leaves_no_row_and_late_writes_are_not_resurrected(store):
    s, (a, b) = store
    _fill(s, a, 1)
    _fill(s, b, 1)
    on_writer(s, s.flush_now)
    _fill(s, a, 2)  # pending when the delete comes
    _fill(s, b, 2)
    assert on_writer(s, s.delete_device, a) is True
    assert on_writer(s, s.rows_of_device, a) == zero_rows()
    _fill(s, a, 3)  # a session not closed yet goes on writing
    on_writer(s, s.flush_now)
    assert on_writer(s, s.rows_of_device, a) == zero_rows()
    assert on_writer(s, s.rows_of_device, b) == {
        "devices": 1,
        "pin_values": 1,
        "properties": 1,
        "history": 2,
        "events": 2,
        "device_meta": 1,
    }
    assert on_writer(s, s.delete_device, a) is False


def test_rows_of_a_deleted_device_do_not_reach_the_recovery_file_either(tmp_path):
    s = SqliteStore(tmp_path / "data")
    s.create_template("TMPLunit", "Unit")
    a = s.create_device("TMPLunit", "a").id
    assert s.delete_device(a)
    _fill(s, a, 1)
    s.db.execute("PRAGMA query_only = ON")  # the stop cannot write: what is left goes to a file
    report = s.close()
    assert report.ok and report.recovery_file is None


# --- the start-up load ------------------------------------------------------------------------


def test_load_all_returns_every_template_device_and_their_state(store):
    s, (a, b) = store
    on_writer(s, s.create_template, "TMPLother", "Other", [Datastream("v7", "Switch", "int", 0, 1)])
    c = on_writer(s, s.create_device, "TMPLother", "c", "tok-c").id
    s.put_row(a, "v1", (b"21.5", 1))
    s.put_property(a, "v1", "label", b"Temp", 1)
    s.put_meta(b, "Location", "garden")
    s.put_row(999, "v1", (b"orphan", 1))  # a row of no device is left out
    on_writer(s, s.flush_now)
    s.put_row(c, "v7", (b"1", 2))  # pending ones are in too
    s.put_device_seen(c, 5)
    snap = on_writer(s, s.load_all)
    assert isinstance(snap, Snapshot)
    assert snap.templates == on_writer(s, s.list_templates)
    assert [t.id for t in snap.templates] == ["TMPLother", "TMPLunit"]
    assert list(snap.templates[0].datastreams) == ["v7"]
    assert [d.id for d in snap.devices] == [a, b, c]
    assert snap.devices[2].token == "tok-c" and snap.devices[2].last_seen == 5
    assert snap.values == {a: {"v1": (b"21.5", 1)}, b: {}, c: {"v7": (b"1", 2)}}
    assert snap.properties == {a: {("v1", "label"): b"Temp"}, b: {}, c: {}}
    assert snap.meta == {a: {}, b: {"Location": "garden"}, c: {}}
    for d in (a, b, c):  # the same as the per-device reads
        assert snap.values[d] == on_writer(s, s.load_values, d)
        assert snap.properties[d] == on_writer(s, s.load_properties, d)
        assert snap.meta[d] == on_writer(s, s.load_meta, d)


# --- the writer's CPU priority ------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread nice values are a Linux thing")
def test_the_writer_thread_runs_at_a_lower_cpu_priority_than_the_loop(tmp_path):
    s = SqliteStore(tmp_path / "data", flush_interval=3600)
    s.start_writer(nice=5)
    try:
        writer_nice = on_writer(s, lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        assert writer_nice == os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + 5
    finally:
        with ThreadPoolExecutor(1) as other:
            other.submit(s.close).result(WAIT)


def test_rows_put_while_the_writer_takes_batches_all_land_in_one(tmp_path):
    """The loop puts rows into whatever batch is pending while the writer swaps in a new one
    (``_take``): every row lands whole in exactly one batch, before it is taken (here the test takes
    the batches, and copies each at once as the writer would write it). A Python call put between
    reading ``_pending`` and storing into it failed this test in two runs of three."""
    s = SqliteStore(tmp_path / "data", flush_interval=3600)
    n = 30_000
    done = threading.Event()

    def loop() -> None:
        for i in range(n):
            s.put_row(i, "v1", (b"x", i))
            s.put_history(i, "v1", i, b"x")
            s.put_event(i, "e", None, i)
        done.set()

    taken: list[tuple[list, list, list]] = []

    def take() -> None:
        b = s._take()
        taken.append((list(b.values), list(b.history), list(b.events)))  # a row appended later is lost

    t = threading.Thread(target=loop)
    t.start()
    try:
        while not done.is_set():
            take()
    finally:
        t.join()
    take()
    s.close()
    assert len(taken) > 2  # the swaps came while the rows went in
    assert sorted(d for values, _, _ in taken for d, _ in values) == list(range(n))
    assert sorted(r[0] for _, history, _ in taken for r in history) == list(range(n))
    assert sorted(e[1] for _, _, events in taken for e in events) == list(range(n))
