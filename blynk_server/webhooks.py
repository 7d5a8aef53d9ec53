"""Webhooks: outbound HTTP calls when something happens to a device (a datastream value, an event, the
device going online or offline), the way self-hosters feed Node-RED or Home Assistant.

Definitions live in a table of their own (``webhooks``), are loaded into memory at start and changed
only through this service's async methods, which store the change and then apply it. The reaction
listener runs on the event loop for every matching happening: it never waits, it only checks the
webhook's minimum interval and queues the call in the durable outbox (kind ``"webhook"``) with the
placeholder values of that moment. The outbox's workers call :meth:`Webhooks._deliver`, which renders the
request from the current definition and makes it with an aiohttp client (no redirects followed, one
``webhook_timeout`` for the whole call). A 2xx resets the webhook's consecutive failures; anything else
is a failure (retried with the outbox's backoff; a 3xx or a 4xx other than 408/429 is not retried), and
``webhook_max_failures`` failures in a row disable the webhook until it is enabled again.

Placeholders (``{name}`` in the URL, the headers and the body) carry what Blynk's webhooks call dynamic
data; the device token is never one of them. See ``PLACEHOLDERS``.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import aiohttp
from aiohttp import web

from blynk_server.config import Settings
from blynk_server.errors import Refused
from blynk_server.http.common import json_object
from blynk_server.model import now_ms
from blynk_server.outbox import DeliveryFailed
from blynk_server.reactions import EVENT, OFFLINE, ONLINE, VALUE, Happening

log = logging.getLogger(__name__)

KIND = "webhook"  # the outbox's kind of these calls
MAX_WEBHOOKS = 100  # definitions one server holds
MAX_HEADERS = 20
MAX_URL = 2048  # characters of the URL template
MAX_HEADER_VALUE = 1024  # characters of one header's template
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.'-]{0,79}")  # Blynk: letters, digits, -, ' and spaces, <= 80
HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")  # an HTTP token
FORBIDDEN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
PIN_RE = re.compile(r"([vVdDaA])(\d{1,3})")
RETRYABLE_4XX = (408, 429)
# Calls one webhook may queue per second (a bucket of as many): beyond it they are skipped and counted.
# A target that hangs or is slow cannot then fill the outbox at the devices' write rate: queueing costs
# the store's thread a row per call, and 10,000 rows/s slowed the device path (benchmarks/webhook_hang.py).
MAX_CALLS_PER_S = 100.0

CONTENT_TYPES = {  # short names accepted for the usual types
    "json": "application/json",
    "form": "application/x-www-form-urlencoded",
    "text": "text/plain; charset=utf-8",
}

# Placeholder -> what it holds. Blynk's webhook dynamic data names (Device Name, Datastream Value...)
# in snake case; ``{datastream_value}`` and ``{device_name}`` are the ones Blynk users know.
PLACEHOLDERS = {
    "device_id": "the device's numeric id",
    "device_name": "the device's name",
    "template_id": "the device's template id",
    "datastream_pin": "the pin written, as V1 (datastream triggers)",
    "datastream_value": "the value written; the items of a multi-value joined by commas",
    "event_code": "the event's code (event triggers)",
    "event_description": "the event's description, or empty",
    "event_level": "the event's level (info, warning, critical, content)",
    "trigger": "what happened: value, event, online, offline (or call, from an automation)",
    "webhook_name": "this webhook's name",
    "timestamp": "when it happened, ISO 8601 UTC with milliseconds (2024-05-01T12:00:00.123Z)",
    "timestamp_ms": "when it happened, Unix milliseconds",
}
TOKEN_NAMES = frozenset({"token", "device_token", "auth_token", "authtoken"})
PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
JSON_NUMBER_RE = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    method TEXT NOT NULL,
    headers TEXT NOT NULL,          -- JSON object of header templates
    body TEXT,
    content_type TEXT,
    trigger TEXT NOT NULL,          -- datastream:T:V1 | event:T:CODE | online:T | offline:T
    every_s REAL NOT NULL DEFAULT 0,
    enabled INTEGER NOT NULL DEFAULT 1,
    failures INTEGER NOT NULL DEFAULT 0,
    disabled_reason TEXT,
    created_at INTEGER NOT NULL
);
"""
COLUMNS = (
    "name, url, method, headers, body, content_type, trigger, every_s, enabled, failures, disabled_reason, created_at"
)


