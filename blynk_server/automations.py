"""Automations: rules of trigger -> actions, the legacy server's Eventor and Timer.

A rule has one trigger and up to ``MAX_ACTIONS`` actions::

    TMPLabc:V1 > 30            a datastream condition on every device of a template (edge: fires when it
    device:42:V1 changed       becomes true, see below), or on one device (id or token; stored by id)
    event:TMPLabc:overheat     an event logged on a device of the template (or ``event:device:42:CODE``)
    online:TMPLabc             a device of the template comes online / goes offline
    offline:device:42
    cron "0 7 * * *" / "07:30" a schedule in a time zone (default UTC), croniter; "HH:MM" is daily

    write:42:V2=1              write a datastream of a device; it reaches the device like an HTTP update
    event:42:CODE              log an event on a device
    email:ops@example.com      send an e-mail (through the Mailer: the durable outbox)
    webhook:NAME               call a webhook (through Webhooks: the durable outbox)

Rules live in the table ``automations`` (created here), loaded at start; a change goes to the store,
then to the running service (``create``/``delete``), and the service tells ``Reactions`` which
(template, pin) values it wants (``watch_values``), so an unwatched write costs the device path nothing.

Edges. For each (rule, device) the service keeps whether the condition held for the last value it
saw (for ``changed``: the last value), in memory. That state is seeded when the rule is loaded or
created from the value the server holds for the pin, so a restart or a new rule does not fire for a
value that was already above the threshold. A device with no value yet has no state: its first value
fires when the condition holds (a ``changed`` rule fires on it). The state follows every value, also
the ones whose run is skipped by the guards below, so it always matches the stored value.

Guards. Actions run synchronously in the listener (they are all non-blocking calls: an in-memory
write, a queued e-mail or webhook call) with ``reactions.depth`` set to the trigger's depth + 1, so
what they cause carries it. A happening at ``automation_max_depth`` or deeper triggers no automation
(counted, logged once per ``LOG_INTERVAL``): two rules writing each other's trigger stop there. Each
automation runs at most ``automation_runs_per_minute`` times in any 60 s; further runs are skipped and
counted. A schedule that missed several due times (the server was down, the clock jumped) runs once.

Runs are recorded in ``automation_runs`` (written behind through ``store.submit``; the last
``RUNS_KEPT`` per automation are kept): the trigger (device id, pin, value, code; never a token) and
each action's outcome.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from croniter import croniter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from blynk_server.config import Settings
from blynk_server.domain import DeviceState, Domain, InvalidValue, coerce_value
from blynk_server.errors import Refused
from blynk_server.http.common import LogBudget, json_error, json_object
from blynk_server.model import now_ms
from blynk_server.reactions import EVENT, OFFLINE, ONLINE, VALUE, Happening
from blynk_server.store import SqliteStore
from protocol.body import Pin

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS automations (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS automation_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    automation TEXT NOT NULL,
    ts INTEGER NOT NULL,
    trigger TEXT NOT NULL,
    outcomes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS automation_runs_by_name ON automation_runs (automation, id);
"""

SCHEDULE = "schedule"  # the kind of the happening a schedule's run passes to webhooks (device None)
OPERATORS = (">=", "<=", "==", "!=", ">", "<")
CHANGED = "changed"
MAX_NAME = 64
MAX_ACTIONS = 16
MAX_RUNS_QUERY = 1000
RUNS_KEPT = 100  # runs kept per automation
RATE_WINDOW = 60.0  # seconds of automation_runs_per_minute
LOG_INTERVAL = 60.0  # seconds between log lines about loop-guard stops and skipped runs
MAX_TIMER = 60.0  # the schedule timer wakes at least this often (a clock jump is noticed within it)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]*$")
PIN_RE = re.compile(r"^([vVdDaA])([0-9]{1,3})$")
VALUE_RE = re.compile(r"^(.+?):([vVdDaA][0-9]{1,3})\s*(>=|<=|==|!=|>|<|changed\b)\s*(.*)$", re.S)
DAILY_RE = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$")
EMAIL_RE = re.compile(r"^[^@\s,;<>\"]+@[^@\s,;<>\"]+$")
WEBHOOK_RE = re.compile(r"^[^\s/]{1,64}$")


class AutomationError(Refused):
    """A refused definition or request; ``status`` is the admin API's answer (the CLI prints it)."""


class MailerLike(Protocol):
    def send(self, to: list[str], subject: str, body: str) -> None: ...


class WebhooksLike(Protocol):
    def call(self, name: str, happening: Happening) -> None: ...


