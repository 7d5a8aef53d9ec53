"""The running server deletes history and events past ``history_days`` / ``events_days`` (issue 10,
finding 6), in the background, while devices keep working; the counts are in /metrics."""

from __future__ import annotations

import asyncio
import re
import sqlite3

import aiohttp

from blynk_server.model import now_ms

from .conftest import db_path, write_restart_read

DAY_MS = 86_400_000


async def _metrics(srv) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://{srv.admin_host}:{srv.admin_port}/metrics") as r:
        return await r.text()


def _value(text: str, sample: str) -> float:
    m = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def test_old_history_and_events_are_deleted_by_the_running_server(rig):
    r = rig()
    token = r.token()
    r.srv.stop()
    now = now_ms()
    conn = sqlite3.connect(db_path(r.srv.data_dir))
    (device_id,) = conn.execute("SELECT id FROM devices WHERE token = ?", (token,)).fetchone()
    old, recent = now - 10 * DAY_MS, now - DAY_MS // 2
    with conn:
        conn.executemany(
            "INSERT INTO history (device_id, pin, ts, value) VALUES (?, 'v1', ?, ?)",
            [(device_id, ts, b"1") for ts in [old + i for i in range(3000)] + [recent]],
        )
        conn.executemany(
            "INSERT INTO events (device_id, code, description, ts) VALUES (?, 'overheat', NULL, ?)",
            [(device_id, old), (device_id, recent)],
        )
    conn.close()

    r.srv.env.update({"BLYNK_HISTORY_DAYS": "2", "BLYNK_EVENTS_DAYS": "3", "BLYNK_RETENTION_INTERVAL": "1"})
    r.srv.start()
    text = ""
    for _ in range(100):  # the first pass runs one interval after start
        text = await _metrics(r.srv)
        if _value(text, "blynk_retention_runs_total") >= 1:
            break
        await asyncio.sleep(0.1)
    assert _value(text, 'blynk_retention_deleted_rows_total{table="history"}') == 3000
    assert _value(text, 'blynk_retention_deleted_rows_total{table="events"}') == 1
    conn = sqlite3.connect(f"file:{db_path(r.srv.data_dir)}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT ts FROM history WHERE device_id = ?", (device_id,)).fetchall() == [(recent,)]
        assert conn.execute("SELECT ts FROM events WHERE device_id = ?", (device_id,)).fetchall() == [(recent,)]
    finally:
        conn.close()
    await write_restart_read(r.srv, token)