class WebhookError(Refused):
    """A refused definition or request; ``status`` is the admin API's answer (400, 404, 409)."""


class BodyTooLarge(WebhookError):
    """The rendered body is over ``webhook_max_body`` bytes: the call is not made."""


# --- templates --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Piece:
    """A literal run of a template, or one placeholder (``name``) and whether it sits inside a JSON
    string (``in_string``: escaped as string content; outside one it becomes a JSON value)."""

    literal: str = ""
    name: str | None = None
    in_string: bool = False


def compile_template(text: str, json_mode: bool = False) -> tuple[Piece, ...]:
    """Split ``text`` into pieces once, at definition time; refuse unknown placeholders and the token."""
    pieces: list[Piece] = []
    in_string = False
    pos = 0
    for m in PLACEHOLDER_RE.finditer(text):
        literal = text[pos : m.start()]
        if json_mode:
            in_string = _scan_json_strings(literal, in_string)
        name = m.group(1)
        if name.lower() in TOKEN_NAMES:
            raise WebhookError("The device token is never sent by a webhook: {" + name + "} is not a placeholder.")
        if name not in PLACEHOLDERS:
            raise WebhookError(f"Unknown placeholder {{{name}}}; known: " + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))
        if literal:
            pieces.append(Piece(literal))
        pieces.append(Piece(name=name, in_string=in_string))
        pos = m.end()
    if pos < len(text):
        pieces.append(Piece(text[pos:]))
    return tuple(pieces)


def _scan_json_strings(literal: str, in_string: bool) -> bool:
    """Whether the JSON text after ``literal`` is inside a string, given where it started."""
    escaped = False
    for ch in literal:
        if escaped:
            escaped = False
        elif ch == "\\" and in_string:
            escaped = True
        elif ch == '"':
            in_string = not in_string
    return in_string


Escape = Callable[[Piece, str | None], str]


def render(pieces: tuple[Piece, ...], values: dict[str, Any], escape: Escape) -> str:
    out = []
    for p in pieces:
        if p.name is None:
            out.append(p.literal)
        else:
            v = values.get(p.name)
            out.append(escape(p, None if v is None else str(v)))
    return "".join(out)


def escape_json(piece: Piece, value: str | None) -> str:
    """Inside a JSON string: the value's characters escaped. Outside: a JSON value of its own (a number
    as is, anything else a string, absent ``null``), so no value can add keys or break the document."""
    if piece.in_string:
        return "" if value is None else json.dumps(value, ensure_ascii=False)[1:-1]
    if value is None:
        return "null"
    return value if JSON_NUMBER_RE.fullmatch(value) else json.dumps(value, ensure_ascii=False)


def escape_form(piece: Piece, value: str | None) -> str:
    return quote_plus(value or "")


def escape_text(piece: Piece, value: str | None) -> str:
    return value or ""


def escape_url(piece: Piece, value: str | None) -> str:
    return quote(value or "", safe="")


def escape_header(piece: Piece, value: str | None) -> str:
    return (value or "").replace("\r", " ").replace("\n", " ")


def _sample_values() -> dict[str, str]:
    """Values that break naive templates (quotes, backslashes, newlines), to check a JSON body with."""
    return {name: 'x"\\\n' for name in PLACEHOLDERS}


