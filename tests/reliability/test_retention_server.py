"""The running server deletes history and events past ``history_days`` / ``events_days`` (issue 10,
finding 6), in the background, while devices keep working; the counts are in /metrics."""

from __future__ import annotations

import sqlite3

from blynk_server.model import now_ms

from .conftest import db_path, metric, wait_metric, write_restart_read

DAY_MS = 86_400_000


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

    r.srv.env.update({"BLYNK_HISTORY_DAYS": "2", "BLYNK_EVENTS_DAYS": "3", "BLYNK_RETENTION_INTERVAL": "0.2"})
    r.srv.start()
    await wait_metric(r.srv, "blynk_retention_runs_total", lambda n: n >= 1)  # one interval (0.2 s) after start
    assert await metric(r.srv, "blynk_retention_deleted_rows_total", table="history") == 3000
    assert await metric(r.srv, "blynk_retention_deleted_rows_total", table="events") == 1
    conn = sqlite3.connect(f"file:{db_path(r.srv.data_dir)}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT ts FROM history WHERE device_id = ?", (device_id,)).fetchall() == [(recent,)]
        assert conn.execute("SELECT ts FROM events WHERE device_id = ?", (device_id,)).fetchall() == [(recent,)]
    finally:
        conn.close()
    await write_restart_read(r.srv, token)