# --- parsing -----------------------------------------------------------------------------------


def parse_pin(text: str) -> Pin:
    """``V1``/``v1``/``D3``/``A0`` (the letter is required, 0..255)."""
    m = PIN_RE.match(text.strip())
    if m is None or int(m.group(2)) > 255:
        raise AutomationError(f"{text.strip()[:16]!r} is not a pin (V0..V255, D.., A..).")
    return Pin(m.group(1).lower(), int(m.group(2)))


def _number(raw: bytes | str) -> float | None:
    try:
        x = float(raw)
    except (ValueError, TypeError):
        return None
    return x if math.isfinite(x) else None


@dataclass(frozen=True, slots=True)
class Scope:
    """What a trigger or action names: a template (``template``) or one device (``device``, its id)."""

    template: str | None = None
    device: int | None = None

    def text(self) -> str:
        return f"device:{self.device}" if self.device is not None else str(self.template)


# A resolver turns what a user wrote (a template id, a device id or token, with an optional
# ``template:``/``device:`` prefix) into a Scope, checking it exists; ``devices_only`` for actions.
Resolver = Callable[[str | None, str, bool], Scope]


def _stored_scope(kind: str | None, ref: str, devices_only: bool) -> Scope:
    """The resolver for stored (canonical) rules: ``device:ID`` or a template id; an action's bare ref
    is a device id."""
    if kind == "device" or devices_only:
        if not ref.isdigit():
            raise AutomationError(f"stored rule names device {ref[:8]!r}…, not an id")
        return Scope(device=int(ref))
    return Scope(template=ref)


def _split_scope(text: str) -> tuple[str | None, str, str]:
    """``device:42:rest`` -> ("device", "42", "rest"); ``TMPL:rest`` -> (None, "TMPL", "rest")."""
    kind = None
    for prefix in ("device:", "template:"):
        if text.startswith(prefix):
            kind, text = prefix[:-1], text[len(prefix) :]
            break
    ref, sep, rest = text.partition(":")
    if not ref or not sep:
        raise AutomationError("expected TEMPLATE:… or DEVICE:… (an id or a token).")
    return kind, ref.strip(), rest


@dataclass(frozen=True, slots=True)
class Trigger:
    """One rule's trigger; ``text()`` is its canonical form (what is stored and shown)."""

    kind: str  # VALUE, EVENT, ONLINE, OFFLINE or SCHEDULE
    scope: Scope = Scope()
    pin: Pin | None = None
    op: str | None = None
    operand: str | None = None
    number: float | None = None  # the operand as a number, when it is one
    code: str | None = None
    cron: str | None = None  # as given: a cron expression or daily "HH:MM"
    tz: str = "UTC"

    def text(self) -> str:
        if self.kind == VALUE:
            tail = f" {self.op}" if self.op == CHANGED else f" {self.op} {self.operand}"
            return f"{self.scope.text()}:{self.pin}{tail}"
        if self.kind == EVENT:
            return f"event:{self.scope.text()}:{self.code}"
        if self.kind in (ONLINE, OFFLINE):
            return f"{self.kind}:{self.scope.text()}"
        return f"cron:{self.cron} {self.tz}"

    def holds(self, value: bytes) -> bool:
        """The condition on one value: numbers compare as numbers; ``==``/``!=`` compare text when
        either side is not a number; an ordering against a non-number is false."""
        op = self.op
        x = _number(value) if self.number is not None else None
        if x is not None:
            y = self.number
            if op == ">":
                return x > y
            if op == "<":
                return x < y
            if op == ">=":
                return x >= y
            if op == "<=":
                return x <= y
            if op == "==":
                return x == y
            return x != y
        if op == "==":
            return value.decode("utf-8", "replace") == self.operand
        if op == "!=":
            return value.decode("utf-8", "replace") != self.operand
        return False

    def next_run(self, after: float) -> float:
        """The first due time strictly after ``after`` (epoch seconds), in the trigger's time zone."""
        start = datetime.fromtimestamp(after, ZoneInfo(self.tz))
        return croniter(cron_expression(self.cron or ""), start).get_next(float)


def cron_expression(text: str) -> str:
    """A five-field cron expression, or daily ``HH:MM`` turned into one."""
    m = DAILY_RE.match(text.strip())
    if m:
        return f"{int(m.group(2))} {int(m.group(1))} * * *"
    return " ".join(text.split())


