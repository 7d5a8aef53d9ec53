"""The mailer in process: what it queues (a fake outbox records it), the message it builds, how SMTP
errors map to retried or permanent failures (aiosmtplib.send replaced), and the session's legacy
EMAIL and NOTIFY commands on a fake loop (tests/unit/fakes.py). The real SMTP exchange is in
tests/integration/test_mail.py."""

from __future__ import annotations

import email
import email.policy
import logging

import aiosmtplib
import pytest
from aiosmtplib.response import SMTPResponse

from blynk_server.config import Settings
from blynk_server.eventdefs import EventDef
from blynk_server.mailer import (
    DEVICE_MAIL_MAX_BYTES,
    Mailer,
    MailInvalid,
    MailNoRecipient,
    MailOff,
    MailTooSoon,
    build_message,
    parse_device_mail,
)
from blynk_server.outbox import DeliveryFailed
from protocol import Command, Status
from tests.unit import fakes
from tests.unit.fakes import response

world, world_factory = fakes.world, fakes.world_factory


class FakeOutbox:
    def __init__(self) -> None:
        self.kinds: dict = {}
        self.queued: list[tuple[str, dict]] = []

    def register(self, kind, deliver, on_gave_up=None) -> None:
        self.kinds[kind] = deliver

    def enqueue(self, kind: str, payload: dict) -> None:
        self.queued.append((kind, payload))


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


SMTP = dict(smtp_host="127.0.0.1", smtp_port=2525, smtp_from="Blynk <alerts@example.org>")


def mailer(clock=None, **kw) -> tuple[Mailer, FakeOutbox]:
    outbox = FakeOutbox()
    return Mailer(Settings(**{**SMTP, **kw}), outbox, clock or Clock()), outbox  # type: ignore[arg-type]


# --- the device's EMAIL body ----------------------------------------------------------------------


def test_device_mail_fields_are_to_subject_body():
    assert parse_device_mail(b"a@example.com\0Alarm\0Water level high") == (
        ["a@example.com"],
        "Alarm",
        "Water level high",
    )
    to, subject, body = parse_device_mail("a@example.com, b@example.com\0Grüße\0Température: 21 °C".encode())
    assert to == ["a@example.com", "b@example.com"] and subject == "Grüße" and body == "Température: 21 °C"
    # A subject cannot carry a header: line breaks become spaces.
    assert parse_device_mail(b"a@example.com\0x\r\nBcc: evil@example.com\0b")[1] == "x  Bcc: evil@example.com"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"Alarm\0Water level high", MailNoRecipient),  # the library's email(subject, msg)
        (b"just text", MailNoRecipient),
        (b"not-an-address\0s\0b", MailInvalid),
        (b"a@example.com>\0s\0b", MailInvalid),
        (b"a@b@\0s\0b", MailInvalid),
        (b"a@example.com\0\0b", MailInvalid),  # no subject
        (b"a@example.com\0s\0" + b"x" * DEVICE_MAIL_MAX_BYTES, MailInvalid),
        (b",".join(b"u%d@example.com" % i for i in range(11)) + b"\0s\0b", MailInvalid),
    ],
)
def test_device_mail_refusals(body, error):
    with pytest.raises(error):
        parse_device_mail(body)


def test_device_mail_without_an_address_goes_to_the_default_recipients():
    to, subject, body = parse_device_mail(b"Alarm\0Water level high", ("ops@example.com", "b@example.com"))
    assert (to, subject, body) == (["ops@example.com", "b@example.com"], "Alarm", "Water level high")
    with pytest.raises(MailNoRecipient):
        parse_device_mail(b"just text", ("ops@example.com",))


# --- send ------------------------------------------------------------------------------------------


def test_mail_off_without_smtp_host():
    outbox = FakeOutbox()
    m = Mailer(Settings(), outbox)  # type: ignore[arg-type]
    assert not m.enabled and outbox.kinds == {}
    with pytest.raises(MailOff, match="smtp_host"):
        m.send(["a@example.com"], "s", "b")
    with pytest.raises(MailOff):
        m.send_from_device(1, b"a@example.com\0s\0b")
    assert outbox.queued == []


