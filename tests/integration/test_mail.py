"""E-mail end to end: the whole server in process (BlynkServer on the test's loop) and a real SMTP server
(aiosmtpd's protocol on 127.0.0.1, an ephemeral port) receiving what it sends. A device's EMAIL
command reaches the inbox; mail queued while SMTP is down is delivered when it comes up, and survives
a restart of the server; e-mail off answers status 14; a refused recipient is given up at once.

Nothing sleeps: each wait is on the inbox's queue or on a log line the outbox writes (an event)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import socket
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiosmtpd.smtp import SMTP, AuthResult

from blynk_server.app import API_KEY_FILE, BlynkServer
from blynk_server.devclient import DeviceClient
from blynk_server.model import Datastream
from protocol import Command, Status

from .conftest import running as server_running

WAIT = 10.0  # seconds: a bound against a hang, never reached when delivery works


class Inbox:
    """The aiosmtpd handler: every message accepted lands in ``messages``; recipients starting with
    ``nobody`` are refused for good (550)."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue = asyncio.Queue()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("nobody"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        await self.messages.put((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 Message accepted"

    async def next(self) -> tuple[str, list[str], email.message.EmailMessage]:
        return await asyncio.wait_for(self.messages.get(), WAIT)


@asynccontextmanager
async def smtp_server(port: int = 0, **options):
    inbox = Inbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(inbox, hostname="inbox.test", loop=loop, **options), "127.0.0.1", port
    )
    try:
        yield server.sockets[0].getsockname()[1], inbox
    finally:
        server.close()
        await server.wait_closed()


def free_port() -> int:
    """A loopback port nobody listens on (connections to it are refused): SMTP "down"."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OutboxLog(logging.Handler):
    """An asyncio event per phrase of the outbox's log ("delivery failed", "given up")."""

    def __init__(self, *phrases: str) -> None:
        super().__init__()
        self.events = {p: asyncio.Event() for p in phrases}

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        for phrase, event in self.events.items():
            if phrase in text:
                event.set()

    async def seen(self, phrase: str) -> None:
        await asyncio.wait_for(self.events[phrase].wait(), WAIT)


@pytest.fixture
def outbox_log():
    handler = OutboxLog("delivery failed", "given up")
    logger = logging.getLogger("blynk_server.outbox")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def running(data_dir, **settings):
    """The whole server on this loop (conftest ``running``), SMTP in plain text, retries at once."""
    base = dict(smtp_starttls=False, outbox_retry_base=0.05, outbox_retry_max=0.2, outbox_max_attempts=1000)
    return server_running(data_dir, **{**base, **settings})


async def new_device(srv: BlynkServer) -> str:
    template = await srv.provisioning.create_template("Mail", [Datastream("v1", "Value", "int")])
    return (await srv.provisioning.create_device(template.id, "Boiler")).token


@asynccontextmanager
async def device(srv: BlynkServer, token: str):
    host, port = srv.hardware.address
    client = await DeviceClient.connect(host, port, token)
    try:
        yield client
    finally:
        await client.close()


async def test_a_device_email_reaches_the_inbox(tmp_path):
    async with smtp_server() as (port, inbox), running(tmp_path / "data", smtp_host="127.0.0.1", smtp_port=port) as srv:
        token = await new_device(srv)
        async with device(srv, token) as dev:
            body = "ops@example.com\0Boiler: Überhitzung\0Temperature 97 °C\nCheck the pump.".encode()
            assert (await dev.request(Command.EMAIL, body))[2] == Status.SUCCESS
            sender, rcpts, msg = await inbox.next()
        assert sender == "blynk-server@localhost" and rcpts == ["ops@example.com"]
        assert msg["From"] == "blynk-server@localhost" and msg["To"] == "ops@example.com"
        assert msg["Subject"] == "Boiler: Überhitzung"
        assert msg["Date"] and msg["Message-ID"].endswith("@localhost>")
        assert msg.get_content().replace("\r\n", "\n").rstrip("\n") == "Temperature 97 °C\nCheck the pump."
        await asyncio.wait_for(srv.outbox.wait_idle(), WAIT)
        assert (srv.outbox.stats.delivered, srv.outbox.stats.depth) == (1, 0)
        key = (tmp_path / "data" / API_KEY_FILE).read_text().strip()
        host, admin_port = srv.admin_address
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://{host}:{admin_port}/metrics", headers={"Authorization": f"Bearer {key}"}) as resp,
        ):
            text = await resp.text()
        assert "blynk_outbox_delivered_total 1.0" in text and "blynk_outbox_depth 0.0" in text