def parse_schedule(cron: str, tz: str | None) -> Trigger:
    cron = " ".join(str(cron).split())
    expr = cron_expression(cron)
    if len(expr.split()) != 5 or not croniter.is_valid(expr):
        raise AutomationError(f"cron {cron!r}: expected five fields (minute hour day month weekday) or HH:MM.")
    tz = (tz or "UTC").strip()
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise AutomationError(f"unknown time zone {tz!r} (an IANA name such as Europe/Berlin).") from None
    return Trigger(SCHEDULE, cron=cron, tz=tz)


def parse_when(text: str, resolve: Resolver = _stored_scope) -> Trigger:
    """A trigger from its text; ``resolve`` checks and resolves the template or device it names."""
    text = str(text).strip()
    if text.startswith("cron:"):
        expr, _, tz = text[5:].strip().rpartition(" ")
        return parse_schedule(expr, tz)
    for kind in (EVENT, ONLINE, OFFLINE):
        if text.startswith(kind + ":"):
            rest = text[len(kind) + 1 :]
            if kind == EVENT:
                scope_kind, ref, code = _split_scope(rest)
                code = code.strip()
                if not code:
                    raise AutomationError("event trigger: expected event:TEMPLATE:CODE.")
                return Trigger(EVENT, resolve(scope_kind, ref, False), code=code)
            scope_kind, ref, tail = _split_scope(rest + ":")
            if tail:
                raise AutomationError(f"{kind} trigger: expected {kind}:TEMPLATE.")
            return Trigger(kind, resolve(scope_kind, ref, False))
    m = VALUE_RE.match(text)
    if m is None:
        raise AutomationError(
            f"cannot read the trigger {text[:80]!r}: expected TEMPLATE:V1 > 30, DEVICE:V1 changed,"
            " event:TEMPLATE:CODE, online:TEMPLATE or offline:TEMPLATE."
        )
    scope_text, pin_text, op, operand = m.groups()
    scope_kind, ref, _ = _split_scope(scope_text + ":")
    pin = parse_pin(pin_text)
    operand = operand.strip()
    if op == CHANGED:
        if operand:
            raise AutomationError("'changed' takes no value.")
        return Trigger(VALUE, resolve(scope_kind, ref, False), pin, CHANGED)
    if not operand:
        raise AutomationError(f"{op} needs a value, e.g. {pin} {op} 30.")
    number = _number(operand)
    if number is None and op not in ("==", "!="):
        raise AutomationError(f"{op} needs a number, not {operand[:32]!r}.")
    return Trigger(VALUE, resolve(scope_kind, ref, False), pin, op, operand, number)


@dataclass(frozen=True, slots=True)
class Action:
    kind: str  # "write", "event", "email", "webhook"
    device: int | None = None
    pin: Pin | None = None
    value: bytes = b""
    code: str | None = None
    target: str | None = None  # an e-mail address or a webhook name

    def text(self) -> str:
        if self.kind == "write":
            return f"write:{self.device}:{self.pin}={self.value.decode('utf-8', 'replace')}"
        if self.kind == "event":
            return f"event:{self.device}:{self.code}"
        return f"{self.kind}:{self.target}"


def parse_action(text: str, resolve: Resolver = _stored_scope) -> Action:
    text = str(text).strip()
    kind, _, rest = text.partition(":")
    if kind == "write":
        scope_kind, ref, assignment = _split_scope(rest)
        pin_text, eq, value = assignment.partition("=")
        if not eq:
            raise AutomationError(f"write: expected write:DEVICE:V2=VALUE, not {text[:80]!r}.")
        scope = resolve(scope_kind or "device", ref, True)
        return Action("write", scope.device, parse_pin(pin_text), value.strip().encode())
    if kind == "event":
        scope_kind, ref, code = _split_scope(rest)
        if not code.strip():
            raise AutomationError("event: expected event:DEVICE:CODE.")
        return Action("event", resolve(scope_kind or "device", ref, True).device, code=code.strip())
    if kind == "email":
        if not EMAIL_RE.match(rest.strip()):
            raise AutomationError(f"email: {rest.strip()[:80]!r} is not an e-mail address.")
        return Action("email", target=rest.strip())
    if kind == "webhook":
        if not WEBHOOK_RE.match(rest.strip()):
            raise AutomationError("webhook: expected webhook:NAME.")
        return Action("webhook", target=rest.strip())
    raise AutomationError(
        f"cannot read the action {text[:80]!r}: expected write:DEVICE:V2=1, event:DEVICE:CODE,"
        " email:ADDRESS or webhook:NAME."
    )


# --- the rules in memory --------------------------------------------------------------------------


_MISSING = object()