def test_send_queues_a_complete_message():
    m, outbox = mailer()
    assert set(outbox.kinds) == {"email"}
    m.send(["a@example.com", "a@example.com", "b@example.com"], "Über\nheat", "Line 1\nLine 2 — ünïcode")
    [(kind, payload)] = outbox.queued
    assert kind == "email"
    assert payload["to"] == ["a@example.com", "b@example.com"]
    assert payload["subject"] == "Über heat"
    assert payload["date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert payload["message_id"].endswith("@example.org>")
    assert "password" not in str(payload)
    raw = bytes(build_message(payload, m.sender))
    got = email.message_from_bytes(raw, policy=email.policy.default)
    assert got["From"] == "Blynk <alerts@example.org>"
    assert got["To"] == "a@example.com, b@example.com"
    assert got["Subject"] == "Über heat"
    assert got["Date"] == payload["date"] and got["Message-ID"] == payload["message_id"]
    assert got.get_content().replace("\r\n", "\n").rstrip("\n") == "Line 1\nLine 2 — ünïcode"
    assert raw.isascii()  # 7-bit on the wire: any relay takes it


def test_a_device_mails_once_per_interval():
    clock = Clock()
    m, outbox = mailer(clock, email_device_interval=15.0)
    assert m.send_from_device(7, b"a@example.com\0s\0b") == ["a@example.com"]
    clock.t += 14.9
    with pytest.raises(MailTooSoon):
        m.send_from_device(7, b"a@example.com\0s\0b")
    m.send_from_device(8, b"a@example.com\0s\0b")  # another device has its own interval
    with pytest.raises(MailInvalid):  # a refused mail does not count
        m.send_from_device(9, b"bad\0s\0b")
    m.send_from_device(9, b"a@example.com\0s\0b")
    clock.t += 0.1
    m.send_from_device(7, b"a@example.com\0s\0b")
    assert len(outbox.queued) == 4


# --- delivery errors ---------------------------------------------------------------------------------


def refused(code: int) -> Exception:
    return aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(code, "no", "a@example.com")])


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (refused(550), True),
        (refused(450), False),
        (aiosmtplib.SMTPDataError(554, "rejected"), True),
        (aiosmtplib.SMTPSenderRefused(451, "later", "alerts@example.org"), False),
        (ConnectionRefusedError(111, "Connection refused"), False),
        (aiosmtplib.SMTPConnectError("cannot connect"), False),
        (aiosmtplib.SMTPServerDisconnected("gone"), False),
        (aiosmtplib.SMTPReadTimeoutError("slow"), False),
        (aiosmtplib.SMTPAuthenticationError(535, "bad credentials"), False),  # the config, not the message
        (aiosmtplib.SMTPNotSupported("no STARTTLS"), False),
    ],
)
async def test_smtp_errors_map_to_retry_or_permanent(monkeypatch, error, permanent):
    seen = {}

    async def fake_send(message, **kw):
        seen.update(kw)
        raise error

    monkeypatch.setattr(aiosmtplib, "send", fake_send)
    m, outbox = mailer(smtp_user="bot", smtp_password="s3cret-pw", smtp_starttls=False)
    m.send(["a@example.com"], "s", "b")
    with pytest.raises(DeliveryFailed) as info:
        await m.deliver(outbox.queued[0][1])
    assert info.value.permanent is permanent
    assert "s3cret-pw" not in str(info.value)
    assert seen["username"] == "bot" and seen["password"] == "s3cret-pw" and seen["start_tls"] is False
    assert seen["hostname"] == "127.0.0.1" and seen["port"] == 2525 and seen["recipients"] == ["a@example.com"]


