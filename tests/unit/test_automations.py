"""Automations in process: the rule language, edges, the depth and rate guards, schedules on a fake
clock in a time zone, actions and their recorded runs, on a real domain and store (SQLite on its
writer thread, refused on the test's loop)."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from blynk_server.automations import (
    SCHEDULE,
    AutomationError,
    Automations,
    parse_action,
    parse_schedule,
    parse_when,
    rule_from_spec,
)
from blynk_server.config import Settings
from blynk_server.domain import Domain
from blynk_server.eventdefs import EventDef
from blynk_server.hub import Hub
from blynk_server.model import Datastream
from blynk_server.provisioning import Provisioning
from blynk_server.reactions import EVENT, OFFLINE, ONLINE, Happening
from blynk_server.store.sqlite import SqliteStore
from protocol.body import Pin

BERLIN = ZoneInfo("Europe/Berlin")


def at(tz: ZoneInfo, *fields: int) -> float:
    return datetime(*fields, tzinfo=tz).timestamp()


# --- the rule language --------------------------------------------------------------------------


def test_value_conditions_parse_to_their_canonical_form():
    t = parse_when("TMPLa:V1 > 30")
    assert (t.kind, t.scope.template, t.pin, t.op, t.number) == ("value", "TMPLa", Pin("v", 1), ">", 30.0)
    assert t.text() == "TMPLa:V1 > 30"
    assert parse_when("device:42:v7 changed").text() == "device:42:V7 changed"
    assert parse_when("TMPLa:D3>=1.5").text() == "TMPLa:D3 >= 1.5"
    assert parse_when("TMPLa:V2 == on").text() == "TMPLa:V2 == on"
    for op in (">", "<", ">=", "<=", "==", "!="):
        assert parse_when(f"TMPLa:V1 {op} 2").op == op


def test_event_and_presence_triggers_parse():
    t = parse_when("event:TMPLa:overheat")
    assert (t.kind, t.scope.template, t.code) == ("event", "TMPLa", "overheat")
    assert parse_when("event:device:4:x").text() == "event:device:4:x"
    assert parse_when("online:TMPLa").text() == "online:TMPLa"
    assert parse_when("offline:device:9").scope.device == 9


@pytest.mark.parametrize(
    "text",
    [
        "TMPLa:V1 >",  # no value
        "TMPLa:V1 > hot",  # an ordering needs a number
        "TMPLa:V1 changed 3",
        "TMPLa:V300 > 1",  # pins are 0..255
        "TMPLa:X1 > 1",
        "TMPLa V1 > 1",
        "event:TMPLa",
        "online:TMPLa:extra",
        "whatever",
    ],
)
def test_bad_triggers_are_refused_with_a_message(text):
    with pytest.raises(AutomationError) as err:
        parse_when(text)
    assert err.value.message


def test_conditions_compare_numbers_as_numbers_and_text_as_text():
    gt = parse_when("T:V1 > 30")
    assert gt.holds(b"30.5") and not gt.holds(b"30") and not gt.holds(b"abc") and not gt.holds(b"nan")
    assert parse_when("T:V1 <= 2").holds(b"2.0")
    assert parse_when("T:V1 == 1").holds(b"1.0")
    assert parse_when("T:V1 == on").holds(b"on") and not parse_when("T:V1 == on").holds(b"off")
    assert parse_when("T:V1 != on").holds(b"off")
    assert parse_when("T:V1 != 3").holds(b"x")  # not a number: compared as text


def test_the_edge_fires_when_the_condition_becomes_true():
    rule = rule_from_spec("r", {"when": "T:V1 > 30", "do": ["webhook:w"]}, 0)
    seen = [rule.edge(1, v) for v in (b"35", b"40", b"20", b"35", b"31")]
    assert seen == [True, False, False, True, False]  # no state: a first true value is an edge
    assert rule.edge(2, b"10") is False and rule.edge(2, b"50") is True  # each device has its own state


def test_changed_fires_on_every_different_value_and_on_the_first():
    rule = rule_from_spec("r", {"when": "T:V1 changed", "do": ["webhook:w"]}, 0)
    assert [rule.edge(1, v) for v in (b"1", b"1", b"2", b"1")] == [True, False, True, True]


def test_actions_parse_to_their_canonical_form():
    a = parse_action("write:42:V2=1")
    assert (a.kind, a.device, a.pin, a.value) == ("write", 42, Pin("v", 2), b"1")
    assert a.text() == "write:42:V2=1"
    assert parse_action("event:42:door").text() == "event:42:door"
    assert parse_action("email:ops@example.com").target == "ops@example.com"
    assert parse_action("webhook:node-red").text() == "webhook:node-red"


@pytest.mark.parametrize(
    "text", ["write:42:V2", "write:42:Q2=1", "event:42:", "email:nobody", "email:a@b,c@d", "webhook:", "tweet:x"]
)
def test_bad_actions_are_refused(text):
    with pytest.raises(AutomationError):
        parse_action(text)


def test_a_spec_needs_one_trigger_and_some_actions():
    for spec in (
        {"do": ["webhook:w"]},
        {"when": "T:V1 > 1", "cron": "0 7 * * *", "do": ["webhook:w"]},
        {"when": "T:V1 > 1", "tz": "UTC", "do": ["webhook:w"]},
        {"when": "T:V1 > 1", "do": []},
        {"when": "T:V1 > 1", "do": "webhook:w"},
        {"when": 5, "do": ["webhook:w"]},
        {"when": "T:V1 > 1", "do": ["webhook:w"] * 17},
    ):
        with pytest.raises(AutomationError):
            rule_from_spec("r", spec, 0)


# --- schedules ------------------------------------------------------------------------------------


def test_cron_next_run_is_in_the_time_zone_across_a_dst_change():
    t = parse_schedule("0 7 * * *", "Europe/Berlin")
    # Saturday 28 March 2026, noon UTC; Berlin moves to summer time (UTC+2) on Sunday at 02:00.
    first = t.next_run(at(ZoneInfo("UTC"), 2026, 3, 28, 12, 0))
    assert first == at(BERLIN, 2026, 3, 29, 7, 0)
    assert datetime.fromtimestamp(first, ZoneInfo("UTC")).hour == 5  # 07:00 CEST
    assert t.next_run(first) == at(BERLIN, 2026, 3, 30, 7, 0)


def test_daily_hh_mm_is_a_daily_cron_default_utc():
    t = parse_schedule("07:30", None)
    assert t.tz == "UTC"
    utc = ZoneInfo("UTC")
    assert t.next_run(at(utc, 2026, 5, 1, 7, 29)) == at(utc, 2026, 5, 1, 7, 30)
    assert t.next_run(at(utc, 2026, 5, 1, 7, 30)) == at(utc, 2026, 5, 2, 7, 30)


@pytest.mark.parametrize(
    ("cron", "tz"),
    [("61 * * * *", None), ("0 7 * *", None), ("0 0 7 * * *", None), ("25:00", None), ("0 7 * * *", "Mars/Base")],
)
def test_bad_schedules_are_refused(cron, tz):
    with pytest.raises(AutomationError):
        parse_schedule(cron, tz)


# --- the service on a real domain and store ------------------------------------------------------


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeMailer:
    def __init__(self) -> None:
        self.sent: list[tuple[list[str], str, str]] = []

    def send(self, to: list[str], subject: str, body: str) -> None:
        self.sent.append((to, subject, body))


class FakeWebhooks:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Happening]] = []

    def call(self, name: str, happening: Happening) -> None:
        self.calls.append((name, happening))


class World:
    def __init__(self, store, domain, prov, clock) -> None:
        self.store, self.domain, self.prov, self.clock = store, domain, prov, clock
        self.mailer, self.webhooks = FakeMailer(), FakeWebhooks()
        self.services: list[Automations] = []

    async def service(self, **settings) -> Automations:
        svc = Automations(
            self.store, self.domain, Settings(**settings), self.mailer, self.webhooks, clock=self.clock, runs_kept=3
        )
        await svc.start()
        self.services.append(svc)
        return svc


@pytest.fixture
async def world(tmp_path):
    store = SqliteStore(tmp_path, flush_interval=3600)
    store.start_writer()
    store.forbid_thread(threading.get_ident())
    domain = Domain(store, Hub(), Settings())
    domain.load_snapshot(await store.run(store.load_all))
    prov = Provisioning(store, domain)
    w = World(store, domain, prov, FakeClock(at(ZoneInfo("UTC"), 2026, 5, 1, 12, 0)))
    w.tpl = await prov.create_template(
        "T", [Datastream("v1", "Temp", "double"), Datastream("v2", "Pump", "int", 0, 1), Datastream("v3", "S")]
    )
    w.a = domain.device((await prov.create_device(w.tpl.id, "A")).id)
    w.b = domain.device((await prov.create_device(w.tpl.id, "B")).id)
    yield w
    for svc in w.services:
        svc.stop()
    await asyncio.get_running_loop().run_in_executor(None, store.close)


def write(w: World, dev, key: str, value: bytes) -> None:
    """A device's own write, as its session makes it."""
    assert isinstance(w.domain.write_value(dev, key, value, 1000), bytes)  # stored, not refused


