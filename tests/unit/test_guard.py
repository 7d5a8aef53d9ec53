"""LoginGuard: caps on connections waiting for login and per-IP failed-login budgets, on a fake clock;
and the same rules as a session sees them (tests/unit/fakes.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from blynk_server.config import Settings
from blynk_server.hardware.guard import LoginGuard
from blynk_server.hardware.stats import HardwareStats
from protocol import Command, Status
from tests.unit import fakes
from tests.unit.fakes import FakeLoop, response

world, world_factory = fakes.world, fakes.world_factory

A, B = "198.51.100.1", "198.51.100.2"


def guard(**settings) -> tuple[LoginGuard, FakeLoop, HardwareStats]:
    loop, stats = FakeLoop(), HardwareStats()
    return LoginGuard(dataclasses.replace(Settings(), **settings), loop, stats), loop, stats  # type: ignore[arg-type]


def test_pending_connections_are_capped_per_ip_and_in_total():
    g, _, stats = guard(pending_logins_per_ip=2, max_pending_logins=3)
    assert g.admit(A) is None and g.admit(A) is None
    assert g.admit(A) == "pending_per_ip"
    assert g.admit(B) is None
    assert g.admit("198.51.100.3") == "pending_global"
    assert stats.pending_logins == 3
    assert stats.refused == {"budget_exhausted": 0, "pending_per_ip": 1, "pending_global": 1}
    g.release(A)
    assert g.admit(A) is None  # a freed slot is taken again
    for ip in (A, A, B):
        g.release(ip)
    assert stats.pending_logins == 0 and g.pending_by_ip == {}


def test_a_failed_login_budget_empties_then_refills_at_the_rate():
    g, loop, stats = guard(failed_login_burst=3, failed_logins_per_ip=2.0)
    for _ in range(3):
        g.failed(A)
    assert g.admit(A) == "budget_exhausted"
    assert g.admit(B) is None  # per IP
    loop.advance(0.49)  # 0.98 of a token
    assert g.admit(A) == "budget_exhausted"
    loop.advance(0.02)
    assert g.admit(A) is None
    loop.advance(100.0)
    assert g._tokens(A, loop.time()) == 3.0  # never above the burst
    assert stats.refused["budget_exhausted"] == 2 and stats.login_budget_ips == 1


def test_refusals_are_summarised_in_one_line_per_interval(caplog):
    g, loop, _ = guard(auth_log_interval=10.0, pending_logins_per_ip=0)
    with caplog.at_level(logging.WARNING, logger="blynk_server.hardware.guard"):
        for i in range(500):
            g.admit(f"10.0.{i // 256}.{i % 256}")
        g.note("invalid_token", A)
        loop.advance(9.9)
        assert caplog.records == []
        loop.advance(0.2)
    assert len(caplog.records) == 1
    assert "invalid_token=1 from 1 IPs" in caplog.text and "pending_per_ip=500 from 500 IPs" in caplog.text
    loop.advance(100.0)
    assert len(caplog.records) == 1  # nothing new to say, nothing said


# --- as a session sees it ---------------------------------------------------------------------------


def test_an_ip_out_of_budget_is_closed_unanswered_until_it_refills(world_factory):
    w = world_factory(failed_login_burst=2, failed_logins_per_ip=1.0)
    for _ in range(2):
        dev = w.connect()
        assert dev.request(Command.HW_LOGIN, "bad") == [response(1, Status.INVALID_TOKEN)]
    dev = w.connect()  # even with a valid token
    assert dev.closed and dev.request(Command.HW_LOGIN, w.token) == []
    assert w.ctx.stats.refused["budget_exhausted"] == 1
    other = w.connect(peer=("203.0.113.99", 1))  # another IP is not affected
    assert not other.closed
    w.loop.advance(1.0)
    w.login()


def test_a_login_timeout_is_not_a_failed_login_but_a_garbage_frame_is(world_factory):
    w = world_factory(failed_login_burst=1)
    w.connect()
    w.loop.advance(w.settings.login_timeout + 1)
    w.login()  # the timeout did not use the budget
    garbage = w.connect()
    garbage.request(Command.PING)
    assert garbage.closed
    assert w.connect().closed  # budget_exhausted


@pytest.mark.parametrize("outcome", ["login", "close", "http"])
def test_a_pending_slot_is_freed_by_a_login_a_close_or_an_http_hand_off(world_factory, outcome):
    w = world_factory(pending_logins_per_ip=1)
    w.ctx.http_handoff = asyncio.Protocol  # takes the connection, does nothing
    dev = w.connect()
    assert w.connect().closed  # the IP's one slot is taken
    if outcome == "login":
        dev.request(Command.HW_LOGIN, w.token)
    elif outcome == "close":
        dev.session.close("test")
        w.loop.run_until_idle()
    else:
        dev.transport.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert w.ctx.stats.pending_logins == 0
    assert not w.connect().closed
