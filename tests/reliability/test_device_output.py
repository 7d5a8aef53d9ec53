"""Bounded output per device connection (issue 10, finding 2): a device that does not read its replies.

The attacker is a raw socket with a tiny receive buffer that never calls recv(): what the server
sends it piles up in the server's transport. Over ``write_buffer_high`` unsent bytes the server stops
reading it; over ``write_buffer_max``, or blocked longer than the device's read timeout, it closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket

import pytest

from protocol import Command, Status, encode_frame
from protocol.body import join_fields

from .conftest import Control, RssSampler, assert_no_traceback, connect, metric, wait_metric, write_restart_read

# Multi-second runs (devices that never read, until the caps and timeouts close them): in the slow step of .ci/run, not the default run.
pytestmark = pytest.mark.slow

RSS_BOUND_MB = 150  # the finding: 93 -> 545 MB in 3 s, and 529 MB after the close


async def _non_reader(srv, token: str, heartbeat: int) -> socket.socket:
    """A logged-in device (buff-in 65535) with a 1,000-byte value on V2 that will never read again."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", srv.port))
    info = join_fields("h-beat", heartbeat, "buff-in", 65535, "dev", "attacker")
    for frame in (
        encode_frame(Command.HW_LOGIN, 1, token.encode()),
        encode_frame(Command.INTERNAL, 2, info),
        encode_frame(Command.HARDWARE, 3, join_fields("vw", 2, "x" * 1000)),
    ):
        await loop.sock_sendall(sock, frame)
        if frame[0] != Command.HARDWARE:
            reply = await asyncio.wait_for(loop.sock_recv(sock, 5), 5)
            assert reply[3:] == Status.SUCCESS.to_bytes(2, "big")
    return sock


async def _send_until_closed(sock: socket.socket, data: bytes, seconds: float) -> bool:
    """Send ``data`` over and over until the server closes the connection (True) or ``seconds`` pass."""
    loop = asyncio.get_running_loop()

    async def forever() -> None:
        while True:
            await loop.sock_sendall(sock, data)

    try:
        await asyncio.wait_for(forever(), seconds)
    except TimeoutError:  # before OSError: on 3.11 it is the builtin TimeoutError, an OSError
        return False
    except (ConnectionError, OSError):
        return True
    return False  # not reached: forever() only ends by raising


async def test_a_device_that_does_not_read_is_paused_then_closed_and_memory_stays_bounded(rig):
    """Syncs of a 1 KB value as fast as the socket takes them, replies never read (flood control off,
    so only the output limits act). Over 64 KiB unsent the server stops reading it, so its output stops
    growing; blocked longer than its read timeout (h-beat 1 s -> 3 s) it is closed, counted as a slow
    reader, not as read-idle. RSS stays under the bound throughout."""
    r = rig(env={"BLYNK_MESSAGE_RATE": "1000000"})
    control_token, attacker_token = r.token(), r.token()
    sync = encode_frame(Command.HARDWARE_SYNC, 9, b"vr\x002") * 1000
    async with RssSampler(r.srv.proc.pid) as rss, Control(r.srv, control_token) as control:
        sock = await _non_reader(r.srv, attacker_token, heartbeat=1)
        with contextlib.closing(sock):
            assert await _send_until_closed(sock, sync, 15), "the server kept a non-reading device"
        assert await wait_metric(r.srv, "blynk_sessions_closed_slow_reader_total", bool, 5) == 1
        assert await metric(r.srv, "blynk_write_pauses_total") >= 1
        assert await metric(r.srv, "blynk_idle_timeouts_total") == 0
    assert rss.max_mb < RSS_BOUND_MB, f"server RSS reached {rss.max_mb} MB"
    assert control.stats.failures == [] and control.stats.writes_acked > 0
    assert re.search(r"slow reader: output blocked for \d+s \(timeout 3s\)", r.srv.stderr())
    await write_restart_read(r.srv, control_token)
    assert_no_traceback(r.srv)


async def test_a_device_over_the_unsent_cap_is_closed_at_once(rig):
    """One read's replies (hundreds of syncs) take the unsent bytes past write_buffer_max (here
    200 kB): closed there and then, its output dropped."""
    # The high-water mark at the cap: reading is not paused below it, so the unsent bytes reach it
    # however the server's reads are cut (with a lower mark, reading pauses first and only the
    # timeout acts, as the test above shows).
    env = {"BLYNK_MESSAGE_RATE": "1000000", "BLYNK_WRITE_BUFFER_MAX": "200000", "BLYNK_WRITE_BUFFER_HIGH": "200000"}
    r = rig(env=env)
    control_token, attacker_token = r.token(), r.token()
    # Each sync names 150 pins holding 1,000 bytes each: one frame's reply (150 kB) is over the cap
    # whatever else is unsent, however small the server's reads are while other sockets wait.
    pins = range(100, 250)
    sync = encode_frame(Command.HARDWARE_SYNC, 9, join_fields("vr", *pins)) * 20
    async with Control(r.srv, control_token) as control:
        sock = await _non_reader(r.srv, attacker_token, heartbeat=40)  # a 92 s timeout: only the cap acts
        with contextlib.closing(sock):
            loop = asyncio.get_running_loop()
            for pin in pins:
                await loop.sock_sendall(sock, encode_frame(Command.HARDWARE, 4, join_fields("vw", pin, "y" * 1000)))
            assert await _send_until_closed(sock, sync, 15), "the server kept a non-reading device"
        assert await wait_metric(r.srv, "blynk_sessions_closed_slow_reader_total", bool, 5) == 1
    assert control.stats.failures == [] and control.stats.rtts
    assert re.search(r"slow reader: \d+ bytes unsent \(write_buffer_max 200000\)", r.srv.stderr())
    await write_restart_read(r.srv, control_token)
    assert_no_traceback(r.srv)


async def test_a_replaced_device_that_does_not_read_its_last_output_is_dropped(rig):
    """A connection closed with output still queued (here: replaced by a newer login) gets
    ``CLOSE_GRACE`` (5 s) to send it; a device that never reads would otherwise keep it, and the
    connection, for good, and logging in again and again would pile them up."""
    limits = {"BLYNK_WRITE_BUFFER_HIGH": "64000000", "BLYNK_WRITE_BUFFER_MAX": "64000000"}
    r = rig(env={"BLYNK_MESSAGE_RATE": "1000000", **limits})
    token = r.token()
    pins = range(100, 250)
    sock = await _non_reader(r.srv, token, heartbeat=40)
    with contextlib.closing(sock):
        loop = asyncio.get_running_loop()
        for pin in pins:
            await loop.sock_sendall(sock, encode_frame(Command.HARDWARE, 4, join_fields("vw", pin, "y" * 1000)))
        # 60 syncs of 150 kB: more than the kernel's buffers take, so some of it waits in the server.
        await loop.sock_sendall(sock, encode_frame(Command.HARDWARE_SYNC, 9, join_fields("vr", *pins)) * 60)
        await wait_metric(r.srv, "blynk_messages_in_total", lambda n: n >= 60, command="hardware_sync")
        newer = await connect(r.srv, token)  # replaces it: the old one is closed with output queued
        try:
            # Fails here if the replaced connection stays open.
            assert await wait_metric(r.srv, "blynk_connections_open", lambda n: n <= 1) == 1
            assert await newer.ping() == Status.SUCCESS
        finally:
            await newer.close()
    assert_no_traceback(r.srv)