async def test_a_condition_on_device_a_writes_device_b_on_the_edge_only(world):
    w = world
    svc = await w.service()
    made = await svc.create("pump", {"when": f"{w.a.token}:V1 > 30", "do": [f"write:{w.b.token}:V2=1"]})
    # Tokens are resolved to ids: never stored, never shown.
    assert made["when"] == f"device:{w.a.id}:V1 > 30" and made["do"] == [f"write:{w.b.id}:V2=1"]
    assert (w.tpl.id, "v1") in w.domain.reactions.watched

    write(w, w.a, "v1", b"35")
    assert w.b.values["v2"][0] == b"1"
    w.domain.write_pin(w.b, Pin("v", 2), b"0")
    write(w, w.a, "v1", b"36")  # still above: no edge
    assert w.b.values["v2"][0] == b"0"
    write(w, w.b, "v1", b"99")  # another device: the rule names A only
    assert w.b.values["v2"][0] == b"0"
    write(w, w.a, "v1", b"20")
    write(w, w.a, "v1", b"31")  # below, then above: fires again
    assert w.b.values["v2"][0] == b"1"

    runs = await svc.runs("pump")
    assert len(runs) == 2 and svc.stats.runs["pump"] == 2
    assert runs[0]["trigger"] == {"kind": "value", "device_id": w.a.id, "device": "A", "pin": "V1", "value": "31"}
    assert runs[0]["outcomes"] == [{"action": f"write:{w.b.id}:V2=1", "ok": True, "value": "1", "online": False}]
    rows = await w.store.run(
        w.store.query, "SELECT * FROM automation_runs UNION ALL SELECT name, spec, 0, 0, 0 FROM automations"
    )
    assert w.a.token not in repr(rows) and w.b.token not in repr(rows)