# --- definitions ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trigger:
    kind: str  # reactions.VALUE / EVENT / ONLINE / OFFLINE
    template_id: str
    key: str | None = None  # the pin key (v1) of a value, the code of an event

    def __str__(self) -> str:
        if self.kind == VALUE:
            return f"datastream:{self.template_id}:{self.key.upper()}"  # type: ignore[union-attr]
        if self.kind == EVENT:
            return f"event:{self.template_id}:{self.key}"
        return f"{self.kind}:{self.template_id}"


def parse_trigger(text: str) -> Trigger:
    """``datastream:TEMPLATE:V1``, ``event:TEMPLATE:CODE``, ``online:TEMPLATE``, ``offline:TEMPLATE``."""
    kind, _, rest = str(text).strip().partition(":")
    kind = kind.lower()
    usage = "on must be datastream:TEMPLATE:V1, event:TEMPLATE:CODE, online:TEMPLATE or offline:TEMPLATE."
    if kind in ("online", "offline"):
        if not rest or ":" in rest:
            raise WebhookError(usage)
        return Trigger(ONLINE if kind == "online" else OFFLINE, rest)
    if kind in ("datastream", "event"):
        template_id, _, key = rest.partition(":")
        if not template_id or not key:
            raise WebhookError(usage)
        if kind == "event":
            if len(key) > 64:
                raise WebhookError("The event code is longer than 64 characters.")
            return Trigger(EVENT, template_id, key)
        m = PIN_RE.fullmatch(key)
        if m is None or int(m.group(2)) > 255:
            raise WebhookError(f"{key!r} is not a pin (V0..V255, D0..D255, A0..A255).")
        return Trigger(VALUE, template_id, f"{m.group(1).lower()}{int(m.group(2))}")
    raise WebhookError(usage)


@dataclass(slots=True)
class Counters:
    """One webhook's plain counters, read by the metrics collector at scrape time."""

    queued: int = 0  # calls put in the outbox
    ok: int = 0  # calls answered 2xx
    failed: int = 0  # calls that failed (each attempt)
    skipped_interval: int = 0  # happenings within every_s of the device's last call: not queued
    skipped_rate: int = 0  # over MAX_CALLS_PER_S: not queued
    skipped_off: int = 0  # queued calls dropped: the webhook was disabled or deleted meanwhile


@dataclass(slots=True, eq=False)
class Webhook:
    name: str
    url: str
    method: str
    trigger: Trigger
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    content_type: str | None = None
    every_s: float = 0.0
    enabled: bool = True
    failures: int = 0
    disabled_reason: str | None = None
    created_at: int = 0
    # Compiled once (not stored).
    url_pieces: tuple[Piece, ...] = ()
    header_pieces: dict[str, tuple[Piece, ...]] = field(default_factory=dict)
    body_pieces: tuple[Piece, ...] = ()
    counters: Counters = field(default_factory=Counters)
    bucket: float = MAX_CALLS_PER_S  # calls it may queue now (refilled at MAX_CALLS_PER_S)
    bucket_at: float | None = None  # when the bucket was last refilled (the service's clock)
    last_call: dict[int | None, float] = field(default_factory=dict)  # device id -> clock() (every_s)

    @property
    def json_body(self) -> bool:
        return self.content_type is not None and "json" in self.content_type.lower()

    def body_escape(self) -> Escape:
        ct = (self.content_type or "").lower()
        if "json" in ct:
            return escape_json
        if "x-www-form-urlencoded" in ct:
            return escape_form
        return escape_text

    def compile(self) -> None:
        self.url_pieces = compile_template(self.url)
        self.header_pieces = {k: compile_template(v) for k, v in self.headers.items()}
        self.body_pieces = compile_template(self.body, self.json_body) if self.body is not None else ()

    def render(self, values: dict[str, Any], max_body: int) -> tuple[str, dict[str, str], bytes | None]:
        """The call's URL, headers and body for these placeholder values."""
        url = render(self.url_pieces, values, escape_url)
        headers = {k: render(p, values, escape_header) for k, p in self.header_pieces.items()}
        if self.content_type and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = self.content_type
        body = None
        if self.body is not None:
            body = render(self.body_pieces, values, self.body_escape()).encode("utf-8")
            if len(body) > max_body:
                raise BodyTooLarge(f"the rendered body is {len(body)} bytes, over webhook_max_body ({max_body})")
        return url, headers, body

    def as_dict(self) -> dict:
        c = self.counters
        return {
            "name": self.name,
            "on": str(self.trigger),
            "url": self.url,
            "method": self.method,
            "headers": dict(self.headers),
            "body": self.body,
            "content_type": self.content_type,
            "every_s": self.every_s,
            "enabled": self.enabled,
            "failures": self.failures,
            "disabled_reason": self.disabled_reason,
            "created_at": self.created_at,
            "stats": {
                "queued": c.queued,
                "ok": c.ok,
                "failed": c.failed,
                "skipped_interval": c.skipped_interval,
                "skipped_rate": c.skipped_rate,
                "skipped_off": c.skipped_off,
            },
        }


