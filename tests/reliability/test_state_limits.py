"""Bounded state per device (issue 10, finding 6) and values checked before the store (finding 1), over
the binary protocol and the HTTP API: each attack gets its answer (11 over a limit, 1 over a rate,
2 for a bad value; HTTP 400), the device's stored state stays within its limits, another device keeps
being served, and a later write survives a restart.

Flood control is set out of the way (``BLYNK_MESSAGE_RATE``) so the limits under test give the answers.
"""

from __future__ import annotations

import sqlite3

import aiohttp
import pytest

from protocol import Command, Status
from protocol.body import join_fields

from .conftest import (
    Control,
    assert_no_traceback,
    connect,
    db_path,
    metric,
    rss_bytes,
    write_restart_read,
)

# Multi-second runs (attacks on the per-device state limits, with memory sampled): in the slow step of .ci/run, not the default run.
pytestmark = pytest.mark.slow

FAST = {"BLYNK_MESSAGE_RATE": "1000000"}
OK, QUOTA, BODY = Status.SUCCESS, Status.QUOTA_LIMIT, Status.ILLEGAL_COMMAND_BODY
ILLEGAL = Status.ILLEGAL_COMMAND


async def answers(client, frames: list[tuple[int, bytes]], timeout: float = 30.0) -> list[int]:
    """Send every frame at once (pipelined) and return the status answering each, in order."""
    ids = [client.send(command, body) for command, body in frames]
    wanted = set(ids)
    got: dict[int, int] = {}
    while len(got) < len(wanted):
        command, msg_id, status = await client.recv(timeout)
        if command == Command.RESPONSE and msg_id in wanted:
            got[msg_id] = status
    return [got[i] for i in ids]