async def test_a_template_rule_fires_per_device_and_an_api_write_triggers_too(world):
    w = world
    svc = await w.service()
    await svc.create("any", {"when": f"{w.tpl.id}:V1 >= 10", "do": ["webhook:hook"]})
    write(w, w.a, "v1", b"10")
    w.domain.write_pin(w.b, Pin("v", 1), b"11", deliver=True)
    write(w, w.a, "v1", b"12")
    assert [(name, h.device.id) for name, h in w.webhooks.calls] == [("hook", w.a.id), ("hook", w.b.id)]


async def test_the_edge_state_is_seeded_from_the_stored_value(world):
    w = world
    write(w, w.a, "v1", b"50")  # before the rule exists
    svc = await w.service()
    await svc.create("hot", {"when": f"{w.tpl.id}:V1 > 30", "do": ["webhook:h"]})
    write(w, w.a, "v1", b"60")  # it was above already: no edge
    write(w, w.b, "v1", b"60")  # B has no value yet: its first true value is an edge
    assert [h.device.id for _, h in w.webhooks.calls] == [w.b.id]
    # A restart (a new service on the same store) loads the rule and seeds it the same way.
    svc.stop()
    again = await w.service()
    assert again.get("hot")["when"] == f"{w.tpl.id}:V1 > 30"
    write(w, w.a, "v1", b"70")
    assert len(w.webhooks.calls) == 1


async def test_automations_writing_each_others_trigger_stop_at_the_depth_limit(world):
    w = world
    svc = await w.service(automation_max_depth=3)
    await svc.create("down", {"when": f"{w.a.id}:V1 > 30", "do": [f"write:{w.a.id}:V1=0"]})
    await svc.create("up", {"when": f"{w.a.id}:V1 < 30", "do": [f"write:{w.a.id}:V1=100"]})
    depths = []
    w.domain.reactions.listen(lambda h: depths.append(h.depth))
    write(w, w.a, "v1", b"35")
    # 35 (device) -> down writes 0 (depth 1) -> up writes 100 (2) -> down writes 0 (3): stopped there.
    assert sorted(depths) == [0, 1, 2, 3]  # (a listener after ours sees the nested ones first)
    assert svc.stats.runs == {"down": 2, "up": 1} and svc.stats.loop_stops == 1
    assert w.a.values["v1"][0] == b"0" and w.domain.reactions.depth == 0
    # The state followed the value the stopped happening stored: the next crossing fires again.
    write(w, w.a, "v1", b"40")
    assert svc.stats.runs == {"down": 4, "up": 2} and svc.stats.loop_stops == 2