@dataclass(eq=False, slots=True)
class Rule:
    name: str
    trigger: Trigger
    actions: tuple[Action, ...]
    created_at: int
    # Per device: whether the condition held for the last value seen (``changed``: that value).
    state: dict[int, object] = field(default_factory=dict)
    recent: deque = field(default_factory=deque)  # times of the runs in the last RATE_WINDOW
    next_due: float | None = None  # schedules

    def spec(self) -> dict:
        """What is stored: canonical texts, no token."""
        t = self.trigger
        if t.kind == SCHEDULE:
            out: dict[str, Any] = {"cron": t.cron, "tz": t.tz}
        else:
            out = {"when": t.text()}
        out["do"] = [a.text() for a in self.actions]
        return out

    def edge(self, device_id: int, value: bytes) -> bool:
        """Take a device's new value; True when the condition has just become true (or, for
        ``changed``, the value differs from the last one; a first value counts)."""
        t = self.trigger
        state = self.state
        if t.op == CHANGED:
            prev = state.get(device_id, _MISSING)
            state[device_id] = value
            return prev is _MISSING or prev != value
        now = t.holds(value)
        prev = state.get(device_id, False)
        state[device_id] = now
        return now and not prev


def rule_from_spec(name: str, spec: dict, created_at: int, resolve: Resolver = _stored_scope) -> Rule:
    """A rule from its stored (or submitted) spec: ``when`` or ``cron`` [+ ``tz``], and ``do``."""
    when, cron, tz, do = spec.get("when"), spec.get("cron"), spec.get("tz"), spec.get("do")
    if (when is None) == (cron is None):
        raise AutomationError("give exactly one of when (a condition, event, online/offline) and cron.")
    if cron is None and tz is not None:
        raise AutomationError("tz goes with cron.")
    if (when is not None and not isinstance(when, str)) or (cron is not None and not isinstance(cron, str)):
        raise AutomationError("when and cron are strings.")
    if tz is not None and not isinstance(tz, str):
        raise AutomationError("tz is a string.")
    trigger = parse_schedule(cron, tz) if cron is not None else parse_when(when, resolve)
    if not isinstance(do, list) or not do or not all(isinstance(a, str) for a in do):
        raise AutomationError("do must be a non-empty list of actions (write:…, event:…, email:…, webhook:…).")
    if len(do) > MAX_ACTIONS:
        raise AutomationError(f"at most {MAX_ACTIONS} actions.")
    return Rule(name, trigger, tuple(parse_action(a, resolve) for a in do), created_at)


def check_name(name: object) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or not NAME_RE.match(name):
        raise AutomationError(
            f"an automation's name is 1..{MAX_NAME} letters, digits, spaces, '_', '-' and '.', starting"
            " with a letter or digit."
        )
    return name


# --- the store's side (on its writer thread) ------------------------------------------------------


def _load(store: SqliteStore) -> list[tuple]:
    store.execute_script(SCHEMA)
    return store.query("SELECT name, spec, created_at FROM automations ORDER BY name")


def _delete(store: SqliteStore, name: str) -> None:
    store.execute("DELETE FROM automation_runs WHERE automation = ?", (name,))
    store.execute("DELETE FROM automations WHERE name = ?", (name,))


def _record_run(store: SqliteStore, name: str, ts: int, trigger: str, outcomes: str, keep: int) -> None:
    store.execute(
        "INSERT INTO automation_runs (automation, ts, trigger, outcomes) VALUES (?, ?, ?, ?)",
        (name, ts, trigger, outcomes),
    )
    store.execute(  # an indexed look at one row past the kept ones: cheap at each run
        "DELETE FROM automation_runs WHERE automation = ? AND id <= (SELECT id FROM automation_runs"
        " WHERE automation = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (name, name, keep),
    )


def _runs(store: SqliteStore, name: str, limit: int) -> list[tuple]:
    return store.query(
        "SELECT id, ts, trigger, outcomes FROM automation_runs WHERE automation = ? ORDER BY id DESC LIMIT ?",
        (name, limit),
    )


# --- the service ----------------------------------------------------------------------------------