def webhook_from_json(spec: dict, max_body: int) -> Webhook:
    """A definition from the admin API's JSON (the CLI sends the same), checked and compiled."""
    if not isinstance(spec, dict):
        raise WebhookError("Body must be a JSON object.")
    name = spec.get("name")
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None or name != name.strip():
        raise WebhookError(
            "name must be 1..80 letters, digits, spaces, -, _, . or ' (starting with a letter or digit)."
        )
    url = spec.get("url")
    if not isinstance(url, str) or not url:
        raise WebhookError("url is required.")
    if len(url) > MAX_URL:
        raise WebhookError(f"url is longer than {MAX_URL} characters.")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise WebhookError("url must be http:// or https://.")
    if not parts.hostname or "{" in parts.netloc:
        raise WebhookError("url must name a host (placeholders only in the path and query).")
    method = str(spec.get("method") or "POST").upper()
    if method not in METHODS:
        raise WebhookError("method must be one of " + ", ".join(METHODS) + ".")
    on = spec.get("on", spec.get("trigger"))
    if not isinstance(on, str):
        raise WebhookError("on is required (datastream:TEMPLATE:V1, event:TEMPLATE:CODE, online:T, offline:T).")
    trigger = parse_trigger(on)
    headers = spec.get("headers") or {}
    if isinstance(headers, list):  # ["K: V", ...] as on the command line
        headers = dict(_split_header(h) for h in headers)
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise WebhookError("headers must be an object of strings.")
    if len(headers) > MAX_HEADERS:
        raise WebhookError(f"At most {MAX_HEADERS} headers.")
    for k, v in headers.items():
        if HEADER_NAME_RE.fullmatch(k) is None or k.lower() in FORBIDDEN_HEADERS:
            raise WebhookError(f"{k!r} is not a header a webhook may set.")
        if len(v) > MAX_HEADER_VALUE or "\r" in v or "\n" in v:
            raise WebhookError(
                f"The value of header {k} is longer than {MAX_HEADER_VALUE} characters or has a newline."
            )
    body = spec.get("body")
    if body is not None and not isinstance(body, str):
        raise WebhookError("body must be a string (a template).")
    if body is not None and len(body.encode("utf-8")) > max_body:
        raise WebhookError(f"body is longer than webhook_max_body ({max_body} bytes).")
    content_type = spec.get("content_type")
    if content_type is not None:
        if not isinstance(content_type, str) or not content_type or "\n" in content_type or "\r" in content_type:
            raise WebhookError("content_type must be json, form, text or a media type.")
        content_type = CONTENT_TYPES.get(content_type.lower(), content_type)
    elif body is not None:
        content_type = CONTENT_TYPES["json"]
    every = spec.get("every_s", 0)
    if isinstance(every, bool) or not isinstance(every, (int, float)) or not 0 <= every <= 86400 * 365:
        raise WebhookError("every_s must be a number of seconds, 0 or more.")
    enabled = spec.get("enabled", True)
    if not isinstance(enabled, bool):
        raise WebhookError("enabled must be true or false.")
    hook = Webhook(
        name,
        url,
        method,
        trigger,
        dict(headers),
        body,
        content_type,
        float(every),
        enabled,
        created_at=now_ms(),
    )
    hook.compile()
    if hook.json_body and body is not None:
        try:
            json.loads(render(hook.body_pieces, _sample_values(), escape_json))
        except ValueError as exc:
            raise WebhookError(f"body is not JSON once its placeholders are filled: {exc}") from None
    return hook