async def test_a_rule_writing_its_own_pin_with_changed_stops_at_the_depth_limit(world):
    w = world
    svc = await w.service(automation_max_depth=2)
    await svc.create("echo", {"when": f"{w.a.id}:V1 changed", "do": [f"write:{w.a.id}:V1=1", f"write:{w.a.id}:V1=2"]})
    write(w, w.a, "v1", b"5")
    # 5 -> run 1 writes 1 (depth 1: changed) -> run 2 writes 1 (unchanged) and 2 (depth 2: stopped).
    assert svc.stats.runs == {"echo": 2} and svc.stats.loop_stops == 1
    assert w.a.values["v1"][0] == b"2" and w.domain.reactions.depth == 0


async def test_runs_over_the_rate_are_skipped_and_counted(world):
    w = world
    svc = await w.service(automation_runs_per_minute=2)
    await svc.create("flappy", {"when": f"{w.a.id}:V1 > 30", "do": ["webhook:h"]})
    for v in (b"40", b"0", b"40", b"0", b"40"):
        write(w, w.a, "v1", v)
    assert len(w.webhooks.calls) == 2 and svc.stats.skipped["flappy"] == 1
    w.clock.now += 60  # the window has passed
    write(w, w.a, "v1", b"0")
    write(w, w.a, "v1", b"40")
    assert len(w.webhooks.calls) == 3


async def test_a_cron_automation_runs_when_the_clock_passes_its_time(world):
    w = world
    w.clock.now = at(BERLIN, 2026, 5, 1, 7, 0)
    svc = await w.service()
    made = await svc.create(
        "morning",
        {"cron": "30 7 * * *", "tz": "Europe/Berlin", "do": [f"write:{w.b.id}:V2=1", "email:ops@example.com"]},
    )
    assert made["next_run"] == "2026-05-01T05:30:00.000Z"
    assert svc.tick(at(BERLIN, 2026, 5, 1, 7, 29)) == 0 and "v2" not in w.b.values
    assert svc.tick(at(BERLIN, 2026, 5, 1, 7, 30)) == 1
    assert w.b.values["v2"][0] == b"1"
    ((to, subject, body),) = w.mailer.sent
    assert to == ["ops@example.com"] and "morning" in subject and "30 7 * * *" in body
    assert svc.tick(at(BERLIN, 2026, 5, 1, 7, 31)) == 0
    # Down for three days: it runs once when the clock passes, then waits for the next morning.
    assert svc.tick(at(BERLIN, 2026, 5, 4, 9, 0)) == 1
    assert svc.get("morning")["next_run"] == "2026-05-05T05:30:00.000Z"
    runs = await svc.runs("morning")
    assert runs[0]["trigger"]["kind"] == SCHEDULE and all(o["ok"] for o in runs[0]["outcomes"])


async def test_the_timer_is_armed_for_the_next_due_time(world):
    w = world
    svc = await w.service()
    assert svc._timer is None  # nothing scheduled
    await svc.create("soon", {"cron": "* * * * *", "do": ["webhook:h"]})
    assert svc._timer is not None
    loop = asyncio.get_running_loop()
    assert 0 <= svc._timer.when() - loop.time() <= 60
    await svc.delete("soon")
    assert svc._timer is None


async def test_events_and_presence_trigger_their_rules(world):
    w = world
    svc = await w.service()
    with pytest.raises(AutomationError, match="declares no event 'cooling'"):
        await svc.create("ev", {"when": f"event:{w.tpl.id}:overheat", "do": [f"event:{w.b.id}:cooling"]})
    w.domain.event_defs.put(w.tpl.id, EventDef("cooling", "Cooling"))
    await svc.create("ev", {"when": f"event:{w.tpl.id}:overheat", "do": [f"event:{w.b.id}:cooling"]})
    await svc.create("on", {"when": f"online:{w.a.token}", "do": ["webhook:up"]})
    await svc.create("off", {"when": f"offline:{w.tpl.id}", "do": ["webhook:down"]})
    emit = w.domain.reactions.emit
    emit(Happening(EVENT, w.a, 1, code="other"))
    emit(Happening(EVENT, w.a, 1, code="overheat"))
    emit(Happening(ONLINE, w.b, 1))  # B: the rule names A
    emit(Happening(ONLINE, w.a, 1))
    emit(Happening(OFFLINE, w.b, 1))
    assert [n for n, _ in w.webhooks.calls] == ["up", "down"]
    events = await w.domain.events(w.b, 10)
    assert [(e["code"], e["description"]) for e in events] == [("cooling", "automation ev")]
    assert svc.stats.runs == {"ev": 1, "on": 1, "off": 1}