class AutomationStats:
    """Plain counters for ``/metrics`` (``automation_metrics``)."""

    __slots__ = ("runs", "skipped", "loop_stops", "action_failures", "rules")

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()  # by automation
        self.skipped: Counter[str] = Counter()  # over automation_runs_per_minute, by automation
        self.loop_stops = 0  # runs not started: their trigger was at automation_max_depth
        self.action_failures: Counter[str] = Counter()  # by action kind
        self.rules = 0


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Automations:
    """The rules, their triggers on ``domain.reactions`` and on a schedule, their runs."""

    def __init__(
        self,
        store: SqliteStore,
        domain: Domain,
        settings: Settings,
        mailer: MailerLike | None = None,
        webhooks: WebhooksLike | None = None,
        clock: Callable[[], float] = time.time,
        runs_kept: int = RUNS_KEPT,
    ) -> None:
        self.store = store
        self.domain = domain
        self.mailer = mailer
        self.webhooks = webhooks
        self.clock = clock
        self.max_depth = settings.automation_max_depth
        self.runs_per_minute = settings.automation_runs_per_minute
        self.max_event_code = settings.max_event_code
        self.runs_kept = runs_kept
        self.stats = AutomationStats()
        self.rules: dict[str, Rule] = {}
        self._by_value: dict[tuple[str, str], list[Rule]] = {}
        self._by_event: dict[tuple[str, str], list[Rule]] = {}
        self._by_presence: dict[tuple[str, str], list[Rule]] = {}  # (kind, template id)
        self._schedules: list[Rule] = []
        self._timer = None
        self._loop = None
        self._loop_log = LogBudget(1, LOG_INTERVAL)
        self._skip_log = LogBudget(1, LOG_INTERVAL)
        self._fail_log = LogBudget(10, LOG_INTERVAL)

    # --- life ---------------------------------------------------------------------------------

    async def load(self) -> None:
        """Create the tables and read the rules (a stored rule that no longer parses is logged, skipped)."""
        for name, spec, created_at in await self.store.run(_load, self.store):
            try:
                rule = rule_from_spec(name, json.loads(spec), created_at)
            except (AutomationError, ValueError) as exc:
                log.error("automation %r not loaded: %s", name, exc)
                continue
            self._put(rule)
        self._rebuild()

    async def start(self) -> None:
        """Load, listen to what happens to devices, and arm the schedule timer."""
        self._loop = asyncio.get_running_loop()
        await self.load()
        self.domain.reactions.listen(self.on_happening)
        self._arm()
        log.info("automations: %d loaded", len(self.rules))

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None

    # --- changes (store, then apply) ------------------------------------------------------------

    def _resolver(self) -> Resolver:
        domain = self.domain

        def resolve(kind: str | None, ref: str, devices_only: bool) -> Scope:
            if kind in (None, "template") and not devices_only and domain.template(ref) is not None:
                return Scope(template=ref)
            if kind == "template":
                raise AutomationError(f"no template {ref!r}.", 404)
            dev = domain.device(int(ref)) if ref.isdigit() else None
            dev = dev or domain.device_by_token(ref)
            if dev is None:
                what = "device" if devices_only or kind == "device" else "template or device"
                raise AutomationError(f"no {what} {ref!r}.", 404)
            return Scope(device=dev.id)

        return resolve

    def _check(self, rule: Rule) -> None:
        """What parsing cannot see: the written pin's datastream and value, event codes (length, declared
        by the device's template)."""
        for action in rule.actions:
            if action.kind == "write":
                dev = self.domain.device(action.device)
                ds = dev.template.datastreams.get(action.pin.key) if dev else None
                if ds is None:
                    raise AutomationError(
                        f"{action.text()}: the template of device {action.device} has no datastream {action.pin}."
                    )
                try:
                    coerce_value(ds, action.value)
                except InvalidValue as exc:
                    raise AutomationError(f"{action.text()}: {exc}") from None
            elif action.kind == "event":
                if len(action.code) > self.max_event_code:
                    raise AutomationError(
                        f"{action.text()}: an event code has at most {self.max_event_code} characters."
                    )
                dev = self.domain.device(action.device)
                if dev is not None and self.domain.event_defs.loggable(dev.template.id, action.code) is None:
                    raise AutomationError(
                        f"{action.text()}: the template of device {action.device} declares no event {action.code!r}."
                    )
        code = rule.trigger.code
        if code is not None and len(code) > self.max_event_code:
            raise AutomationError(f"an event code has at most {self.max_event_code} characters.")

    async def create(self, name: object, spec: dict) -> dict:
        """Check a new rule (names, devices, templates, pins, values, cron, time zone), store it, apply it."""
        name = check_name(name)
        if name in self.rules:
            raise AutomationError(f"automation {name!r} exists.", 409)
        rule = rule_from_spec(name, spec, now_ms(), self._resolver())
        self._check(rule)
        try:
            await self.store.run(
                self.store.execute,
                "INSERT INTO automations (name, spec, created_at) VALUES (?, ?, ?)",
                (name, json.dumps(rule.spec()), rule.created_at),
            )
        except sqlite3.IntegrityError:
            raise AutomationError(f"automation {name!r} exists.", 409) from None
        if name in self.rules:  # created meanwhile by another request (the store would have refused)
            raise AutomationError(f"automation {name!r} exists.", 409)
        self._put(rule)
        self._rebuild()
        log.info("automation %r created: %s", name, rule.spec())
        return self.describe(rule)

    async def delete(self, name: str) -> None:
        """Forget the rule first (no run of it starts any more), then its row and runs."""
        rule = self.rules.pop(name, None)
        if rule is None:
            raise AutomationError(f"no automation {name!r}.", 404)
        self._rebuild()
        try:
            await self.store.run(_delete, self.store, name)
        except BaseException:
            self._put(rule)
            self._rebuild()
            raise
        self.stats.runs.pop(name, None)
        self.stats.skipped.pop(name, None)
        log.info("automation %r deleted", name)

    def list_all(self) -> list[dict]:
        return [self.describe(r) for r in sorted(self.rules.values(), key=lambda r: r.name)]

    def get(self, name: str) -> dict:
        rule = self.rules.get(name)
        if rule is None:
            raise AutomationError(f"no automation {name!r}.", 404)
        return self.describe(rule)

    async def runs(self, name: str, limit: int = 100) -> list[dict]:
        """The automation's recorded runs, newest first (runs still queued for the store included)."""
        if name not in self.rules:
            raise AutomationError(f"no automation {name!r}.", 404)
        rows = await self.store.run(_runs, self.store, name, max(1, min(limit, MAX_RUNS_QUERY)))
        return [
            {"id": rid, "ts": ts, "time": _iso(ts), "trigger": json.loads(trig), "outcomes": json.loads(out)}
            for rid, ts, trig, out in rows
        ]

    def describe(self, rule: Rule) -> dict:
        out: dict[str, Any] = {"name": rule.name, **rule.spec(), "created_at": rule.created_at}
        if rule.trigger.kind == SCHEDULE and rule.next_due is not None:
            out["next_run"] = _iso(int(rule.next_due * 1000))
        out["runs"] = self.stats.runs.get(rule.name, 0)
        out["skipped"] = self.stats.skipped.get(rule.name, 0)
        return out

    # --- indexes -------------------------------------------------------------------------------

    def _put(self, rule: Rule) -> None:
        """Take a rule in: seed its edge state from the values the server holds, schedule it."""
        self.rules[rule.name] = rule
        t = rule.trigger
        if t.kind == VALUE:
            for dev in self._devices(t.scope):
                stored = dev.values.get(t.pin.key)
                if stored is not None:
                    rule.edge(dev.id, stored[0])
        elif t.kind == SCHEDULE:
            rule.next_due = t.next_run(self.clock())

    def _devices(self, scope: Scope) -> list[DeviceState]:
        if scope.device is not None:
            dev = self.domain.device(scope.device)
            return [dev] if dev is not None else []
        return self.domain.devices(scope.template)

    def _template_of(self, scope: Scope) -> str | None:
        if scope.device is None:
            return scope.template
        dev = self.domain.device(scope.device)
        return dev.record.template_id if dev is not None else None

    def _rebuild(self) -> None:
        by_value: dict[tuple[str, str], list[Rule]] = {}
        by_event: dict[tuple[str, str], list[Rule]] = {}
        by_presence: dict[tuple[str, str], list[Rule]] = {}
        schedules = []
        for rule in sorted(self.rules.values(), key=lambda r: r.name):
            t = rule.trigger
            if t.kind == SCHEDULE:
                schedules.append(rule)
                continue
            tid = self._template_of(t.scope)
            if tid is None:
                continue  # its device was deleted: it can no longer fire
            if t.kind == VALUE:
                by_value.setdefault((tid, t.pin.key), []).append(rule)
            elif t.kind == EVENT:
                by_event.setdefault((tid, t.code), []).append(rule)
            else:
                by_presence.setdefault((t.kind, tid), []).append(rule)
        self._by_value, self._by_event, self._by_presence = by_value, by_event, by_presence
        self._schedules = schedules
        self.stats.rules = len(self.rules)
        self.domain.reactions.watch_values("automations", set(by_value))
        self._arm()

    # --- triggers --------------------------------------------------------------------------------

    def on_happening(self, h: Happening) -> None:
        """The reactions listener: find the rules the happening fires, then run them (edges are all
        taken first, so what a run causes meets up-to-date state in every rule)."""
        kind = h.kind
        if kind not in (VALUE, EVENT, ONLINE, OFFLINE):
            return
        dev = h.device
        tid = dev.record.template_id
        if kind == VALUE:
            rules = self._by_value.get((tid, h.pin))
        elif kind == EVENT:
            rules = self._by_event.get((tid, h.code))
        else:
            rules = self._by_presence.get((kind, tid))
        if not rules:
            return
        device_id = dev.record.id
        firing = []
        for rule in rules:
            device = rule.trigger.scope.device
            if device is not None and device != device_id:
                continue
            if kind == VALUE and not rule.edge(device_id, h.value):
                continue
            firing.append(rule)
        if not firing:
            return
        if h.depth >= self.max_depth:
            self.stats.loop_stops += len(firing)
            if (left := self._loop_log.take(time.monotonic())) is not None:
                log.warning(
                    "automation %r not run: its trigger came from automations %d deep (automation_max_depth);"
                    " %d more such stops not logged",
                    firing[0].name,
                    h.depth,
                    left,
                )
            return
        trigger = {"kind": kind, "device_id": device_id, "device": dev.record.name}
        if kind == VALUE:
            trigger |= {"pin": h.pin.upper(), "value": h.value.decode("utf-8", "replace").replace("\0", ",")}
        elif kind == EVENT:
            trigger["code"] = h.code
        for rule in firing:
            self._run(rule, h, trigger)

    def tick(self, now: float | None = None) -> int:
        """Run the schedules due at ``now`` (the service's clock when None) and arm the timer for the
        next; a schedule that missed several due times runs once. Returns how many ran."""
        now = self.clock() if now is None else now
        ran = 0
        for rule in self._schedules:
            if rule.next_due is not None and rule.next_due <= now:
                due = rule.next_due
                rule.next_due = rule.trigger.next_run(now)
                happening = Happening(SCHEDULE, None, int(now * 1000))
                ran += self._run(rule, happening, {"kind": SCHEDULE, "due": _iso(int(due * 1000))})
        self._arm()
        return ran

    def _arm(self) -> None:
        if self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        dues = [r.next_due for r in self._schedules if r.next_due is not None]
        if dues:
            delay = min(max(0.0, min(dues) - self.clock()), MAX_TIMER)
            self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.tick()
        except Exception:
            log.exception("automation schedule failed")
            self._arm()

    # --- runs --------------------------------------------------------------------------------

    def _run(self, rule: Rule, h: Happening, trigger: dict) -> int:
        now = self.clock()
        recent = rule.recent
        while recent and recent[0] <= now - RATE_WINDOW:
            recent.popleft()
        if len(recent) >= self.runs_per_minute:
            self.stats.skipped[rule.name] += 1
            if (left := self._skip_log.take(time.monotonic())) is not None:
                log.warning(
                    "automation %r skipped: over %d runs a minute (automation_runs_per_minute);"
                    " %d more skips not logged",
                    rule.name,
                    self.runs_per_minute,
                    left,
                )
            return 0
        recent.append(now)
        reactions = self.domain.reactions
        saved = reactions.depth
        reactions.depth = h.depth + 1
        try:
            outcomes = [self._act(rule, action, h, trigger) for action in rule.actions]
        finally:
            reactions.depth = saved
        self.stats.runs[rule.name] += 1
        ts = int(now * 1000)
        fut = self.store.submit(
            _record_run, self.store, rule.name, ts, json.dumps(trigger), json.dumps(outcomes), self.runs_kept
        )
        fut.add_done_callback(_log_record_failure)
        log.debug("automation %r ran: %s", rule.name, outcomes)
        return 1

    def _act(self, rule: Rule, action: Action, h: Happening, trigger: dict) -> dict:
        """One action; its outcome (``ok``, and ``error`` with a message that names no token)."""
        out: dict[str, Any] = {"action": action.text(), "ok": True}
        try:
            if action.kind in ("write", "event"):
                dev = self.domain.device(action.device)
                if dev is None:
                    raise AutomationError(f"device {action.device} no longer exists.")
                if action.kind == "write":
                    stored = self.domain.write_pin(dev, action.pin, action.value, deliver=True)
                    out["value"] = stored.decode("utf-8", "replace")
                    out["online"] = self.domain.hub.is_online(dev.id)
                else:
                    self.domain.log_event(dev, action.code, f"automation {rule.name}")
            elif action.kind == "email":
                if self.mailer is None:
                    raise AutomationError("e-mail is not available on this server.")
                self.mailer.send([action.target], f"Automation {rule.name}", self._mail_body(rule, trigger))
            elif action.kind == "webhook":
                if self.webhooks is None:
                    raise AutomationError("webhooks are not available on this server.")
                self.webhooks.call(action.target, h)
        except Exception as exc:
            self.stats.action_failures[action.kind] += 1
            expected = isinstance(exc, (ValueError, AutomationError, LookupError)) or type(exc).__name__ in (
                "MailOff",
                "DeliveryFailed",
            )
            out["ok"] = False
            out["error"] = str(exc) if expected else "internal error (see the server's log)"
            if (left := self._fail_log.take(time.monotonic())) is not None:
                log.warning(
                    "automation %r: %s failed: %s (%d failures not logged)",
                    rule.name,
                    action.text(),
                    out["error"],
                    left,
                    exc_info=not expected,
                )
        return out

    def _mail_body(self, rule: Rule, trigger: dict) -> str:
        lines = [f"Automation {rule.name!r} ran at {_iso(int(self.clock() * 1000))}.", ""]
        lines.append(f"Trigger: {rule.trigger.text()}")
        if "device" in trigger:
            lines.append(f"Device: {trigger['device']} (id {trigger['device_id']})")
        if "value" in trigger:
            lines.append(f"Value: {trigger['pin']} = {trigger['value']}")
        if "code" in trigger:
            lines.append(f"Event: {trigger['code']}")
        return "\n".join(lines) + "\n"