def _split_header(text: Any) -> tuple[str, str]:
    if not isinstance(text, str) or ":" not in text:
        raise WebhookError(f"A header is NAME:VALUE, not {text!r}.")
    k, _, v = text.partition(":")
    return k.strip(), v.strip()


def _from_row(row: tuple) -> Webhook:
    name, url, method, headers, body, ctype, trigger, every, enabled, failures, reason, created = row
    hook = Webhook(
        name,
        url,
        method,
        parse_trigger(trigger),
        json.loads(headers),
        body,
        ctype,
        every,
        bool(enabled),
        failures,
        reason,
        created,
    )
    hook.compile()
    return hook


def happening_values(happening: Happening, webhook_name: str, trigger: str | None = None) -> dict[str, Any]:
    """The placeholder values of a happening, captured when it happens (they go into the outbox)."""
    dev: Any = happening.device
    record = getattr(dev, "record", None)
    ts = happening.ts
    value = happening.value
    return {
        "device_id": record.id if record is not None else None,
        "device_name": record.name if record is not None else None,
        "template_id": record.template_id if record is not None else None,
        "datastream_pin": happening.pin.upper() if happening.pin else None,
        "datastream_value": value.decode("utf-8", "replace").replace("\0", ",") if value is not None else None,
        "event_code": happening.code,
        "event_description": happening.description,
        "event_level": happening.level,
        "trigger": trigger or happening.kind,
        "webhook_name": webhook_name,
        "timestamp": iso_ms(ts),
        "timestamp_ms": ts,
    }