async def test_mail_queued_while_smtp_is_down_is_delivered_when_it_comes_up(tmp_path, outbox_log):
    port = free_port()
    async with running(tmp_path / "data", smtp_host="127.0.0.1", smtp_port=port) as srv:
        token = await new_device(srv)
        async with device(srv, token) as dev:
            assert (await dev.request(Command.EMAIL, b"ops@example.com\0Queued\0while down"))[2] == Status.SUCCESS
        await outbox_log.seen("delivery failed")  # connection refused: kept, retried
        assert srv.outbox.stats.depth == 1
        async with smtp_server(port) as (_, inbox):
            _, rcpts, msg = await inbox.next()
        assert rcpts == ["ops@example.com"] and msg["Subject"] == "Queued"
        assert srv.outbox.stats.retried >= 1 and srv.outbox.stats.gave_up == 0


async def test_undelivered_mail_survives_a_restart(tmp_path, outbox_log):
    port = free_port()
    data = tmp_path / "data"
    async with running(data, smtp_host="127.0.0.1", smtp_port=port) as first:
        token = await new_device(first)
        async with device(first, token) as dev:
            reply = await dev.request(Command.EMAIL, b"ops@example.com\0Before the restart\0kept on disk")
            assert reply[2] == Status.SUCCESS
        await outbox_log.seen("delivery failed")
    # Stopped with the mail undelivered; the next server on the same data dir finds SMTP up.
    async with smtp_server(port) as (_, inbox), running(data, smtp_host="127.0.0.1", smtp_port=port) as second:
        _, rcpts, msg = await inbox.next()
        assert rcpts == ["ops@example.com"] and msg["Subject"] == "Before the restart"
        await asyncio.wait_for(second.outbox.wait_idle(), WAIT)
        assert second.outbox.stats.depth == 0
        rows = await second.store.run(second.store.query, "SELECT COUNT(*) FROM outbox")
        assert rows == [(0,)]


async def test_email_off_answers_14_and_notify_is_an_event(tmp_path, caplog):
    async with running(tmp_path / "data") as srv:  # no smtp_host
        token = await new_device(srv)
        async with device(srv, token) as dev:
            with caplog.at_level(logging.INFO, logger="blynk_server.hardware.session"):
                reply = await dev.request(Command.EMAIL, b"ops@example.com\0s\0b")
            assert reply[2] == Status.NTF_NOT_AUTHORIZED
            assert "e-mail is off" in caplog.text
            assert (await dev.request(Command.NOTIFY, b"Door opened"))[2] == Status.SUCCESS
            assert (await dev.request(Command.SMS, b"hi"))[2] == Status.NTF_NOT_AUTHORIZED
        assert srv.outbox.stats.enqueued == 0


async def test_a_refused_recipient_is_given_up_at_once(tmp_path, outbox_log):
    async with smtp_server() as (port, inbox), running(tmp_path / "data", smtp_host="127.0.0.1", smtp_port=port) as srv:
        token = await new_device(srv)
        async with device(srv, token) as dev:
            assert (await dev.request(Command.EMAIL, b"nobody@example.com\0s\0b"))[2] == Status.SUCCESS
        await outbox_log.seen("given up")
        s = srv.outbox.stats
        assert (s.gave_up, s.retried, s.delivered, s.depth) == (1, 0, 0, 0)
        assert inbox.messages.empty()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # loopback, a test
async def test_smtp_login_and_the_password_stays_out_of_the_log(tmp_path, outbox_log, caplog):
    def check(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == b"bot" and auth_data.password == b"right-pw"
        return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535

    data = tmp_path / "data"
    options = dict(auth_required=True, auth_require_tls=False, authenticator=check)
    with caplog.at_level(logging.DEBUG, logger="blynk_server"):
        async with smtp_server(**options) as (port, inbox):
            smtp = dict(smtp_host="127.0.0.1", smtp_port=port, smtp_user="bot")
            async with running(data, smtp_password="wrong-pw", **smtp) as first:
                token = await new_device(first)
                async with device(first, token) as dev:
                    assert (await dev.request(Command.EMAIL, b"ops@example.com\0s\0b"))[2] == Status.SUCCESS
                await outbox_log.seen("delivery failed")  # a refused login is retried, not given up
                assert first.outbox.stats.gave_up == 0 and inbox.messages.empty()
            async with running(data, smtp_password="right-pw", **smtp):  # the operator fixed the password
                _, rcpts, _ = await inbox.next()
                assert rcpts == ["ops@example.com"]
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("blynk_server")]
    assert any("login as 'bot' refused" in line for line in ours)
    assert not any("wrong-pw" in line or "right-pw" in line for line in ours)