def _log_record_failure(fut) -> None:
    exc = fut.exception()
    if exc is not None:
        log.warning("an automation run was not recorded: %s", exc)


# --- metrics ---------------------------------------------------------------------------------------


def automation_metrics(stats: AutomationStats) -> Iterator[Metric]:
    """The families ``metrics.py`` yields for automations."""
    yield GaugeMetricFamily("blynk_automations", "Automations defined", value=stats.rules)
    runs = CounterMetricFamily("blynk_automation_runs", "Automation runs", labels=["automation"])
    for name, n in list(stats.runs.items()):
        runs.add_metric([name], n)
    yield runs
    skipped = CounterMetricFamily(
        "blynk_automation_runs_skipped",
        "Automation runs skipped: over automation_runs_per_minute",
        labels=["automation"],
    )
    for name, n in list(stats.skipped.items()):
        skipped.add_metric([name], n)
    yield skipped
    yield CounterMetricFamily(
        "blynk_automation_loop_stops",
        "Automation runs not started: triggered at automation_max_depth (a loop)",
        value=stats.loop_stops,
    )
    failures = CounterMetricFamily(
        "blynk_automation_action_failures", "Automation actions that failed", labels=["action"]
    )
    for kind, n in list(stats.action_failures.items()):
        failures.add_metric([kind], n)
    yield failures