async def test_some_recipients_refused_is_delivered(monkeypatch, caplog):
    async def fake_send(message, **kw):
        return {"b@example.com": SMTPResponse(550, "no such user")}, "ok"

    monkeypatch.setattr(aiosmtplib, "send", fake_send)
    m, outbox = mailer()
    m.send(["a@example.com", "b@example.com"], "s", "b")
    await m.deliver(outbox.queued[0][1])  # no DeliveryFailed: a@ got it and must not get it twice
    assert "b@example.com: 550" in caplog.text


async def test_no_user_no_auth_and_starttls_when_offered(monkeypatch):
    seen = {}

    async def fake_send(message, **kw):
        seen.update(kw)
        return {}, "ok"

    monkeypatch.setattr(aiosmtplib, "send", fake_send)
    m, outbox = mailer(smtp_password="ignored-without-user")
    m.send(["a@example.com"], "s", "b")
    await m.deliver(outbox.queued[0][1])
    assert seen["username"] is None and seen["password"] is None and seen["start_tls"] is None


# --- the session's legacy commands -------------------------------------------------------------------


def test_device_email_is_queued_and_answered(world):
    m, outbox = mailer(Clock())
    world.ctx.mailer = m
    dev = world.login()
    assert dev.request(Command.EMAIL, b"a@example.com\0Alarm\0Hot") == [response(2, Status.SUCCESS)]
    [(_, payload)] = outbox.queued
    assert (payload["to"], payload["subject"], payload["body"]) == (["a@example.com"], "Alarm", "Hot")
    assert dev.request(Command.EMAIL, b"a@example.com\0Alarm\0Hot") == [response(3, Status.QUOTA_LIMIT)]
    assert dev.request(Command.EMAIL, b"Alarm\0Hot") == [response(4, Status.NOT_ALLOWED)]
    assert dev.request(Command.EMAIL, b"nobody\0Alarm\0Hot") == [response(5, Status.NTF_INVALID_BODY)]
    assert len(outbox.queued) == 1 and not dev.closed


def test_device_email_without_an_address_goes_to_the_templates_email_event(world):
    m, outbox = mailer(Clock())
    world.ctx.mailer = m
    world.domain.event_defs.put("TMPLunit", EventDef("email", "E-mail", emails=("ops@example.com",)))
    dev = world.login()
    assert dev.request(Command.EMAIL, b"Alarm\0Hot") == [response(2, Status.SUCCESS)]
    assert outbox.queued[0][1]["to"] == ["ops@example.com"]


def test_device_email_when_mail_is_off(world, caplog):
    world.ctx.mailer = Mailer(Settings(), FakeOutbox())  # type: ignore[arg-type]  # no smtp_host
    dev = world.login()
    with caplog.at_level(logging.INFO, logger="blynk_server.hardware.session"):
        assert dev.request(Command.EMAIL, b"a@example.com\0s\0b") == [response(2, Status.NTF_NOT_AUTHORIZED)]
    assert "e-mail is off" in caplog.text


def test_notify_is_logged_as_the_notify_event(world):
    dev = world.login()
    assert dev.request(Command.NOTIFY, "Door opened — Küche".encode()) == [response(2, Status.SUCCESS)]
    events = [e for e in world.store._pending.events if e[0] == "log"]
    assert [(e[1], e[2], e[3]) for e in events] == [(world.device_id, "notify", "Door opened — Küche")]
    # The event's own limits apply: one of a code per second.
    assert dev.request(Command.NOTIFY, b"again") == [response(3, Status.QUOTA_LIMIT)]
    assert dev.request(Command.NOTIFY, b"") == [response(4, Status.NTF_INVALID_BODY)]
    assert dev.request(Command.NOTIFY, b"x" * 256) == [response(5, Status.NTF_INVALID_BODY)]


def test_push_sms_tweet_keep_status_14(world):
    world.ctx.mailer = mailer()[0]
    dev = world.login()
    for i, cmd in enumerate((Command.TWEET, Command.SMS)):  # 14 is NOTIFY: an event now
        assert dev.request(cmd, b"hello") == [response(2 + i, Status.NTF_NOT_AUTHORIZED)]
