"""Template events (Blynk's model): the codes a template's devices may log, each with its name, level,
description, rate ("at most once per N seconds" per device) and e-mail recipients, and the template's
offline-ignore period.

The definitions live in two tables of their own (``template_events``, ``template_event_settings``),
read once at start into a ``TemplateEvents`` registry that the domain consults on every ``logEvent``
(a dict lookup, no I/O). Provisioning changes the table and the registry together. This module is a
leaf below the domain (it imports no other part), so the domain, provisioning and the events service
(``events.py``) can all use it.

Built-in codes need no declaration: ``notify`` (what the legacy NOTIFY command logs) and the system
events ``online``, ``offline`` and ``ota``. A template may declare any of them to change its name,
level, description or recipients; devices may log ``notify`` but never a system code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

LEVELS = ("info", "warning", "critical", "content")
NOTIFY = "notify"  # legacy Blynk.notify(): an event of this code
ONLINE = "online"
OFFLINE = "offline"
OTA = "ota"
WEBHOOK = "webhook"  # a webhook this device's call failed was disabled
SYSTEM_CODES = frozenset({ONLINE, OFFLINE, OTA, WEBHOOK})  # recorded by the server only

SCHEMA = """
CREATE TABLE IF NOT EXISTS template_events (
    template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
    code TEXT NOT NULL,
    name TEXT NOT NULL,
    level TEXT NOT NULL DEFAULT 'info',
    description TEXT NOT NULL DEFAULT '',
    every_s REAL NOT NULL DEFAULT 0,
    emails TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (template_id, code)
);
CREATE TABLE IF NOT EXISTS template_event_settings (
    template_id TEXT PRIMARY KEY REFERENCES templates(id) ON DELETE CASCADE,
    offline_ignore_s REAL NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True, slots=True)
class EventDef:
    """One event a template declares. ``every_s``: at most one event of this code per device in that
    many seconds (Blynk's one per second is the floor); for system events it limits the e-mails."""

    code: str
    name: str
    level: str = "info"
    description: str = ""
    every_s: float = 0.0
    emails: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {
            "code": self.code,
            "name": self.name,
            "level": self.level,
            "description": self.description,
            "every_s": self.every_s,
            "emails": list(self.emails),
        }


BUILTINS: dict[str, EventDef] = {
    NOTIFY: EventDef(NOTIFY, "Notification", "info", every_s=5.0),
    ONLINE: EventDef(ONLINE, "Online", "info"),
    OFFLINE: EventDef(OFFLINE, "Offline", "warning"),
    OTA: EventDef(OTA, "Firmware update", "info"),
    WEBHOOK: EventDef(WEBHOOK, "Webhook disabled", "warning"),
}


@dataclass(slots=True)
class TemplateEvents:
    """Every template's declared events and offline-ignore period, in memory (read on the loop)."""

    defs: dict[str, dict[str, EventDef]] = field(default_factory=dict)  # template id -> code -> def
    offline_ignore: dict[str, float] = field(default_factory=dict)  # template id -> seconds

    def declared(self, template_id: str) -> list[EventDef]:
        return sorted(self.defs.get(template_id, {}).values(), key=lambda d: d.code)

    def get(self, template_id: str, code: str) -> EventDef | None:
        """The template's definition of ``code``, or the built-in one, or None."""
        found = self.defs.get(template_id)
        if found is not None:
            d = found.get(code)
            if d is not None:
                return d
        return BUILTINS.get(code)

    def loggable(self, template_id: str, code: str) -> EventDef | None:
        """What a device may log: a declared code or ``notify``; never a system code."""
        if code in SYSTEM_CODES:
            return None
        return self.get(template_id, code)

    def put(self, template_id: str, d: EventDef) -> None:
        self.defs.setdefault(template_id, {})[d.code] = d

    def remove(self, template_id: str, code: str) -> None:
        self.defs.get(template_id, {}).pop(code, None)

    def drop_template(self, template_id: str) -> None:
        self.defs.pop(template_id, None)
        self.offline_ignore.pop(template_id, None)

    def offline_ignore_s(self, template_id: str) -> float:
        return self.offline_ignore.get(template_id, 0.0)

    def set_offline_ignore(self, template_id: str, seconds: float) -> None:
        self.offline_ignore[template_id] = seconds

    def load(self, rows: list[tuple], settings: list[tuple]) -> None:
        """Replace everything with the rows of ``load_rows``."""
        self.defs = {}
        for tid, code, name, level, description, every_s, emails in rows:
            self.put(tid, EventDef(code, name, level, description, float(every_s), tuple(json.loads(emails))))
        self.offline_ignore = {tid: float(s) for tid, s in settings}


# --- the tables (each function runs on the store's writer thread: ``await store.run(fn, store, ...)``) --


def ensure_schema(store) -> None:
    store.execute_script(SCHEMA)


def load_rows(store) -> tuple[list[tuple], list[tuple]]:
    """Every definition and setting, for ``TemplateEvents.load`` (creates the tables on first use)."""
    ensure_schema(store)
    rows = store.query(
        "SELECT template_id, code, name, level, description, every_s, emails FROM template_events"
        " ORDER BY template_id, code"
    )
    settings = store.query("SELECT template_id, offline_ignore_s FROM template_event_settings")
    return rows, settings


def save_def(store, template_id: str, d: EventDef) -> None:
    ensure_schema(store)
    store.execute(
        "INSERT OR REPLACE INTO template_events (template_id, code, name, level, description, every_s, emails)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (template_id, d.code, d.name, d.level, d.description, d.every_s, json.dumps(list(d.emails))),
    )


def delete_def(store, template_id: str, code: str) -> None:
    ensure_schema(store)
    store.execute("DELETE FROM template_events WHERE template_id = ? AND code = ?", (template_id, code))


def save_settings(store, template_id: str, offline_ignore_s: float) -> None:
    ensure_schema(store)
    store.execute(
        "INSERT OR REPLACE INTO template_event_settings (template_id, offline_ignore_s) VALUES (?, ?)",
        (template_id, offline_ignore_s),
    )