# --- admin API -------------------------------------------------------------------------------------


def add_admin_routes(app: web.Application, automations: Automations) -> None:
    """``/api/automations``: list, create, show, delete, runs (the key is the admin app's middleware's)."""

    def guarded(fn):
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                return await fn(request)
            except AutomationError as exc:
                return json_error(exc.message, exc.status)

        return handler

    async def list_all(request: web.Request) -> web.Response:
        return web.json_response(automations.list_all())

    async def create(request: web.Request) -> web.Response:
        body = await json_object(request)
        unknown = set(body) - {"name", "when", "cron", "tz", "do"}
        if unknown:
            raise AutomationError(f"unknown fields: {', '.join(sorted(unknown))}.")
        return web.json_response(await automations.create(body.get("name"), body), status=201)

    async def show(request: web.Request) -> web.Response:
        return web.json_response(automations.get(request.match_info["name"]))

    async def delete(request: web.Request) -> web.Response:
        await automations.delete(request.match_info["name"])
        return web.Response(status=204)

    async def runs(request: web.Request) -> web.Response:
        text = request.query.get("limit", "100")
        if not text.isdigit() or len(text) > 6:
            raise AutomationError("limit must be an integer.")
        return web.json_response(await automations.runs(request.match_info["name"], int(text)))

    r = app.router
    r.add_get("/api/automations", guarded(list_all))
    r.add_post("/api/automations", guarded(create))
    r.add_get("/api/automations/{name}", guarded(show))
    r.add_delete("/api/automations/{name}", guarded(delete))
    r.add_get("/api/automations/{name}/runs", guarded(runs))


def path_of(name: str) -> str:
    """The admin API path of an automation (its name as one path segment)."""
    return "/api/automations/" + quote(name, safe="")


__all__ = [
    "Action",
    "AutomationError",
    "AutomationStats",
    "Automations",
    "Rule",
    "Trigger",
    "add_admin_routes",
    "automation_metrics",
    "parse_action",
    "parse_when",
    "rule_from_spec",
]
