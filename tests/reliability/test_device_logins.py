"""Unauthenticated abuse of the device port (issue 10, findings 4 and 5).

A failed login is answered and its connection closed; each IP has a budget of failed logins, and
connections waiting for login are capped per IP and server-wide: over those, new connections are
closed at once, unanswered. Failures and refusals are logged as one summary line per interval.
A silent TCP connection on the TLS port is closed after the login timeout.
Other IPs are simulated with loopback source addresses (127.0.0.2, ...).
"""

from __future__ import annotations

import asyncio
import re
import ssl

import pytest

from blynk_server.config import Settings
from blynk_server.devclient import DeviceClient
from blynk_server.hardware.guard import MAX_TRACKED_IPS, LoginGuard
from blynk_server.hardware.stats import HardwareStats
from protocol import Command, Status, encode_frame

from .conftest import Control, assert_no_traceback, connect, metric, wait_metric, write_restart_read

# Multi-second runs (login floods against the per-IP and global caps): in the slow step of .ci/run, not the default run.
pytestmark = pytest.mark.slow


async def _open(srv, source: str = "127.0.0.1") -> DeviceClient:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port, local_addr=(source, 0))
    return DeviceClient(reader, writer)


async def _refused(srv, token: str, source: str = "127.0.0.1") -> None:
    """A new connection is closed without an answer, even to a valid login."""
    c = await _open(srv, source)
    try:
        c.send(Command.HW_LOGIN, token.encode())
        await asyncio.wait_for(c.closed.wait(), 5)
        assert c.frames.empty(), f"a refused connection was answered: {c.frames.get_nowait()}"
    finally:
        await c.close()


async def _failed_login(srv) -> None:
    """INVALID_TOKEN, then the server closes the connection."""
    c = await _open(srv)
    try:
        assert await c.login("x" * 32) == Status.INVALID_TOKEN
        await asyncio.wait_for(c.closed.wait(), 5)
    finally:
        await c.close()


async def _wait_log(srv, pattern: str, seconds: float = 5.0) -> re.Match:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (m := re.search(pattern, srv.stderr())) is None:
        assert loop.time() < deadline, f"no log line matching {pattern!r}"
        await asyncio.sleep(0.1)
    return m


async def test_failed_logins_close_and_are_summarised_not_logged_one_by_one(rig):
    r = rig(env={"BLYNK_FAILED_LOGIN_BURST": "1000", "BLYNK_AUTH_LOG_INTERVAL": "0.5"})
    control_token = r.token()
    async with Control(r.srv, control_token) as control:
        # Several tokens on one connection: the first answer is the last, the connection is closed.
        c = await _open(r.srv)
        c.send_raw(b"".join(encode_frame(Command.HW_LOGIN, msg_id, b"y" * 32) for msg_id in (1, 2, 3)))
        await asyncio.wait_for(c.closed.wait(), 5)
        assert [c.frames.get_nowait() for _ in range(c.frames.qsize())] == [(0, 1, Status.INVALID_TOKEN)]
        await c.close()
        for _ in range(29):
            await _failed_login(r.srv)
        for first in (encode_frame(Command.PING, 7, b""), bytes([Command.HW_LOGIN, 0, 8, 0xFF, 0xFF])):
            c = await _open(r.srv)  # a frame before login, then an oversize login header: closed too
            c.send_raw(first)
            await asyncio.wait_for(c.closed.wait(), 5)
            await c.close()
        await _wait_log(r.srv, r"not_logged_in=1 from 1 IPs")
    summaries = re.findall(r"refused logins in the last 0.5s: (.*)", r.srv.stderr())
    counts: dict[str, int] = {}
    for reason, n in (m for line in summaries for m in re.findall(r"(\w+)=(\d+) from 1 IPs", line)):
        counts[reason] = counts.get(reason, 0) + int(n)
    assert counts == {"invalid_token": 30, "not_logged_in": 1, "frame_too_large": 1}
    assert "invalid token" not in r.srv.stderr().lower() and "before login" not in r.srv.stderr()
    assert await metric(r.srv, "blynk_logins_total", result="invalid_token") == 30
    assert await metric(r.srv, "blynk_logins_total", result="frame_too_large") == 1
    assert control.stats.failures == []
    await write_restart_read(r.srv, control_token)
    assert_no_traceback(r.srv)


