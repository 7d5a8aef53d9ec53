"""Login, the login deadline, the heartbeat deadline, replaced connections and the HTTP hand-off: a
HardwareSession driven in process on a fake clock (tests/unit/fakes.py)."""

from __future__ import annotations

import asyncio

import pytest

from blynk_server.config import read_timeout
from blynk_server.hardware.deadlines import RESOLUTION
from protocol import Command, Status, encode_frame
from protocol.body import join_fields
from tests.unit import fakes
from tests.unit.fakes import response

world, world_factory, both_twins = fakes.world, fakes.world_factory, fakes.both_twins
pytestmark = pytest.mark.usefixtures("both_twins")  # each test on the compiled and the pure twin


def info(**fields) -> bytes:
    return join_fields(*[x for kv in fields.items() for x in (kv[0].replace("_", "-"), kv[1])])


# --- login ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [Command.HW_LOGIN, Command.LOGIN])
def test_login_ok_attaches_to_the_hub_and_marks_online(world, command):
    dev = world.connect()
    assert world.ctx.stats.pending_logins == 1
    assert dev.request(command, world.token) == [response(1, Status.SUCCESS)]
    session = dev.session
    assert world.hub.link(world.device_id) is session
    assert session.device.id == world.device_id and session.device.online
    assert world.ctx.stats.logins["ok"] == 1 and world.ctx.stats.pending_logins == 0
    assert session in world.ctx.sessions
    assert not dev.closed
    assert dev.request(command, world.token) == [response(2, Status.ALREADY_REGISTERED)]


def test_login_runs_the_login_hooks_a_failing_hook_does_not_stop_the_login(world, caplog):
    seen = []
    world.ctx.login_hooks.append(lambda link: 1 / 0)
    world.ctx.login_hooks.append(seen.append)
    dev = world.login()
    assert seen == [dev.session]
    assert "login hook failed" in caplog.text


def test_invalid_token_is_answered_then_the_connection_closed_and_charged_to_the_ip(world):
    dev = world.connect()
    assert dev.request(Command.HW_LOGIN, "x" * 32) == [response(1, Status.INVALID_TOKEN)]
    assert dev.closed and dev.transport.lost  # connection_lost ran (next loop turn)
    assert world.ctx.stats.logins["invalid_token"] == 1
    assert world.hub.link(world.device_id) is None
    assert world.ctx.stats.pending_logins == 0 and dev.session not in world.ctx.sessions
    assert world.ctx.guard._tokens("203.0.113.7", world.loop.time()) == world.settings.failed_login_burst - 1


def test_an_empty_token_is_invalid(world):
    dev = world.connect()
    assert dev.request(Command.LOGIN, b"") == [response(1, Status.INVALID_TOKEN)]
    assert dev.closed


def test_a_command_before_login_closes_unanswered(world):
    dev = world.connect()
    assert dev.request(Command.PING) == []
    assert dev.closed
    assert world.ctx.stats.logins["not_logged_in"] == 1


def test_frames_after_the_login_in_the_same_read_are_handled(world):
    dev = world.connect()
    dev.transport.feed(encode_frame(Command.HW_LOGIN, 1, world.token.encode()) + encode_frame(Command.PING, 2))
    world.loop.run_until_idle()
    assert dev.frames() == [response(1, Status.SUCCESS), response(2, Status.SUCCESS)]


def test_a_newer_connection_replaces_the_older_one(world):
    first = world.login(peer=("203.0.113.7", 1))
    second = world.login(peer=("203.0.113.7", 2))
    assert first.closed and not second.closed
    assert world.hub.link(world.device_id) is second.session
    assert world.ctx.stats.replaced == 1
    assert second.session.device.online  # the old session's connection_lost did not mark it offline


def test_connection_lost_detaches_and_marks_offline(world):
    dev = world.login()
    offline = []
    world.domain.on_device_offline.append(offline.append)
    dev.session.close("test")
    world.loop.run_until_idle()
    assert dev.transport.lost
    assert world.hub.link(world.device_id) is None
    assert offline == [dev.session.device] and not dev.session.device.online
    assert dev.session not in world.ctx.sessions


# --- the login deadline ---------------------------------------------------------------------------


def test_login_timeout_fires_at_the_deadline_and_not_before(world):
    dev = world.connect()
    timeout = world.settings.login_timeout
    world.loop.advance(timeout - RESOLUTION / 2)
    assert not dev.closed
    world.loop.advance(RESOLUTION)
    assert dev.closed and dev.transport.lost
    assert dev.frames() == []  # closed unanswered
    assert world.ctx.stats.logins["timeout"] == 1
    assert world.ctx.stats.pending_logins == 0
    assert world.ctx.guard._tokens("203.0.113.7", world.loop.time()) == world.settings.failed_login_burst  # not charged


