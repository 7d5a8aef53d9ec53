"""The durable outbox: deliveries (e-mails, webhook calls) queued in a table of the store and drained
by background workers, so a device session never waits on an SMTP or HTTP server.

- ``enqueue(kind, payload)`` never blocks: the row is written by the store's thread (``store.submit``)
  in order with everything else; an in-memory count keeps the depth gauge and the bound
  (``outbox_max_rows``: over it the oldest rows are dropped, counted and logged).
- One dispatcher task claims due rows through the store's thread (``store.run``), at most
  ``outbox_workers`` in flight, and runs the deliverer registered for their kind. Success deletes the
  row; ``DeliveryFailed`` (or any exception, logged) reschedules it with exponential backoff
  (``outbox_retry_base`` doubling up to ``outbox_retry_max``); after ``outbox_max_attempts`` attempts,
  or at once for a permanent failure, it is given up: deleted, counted, logged, and the kind's
  ``on_gave_up`` is called.
- Rows live in the database: a restart resumes them. ``stop()`` lets the deliveries in flight finish
  within a bound and leaves the rest queued.
- The wall clock is injectable (``clock``, seconds) for the schedule; the retry timer is the loop's.
  Rows are claimed in memory (the writer thread's ``_claimed``), so a crash mid-delivery means the
  row is delivered again at the next start: at-least-once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,
    created REAL NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (due, id);
"""

STOP_TIMEOUT = 5.0  # seconds stop() waits for the deliveries in flight; the rest stay queued
LOG_PERIOD = 60.0  # seconds of one log budget window
LOG_BURST = 10  # lines of one kind of message per window; the rest are counted, then summarised

Deliverer = Callable[[dict], Awaitable[None]]
GaveUp = Callable[[dict, str], None]


