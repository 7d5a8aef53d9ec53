"""E-mail over SMTP, through the durable outbox: ``send`` only queues (it never waits on the SMTP
server), the "email" deliverer sends with aiosmtplib.

- No ``smtp_host``: e-mail is off; ``send`` raises ``MailOff`` (a device's EMAIL gets status 14).
- Delivery: STARTTLS when the server offers it and ``smtp_starttls`` is on, AUTH when ``smtp_user`` is
  set, ``smtp_timeout`` for the whole exchange. A recipient refused for good (5xx), or a 5xx answer to
  the message, gives up at once; a connection error, a timeout, a 4xx or a failed login is retried
  with the outbox's backoff (a login failure is the server's configuration, not the message's).
- The message (From, To, Subject, Date, Message-ID; UTF-8 anywhere) gets its Date and Message-ID
  when queued, so a retried delivery is the same message.
- The password is never logged, nor put in the queue.
"""

from __future__ import annotations

import email.policy
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import aiosmtplib

from blynk_server.outbox import DeliveryFailed, Outbox

log = logging.getLogger(__name__)

KIND = "email"
MAX_RECIPIENTS = 10  # addresses of one e-mail
MAX_ADDRESS = 254  # characters of one address (RFC 5321 path limit)
MAX_SUBJECT = 255  # characters of a subject (longer ones are cut)
MAX_BODY = 64 * 1024  # characters of a body (longer ones are cut)
DEVICE_MAIL_MAX_BYTES = 4096  # a device's EMAIL frame body (the C++ library sends at most 1,200)
MAX_RATE_ENTRIES = 100_000  # devices remembered for the per-device interval before old ones are pruned


class MailOff(Exception):
    """E-mail is not configured (no ``smtp_host``)."""

    def __init__(self) -> None:
        super().__init__("e-mail is off: no SMTP server is configured (set smtp_host, --smtp-host)")


class MailRefused(ValueError):
    """An e-mail this server will not queue; the message says why."""


class MailInvalid(MailRefused):
    """A malformed or oversized e-mail (an address that cannot be one, no subject, too large)."""


class MailNoRecipient(MailRefused):
    """A device's e-mail that names no address (the library's ``email(subject, body)``)."""


class MailTooSoon(MailRefused):
    """A device's e-mail sooner than ``email_device_interval`` after its previous one."""


def check_address(addr: str) -> str:
    """One plain address ``local@domain`` (printable ASCII, no spaces or brackets), or MailInvalid:
    what reaches the SMTP envelope and the To header must not carry anything else."""
    addr = addr.strip()
    local, at, domain = addr.rpartition("@")
    if (
        not at
        or not local
        or not domain
        or len(addr) > MAX_ADDRESS
        or not addr.isascii()
        or not addr.isprintable()
        or any(c in addr for c in ' <>(),;:"[]\\')
        or "." not in domain
        or domain.startswith(".")
        or domain.endswith(".")
    ):
        raise MailInvalid(f"not an e-mail address: {addr[:80]!r}")
    return addr


def check_recipients(to: list[str] | tuple[str, ...]) -> list[str]:
    out = list(dict.fromkeys(check_address(a) for a in to))
    if not out:
        raise MailInvalid("no recipient")
    if len(out) > MAX_RECIPIENTS:
        raise MailInvalid(f"at most {MAX_RECIPIENTS} recipients")
    return out


def one_line(text: str, limit: int) -> str:
    """A header value: line breaks and control characters become spaces (no header injection)."""
    text = "".join(c if c.isprintable() else " " for c in text)
    return text.strip()[:limit]


def parse_device_mail(body: bytes, default_to: Sequence[str] = ()) -> tuple[list[str], str, str]:
    """A device's EMAIL body, as the Blynk libraries send it: ``to\\0subject\\0body`` (C++
    ``Blynk.email(to, subject, msg)``, blynklib's ``email(to, subject, body)``); ``to`` may list
    addresses separated by commas. ``subject\\0body`` (no address) goes to ``default_to`` (the
    template's recipients), or raises MailNoRecipient when there are none."""
    if len(body) > DEVICE_MAIL_MAX_BYTES:
        raise MailInvalid(f"e-mail body over {DEVICE_MAIL_MAX_BYTES} bytes")
    fields = body.decode("utf-8", "replace").split("\0")
    if len(fields) < 3:
        if len(fields) != 2 or not default_to:
            raise MailNoRecipient("the e-mail names no address and the template has no default recipients")
        fields = [",".join(default_to), *fields]
    to, subject, text = fields[0], fields[1], "\0".join(fields[2:])
    recipients = check_recipients([a for a in to.replace(";", ",").split(",") if a.strip()])
    subject = one_line(subject, MAX_SUBJECT)
    if not subject:
        raise MailInvalid("the e-mail has no subject")
    return recipients, subject, text.replace("\0", " ")