async def test_failed_actions_are_recorded_and_the_others_still_run(world):
    w = world
    svc = Automations(w.store, w.domain, Settings(), clock=w.clock)  # no mailer, no webhooks
    await svc.start()
    w.services.append(svc)
    await svc.create("mixed", {"when": f"{w.a.id}:V1 > 1", "do": ["email:x@y.z", "webhook:h", f"write:{w.b.id}:V2=1"]})
    await w.prov.delete_device(w.b.id)
    write(w, w.a, "v1", b"2")
    (run,) = await svc.runs("mixed")
    assert [o["ok"] for o in run["outcomes"]] == [False, False, False]
    assert "no longer exists" in run["outcomes"][2]["error"]
    assert svc.stats.action_failures == {"email": 1, "webhook": 1, "write": 1}


async def test_runs_are_bounded_per_automation(world):
    w = world
    svc = await w.service()  # runs_kept=3
    await svc.create("many", {"when": f"{w.a.id}:V1 changed", "do": ["webhook:h"]})
    await svc.create("other", {"when": f"{w.b.id}:V1 changed", "do": ["webhook:h"]})
    for i in range(6):
        write(w, w.a, "v1", str(i).encode())
        write(w, w.b, "v1", str(i).encode())
    assert [r["trigger"]["value"] for r in await svc.runs("many")] == ["5", "4", "3"]
    assert len(await svc.runs("other")) == 3


async def test_create_checks_everything_and_delete_forgets(world):
    w = world
    svc = await w.service()
    bad = [
        ("no template", {"when": "TMPLnone:V1 > 1", "do": ["webhook:h"]}, 404),
        ("no device", {"when": f"{w.tpl.id}:V1 > 1", "do": ["write:999:V2=1"]}, 404),
        ("no datastream", {"when": f"{w.tpl.id}:V1 > 1", "do": [f"write:{w.a.id}:V9=1"]}, 400),
        ("bad value", {"when": f"{w.tpl.id}:V1 > 1", "do": [f"write:{w.a.id}:V2=x"]}, 400),
        ("bad tz", {"cron": "0 7 * * *", "tz": "Nowhere/Land", "do": ["webhook:h"]}, 400),
        ("bad/name", {"when": f"{w.tpl.id}:V1 > 1", "do": ["webhook:h"]}, 400),
        ("long code", {"when": f"{w.tpl.id}:V1 > 1", "do": [f"event:{w.a.id}:{'c' * 65}"]}, 400),
    ]
    for name, spec, status in bad:
        with pytest.raises(AutomationError) as err:
            await svc.create(name, spec)
        assert err.value.status == status, (name, err.value.message)
    assert svc.list_all() == []
    await svc.create("ok", {"when": f"{w.tpl.id}:V1 > 1", "do": ["webhook:h"]})
    with pytest.raises(AutomationError) as err:
        await svc.create("ok", {"when": f"{w.tpl.id}:V1 > 1", "do": ["webhook:h"]})
    assert err.value.status == 409
    write(w, w.a, "v1", b"5")
    await svc.delete("ok")
    assert (w.tpl.id, "v1") not in w.domain.reactions.watched
    assert await w.store.run(w.store.query, "SELECT count(*) FROM automation_runs") == [(0,)]
    with pytest.raises(AutomationError) as err:
        await svc.runs("ok")
    assert err.value.status == 404
    stored = await w.store.run(w.store.query, "SELECT spec FROM automations")
    assert stored == []


async def test_a_stored_rule_is_json_of_canonical_texts(world):
    w = world
    svc = await w.service()
    w.domain.event_defs.put(w.tpl.id, EventDef("lit", "Lit"))
    await svc.create("x", {"when": f"device:{w.a.token}:V3 == on", "do": [f"event:{w.b.token}:lit"]})
    ((spec,),) = await w.store.run(w.store.query, "SELECT spec FROM automations")
    assert json.loads(spec) == {"when": f"device:{w.a.id}:V3 == on", "do": [f"event:{w.b.id}:lit"]}