def iso_ms(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the service --------------------------------------------------------------------------------------


class Webhooks:
    """Webhook definitions, the reaction that queues calls, and the outbox deliverer that makes them.

    ``domain`` gives the reactions to listen to and the templates a trigger may name; ``outbox`` the
    durable queue (None in the CLI's direct mode, which only edits definitions)."""

    def __init__(self, store, domain, outbox, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.domain = domain
        self.outbox = outbox
        self.settings = settings
        self.clock = clock
        self.max_body = settings.webhook_max_body
        self.max_failures = settings.webhook_max_failures
        self._hooks: dict[str, Webhook] = {}
        self._by_trigger: dict[tuple[str, str, str | None], list[Webhook]] = {}
        self._session: aiohttp.ClientSession | None = None
        # Called with (webhook, reason, id of the device whose call failed last) when failures disable a
        # webhook: the events module records it on that device's timeline; the log has a WARNING line.
        self.on_disabled: list[Callable[[Webhook, str, int | None], None]] = []

    # --- lifecycle ---

    async def load(self) -> None:
        """Create the table if needed and read every definition (on the store's thread)."""
        await self.store.run(self.store.execute_script, SCHEMA)
        rows = await self.store.run(self.store.query, f"SELECT {COLUMNS} FROM webhooks ORDER BY name")
        self._hooks = {}
        for row in rows:
            try:
                hook = _from_row(row)
            except (WebhookError, ValueError) as exc:  # a row another version wrote: keep the others
                log.error("webhook %r not loaded: %s", row[0], exc)
                continue
            self._hooks[hook.name] = hook
        self._reindex()

    async def start(self) -> None:
        """Load, register the deliverer, listen to the domain's reactions."""
        await self.load()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.webhook_timeout),
            headers={"User-Agent": "blynk-server-webhook"},
            auto_decompress=False,
        )
        if self.outbox is not None:
            self.outbox.register(KIND, self._deliver, self._gave_up)
        if self.domain is not None:
            self.domain.reactions.listen(self._on_happening)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- definitions ---

    def list(self) -> list[Webhook]:
        return [self._hooks[n] for n in sorted(self._hooks)]

    def get(self, name: str) -> Webhook:
        hook = self._hooks.get(name)
        if hook is None:
            raise WebhookError(f"Webhook {name!r} not found.", 404)
        return hook

    async def create(self, spec: dict) -> Webhook:
        hook = webhook_from_json(spec, self.max_body)
        if hook.name in self._hooks:
            raise WebhookError(f"Webhook {hook.name!r} already exists.", 409)
        if len(self._hooks) >= MAX_WEBHOOKS:
            raise WebhookError(f"At most {MAX_WEBHOOKS} webhooks.", 409)
        if self.domain is not None and self.domain.template(hook.trigger.template_id) is None:
            raise WebhookError(f"Template {hook.trigger.template_id!r} not found.", 404)
        try:
            await self.store.run(
                self.store.execute,
                f"INSERT INTO webhooks ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    hook.name,
                    hook.url,
                    hook.method,
                    json.dumps(hook.headers),
                    hook.body,
                    hook.content_type,
                    str(hook.trigger),
                    hook.every_s,
                    int(hook.enabled),
                    0,
                    None,
                    hook.created_at,
                ),
            )
        except sqlite3.IntegrityError:  # created by a concurrent request meanwhile
            raise WebhookError(f"Webhook {hook.name!r} already exists.", 409) from None
        self._hooks[hook.name] = hook
        self._reindex()
        log.info("webhook created name=%s on=%s", hook.name, hook.trigger)
        return hook

    async def delete(self, name: str) -> None:
        self.get(name)
        await self.store.run(self.store.execute, "DELETE FROM webhooks WHERE name = ?", (name,))
        self._hooks.pop(name, None)
        self._reindex()
        log.info("webhook deleted name=%s", name)

    async def enable(self, name: str) -> Webhook:
        """Enable a webhook (again), its failure count back to 0."""
        hook = self.get(name)
        await self.store.run(
            self.store.execute,
            "UPDATE webhooks SET enabled = 1, failures = 0, disabled_reason = NULL WHERE name = ?",
            (name,),
        )
        hook.enabled, hook.failures, hook.disabled_reason = True, 0, None
        self._reindex()
        return hook

    def _reindex(self) -> None:
        by_trigger: dict[tuple[str, str, str | None], list[Webhook]] = {}
        for hook in self._hooks.values():
            if hook.enabled:
                t = hook.trigger
                by_trigger.setdefault((t.kind, t.template_id, t.key), []).append(hook)
        self._by_trigger = by_trigger
        if self.domain is not None:
            self.domain.reactions.watch_values(
                "webhooks",
                {
                    (t.template_id, t.key)
                    for t in (h.trigger for h in self._hooks.values() if h.enabled)
                    if t.kind == VALUE
                },
            )

    # --- triggering (on the event loop; never waits) ---

    def _on_happening(self, h: Happening) -> None:
        record = getattr(h.device, "record", None)
        if record is None:
            return
        key = h.pin if h.kind == VALUE else h.code if h.kind == EVENT else None
        hooks = self._by_trigger.get((h.kind, record.template_id, key))
        if hooks:
            for hook in hooks:
                self._queue(hook, h, None)

    def call(self, name: str, happening: Happening) -> bool:
        """Queue a call of ``name`` for ``happening`` (an automation's ``webhook:NAME`` action), whatever
        the webhook's trigger. False when it was not queued: disabled, or within its interval.
        An unknown name raises ``WebhookError`` (404)."""
        hook = self.get(name)
        if not hook.enabled:
            hook.counters.skipped_off += 1
            return False
        return self._queue(hook, happening, "call")

    def _queue(self, hook: Webhook, h: Happening, trigger: str | None) -> bool:
        """Every write of a watched pin comes here: the interval and the rate bound are checked first,
        with one clock read and no allocation, so a skipped call costs the device path next to nothing."""
        if self.outbox is None:
            return False
        now = self.clock()
        if hook.every_s > 0:
            record = getattr(h.device, "record", None)
            device_id = record.id if record is not None else None
            last = hook.last_call.get(device_id)
            if last is not None and now - last < hook.every_s:
                hook.counters.skipped_interval += 1
                return False
            hook.last_call[device_id] = now
        if not self._spend(hook, now):
            hook.counters.skipped_rate += 1
            return False
        self.outbox.enqueue(KIND, {"webhook": hook.name, "values": happening_values(h, hook.name, trigger)})
        hook.counters.queued += 1
        return True

    def _spend(self, hook: Webhook, now: float) -> bool:
        """One call from the webhook's bucket (MAX_CALLS_PER_S a second), False when it is empty."""
        bucket = hook.bucket
        if hook.bucket_at is not None:
            bucket += (now - hook.bucket_at) * MAX_CALLS_PER_S
            if bucket > MAX_CALLS_PER_S:
                bucket = MAX_CALLS_PER_S
        hook.bucket_at = now
        if bucket < 1.0:
            hook.bucket = bucket
            return False
        hook.bucket = bucket - 1.0
        return True

    # --- delivery (an outbox worker) ---

    async def _deliver(self, payload: dict) -> None:
        hook = self._hooks.get(payload.get("webhook", ""))
        if hook is None or not hook.enabled:
            if hook is not None:
                hook.counters.skipped_off += 1
            return  # deleted or disabled since it was queued: nothing to do
        try:
            url, headers, body = hook.render(payload.get("values") or {}, self.max_body)
        except BodyTooLarge as exc:
            raise DeliveryFailed(self._failed(hook, str(exc), payload), permanent=True) from None
        session = self._session
        if session is None:
            raise DeliveryFailed("webhooks are not started")
        try:
            async with session.request(hook.method, url, headers=headers, data=body, allow_redirects=False) as resp:
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise DeliveryFailed(self._failed(hook, reason, payload)) from None
        if 200 <= status < 300:
            hook.counters.ok += 1
            if hook.failures:
                hook.failures = 0
                self._persist_state(hook)
            return
        permanent = 300 <= status < 500 and status not in RETRYABLE_4XX
        reason = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
        message = self._failed(hook, reason, payload)
        raise DeliveryFailed(message, permanent=permanent or not hook.enabled)

    def _failed(self, hook: Webhook, reason: str, payload: dict) -> str:
        """Count a failed call; the ``webhook_max_failures``-th in a row disables the webhook."""
        hook.counters.failed += 1
        hook.failures += 1
        message = f"webhook {hook.name}: {reason}"
        if hook.enabled and self.max_failures and hook.failures >= self.max_failures:
            hook.enabled = False
            hook.disabled_reason = f"{hook.failures} consecutive failures, the last: {reason}"
            self._reindex()
            log.warning("webhook disabled name=%s: %s", hook.name, hook.disabled_reason)
            for hook_fn in self.on_disabled:
                try:
                    hook_fn(hook, hook.disabled_reason, (payload.get("values") or {}).get("device_id"))
                except Exception:
                    log.exception("webhook disabled hook failed")
        else:
            log.info("%s (failure %d of %d)", message, hook.failures, self.max_failures)
        self._persist_state(hook)
        return message

    def _gave_up(self, payload: dict, reason: str) -> None:
        log.warning("webhook call given up name=%s: %s", payload.get("webhook"), reason)

    def _persist_state(self, hook: Webhook) -> None:
        """Failures and enabled, written behind on the store's thread (the loop does not wait)."""
        fut = self.store.submit(
            self.store.execute,
            "UPDATE webhooks SET failures = ?, enabled = ?, disabled_reason = ? WHERE name = ?",
            (hook.failures, int(hook.enabled), hook.disabled_reason, hook.name),
        )
        fut.add_done_callback(_log_failure)