async def test_an_ip_out_of_failed_login_budget_is_refused_until_it_refills(rig):
    """Burst 3, refill 2/s: the 4th connection right after 3 failures is closed unanswered (a valid
    token too: the budget is per IP); half a second later the IP may log in again. Others' pings go on."""
    r = rig(env={"BLYNK_FAILED_LOGIN_BURST": "3", "BLYNK_FAILED_LOGINS_PER_IP": "2"})
    control_token, token = r.token(), r.token()
    async with Control(r.srv, control_token) as control:
        for _ in range(3):
            await _failed_login(r.srv)
        await _refused(r.srv, token)
        assert await metric(r.srv, "blynk_connections_refused_total", reason="budget_exhausted") >= 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while True:  # the budget refills at 2 tokens/s
            try:
                await (await connect(r.srv, token, timeout=0.5)).close()  # a refusal is never answered
                break
            except (TimeoutError, ConnectionError):
                assert loop.time() < deadline, "the failed-login budget never refilled"
                await asyncio.sleep(0.1)
    assert control.stats.failures == []
    await write_restart_read(r.srv, control_token)
    assert_no_traceback(r.srv)


async def test_connections_waiting_for_login_are_capped_per_ip_and_in_total(rig):
    """3 per IP, 4 in all. A slot is freed by a login, a close, or a hand-off to HTTP."""
    r = rig(env={"BLYNK_PENDING_LOGINS_PER_IP": "3", "BLYNK_MAX_PENDING_LOGINS": "4"})
    control_token, token = r.token(), r.token()
    async with Control(r.srv, control_token) as control:
        silent = [await _open(r.srv) for _ in range(3)]
        await wait_metric(r.srv, "blynk_connections_pending", lambda n: n == 3, 5)
        await _refused(r.srv, token)  # a 4th from 127.0.0.1
        other = await _open(r.srv, "127.0.0.2")
        await wait_metric(r.srv, "blynk_connections_pending", lambda n: n == 4, 5)
        await _refused(r.srv, token, "127.0.0.3")  # over the global cap
        assert await metric(r.srv, "blynk_connections_refused_total", reason="pending_per_ip") == 1
        assert await metric(r.srv, "blynk_connections_refused_total", reason="pending_global") == 1

        assert await silent[0].login(token) == Status.SUCCESS  # logged in: no longer pending
        await silent[1].close()  # closed
        silent[2].send_raw(f"GET /external/api/isHardwareConnected?token={token} HTTP/1.0\r\n\r\n".encode())
        await wait_metric(r.srv, "blynk_connections_pending", lambda n: n == 1, 5)  # only 127.0.0.2's is left
        fresh = [await _open(r.srv) for _ in range(3)]
        await wait_metric(r.srv, "blynk_connections_pending", lambda n: n == 4, 5)
        for c in (*silent, other, *fresh):
            await c.close()
    assert control.stats.failures == []
    await write_restart_read(r.srv, control_token)
    assert_no_traceback(r.srv)


async def test_a_silent_connection_on_the_tls_port_is_closed_after_the_login_timeout(make_server, cert):
    crt, key = cert
    srv = make_server("--tls-port", "0", "--cert", str(crt), "--key", str(key), env={"BLYNK_LOGIN_TIMEOUT": "1"})
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.tls_port)
    try:
        assert await asyncio.wait_for(reader.read(), 10) == b""  # no handshake started: closed
    finally:
        writer.close()
    ctx = ssl.create_default_context(cafile=str(crt))
    c = await DeviceClient.open("127.0.0.1", srv.tls_port, ssl=ctx)
    try:
        c.send_raw(encode_frame(Command.HW_LOGIN, 1, b"z" * 32))
        assert await c.recv() == (0, 1, Status.INVALID_TOKEN)
    finally:
        await c.close()
    assert_no_traceback(srv)


class _Clock:
    """Enough of an event loop for LoginGuard: a settable time and call_later that records."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback) -> None:
        self.timers.append(callback)


def test_login_guard_state_stays_bounded_whatever_the_number_of_ips():
    settings = Settings(failed_login_burst=2, failed_logins_per_ip=1.0, pending_logins_per_ip=1, max_pending_logins=10)
    clock, stats = _Clock(), HardwareStats()
    guard = LoginGuard(settings, clock, stats)  # type: ignore[arg-type]
    for i in range(3 * MAX_TRACKED_IPS):  # a scan from many addresses
        guard.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(guard._buckets) <= MAX_TRACKED_IPS and stats.login_budget_ips <= MAX_TRACKED_IPS
    guard.failed("192.0.2.1")
    guard.failed("192.0.2.1")
    assert guard.admit("192.0.2.1") == "budget_exhausted"
    clock.now += 1.0  # one token back
    assert guard.admit("192.0.2.1") is None and guard.admit("192.0.2.1") == "pending_per_ip"
    guard.release("192.0.2.1")
    assert stats.pending_logins == 0 and guard.pending_by_ip == {}
    assert stats.refused == {"budget_exhausted": 1, "pending_per_ip": 1, "pending_global": 0}
    assert len(clock.timers) == 1  # one summary line scheduled for the interval, not one per refusal