def rows(srv, sql: str, *args) -> list[tuple]:
    """Read-only query of the server's database (safe while it runs)."""
    conn = sqlite3.connect(f"file:{db_path(srv.data_dir)}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def device_id(srv, token: str) -> int:
    return rows(srv, "SELECT id FROM devices WHERE token = ?", token)[0][0]


async def http_get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


def ext(srv, token: str, path: str, query: str) -> str:
    return f"http://{srv.host}:{srv.port}/external/api/{path}?token={token}&{query}"


async def test_properties_capped_per_pin_per_device_and_in_size(rig):
    r = rig(env=FAST)
    srv, token = r.srv, r.token()
    async with Control(srv, r.token()) as control:
        dev = await connect(srv, token)
        # The reported attack: 600 property messages with unique names (here ~1 KB values each).
        got = await answers(dev, [(Command.PROPERTY, join_fields(1, f"n{i}", "x" * 1000)) for i in range(600)])
        assert got == [OK] * 32 + [BODY] * 568
        # An existing name still updates; a value or name over 1,024 bytes does not.
        got = await answers(
            dev,
            [
                (Command.PROPERTY, join_fields(1, "n0", "updated")),
                (Command.PROPERTY, join_fields(1, "n1", "y" * 1025)),
                (Command.PROPERTY, join_fields(1, "z" * 1025, "v")),
            ],
        )
        assert got == [OK, BODY, BODY]
        # Unique names over many pins: 256 per device in all.
        got = await answers(dev, [(Command.PROPERTY, join_fields(2 + i % 200, f"m{i}", "v")) for i in range(600)])
        assert got.count(OK) == 256 - 32 and got.count(BODY) == 600 - 224
        # The HTTP API obeys the same caps.
        assert (await http_get(ext(srv, token, "update/property", "pin=v1&fresh=1")))[0] == 400
        assert (await http_get(ext(srv, token, "update/property", "pin=v1&n2=ok")))[0] == 200
        await dev.close()
    assert control.stats.failures == []
    await write_restart_read(srv, token)  # the store still flushes; the properties came back from it
    did = device_id(srv, token)
    count, size = rows(srv, "SELECT COUNT(*), SUM(LENGTH(value)) FROM properties WHERE device_id = ?", did)[0]
    assert count == 256 and size <= 32 * 1000 + 224 * 1 + 100
    assert rows(srv, "SELECT value FROM properties WHERE device_id = ? AND name = 'n0'", did) == [(b"updated",)]
    dev = await connect(srv, token)
    assert await answers(dev, [(Command.PROPERTY, join_fields(1, "after-restart", "v"))]) == [BODY]
    await dev.close()
    assert_no_traceback(srv)


async def test_event_codes_bounded_in_length_and_number(rig):
    r = rig(env={**FAST, "BLYNK_EVENTS_PER_DAY": "0"})
    srv, token = r.srv, r.token()
    srv.declare_events(r.template, *(f"code{i}" for i in range(100)))  # a template declares at most 100
    pid = srv.proc.pid
    async with Control(srv, r.token()) as control:
        dev = await connect(srv, token)
        before = rss_bytes(pid)
        # The reported attack: events with unique 30 KB codes (2,000 of them: 60 MB on the wire).
        for start in range(0, 2000, 250):
            frames = [(Command.EVENT_LOG, f"{i:05d}".encode() + b"c" * 30_000) for i in range(start, start + 250)]
            assert set(await answers(dev, frames)) == {BODY}
        grown = rss_bytes(pid) - before
        # Only the template's codes (100 at most): the others are refused; a known code is still
        # limited to one a second.
        got = await answers(dev, [(Command.EVENT_LOG, join_fields(f"code{i}", "d")) for i in range(150)])
        assert got == [OK] * 100 + [ILLEGAL] * 50
        assert await answers(dev, [(Command.EVENT_LOG, b"code0")]) == [QUOTA]
        assert await answers(dev, [(Command.EVENT_CLEAR, b"c" * 65)]) == [BODY]
        assert (await http_get(ext(srv, token, "logEvent", "code=" + "c" * 65)))[0] == 400
        assert (await http_get(ext(srv, token, "logEvent", "code=code150")))[0] == 400
        await dev.close()
    assert control.stats.failures == []
    assert grown < 40 * 2**20, f"RSS grew {grown / 2**20:.1f} MB during the 30 KB-code attack"
    await write_restart_read(srv, token)
    logged = "SELECT COUNT(*), MAX(LENGTH(code)) FROM events WHERE device_id = ? AND code NOT IN ('online', 'offline')"
    assert rows(srv, logged, device_id(srv, token)) == [(100, 6)]  # the device's own, not the system's
    assert_no_traceback(srv)


async def test_events_per_day_answered_with_quota(rig):
    r = rig(env={**FAST, "BLYNK_EVENTS_PER_DAY": "5"})
    srv, token, other = r.srv, r.token(), r.token()
    srv.declare_events(r.template, "http", *(f"e{i}" for i in range(8)))
    dev = await connect(srv, token)
    got = await answers(dev, [(Command.EVENT_LOG, f"e{i}".encode()) for i in range(8)])
    assert got == [OK] * 5 + [QUOTA] * 3
    status, body = await http_get(ext(srv, token, "logEvent", "code=http"))
    assert status == 400 and "at most 5 events a day" in body
    # The budget is per device: another device logs its own.
    peer = await connect(srv, other)
    assert await answers(peer, [(Command.EVENT_LOG, b"e0")]) == [OK]
    await peer.close()
    await dev.close()
    await write_restart_read(srv, token)
    logged = "SELECT COUNT(*) FROM events WHERE device_id = ? AND code NOT IN ('online', 'offline')"
    assert rows(srv, logged, device_id(srv, token)) == [(5,)]


async def test_metadata_fields_bounded_and_written_behind(rig):
    r = rig(env=FAST)
    srv, token = r.srv, r.token()
    async with Control(srv, r.token()) as control:
        dev = await connect(srv, token)
        # The reported attack: meta set with unique names (760 messages, ~1 KB values).
        meta = [(Command.INTERNAL, join_fields("meta", "set", f"k{i}", "v" * 1000)) for i in range(760)]
        got = await answers(dev, meta)
        assert got == [OK] * 64 + [BODY] * (760 - 64)
        got = await answers(
            dev,
            [
                (Command.INTERNAL, join_fields("meta", "set", "k0", "changed")),
                (Command.INTERNAL, join_fields("meta", "set", "k1", "v" * 1025)),
                (Command.INTERNAL, join_fields("meta", "set", "Timezone", "Europe/Kyiv")),
            ],
        )
        assert got == [OK, BODY, BODY]  # a 65th field, even a well-known one, is refused too
        assert (await http_get(ext(srv, token, "device/meta/update", "metaFieldId=k2&value=" + "v" * 1025)))[0] == 400
        await dev.close()
    assert control.stats.failures == []
    await write_restart_read(srv, token)
    did = device_id(srv, token)
    assert rows(srv, "SELECT COUNT(*) FROM device_meta WHERE device_id = ?", did) == [(64,)]
    dev = await connect(srv, token)
    assert (await dev.request(Command.INTERNAL, join_fields("meta", "get", "k0")))[2] == b"meta\x00k0\x00changed"
    await dev.close()
    assert_no_traceback(srv)


async def test_info_cache_bounded_by_bytes(rig):
    r = rig(env={**FAST, "BLYNK_INFO_CACHE_BYTES": "65536"})
    srv, token = r.srv, r.token()
    dev = await connect(srv, token)
    # Distinct info messages just under the 2,048-byte info limit: each would be cached for sharing.
    infos = [
        (Command.INTERNAL, join_fields("mcu", f"1.0.{i}", "build", "b" * 1900, "h-beat", "40", "buff-in", "1024"))
        for i in range(2000)
    ]
    assert set(await answers(dev, infos)) == {OK}
    gauges = {name: await metric(srv, name) for name in ("blynk_info_cache_bytes", "blynk_info_cache_entries")}
    assert 0 < gauges["blynk_info_cache_bytes"] <= 65536
    assert 0 < gauges["blynk_info_cache_entries"] <= 65536 // 3800
    assert await dev.ping() == OK
    await dev.close()
    await write_restart_read(srv, token)


async def test_timestamps_out_of_range_never_reach_the_store(rig):
    r = rig(env=FAST)
    srv, token = r.srv, r.token()
    dev = await connect(srv, token)
    for ts in (b"9223372036854775808", b"253402300800000", b"9" * 5000):
        got = await answers(dev, [(Command.GROUP, b"t\x00" + ts)])
        assert got == [Status.ILLEGAL_COMMAND], ts[:24]
    await dev.close()
    base = f"http://{srv.host}:{srv.port}/external/api/batch/update?token={token}&pin=v1"
    async with aiohttp.ClientSession() as s:
        for ts in (2**63, 253_402_300_800_000, -1):
            async with s.post(base, data=f"[[{ts}, 3]]", headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 400, ts
        legacy = f"http://{srv.host}:{srv.port}/{token}/extra/pin/v1"
        async with s.put(legacy, json=[{"timestamp": 2**63, "value": "1"}]) as resp:
            assert resp.status == 400
    await write_restart_read(srv, token)
    assert rows(srv, "SELECT COUNT(*) FROM history WHERE ts < 0 OR ts > 253402300799999") == [(0,)]
    assert_no_traceback(srv)