def _log_failure(fut) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("webhook state not stored: %s", fut.exception())


# --- admin API ------------------------------------------------------------------------------------------


def add_admin_routes(app: web.Application, webhooks: Webhooks) -> None:
    """``/api/webhooks``: list, create, show, delete, enable (the admin app's middleware checks the key)."""

    def guarded(fn):
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                return await fn(request)
            except WebhookError as exc:
                return web.json_response({"error": {"message": exc.message}}, status=exc.status)

        return handler

    async def list_hooks(request: web.Request) -> web.Response:
        return web.json_response([h.as_dict() for h in webhooks.list()])

    async def create(request: web.Request) -> web.Response:
        spec = await json_object(request)
        return web.json_response((await webhooks.create(spec)).as_dict(), status=201)

    async def show(request: web.Request) -> web.Response:
        return web.json_response(webhooks.get(request.match_info["name"]).as_dict())

    async def delete(request: web.Request) -> web.Response:
        await webhooks.delete(request.match_info["name"])
        return web.Response(status=204)

    async def enable(request: web.Request) -> web.Response:
        return web.json_response((await webhooks.enable(request.match_info["name"])).as_dict())

    r = app.router
    r.add_get("/api/webhooks", guarded(list_hooks))
    r.add_post("/api/webhooks", guarded(create))
    r.add_get("/api/webhooks/{name}", guarded(show))
    r.add_delete("/api/webhooks/{name}", guarded(delete))
    r.add_post("/api/webhooks/{name}/enable", guarded(enable))