def build_message(payload: dict, sender: str) -> EmailMessage:
    """The message of a queued e-mail (its Date and Message-ID were fixed when it was queued)."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = ", ".join(payload["to"])
    msg["Subject"] = payload["subject"]
    msg["Date"] = payload["date"]
    msg["Message-ID"] = payload["message_id"]
    body = payload["body"]
    plain = body.isascii() and all(len(line) <= 900 for line in body.splitlines())
    msg.set_content(body, charset="utf-8", cte=None if plain else "quoted-printable")
    return msg


class Mailer:
    """Queues e-mails in the outbox and delivers them (the "email" kind)."""

    def __init__(self, settings, outbox: Outbox, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.outbox = outbox
        self.clock = clock
        self.enabled = bool(settings.smtp_host)
        self.device_interval = max(0.0, settings.email_device_interval)
        self._last_device_mail: dict[int, float] = {}
        sender = settings.smtp_from or "blynk-server@localhost"
        self.sender = sender
        self._msgid_domain = sender.rpartition("@")[2].strip(" >") or "localhost"
        if self.enabled:
            outbox.register(KIND, self.deliver)  # the outbox logs what it gives up, with the reason

    def send(self, to: list[str], subject: str, body: str) -> None:
        """Queue one e-mail (never waits). MailOff when e-mail is off, MailInvalid for a bad address."""
        if not self.enabled:
            raise MailOff()
        if isinstance(to, str):
            to = [to]
        payload = {
            "to": check_recipients(to),
            "subject": one_line(subject, MAX_SUBJECT),
            "body": body[:MAX_BODY],
            "date": format_datetime(datetime.fromtimestamp(self.clock(), UTC)),
            "message_id": make_msgid(domain=self._msgid_domain),
        }
        self.outbox.enqueue(KIND, payload)

    def send_from_device(self, device_id: int, body: bytes, default_to: Sequence[str] = ()) -> list[str]:
        """A device's EMAIL command: parse, check the device's interval, queue. Returns the recipients.
        ``default_to``: the template's recipients, for an e-mail that names none. MailOff,
        MailNoRecipient, MailInvalid or MailTooSoon say why not."""
        if not self.enabled:
            raise MailOff()
        to, subject, text = parse_device_mail(body, default_to)
        now = self.clock()
        last = self._last_device_mail.get(device_id)
        if last is not None and now - last < self.device_interval:
            raise MailTooSoon(f"at most one e-mail per {self.device_interval:g} s per device")
        self.send(to, subject, text)
        if len(self._last_device_mail) >= MAX_RATE_ENTRIES:
            self._prune(now)
        self._last_device_mail[device_id] = now
        return to

    def _prune(self, now: float) -> None:
        old = [d for d, t in self._last_device_mail.items() if now - t >= self.device_interval]
        for d in old:
            del self._last_device_mail[d]

    async def deliver(self, payload: dict) -> None:
        """The outbox's "email" deliverer: one SMTP session. Raises DeliveryFailed (permanent for a
        5xx refusal of the recipients or the message)."""
        s = self.settings
        msg = build_message(payload, self.sender)
        try:
            errors, _ = await aiosmtplib.send(
                msg,
                sender=self.sender,
                recipients=payload["to"],
                hostname=s.smtp_host,
                port=s.smtp_port,
                username=s.smtp_user or None,
                password=(s.smtp_password or None) if s.smtp_user else None,
                start_tls=None if s.smtp_starttls else False,  # None: when the server offers it
                timeout=s.smtp_timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            text = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            raise DeliveryFailed(f"recipients refused: {text}", permanent=all(c >= 500 for c in codes)) from None
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise DeliveryFailed(f"SMTP login as {s.smtp_user!r} refused: {exc.code} {exc.message}") from None
        except (OSError, aiosmtplib.SMTPNotSupported) as exc:  # connection, timeout, TLS
            raise DeliveryFailed(f"SMTP {s.smtp_host}:{s.smtp_port}: {type(exc).__name__}: {exc}") from None
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryFailed(f"SMTP answered {exc.code} {exc.message}", permanent=exc.code >= 500) from None
        except aiosmtplib.SMTPException as exc:
            raise DeliveryFailed(f"SMTP: {type(exc).__name__}: {exc}") from None
        if errors:  # some recipients refused, the others got it: not retried (they would get it twice)
            refused = ", ".join(f"{addr}: {r.code} {r.message}" for addr, r in errors.items())
            log.warning("e-mail %s delivered, but these recipients were refused: %s", payload["message_id"], refused)
        log.debug("e-mail %s delivered to %d recipients", payload["message_id"], len(payload["to"]) - len(errors))
