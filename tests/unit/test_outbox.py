"""The durable outbox on a real SQLite store (writer thread started, the test's loop thread forbidden
SQLite) with a fake clock: delivery, the retry schedule, giving up, permanent failures, the drop-oldest
bound, a restart that resumes, the concurrency bound and stop.

Nothing sleeps: a test moves its clock, calls ``outbox.wake()`` and awaits ``outbox.wait_idle()``."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from blynk_server.config import Settings
from blynk_server.outbox import DeliveryFailed, LogBudget, Outbox
from blynk_server.store.sqlite import SqliteStore

WAIT = 30  # seconds: a bound against a hang, never reached when the outbox works


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def settings(**kw) -> Settings:
    base = dict(
        outbox_workers=2, outbox_retry_base=2.0, outbox_retry_max=5.0, outbox_max_attempts=4, outbox_max_rows=100
    )
    base.update(kw)
    return Settings(**base)


def open_store(data_dir) -> SqliteStore:
    s = SqliteStore(data_dir, flush_interval=3600)
    s.start_writer()
    s.forbid_thread(threading.get_ident())  # SQLite on the test's loop thread raises, as in the server
    return s


def close_store(s: SqliteStore) -> None:
    with ThreadPoolExecutor(1) as other:  # the test's thread is forbidden: close from another one
        other.submit(s.close).result(WAIT)


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "data")
    yield s
    close_store(s)


@pytest.fixture
def clock():
    return Clock()


async def rows(store: SqliteStore) -> list[tuple]:
    return await store.run(store.query, "SELECT kind, payload, attempts, due FROM outbox ORDER BY id")


async def settle(outbox: Outbox) -> None:
    await asyncio.wait_for(outbox.wait_idle(), WAIT)


class Recorder:
    """A deliverer that fails as told, one outcome per call (then succeeds)."""

    def __init__(self, *outcomes) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[dict] = []
        self.gave_up: list[tuple[dict, str]] = []

    async def __call__(self, payload: dict) -> None:
        self.calls.append(payload)
        if self.outcomes:
            outcome = self.outcomes.pop(0)
            if outcome is not None:
                raise outcome

    def on_gave_up(self, payload: dict, reason: str) -> None:
        self.gave_up.append((payload, reason))


async def started(store, clock, **kw) -> Outbox:
    outbox = Outbox(store, settings(**kw), clock)
    await outbox.start()
    return outbox


async def test_delivers_in_order_and_deletes(store, clock):
    outbox = await started(store, clock)
    rec = Recorder()
    outbox.register("email", rec)
    for i in range(3):
        outbox.enqueue("email", {"n": i, "text": "Grüße"})
    await settle(outbox)
    assert [p["n"] for p in rec.calls] == [0, 1, 2]
    assert rec.calls[0]["text"] == "Grüße"
    assert await rows(store) == []
    s = outbox.stats
    assert (s.enqueued, s.delivered, s.retried, s.gave_up, s.dropped, s.depth) == (3, 3, 0, 0, 0, 0)
    await outbox.stop()


async def test_retry_schedule_then_gives_up(store, clock):
    outbox = await started(store, clock)
    fail = DeliveryFailed("421 try later")
    rec = Recorder(fail, fail, fail, fail)
    outbox.register("email", rec, rec.on_gave_up)
    t0 = clock.t
    outbox.enqueue("email", {"to": ["a@example.com"]})
    await settle(outbox)
    assert len(rec.calls) == 1
    [(_, _, attempts, due)] = await rows(store)
    assert (attempts, due) == (1, t0 + 2.0)  # base
    # Not due yet: nothing happens.
    clock.t = t0 + 1.9
    outbox.wake()
    await settle(outbox)
    assert len(rec.calls) == 1
    expected = [(2, 4.0), (3, 5.0)]  # doubles, capped at retry_max
    for attempt, delay in expected:
        clock.t = (await rows(store))[0][3]
        now = clock.t
        outbox.wake()
        await settle(outbox)
        assert len(rec.calls) == attempt
        [(_, _, attempts, due)] = await rows(store)
        assert (attempts, due) == (attempt, now + delay)
    assert outbox.stats.retried == 3
    clock.t = (await rows(store))[0][3]
    outbox.wake()
    await settle(outbox)
    assert len(rec.calls) == 4
    assert await rows(store) == []
    assert outbox.stats.gave_up == 1 and outbox.stats.depth == 0 and outbox.stats.delivered == 0
    [(payload, reason)] = rec.gave_up
    assert payload == {"to": ["a@example.com"]}
    assert "421 try later" in reason and "4 attempts" in reason
    await outbox.stop()


def test_backoff_doubles_up_to_the_cap(clock):
    outbox = Outbox(None, settings(outbox_retry_base=2.0, outbox_retry_max=600.0), clock)
    assert [outbox.backoff(n) for n in (1, 2, 3, 4, 9, 10, 500)] == [2, 4, 8, 16, 512, 600, 600]


async def test_permanent_failure_gives_up_at_once(store, clock):
    outbox = await started(store, clock)
    rec = Recorder(DeliveryFailed("550 no such user", permanent=True))
    outbox.register("email", rec, rec.on_gave_up)
    outbox.enqueue("email", {"n": 1})
    await settle(outbox)
    assert len(rec.calls) == 1
    assert await rows(store) == []
    assert (outbox.stats.gave_up, outbox.stats.retried, outbox.stats.depth) == (1, 0, 0)
    assert rec.gave_up == [({"n": 1}, "550 no such user")]
    await outbox.stop()


async def test_any_exception_is_retried_and_logged(store, clock, caplog):
    outbox = await started(store, clock)
    rec = Recorder(RuntimeError("deliverer bug"))
    outbox.register("webhook", rec)
    with caplog.at_level(logging.ERROR, logger="blynk_server.outbox"):
        outbox.enqueue("webhook", {"n": 1})
        await settle(outbox)
    assert "deliverer bug" in caplog.text
    [(_, _, attempts, due)] = await rows(store)
    assert (attempts, due) == (1, clock.t + 2.0)
    clock.t = due
    outbox.wake()
    await settle(outbox)
    assert len(rec.calls) == 2 and await rows(store) == []
    assert (outbox.stats.retried, outbox.stats.delivered) == (1, 1)
    await outbox.stop()


async def test_a_hung_deliverer_times_out_and_is_retried(store, clock):
    outbox = Outbox(store, settings(), clock, delivery_timeout=0.01)
    await outbox.start()
    never = asyncio.Event()

    async def hang(payload):
        await never.wait()

    outbox.register("webhook", hang)
    outbox.enqueue("webhook", {"n": 1})
    await settle(outbox)
    [(_, _, attempts, _)] = await rows(store)
    assert attempts == 1 and outbox.stats.retried == 1
    await outbox.stop()


async def test_full_queue_drops_the_oldest(store, clock, caplog):
    outbox = await started(store, clock, outbox_max_rows=3)  # no deliverer: rows stay queued
    with caplog.at_level(logging.WARNING, logger="blynk_server.outbox"):
        for i in range(5):
            outbox.enqueue("email", {"n": i})
        left = await rows(store)
    assert [r[1] for r in left] == ['{"n":2}', '{"n":3}', '{"n":4}']
    s = outbox.stats
    assert (s.enqueued, s.dropped, s.depth) == (5, 2, 3)
    assert "outbox full" in caplog.text
    await outbox.stop()


async def test_a_kind_nobody_registered_waits_for_its_deliverer(store, clock):
    outbox = await started(store, clock)
    outbox.enqueue("email", {"n": 1})
    await settle(outbox)
    assert len(await rows(store)) == 1 and outbox.stats.depth == 1
    rec = Recorder()
    outbox.register("email", rec)
    await settle(outbox)
    assert rec.calls == [{"n": 1}] and outbox.stats.depth == 0
    await outbox.stop()


async def test_restart_resumes_undelivered_rows(tmp_path, clock):
    data = tmp_path / "data"
    first = open_store(data)
    try:
        outbox = await started(first, clock)
        rec = Recorder(DeliveryFailed("connection refused"))
        outbox.register("email", rec)
        outbox.enqueue("email", {"n": 1})  # fails once, then waits for its retry
        outbox.enqueue("webhook", {"n": 2})  # no webhook deliverer in this run
        await settle(outbox)
        assert outbox.stats.depth == 2
        await outbox.stop()
    finally:
        close_store(first)

    second = open_store(data)
    try:
        clock.t += 60
        outbox = await started(second, clock)
        assert outbox.stats.depth == 2
        mails, hooks = Recorder(), Recorder()
        outbox.register("email", mails)
        outbox.register("webhook", hooks)
        await settle(outbox)
        assert mails.calls == [{"n": 1}] and hooks.calls == [{"n": 2}]
        assert await rows(second) == [] and outbox.stats.depth == 0
        await outbox.stop()
    finally:
        close_store(second)


async def test_enqueued_before_start_is_kept(store, clock):
    outbox = Outbox(store, settings(), clock)
    outbox.enqueue("email", {"n": 1})
    await outbox.start()
    rec = Recorder()
    outbox.register("email", rec)
    await settle(outbox)
    assert rec.calls == [{"n": 1}] and outbox.stats.depth == 0
    await outbox.stop()


async def test_concurrency_is_bounded(store, clock):
    outbox = await started(store, clock, outbox_workers=2)
    gate = asyncio.Event()
    two_running = asyncio.Event()
    active, peak, done = [0], [0], []

    async def slow(payload):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        if active[0] == 2:
            two_running.set()
        await gate.wait()
        active[0] -= 1
        done.append(payload["n"])

    outbox.register("webhook", slow)
    for i in range(6):
        outbox.enqueue("webhook", {"n": i})
    await asyncio.wait_for(two_running.wait(), WAIT)
    for _ in range(3):  # several store round trips: the dispatcher had every chance to start a third
        await rows(store)
    assert active[0] == 2
    gate.set()
    await settle(outbox)
    assert peak[0] == 2 and sorted(done) == list(range(6))
    assert await rows(store) == []
    await outbox.stop()


async def test_stop_lets_in_flight_finish_and_leaves_the_rest_queued(store, clock):
    outbox = await started(store, clock, outbox_workers=1)
    gate = asyncio.Event()
    running = asyncio.Event()

    async def slow(payload):
        running.set()
        await gate.wait()

    outbox.register("email", slow)
    outbox.enqueue("email", {"n": 1})
    outbox.enqueue("email", {"n": 2})
    await asyncio.wait_for(running.wait(), WAIT)
    stopping = asyncio.create_task(outbox.stop())
    await asyncio.sleep(0)  # let stop() begin: it must wait for the delivery in flight
    assert not stopping.done()
    gate.set()
    await asyncio.wait_for(stopping, WAIT)
    assert [r[1] for r in await rows(store)] == ['{"n":2}']  # the first was delivered and deleted
    assert outbox.stats.delivered == 1


async def test_stop_cancels_what_does_not_finish_in_time(store, clock):
    outbox = Outbox(store, settings(outbox_workers=1), clock, stop_timeout=0.01)
    await outbox.start()
    running = asyncio.Event()

    async def hang(payload):
        running.set()
        await asyncio.Event().wait()

    outbox.register("email", hang)
    outbox.enqueue("email", {"n": 1})
    await asyncio.wait_for(running.wait(), WAIT)
    await asyncio.wait_for(outbox.stop(), WAIT)
    [(_, payload, attempts, _)] = await rows(store)
    assert (payload, attempts) == ('{"n":1}', 0)  # untouched: delivered after the next start


def test_payload_must_be_json(store, clock):
    outbox = Outbox(store, settings(), clock)
    with pytest.raises(TypeError):
        outbox.enqueue("email", {"n": object()})


def test_log_budget_counts_what_it_leaves_out(clock):
    budget = LogBudget(clock, period=60.0, burst=2)
    assert [budget.allow("k") for _ in range(4)] == [(True, 0), (True, 0), (False, 0), (False, 0)]
    clock.t += 60
    assert budget.allow("k") == (True, 2)
    assert budget.allow("other") == (True, 0)
