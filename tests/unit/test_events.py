"""Template events in process: declared and undeclared codes, levels, every_s, built-ins, the
offline-ignore period on a fake loop, e-mails with a fake mailer, and the timeline's filters and pages
over committed and pending rows. A real Domain on a real SqliteStore (no writer thread: inline)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from blynk_server.config import Settings
from blynk_server.domain import Domain, EventNotDeclared, EventQuotaExceeded
from blynk_server.eventdefs import EventDef, load_rows
from blynk_server.events import (
    EventsService,
    Presence,
    TimelineQuery,
    compose_mail,
    load_state,
    parse_timeline_query,
)
from blynk_server.hub import Hub
from blynk_server.model import Datastream, Template
from blynk_server.provisioning import Provisioning, ProvisioningError, make_event_def
from blynk_server.reactions import EVENT, OFFLINE, ONLINE, Happening
from blynk_server.store import SqliteStore
from protocol import Status
from tests.unit.fakes import FakeLoop

T0 = 1_700_000_000_000


class FakeMailer:
    def __init__(self, fail: Exception | None = None) -> None:
        self.sent: list[tuple[list[str], str, str]] = []
        self.fail = fail

    def send(self, to: list[str], subject: str, body: str) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append((to, subject, body))


@dataclasses.dataclass
class Env:
    store: SqliteStore
    domain: Domain
    prov: Provisioning
    service: EventsService
    loop: FakeLoop
    mailer: FakeMailer
    clock: list[int]
    happenings: list[Happening]

    def device(self, name: str = "Greenhouse"):
        return self.domain.add_device(self.store.create_device("TMPLe", name))

    def declare(self, code: str, **kw) -> EventDef:
        d = make_event_def(code, kw.pop("name", code.title()), **kw)
        return asyncio.run(self.prov.put_event_def("TMPLe", d))

    def rows(self, dev, **kw) -> list[tuple]:
        rows, _ = self.store.timeline(dev.id, **kw)
        return [(r["code"], r["level"], r["description"]) for r in rows]


def make_env(tmp_path, monkeypatch, mailer: FakeMailer | None = None, **settings) -> Env:
    store = SqliteStore(tmp_path / "data")
    if store.get_template("TMPLe") is None:  # a second env on the same data dir is a restart
        store.create_template("TMPLe", "Events", [Datastream("v1", "T", "double")])
    domain = Domain(store, Hub(), dataclasses.replace(Settings(), **settings))
    domain.load_snapshot(store.load_all())
    clock = [T0]
    monkeypatch.setattr("blynk_server.domain.now_ms", lambda: clock[0])
    loop = FakeLoop()
    mailer = mailer or FakeMailer()
    service = EventsService(store, domain, mailer, loop=loop, wall_ms=lambda: clock[0], clock=lambda: clock[0] / 1000)
    service.install(load_state(store))
    happenings: list[Happening] = []
    domain.reactions.listen(happenings.append)
    return Env(store, domain, Provisioning(store, domain), service, loop, mailer, clock, happenings)


@pytest.fixture
def env(tmp_path, monkeypatch):
    e = make_env(tmp_path, monkeypatch)
    yield e
    e.store.close()


# --- declared and undeclared codes ------------------------------------------------------------------


def test_a_declared_code_is_stored_with_its_level_and_emitted(env):
    env.declare("overheat", level="critical", description="Too hot")
    dev = env.device()
    env.domain.log_event(dev, "overheat", "42 C")
    assert env.rows(dev) == [("overheat", "critical", "42 C")]
    [h] = [h for h in env.happenings if h.kind == EVENT]
    assert (h.device, h.ts, h.code, h.level, h.description) == (dev, T0, "overheat", "critical", "42 C")
    env.clock[0] += 1000
    env.domain.log_event(dev, "overheat", None)  # no description: the definition's, in the happening
    assert env.happenings[-1].description == "Too hot"
    assert env.rows(dev)[0] == ("overheat", "critical", None)  # stored as sent


def test_an_undeclared_code_is_refused_with_status_2_and_counted(env):
    dev = env.device()
    with pytest.raises(EventNotDeclared, match="not declared") as exc:
        env.domain.log_event(dev, "overheat", None)
    assert exc.value.status == Status.ILLEGAL_COMMAND
    assert env.domain.stats.events_rejected == 1 and env.domain.stats.events_undeclared == 1
    assert env.rows(dev) == [] and env.happenings == []


def test_a_device_cannot_log_a_system_code_even_when_declared(env):
    env.declare("offline", level="critical", emails=["ops@example.com"])  # configures the system event
    dev = env.device()
    for code in ("online", "offline", "ota"):
        with pytest.raises(EventNotDeclared):
            env.domain.log_event(dev, code, None)


def test_notify_is_built_in_at_info_once_per_5_seconds(env):
    dev = env.device()
    env.domain.log_event(dev, "notify", "hello")
    env.clock[0] += 4999
    with pytest.raises(EventQuotaExceeded, match="5 seconds apart") as exc:
        env.domain.log_event(dev, "notify", "again")
    assert exc.value.status == Status.QUOTA_LIMIT
    env.clock[0] += 1
    env.domain.log_event(dev, "notify", "later")
    assert env.rows(dev) == [("notify", "info", "later"), ("notify", "info", "hello")]


def test_a_template_may_redeclare_notify(env):
    env.declare("notify", level="warning", every_s=0, emails=["me@example.com"])
    dev = env.device()
    env.domain.log_event(dev, "notify", "hi")
    env.clock[0] += 1000
    env.domain.log_event(dev, "notify", "hi again")  # its every_s (0: the 1 s floor), not the built-in 5 s
    assert [r[1] for r in env.rows(dev)] == ["warning", "warning"]
    assert [s[0] for s in env.mailer.sent] == [["me@example.com"], ["me@example.com"]]


def test_every_s_limits_each_code_per_device(env):
    env.declare("door", every_s=60)
    env.declare("tick")  # every_s 0: Blynk's one per second
    a, b = env.device("a"), env.device("b")
    env.domain.log_event(a, "door", None)
    env.domain.log_event(b, "door", None)  # another device: its own budget
    env.domain.log_event(a, "tick", None)  # another code: its own budget
    env.clock[0] += 59_999
    with pytest.raises(EventQuotaExceeded, match="60 seconds apart"):
        env.domain.log_event(a, "door", None)
    env.domain.log_event(a, "tick", None)
    env.clock[0] += 1
    env.domain.log_event(a, "door", None)
    with pytest.raises(EventQuotaExceeded, match="1 second apart"):
        env.domain.log_event(a, "tick", None)


def test_levels_and_definitions_are_checked():
    for bad in (
        dict(code=""),
        dict(code="a/b"),
        dict(code=" x"),
        dict(code="x" * 65),
        dict(code="x", level="fatal"),
        dict(code="x", every_s=-1),
        dict(code="x", every_s="soon"),
        dict(code="x", emails=["not an address"]),
        dict(code="x", emails=["a@b.c\r\nBcc: evil@x.y"]),
        dict(code="x", description="d" * 301),
    ):
        with pytest.raises(ProvisioningError):
            make_event_def(**bad)
    for level in ("info", "warning", "critical", "content"):
        assert make_event_def("x", level=level.upper()).level == level
    assert make_event_def("high temp").name == "high temp"


def test_definitions_survive_a_restart_and_go_with_their_template(env, tmp_path):
    env.declare("overheat", level="critical", every_s=30, emails=["a@example.com"])
    asyncio.run(env.prov.set_offline_ignore("TMPLe", 45))
    again = Domain(env.store, Hub())
    again.load_snapshot(env.store.load_all())
    again.event_defs.load(*load_rows(env.store))
    assert again.event_defs.declared("TMPLe") == env.domain.event_defs.declared("TMPLe")
    assert again.event_defs.offline_ignore_s("TMPLe") == 45
    with pytest.raises(ProvisioningError, match="already exists"):
        asyncio.run(env.prov.put_event_def("TMPLe", make_event_def("overheat"), replace=False))
    asyncio.run(env.prov.delete_template("TMPLe"))
    assert env.domain.event_defs.declared("TMPLe") == []
    assert load_rows(env.store) == ([], [])


def test_an_existing_events_table_gains_a_level(tmp_path):
    import sqlite3

    data = tmp_path / "old"
    data.mkdir(mode=0o700)
    conn = sqlite3.connect(data / "blynk.sqlite3")
    conn.executescript(
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, device_id INTEGER NOT NULL,"
        " code TEXT NOT NULL, description TEXT, ts INTEGER NOT NULL, resolved_at INTEGER);"
        "INSERT INTO events (device_id, code, description, ts) VALUES (1, 'old', 'from before', 5);"
    )
    conn.close()
    store = SqliteStore(data)
    try:
        store.put_event(1, "new", None, 6, "critical")
        assert [(r["code"], r["level"]) for r in store.events(1)] == [("new", "critical"), ("old", "info")]
        store.flush_now()
        assert [(r["code"], r["level"]) for r in store.events(1)] == [("new", "critical"), ("old", "info")]
    finally:
        store.close()


# --- online / offline ---------------------------------------------------------------------------------


def presence(env, dev) -> list[str]:
    return [r[0] for r in env.rows(dev, codes=("online", "offline"))][::-1]


def test_online_and_offline_without_an_ignore_period(env):
    dev = env.device()
    env.domain.set_online(dev)
    env.domain.set_online(dev)  # a second login replacing the first: nothing new
    env.clock[0] += 5000
    env.domain.set_offline(dev)
    assert presence(env, dev) == ["online", "offline"]
    assert [(h.kind, h.level) for h in env.happenings] == [(ONLINE, "info"), (OFFLINE, "warning")]


def test_a_reconnect_within_the_ignore_period_records_nothing(env):
    asyncio.run(env.prov.set_offline_ignore("TMPLe", 60))
    dev = env.device()
    env.domain.set_online(dev)
    env.domain.set_offline(dev)
    env.loop.advance(59.9)
    env.domain.set_online(dev)  # back in time: neither the offline nor this online
    env.loop.advance(120)
    assert presence(env, dev) == ["online"]
    assert env.service.stats.offline_ignored == 1 and env.service.stats.offline_pending == 0
    assert [h.kind for h in env.happenings] == [ONLINE]


def test_offline_is_recorded_once_the_ignore_period_passes_with_the_time_it_went(env):
    asyncio.run(env.prov.set_offline_ignore("TMPLe", 60))
    dev = env.device()
    env.domain.set_online(dev)
    went = env.clock[0] = T0 + 1000
    env.domain.set_offline(dev)
    env.clock[0] += 60_000
    env.loop.advance(59.9)
    assert presence(env, dev) == ["online"] and env.service.stats.offline_pending == 1
    env.loop.advance(0.1)
    assert presence(env, dev) == ["online", "offline"]
    assert env.happenings[-1].kind == OFFLINE and env.happenings[-1].ts == went
    env.domain.set_online(dev)  # after a recorded offline: a new online
    assert presence(env, dev) == ["online", "offline", "online"]


def test_a_deleted_device_gets_no_offline(env):
    asyncio.run(env.prov.set_offline_ignore("TMPLe", 10))
    dev = env.device()
    env.domain.set_online(dev)
    env.domain.set_offline(dev)
    asyncio.run(env.prov.delete_device(dev.id))
    env.domain.set_offline(dev)  # the session's close after the delete
    env.loop.advance(20)
    assert [h.kind for h in env.happenings] == [ONLINE]


def test_a_restart_within_the_ignore_period_makes_no_pair(tmp_path, monkeypatch):
    first = make_env(tmp_path, monkeypatch)
    asyncio.run(first.prov.set_offline_ignore("TMPLe", 60))
    dev = first.device()
    first.domain.set_online(dev)
    first.domain.set_offline(dev)  # the stop closes the session...
    asyncio.run(first.service.stop())  # ...and the service forgets the timer
    first.store.flush_now()
    first.store.close()

    second = make_env(tmp_path, monkeypatch)  # the same data dir
    dev2 = second.domain.device(dev.id)
    assert second.service.stats.offline_pending == 1  # last recorded online: a fresh period
    second.loop.advance(30)
    second.domain.set_online(dev2)
    second.loop.advance(100)
    assert presence(second, dev2) == ["online"]
    second.store.close()


def test_a_device_that_does_not_come_back_after_a_restart_goes_offline(tmp_path, monkeypatch):
    first = make_env(tmp_path, monkeypatch)
    asyncio.run(first.prov.set_offline_ignore("TMPLe", 60))
    dev = first.device()
    first.domain.set_online(dev)  # then the server dies
    first.store.flush_now()
    first.store.close()
    second = make_env(tmp_path, monkeypatch)
    second.loop.advance(60)
    assert presence(second, second.domain.device(dev.id)) == ["online", "offline"]
    second.store.close()


# --- OTA ----------------------------------------------------------------------------------------------


def test_ota_status_changes_are_system_events(env):
    dev = env.device()
    env.service.ota_status(7, dev.id, "Firmware requested", None, False)
    env.service.ota_status(7, dev.id, "Upload failure", "stalled", True)
    env.service.ota_status(7, 999, "Started", None, False)  # no such device: nothing
    assert env.rows(dev) == [
        ("ota", "warning", "shipment 7: Upload failure (stalled)"),
        ("ota", "info", "shipment 7: Firmware requested"),
    ]
    assert [(h.kind, h.code) for h in env.happenings] == [(EVENT, "ota"), (EVENT, "ota")]


# --- e-mail ---------------------------------------------------------------------------------------------


def test_a_declared_event_mails_its_recipients_without_the_token(env):
    env.declare("overheat", name="Overheat", level="critical", emails=["a@example.com", "b@example.com"])
    env.declare("quiet")
    dev = env.device("Greenhouse\r\nBcc: x@y.z")
    env.domain.log_event(dev, "overheat", "42 C")
    env.domain.log_event(dev, "quiet", None)
    [(to, subject, body)] = env.mailer.sent
    assert to == ["a@example.com", "b@example.com"]
    assert subject == "[critical] Greenhouse Bcc: x@y.z: Overheat"
    assert "Event: Overheat (overheat)" in body and "Level: critical" in body and "Description: 42 C" in body
    assert "Time: 2023-11-14T22:13:20.000Z" in body and f"id {dev.id}" in body
    assert dev.token not in subject + body


def test_system_events_mail_at_most_once_per_every_s(env):
    env.declare("offline", emails=["ops@example.com"], every_s=600)
    dev = env.device()
    for _ in range(3):
        env.domain.set_online(dev)
        env.domain.set_offline(dev)
        env.clock[0] += 60_000
    assert len(env.mailer.sent) == 1
    env.clock[0] += 600_000
    env.domain.set_online(dev)
    env.domain.set_offline(dev)
    assert len(env.mailer.sent) == 2 and env.mailer.sent[0][1].endswith(": Offline")


def test_mail_off_keeps_the_event_and_counts(tmp_path, monkeypatch):
    env = make_env(tmp_path, monkeypatch, FakeMailer(fail=RuntimeError("e-mail is off: no smtp_host")))
    env.declare("overheat", emails=["a@example.com"])
    dev = env.device()
    env.domain.log_event(dev, "overheat", None)
    assert env.rows(dev) == [("overheat", "info", None)]
    assert env.service.stats.mails_failed == 1 and env.service.stats.mails == 0
    env.store.close()


def test_compose_mail_falls_back_to_the_definition_and_lists_the_values():
    class Dev:
        id = 3
        record = type("R", (), {"name": "", "template_id": "T", "token": "secret"})()
        template = Template(
            "T", "T", datastreams={"v1": Datastream("v1", "Temp", "double"), "v2": Datastream("v2", "Pos", "location")}
        )
        values = {"v1": (b"41.5", 1), "v2": (b"13.4\x0052.5", 1)}

    subject, body = compose_mail(
        Dev(), EventDef("c", "Name", "warning", "def text"), Happening(EVENT, None, 0, code="c", level="warning")
    )
    assert subject == "[warning] Device 3: Name" and "Description: def text" in body
    assert "Values:\n  Temp (V1): 41.5\n  Pos (V2): 13.4, 52.5\n" in body and "secret" not in body


# --- timeline --------------------------------------------------------------------------------------------


def test_timeline_filters_and_pages_over_committed_and_pending_rows(env):
    env.declare("a", level="info")
    env.declare("b", level="critical")
    dev, other = env.device(), env.device("other")
    for i in range(10):
        env.clock[0] = T0 + i * 1000
        env.domain.log_event(dev, "a" if i % 2 else "b", f"#{i}")
        if i == 5:
            env.store.flush_now()  # 0..5 committed, 6..9 pending
    env.domain.log_event(other, "a", "other device")
    everything, _ = env.store.timeline(dev.id, limit=100)
    assert [r["description"] for r in everything] == [f"#{i}" for i in range(9, -1, -1)]
    assert [r["id"] is None for r in everything] == [True] * 4 + [False] * 6

    pages, cursor = [], None
    while True:
        rows, cursor = env.store.timeline(dev.id, limit=3, before=cursor)
        pages.append([r["description"] for r in rows])
        if cursor is None:
            break
        if len(pages) == 2:
            env.store.flush_now()  # a flush between two pages moves no boundary
    assert pages == [["#9", "#8", "#7"], ["#6", "#5", "#4"], ["#3", "#2", "#1"], ["#0"]]

    crit, _ = env.store.timeline(dev.id, levels=("critical",))
    assert [r["description"] for r in crit] == ["#8", "#6", "#4", "#2", "#0"]
    ranged, _ = env.store.timeline(dev.id, since_ms=T0 + 3000, until_ms=T0 + 5000, codes=("a",))
    assert [r["description"] for r in ranged] == ["#5", "#3"]


def test_timeline_pending_clears_resolve_what_the_flush_will(env):
    env.declare("alarm")
    dev = env.device()
    env.domain.log_event(dev, "alarm", "old")
    env.store.flush_now()
    env.clock[0] += 5000
    env.domain.log_event(dev, "alarm", "new")
    env.domain.clear_event(dev, "alarm", False)  # the newest: the pending one
    page, _ = env.store.timeline(dev.id, until_ms=T0)  # the filter shows only the old one: still open
    assert [(r["description"], r["resolved_at"]) for r in page] == [("old", None)]
    env.domain.clear_event(dev, "alarm", True)
    page, _ = env.store.timeline(dev.id)
    assert [r["resolved_at"] is not None for r in page] == [True, True]
    env.store.flush_now()
    assert [{**r, "id": None} for r in env.store.timeline(dev.id)[0]] == [{**r, "id": None} for r in page]


def test_the_service_page_names_events_and_the_query_parser_checks(env):
    from multidict import MultiDict

    env.declare("overheat", name="Overheat")
    dev = env.device()
    env.domain.set_online(dev)
    env.clock[0] += 1
    env.domain.log_event(dev, "overheat", None)
    rows, cursor = env.store.timeline(dev.id)
    from blynk_server.events import timeline_page

    page = timeline_page(env.domain, "TMPLe", rows, cursor)
    assert [(e["code"], e["name"]) for e in page["events"]] == [("overheat", "Overheat"), ("online", "Online")]
    assert page["next_cursor"] is None
    q = parse_timeline_query(MultiDict([("level", "info,critical"), ("code", "a"), ("code", "b"), ("limit", "5000")]))
    assert q == TimelineQuery(0, None, ("info", "critical"), ("a", "b"), 1000, None)
    for bad in ({"level": "fatal"}, {"since": "yesterday"}, {"cursor": "x"}, {"limit": "-1"}):
        with pytest.raises(ValueError):
            parse_timeline_query(MultiDict(bad))


def test_presence_is_one_byte_per_device_id_and_forgets_on_false():
    p = Presence()
    assert not p.get(5) and not p.get(-1)
    p.set(7, False)  # nothing to remember: no bytes for it
    assert len(p._flags) == 0
    p.set(3, True)
    p.set(1, True)
    assert p.get(3) and p.get(1) and not p.get(2) and not p.get(4)
    assert len(p._flags) == 4
    p.set(3, False)
    assert not p.get(3) and p.get(1)
    with pytest.raises(ValueError):
        p.set(-1, True)