class DeliveryFailed(Exception):
    """Raised by a deliverer: the delivery did not happen. ``permanent`` (it can never succeed: a
    recipient the server refuses for good) gives up at once; otherwise it is retried with backoff."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(slots=True)
class OutboxStats:
    """Plain counters read by the metrics at scrape time."""

    enqueued: int = 0
    delivered: int = 0
    retried: int = 0
    gave_up: int = 0
    dropped: int = 0
    depth: int = 0  # rows queued (in flight included), a gauge


@dataclass(slots=True)
class _Kind:
    deliver: Deliverer
    on_gave_up: GaveUp | None


@dataclass(slots=True)
class _Row:
    id: int
    kind: str
    payload: dict | None  # None: the stored text is not a JSON object (given up at once)
    attempts: int


@dataclass(slots=True)
class LogBudget:
    """At most ``burst`` lines per ``period`` seconds for each key; the lines left out are counted and
    reported with the next line written, so a failing SMTP server cannot flood the log."""

    clock: Callable[[], float]
    period: float = LOG_PERIOD
    burst: int = LOG_BURST
    _windows: dict[str, list] = field(default_factory=dict)  # key -> [window start, lines, left out]

    def allow(self, key: str) -> tuple[bool, int]:
        """(write this line?, lines left out before it that it should mention)."""
        now = self.clock()
        w = self._windows.get(key)
        if w is None or now - w[0] >= self.period:
            left_out = w[2] if w is not None else 0
            self._windows[key] = [now, 1, 0]
            return True, left_out
        if w[1] < self.burst:
            w[1] += 1
            left_out, w[2] = w[2], 0
            return True, left_out
        w[2] += 1
        return False, 0


def _more(left_out: int) -> str:
    return f" ({left_out} similar lines left out)" if left_out else ""


class Outbox:
    """Durable, bounded, retried deliveries; see the module docstring."""

    def __init__(
        self,
        store,
        settings,
        clock: Callable[[], float] = time.time,
        *,
        stop_timeout: float = STOP_TIMEOUT,
        delivery_timeout: float | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.max_rows = max(1, settings.outbox_max_rows)
        self.workers = max(1, settings.outbox_workers)
        self.retry_base = max(0.0, settings.outbox_retry_base)
        self.retry_max = max(self.retry_base, settings.outbox_retry_max)
        self.max_attempts = max(1, settings.outbox_max_attempts)
        self.stop_timeout = stop_timeout
        # A guard over the deliverers' own timeouts: a hung deliverer must not hold a worker forever.
        if delivery_timeout is None:
            delivery_timeout = max(settings.smtp_timeout, settings.webhook_timeout) * 2 + 5
        self.delivery_timeout = delivery_timeout
        self.stats = OutboxStats()
        self._kinds: dict[str, _Kind] = {}
        self._claimed: set[int] = set()  # row ids handed to a delivery: used on the store's thread only
        self._inflight: dict[int, asyncio.Task] = {}
        self._early: list[tuple[str, str, float, int]] = []  # enqueued before start()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._dispatcher: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._running = False
        self._logs = LogBudget(clock)

    # --- what other parts call ------------------------------------------------------------------

    def register(self, kind: str, deliver: Deliverer, on_gave_up: GaveUp | None = None) -> None:
        """The deliverer of ``kind``; rows of kinds nobody registered stay queued (e.g. e-mails while
        SMTP is not configured) and are delivered once a later start registers one."""
        self._kinds[kind] = _Kind(deliver, on_gave_up)
        self.wake()

    def enqueue(self, kind: str, payload: dict) -> None:
        """Queue one delivery. Never blocks: the row is written on the store's thread. A payload that
        is not JSON raises ``TypeError``/``ValueError`` here, at the caller."""
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        now = self.clock()
        s = self.stats
        drop = max(0, s.depth + 1 - self.max_rows)
        s.enqueued += 1
        s.depth += 1 - drop
        if drop:
            s.dropped += drop
            ok, left_out = self._logs.allow("dropped")
            if ok:
                log.warning(
                    "outbox full (%d rows): the oldest %d dropped, %d dropped in all%s",
                    self.max_rows,
                    drop,
                    s.dropped,
                    _more(left_out),
                )
        if not self._started:
            self._early.append((kind, text, now, drop))
            return
        self._submit_insert(kind, text, now, drop)
        self.wake()

    def wake(self) -> None:
        """Look for due rows now (enqueue and register do it; a test calls it after moving its clock)."""
        self._idle.clear()
        self._wake.set()

    async def wait_idle(self) -> None:
        """Until nothing is in flight and no row is due (rows scheduled later may remain): for tests
        and tools, which must not sleep."""
        await self._idle.wait()

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the table, count what a previous run left, and start the dispatcher."""
        self._loop = asyncio.get_running_loop()
        await self.store.run(self.store.execute_script, SCHEMA)
        left = await self.store.run(self._count)
        self.stats.depth += left
        if left:
            log.info("outbox: %d deliveries left by a previous run are queued", left)
        self._started = True
        for item in self._early:
            self._submit_insert(*item)
        self._early.clear()
        self._running = True
        self._dispatcher = asyncio.create_task(self._dispatch(), name="outbox-dispatcher")
        self.wake()

    async def stop(self) -> None:
        """Stop claiming; give the deliveries in flight ``stop_timeout`` seconds to finish (their result
        is recorded), cancel the others (their rows stay queued for the next start)."""
        self._running = False
        self._wake.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._dispatcher is not None:
            await self._dispatcher
            self._dispatcher = None
        tasks = list(self._inflight.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.stop_timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("outbox: %d deliveries still running at stop: left queued for the next start", len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        self._idle.set()

    # --- the dispatcher (event loop) ------------------------------------------------------------

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._running:
            self._wake.clear()
            claimed: list[_Row] = []
            free = self.workers - len(self._inflight)
            if free > 0 and self._kinds:
                now = self.clock()
                try:
                    claimed, next_due = await self.store.run(self._claim, tuple(self._kinds), now, free)
                except Exception as exc:  # the store failed (disk, closed): look again later
                    self._log_error("claim", "outbox: cannot read the queue: %s", exc)
                    claimed, next_due = [], now + max(self.retry_base, 1.0)
                if not self._running:  # stopped while claiming: leave them queued
                    try:
                        await self.store.run(self._unclaim, [r.id for r in claimed])
                    except Exception:  # the store is closing: the claim was only in memory anyway
                        pass
                    break
                if claimed:
                    self._idle.clear()
                for row in claimed:
                    self._inflight[row.id] = asyncio.create_task(self._deliver(row), name=f"outbox-{row.kind}")
                self._arm(loop, next_due, now)
            if not self._inflight and not claimed:
                self._idle.set()
            await self._wake.wait()

    def _arm(self, loop: asyncio.AbstractEventLoop, next_due: float | None, now: float) -> None:
        """A loop timer for the next row due later (those due now start when a worker frees up)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if next_due is not None and next_due > now:
            self._timer = loop.call_later(next_due - now, self._wake.set)

    async def _deliver(self, row: _Row) -> None:
        kind = self._kinds[row.kind]
        error, permanent = None, False
        try:
            if row.payload is None:
                error, permanent = "its stored payload is not a JSON object", True
            else:
                async with asyncio.timeout(self.delivery_timeout):
                    await kind.deliver(row.payload)
        except DeliveryFailed as exc:
            error, permanent = str(exc) or type(exc).__name__, exc.permanent
        except TimeoutError:
            error = f"no answer within {self.delivery_timeout:g} s"
        except asyncio.CancelledError:
            self._inflight.pop(row.id, None)
            raise
        except Exception as exc:  # a deliverer's bug or an error it did not map: retried, logged
            error = f"{type(exc).__name__}: {exc}"
            ok, left_out = self._logs.allow("unexpected")
            if ok:
                log.exception("outbox: unexpected error delivering %s row=%d%s", row.kind, row.id, _more(left_out))
        try:
            # Shielded: once delivered, the row is recorded even if stop() cancels this task meanwhile.
            await asyncio.shield(self._record(row, kind, error, permanent))
        finally:
            self._inflight.pop(row.id, None)
            self._wake.set()

    async def _record(self, row: _Row, kind: _Kind, error: str | None, permanent: bool) -> None:
        s = self.stats
        attempts = row.attempts + 1
        if error is None or permanent or attempts >= self.max_attempts:  # delivered, or given up
            done, due = True, 0.0
        else:
            done, due = False, self.clock() + self.backoff(attempts)
        try:
            await self.store.run(self._finish, row.id, done, attempts, due, error)
        except Exception as exc:  # the store is closed or failing: the row stays as it was (redelivered)
            self._log_error("finish", "outbox: cannot record a delivery's outcome: %s", exc)
            return
        if error is None:
            s.delivered += 1
            s.depth -= 1
            return
        if not done:
            s.retried += 1
            ok, left_out = self._logs.allow(f"retry:{row.kind}")
            if ok:
                log.warning(
                    "outbox: %s delivery failed (attempt %d of %d), retried in %g s: %s%s",
                    row.kind,
                    attempts,
                    self.max_attempts,
                    due - self.clock(),
                    error,
                    _more(left_out),
                )
            return
        s.gave_up += 1
        s.depth -= 1
        reason = error if permanent else f"{error} (gave up after {attempts} attempts)"
        ok, left_out = self._logs.allow(f"gave_up:{row.kind}")
        if ok:
            log.error("outbox: %s delivery given up row=%d: %s%s", row.kind, row.id, reason, _more(left_out))
        if kind.on_gave_up is not None and row.payload is not None:
            try:
                kind.on_gave_up(row.payload, reason)
            except Exception:
                log.exception("outbox: the %s on_gave_up callback failed", row.kind)

    def backoff(self, attempts: int) -> float:
        """Seconds before the retry that follows ``attempts`` failed attempts: base, 2×base, 4×base…
        up to ``outbox_retry_max``."""
        return min(self.retry_max, self.retry_base * 2 ** min(attempts - 1, 62))

    def _log_error(self, key: str, message: str, exc: Exception) -> None:
        ok, left_out = self._logs.allow(key)
        if ok:
            log.error(message + "%s", exc, _more(left_out))

    def _submit_insert(self, kind: str, text: str, now: float, drop: int) -> None:
        fut = self.store.submit(self._insert, kind, text, now, drop)
        fut.add_done_callback(self._inserted)

    def _inserted(self, fut: Future) -> None:
        """On the store's thread: a row that could not be written is lost; say so, fix the gauge."""
        exc = fut.exception()
        if exc is None:
            return
        log.error("outbox: a delivery could not be queued and is lost: %s", exc)
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._lost_one)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _lost_one(self) -> None:
        self.stats.depth = max(0, self.stats.depth - 1)

    # --- jobs on the store's thread ---------------------------------------------------------------

    def _count(self) -> int:
        return self.store.query("SELECT COUNT(*) FROM outbox")[0][0]

    def _insert(self, kind: str, text: str, now: float, drop: int) -> None:
        rowid = self.store.execute(
            "INSERT INTO outbox (kind, payload, attempts, due, created) VALUES (?, ?, 0, ?, ?)", (kind, text, now, now)
        )
        if drop:  # the oldest rows not being delivered right now
            claimed = self._claimed
            rows = self.store.query(
                "SELECT id FROM outbox WHERE id != ? ORDER BY id LIMIT ?", (rowid, drop + len(claimed))
            )
            ids = [r[0] for r in rows if r[0] not in claimed][:drop]
            if ids:
                self.store.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(ids))})", tuple(ids))

    def _claim(self, kinds: tuple[str, ...], now: float, limit: int) -> tuple[list[_Row], float | None]:
        """Up to ``limit`` due rows of registered kinds, oldest due first, marked claimed; and when the
        next unclaimed one is due."""
        kind_marks = ",".join("?" * len(kinds))
        claimed = tuple(self._claimed)
        not_claimed = f" AND id NOT IN ({','.join('?' * len(claimed))})" if claimed else ""
        rows = self.store.query(
            f"SELECT id, kind, payload, attempts FROM outbox WHERE due <= ? AND kind IN ({kind_marks}){not_claimed}"
            " ORDER BY due, id LIMIT ?",
            (now, *kinds, *claimed, limit),
        )
        out = []
        for rid, kind, text, attempts in rows:
            self._claimed.add(rid)
            out.append(_Row(rid, kind, _load(text), attempts))
        claimed = tuple(self._claimed)
        not_claimed = f" AND id NOT IN ({','.join('?' * len(claimed))})" if claimed else ""
        nxt = self.store.query(
            f"SELECT MIN(due) FROM outbox WHERE kind IN ({kind_marks}){not_claimed}", (*kinds, *claimed)
        )[0][0]
        return out, nxt

    def _unclaim(self, ids: list[int]) -> None:
        self._claimed.difference_update(ids)

    def _finish(self, row_id: int, done: bool, attempts: int, due: float, error: str | None) -> None:
        self._claimed.discard(row_id)
        if done:
            self.store.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
        else:
            self.store.execute(
                "UPDATE outbox SET attempts = ?, due = ?, last_error = ? WHERE id = ?",
                (attempts, due, (error or "")[:1000], row_id),
            )


def _load(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