# --- metrics ----------------------------------------------------------------------------------------------


def webhook_metrics(webhooks: Webhooks) -> Iterator[Any]:
    """Per-webhook families (label ``name``), built at scrape time from the plain counters."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    calls = CounterMetricFamily(
        "blynk_webhook_calls",
        "Webhook calls by result (ok: 2xx; failed: each failed attempt)",
        labels=["name", "result"],
    )
    skipped = CounterMetricFamily(
        "blynk_webhook_calls_skipped",
        "Webhook calls not made: within every_s of the device's last (interval), over the webhook's calls/s (rate),"
        " or disabled/deleted while queued (off)",
        labels=["name", "reason"],
    )
    queued = CounterMetricFamily("blynk_webhook_calls_queued", "Webhook calls put in the outbox", labels=["name"])
    disabled = GaugeMetricFamily("blynk_webhook_disabled", "1 when the webhook is disabled", labels=["name"])
    failures = GaugeMetricFamily(
        "blynk_webhook_consecutive_failures", "Failed calls since the webhook's last success", labels=["name"]
    )
    for hook in webhooks.list():
        c = hook.counters
        calls.add_metric([hook.name, "ok"], c.ok)
        calls.add_metric([hook.name, "failed"], c.failed)
        skipped.add_metric([hook.name, "interval"], c.skipped_interval)
        skipped.add_metric([hook.name, "rate"], c.skipped_rate)
        skipped.add_metric([hook.name, "off"], c.skipped_off)
        queued.add_metric([hook.name], c.queued)
        disabled.add_metric([hook.name], 0 if hook.enabled else 1)
        failures.add_metric([hook.name], hook.failures)
    yield from (calls, skipped, queued, disabled, failures)


__all__ = [
    "PLACEHOLDERS",
    "Webhook",
    "WebhookError",
    "Webhooks",
    "add_admin_routes",
    "compile_template",
    "parse_trigger",
    "webhook_metrics",
]
