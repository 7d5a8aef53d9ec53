"""kill -9 loop: a crash loses at most the flush interval of acknowledged writes and never corrupts the
database (README: "a crash loses at most this much of device writes").

Each round: a device writes an increasing counter as fast as its pings come back (every ping answer
acknowledges the writes before it), the server is SIGKILLed at a random moment, the database is
checked (``PRAGMA integrity_check``) and the server restarted on the same data dir, which must serve
the persisted value. Before the kill, the test notes the last acknowledged write and waits (on the
server's flush counter, not on a clock) until a whole flush has run after it: that write, and every
one before it, must be persisted; a later one may be lost (at most one flush interval of them).

``BLYNK_KILL9_ROUNDS`` (default 3), ``BLYNK_KILL9_FLUSH`` (the server's --flush-interval, default 1)
and ``BLYNK_KILL9_SEED`` tune it.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest

from protocol import Command, Status

from .conftest import COUNTER_PIN, connect, integrity_check, metric, read_pin, stored_value, wait_metric

# Three kill/restart rounds of several seconds each: in the slow run, not the default one.
pytestmark = pytest.mark.slow

ROUNDS = int(os.environ.get("BLYNK_KILL9_ROUNDS", "3"))
FLUSH = float(os.environ.get("BLYNK_KILL9_FLUSH", "1"))
BATCH = 20  # writes per acknowledging ping
FLUSHES = "blynk_store_flush_rows_count"  # write-behind flushes completed
ROUND_SPAN = 10**9  # round k writes k*ROUND_SPAN+1, ...: every round's values exceed the last one's


async def _write_until_cancelled(dev, acked: list[tuple[int, float]], start: int) -> None:
    """Batches of ``vw 6 n`` (n increasing from ``start``) each followed by a PING; on its answer the
    batch is acknowledged: (last n, wall time) is appended to ``acked``."""
    n = start
    while True:
        for _ in range(BATCH):
            n += 1
            dev.virtual_write(COUNTER_PIN, n)
        ping_id = dev.send(Command.PING)
        while True:
            cmd, msg_id, body = await dev.frames.get()
            if cmd == Command.RESPONSE and msg_id == ping_id:
                assert body == Status.SUCCESS, f"ping answered {body}"
                acked.append((n, time.time()))
                break
            assert cmd != Command.RESPONSE, f"a write was rejected: {(cmd, msg_id, body)}"


async def test_kill9_loses_at_most_the_flush_interval(rig) -> None:
    seed = int(os.environ.get("BLYNK_KILL9_SEED", str(time.time_ns() % 10**6)))
    rnd = random.Random(seed)
    r = rig("--flush-interval", str(FLUSH), "--message-rate", "1000000")
    srv, token = r.srv, r.token()
    report = []
    for round_no in range(ROUNDS):
        if round_no:
            srv.start()
        dev = await connect(srv, token)
        acked: list[tuple[int, float]] = []
        writer = asyncio.create_task(_write_until_cancelled(dev, acked, ROUND_SPAN * (round_no + 1)))
        try:
            await asyncio.wait_for(asyncio.shield(writer), rnd.uniform(1.5 * FLUSH, 2.5 * FLUSH + 1.0))
        except TimeoutError:
            pass  # the random moment: the writer is still running
        assert not writer.done() or writer.exception() is None, writer.exception()
        safe = acked[-1][0] if acked else 0
        # A flush under way now may have taken its batch before that write: the one after it has it.
        flushes = await metric(srv, FLUSHES)
        await wait_metric(srv, FLUSHES, lambda v, after=flushes + 2: v >= after)
        assert not writer.done() or writer.exception() is None, writer.exception()
        t_kill = time.time()
        srv.kill()  # SIGKILL, our own server process
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await dev.close()

        check = integrity_check(srv.data_dir)
        assert check == "ok", f"round {round_no} (seed {seed}): integrity_check says {check}"
        row = stored_value(srv.data_dir, token, f"v{COUNTER_PIN}")
        persisted = int(row[0]) if row else 0
        assert persisted < ROUND_SPAN * (round_no + 2), persisted
        ack_of_persisted = next((t for n, t in acked if n >= persisted), None) if persisted else None
        report.append(
            {
                "round": round_no,
                "acked": acked[-1][0] if acked else 0,
                "persisted": persisted,
                "persisted_age_s": round(t_kill - ack_of_persisted, 3) if ack_of_persisted else None,
                "row_ts_age_s": round(t_kill - row[1] / 1000, 3) if row else None,
                "safe": safe,
            }
        )
        assert acked, f"round {round_no} (seed {seed}): no write was acknowledged before the kill"
        assert persisted >= safe, (
            f"round {round_no} (seed {seed}): write {safe}, acknowledged before a whole flush ran, is not"
            f" persisted (the database holds {persisted}); {report}"
        )

    srv.start()  # the last restart: the server starts on the killed data dir and serves the last value
    dev = await connect(srv, token)
    try:
        got = await read_pin(dev, COUNTER_PIN)
    finally:
        await dev.close()
    assert got == str(report[-1]["persisted"]).encode(), (got, report)
    print(f"kill -9 seed={seed} flush={FLUSH}s: {report}")