def test_a_partial_login_frame_does_not_extend_the_login_deadline(world):
    dev = world.connect()
    world.loop.advance(world.settings.login_timeout / 2)
    dev.transport.feed(encode_frame(Command.HW_LOGIN, 1, world.token.encode())[:7])
    world.loop.advance(world.settings.login_timeout / 2 + RESOLUTION)
    assert dev.closed and world.ctx.stats.logins["timeout"] == 1


def test_a_login_cancels_the_login_deadline(world):
    dev = world.connect()
    world.loop.advance(world.settings.login_timeout - 1)
    dev.request(Command.HW_LOGIN, world.token)
    world.loop.advance(2)
    assert not dev.closed


# --- the heartbeat deadline -----------------------------------------------------------------------


def test_without_info_the_default_heartbeat_timeout_applies(world):
    dev = world.login()
    timeout = world.settings.heartbeat_timeout_default
    assert timeout == read_timeout(world.settings.default_heartbeat)
    world.loop.advance(timeout - RESOLUTION / 2)
    assert not dev.closed
    world.loop.advance(RESOLUTION)
    assert dev.closed
    assert world.ctx.stats.idle_timeouts == 1
    assert world.hub.link(world.device_id) is None


@pytest.mark.parametrize("heartbeat", [10, 40, 1])
def test_the_heartbeat_from_info_times_2_3_is_the_read_idle_timeout(world, heartbeat):
    dev = world.login()
    assert dev.request(Command.INTERNAL, info(h_beat=heartbeat)) == [response(2, Status.SUCCESS)]
    timeout = read_timeout(heartbeat)  # ceil(heartbeat x 2.3): 10 -> 23, 40 -> 92
    assert dev.session.timeout == timeout
    world.loop.advance(timeout - RESOLUTION / 2)
    assert not dev.closed
    world.loop.advance(RESOLUTION)
    assert dev.closed and world.ctx.stats.idle_timeouts == 1


def test_every_read_moves_the_idle_deadline(world):
    dev = world.login()
    dev.request(Command.INTERNAL, info(h_beat=10))  # timeout 23 s
    for _ in range(10):  # a ping every 20 s for 200 s
        world.loop.advance(20)
        assert dev.request(Command.PING)[-1][2] == Status.SUCCESS
    world.loop.advance(22.5)
    assert not dev.closed
    world.loop.advance(0.5 + RESOLUTION)
    assert dev.closed


def test_ping_is_answered_alone_and_among_other_frames(world):
    dev = world.login()
    assert dev.request(Command.PING) == [response(2, Status.SUCCESS)]  # the lone-ping shortcut
    dev.transport.feed(encode_frame(Command.PING, 7) + encode_frame(Command.PING, 8))
    assert dev.frames() == [response(7, Status.SUCCESS), response(8, Status.SUCCESS)]
    assert world.ctx.stats.messages_in[Command.PING] == 3


# --- the HTTP hand-off ------------------------------------------------------------------------------


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport = None
        self.data = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data


@pytest.mark.parametrize("chunks", [[b"GET / HTTP/1.1\r\n\r\n"], [b"G", b"E", b"T", b" /x HTTP/1.0\r\n\r\n"]])
def test_http_is_handed_off_with_its_first_bytes(world, chunks):
    handed = []
    world.ctx.http_handoff = lambda: handed.append(Recorder()) or handed[-1]
    dev = world.connect()
    for chunk in chunks:
        dev.transport.feed(chunk)
    assert len(handed) == 1
    assert dev.transport.protocol is handed[0] and handed[0].transport is dev.transport
    assert handed[0].data == b"".join(chunks)
    assert world.ctx.stats.pending_logins == 0 and dev.session not in world.ctx.sessions
    world.loop.advance(world.settings.login_timeout * 2)  # no login deadline left behind
    assert not dev.transport.closing


def test_without_http_an_http_request_is_not_a_login(world):
    """Read as a binary frame header (command 'G', length 0x202f): an incomplete frame, unanswered
    until the login deadline closes the connection."""
    dev = world.connect()
    dev.transport.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert not dev.closed and dev.frames() == []
    world.loop.advance(world.settings.login_timeout + RESOLUTION)
    assert dev.closed and world.ctx.stats.logins["timeout"] == 1
