"""Webhooks in process: templates (placeholders, escaping), definitions, trigger matching, the interval,
the failure count and the deliverer's answer to each status (a real aiohttp receiver on 127.0.0.1)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest
from aiohttp import web

from blynk_server.config import Settings
from blynk_server.domain import Domain
from blynk_server.hub import Hub
from blynk_server.model import Datastream
from blynk_server.outbox import DeliveryFailed
from blynk_server.reactions import EVENT, OFFLINE, ONLINE, VALUE, Happening
from blynk_server.store import SqliteStore
from blynk_server.webhooks import (
    KIND,
    MAX_CALLS_PER_S,
    MAX_WEBHOOKS,
    WebhookError,
    Webhooks,
    compile_template,
    escape_json,
    happening_values,
    parse_trigger,
    render,
    webhook_from_json,
)

TS = 1_714_564_800_123  # 2024-05-01T12:00:00.123Z


class FakeOutbox:
    """The outbox's interface (PLAN14): what was registered and queued, nothing delivered by itself."""

    def __init__(self) -> None:
        self.kinds: dict = {}
        self.queued: list[tuple[str, dict]] = []

    def register(self, kind, deliver, on_gave_up=None) -> None:
        self.kinds[kind] = (deliver, on_gave_up)

    def enqueue(self, kind: str, payload: dict) -> None:
        json.dumps(payload)  # the real one stores JSON: a payload that is not JSON must fail here too
        self.queued.append((kind, payload))

    async def deliver(self, payload: dict) -> None:
        await self.kinds[KIND][0](payload)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def world(tmp_path):
    store = SqliteStore(tmp_path / "data")  # no writer thread: jobs run inline
    domain = Domain(store, Hub(), Settings())
    tpl = store.create_template("TMPL1", "T", [Datastream("v1", "Temp", "double")])
    other = store.create_template("TMPL2", "U", [Datastream("v1", "Temp", "double")])
    domain.put_template(tpl)
    domain.put_template(other)
    dev = domain.add_device(store.create_device("TMPL1", 'Boiler "A"\n'))
    dev2 = domain.add_device(store.create_device("TMPL2", "Other"))
    outbox = FakeOutbox()
    clock = Clock()
    hooks = Webhooks(store, domain, outbox, Settings(webhook_max_failures=3), clock=clock)
    await hooks.start()
    yield hooks, domain, dev, dev2, outbox, clock
    await hooks.stop()
    store.close()


def spec(**kw) -> dict:
    base = {"name": "h1", "url": "http://127.0.0.1:9/hook", "on": "datastream:TMPL1:V1"}
    return base | kw


# --- templates and escaping ---


def test_json_body_escapes_values_inside_strings_and_makes_values_outside():
    pieces = compile_template('{"n": "{device_name}", "v": {datastream_value}, "c": {event_code}}', json_mode=True)
    body = render(pieces, {"device_name": 'a"b\\c\nd', "datastream_value": "21.5", "event_code": None}, escape_json)
    assert json.loads(body) == {"n": 'a"b\\c\nd', "v": 21.5, "c": None}
    # A value that is not a number, outside a string, becomes a string: it cannot add keys.
    body = render(pieces, {"device_name": "x", "datastream_value": '1, "evil": true'}, escape_json)
    assert json.loads(body) == {"n": "x", "v": '1, "evil": true', "c": None}


def test_json_scan_knows_escaped_quotes_and_braces_in_strings():
    pieces = compile_template('{"a": "q\\"{device_name}", "b": "}{"}', json_mode=True)
    assert json.loads(render(pieces, {"device_name": '"'}, escape_json)) == {"a": 'q""', "b": "}{"}


def test_unknown_placeholder_and_the_token_are_refused():
    with pytest.raises(WebhookError, match="Unknown placeholder"):
        compile_template("{device_nmae}")
    for name in ("token", "device_token", "Auth_Token"):
        with pytest.raises(WebhookError, match="never sent"):
            compile_template("x={" + name + "}")


def test_url_header_and_form_rendering():
    hook = webhook_from_json(
        spec(
            url="https://example.test/d/{device_name}?v={datastream_value}",
            headers={"X-Dev": "{device_name}"},
            body="name={device_name}&v={datastream_value}",
            content_type="form",
        ),
        1024,
    )
    url, headers, body = hook.render({"device_name": "a b/c&d\r\nX: y", "datastream_value": "1"}, 1024)
    assert url == "https://example.test/d/a%20b%2Fc%26d%0D%0AX%3A%20y?v=1"
    assert headers["X-Dev"] == "a b/c&d  X: y" and "\n" not in headers["X-Dev"]
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qs(body.decode()) == {"name": ["a b/c&d\r\nX: y"], "v": ["1"]}


def test_rendered_body_is_bounded():
    hook = webhook_from_json(spec(body='{"v": "{datastream_value}"}'), 64)
    hook.render({"datastream_value": "x" * 40}, 64)
    with pytest.raises(WebhookError, match="webhook_max_body"):
        hook.render({"datastream_value": "x" * 80}, 64)


def test_happening_values_have_the_device_name_and_never_the_token(world):
    hooks, domain, dev, *_ = world
    values = happening_values(Happening(VALUE, dev, TS, pin="v1", value=b"1\x002"), "h1")
    assert values["device_name"] == 'Boiler "A"\n' and values["device_id"] == dev.id
    assert values["datastream_pin"] == "V1" and values["datastream_value"] == "1,2"
    assert values["timestamp"] == "2024-05-01T12:00:00.123Z" and values["timestamp_ms"] == TS
    assert dev.token not in json.dumps(values)


# --- definitions ---


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"url": "ftp://example.test/x"}, "http:// or https://"),
        ({"url": "file:///etc/passwd"}, "http:// or https://"),
        ({"url": "http://{device_name}.example.test/"}, "must name a host"),
        ({"method": "TRACE"}, "method must be"),
        ({"on": "datastream:TMPL1:X9"}, "not a pin"),
        ({"on": "sometimes:TMPL1"}, "on must be"),
        ({"body": '{"a": {device_name}'}, "not JSON"),
        ({"headers": {"Host": "x"}}, "not a header"),
        ({"headers": {"X-A": "{device_token}"}}, "never sent"),
        ({"name": "a/b"}, "name must be"),
        ({"every_s": -1}, "every_s"),
    ],
)
def test_definitions_refused(bad, message):
    with pytest.raises(WebhookError, match=message):
        webhook_from_json(spec(**bad), 1024)


def test_triggers_parse():
    assert parse_trigger("datastream:TMPL1:V7") == parse_trigger("datastream:TMPL1:v7")
    t = parse_trigger("datastream:TMPL1:V7")
    assert (t.kind, t.template_id, t.key, str(t)) == (VALUE, "TMPL1", "v7", "datastream:TMPL1:V7")
    assert parse_trigger("event:TMPL1:overheat").key == "overheat"
    assert parse_trigger("online:TMPL1").kind == ONLINE and parse_trigger("offline:TMPL1").kind == OFFLINE


async def test_definitions_are_stored_and_loaded_again(world, tmp_path):
    hooks, domain, *_ = world
    await hooks.create(spec(headers=["X-Key: s3cret"], body='{"v": "{datastream_value}"}', every_s=5))
    with pytest.raises(WebhookError) as err:
        await hooks.create(spec())
    assert err.value.status == 409
    with pytest.raises(WebhookError) as err:
        await hooks.create(spec(name="h2", on="online:NOPE"))
    assert err.value.status == 404
    again = Webhooks(hooks.store, domain, FakeOutbox(), Settings())
    await again.load()
    h = again.get("h1")
    assert (h.headers, h.every_s, h.content_type, str(h.trigger)) == (
        {"X-Key": "s3cret"},
        5.0,
        "application/json",
        "datastream:TMPL1:V1",
    )
    await hooks.delete("h1")
    with pytest.raises(WebhookError) as err:
        hooks.get("h1")
    assert err.value.status == 404


async def test_number_of_webhooks_is_bounded(world):
    hooks, *_ = world
    for i in range(MAX_WEBHOOKS):
        await hooks.create(spec(name=f"h{i}"))
    with pytest.raises(WebhookError, match="At most"):
        await hooks.create(spec(name="one-more"))


# --- triggering ---


async def test_value_triggers_only_its_template_and_pin_and_is_watched(world):
    hooks, domain, dev, dev2, outbox, _ = world
    assert ("TMPL1", "v1") not in domain.reactions.watched
    await hooks.create(spec(body='{"n": "{device_name}"}'))
    assert ("TMPL1", "v1") in domain.reactions.watched
    domain.write_key(dev, "v1", b"21.5")
    domain.write_key(dev, "v2", b"1")  # another pin
    domain.write_key(dev2, "v1", b"3")  # another template
    assert [(k, p["webhook"], p["values"]["datastream_value"]) for k, p in outbox.queued] == [(KIND, "h1", "21.5")]
    await hooks.delete("h1")
    assert ("TMPL1", "v1") not in domain.reactions.watched


async def test_event_online_offline_triggers(world):
    hooks, domain, dev, dev2, outbox, _ = world
    await hooks.create(spec(name="ev", on="event:TMPL1:overheat"))
    await hooks.create(spec(name="on", on="online:TMPL1"))
    await hooks.create(spec(name="off", on="offline:TMPL1"))
    r = domain.reactions
    r.emit(Happening(EVENT, dev, TS, code="overheat", level="warning", description="hot"))
    r.emit(Happening(EVENT, dev, TS, code="other"))
    r.emit(Happening(ONLINE, dev, TS))
    r.emit(Happening(OFFLINE, dev, TS))
    r.emit(Happening(ONLINE, dev2, TS))
    assert [p["webhook"] for _, p in outbox.queued] == ["ev", "on", "off"]
    ev = outbox.queued[0][1]["values"]
    assert (ev["event_code"], ev["event_level"], ev["event_description"]) == ("overheat", "warning", "hot")


async def test_every_s_skips_calls_per_device_and_counts_them(world):
    hooks, domain, dev, dev2, outbox, clock = world
    await hooks.create(spec(on="online:TMPL1", every_s=10))
    other = domain.add_device(hooks.store.create_device("TMPL1", "second"))
    emit = domain.reactions.emit
    emit(Happening(ONLINE, dev, TS))
    clock.now += 9.9
    emit(Happening(ONLINE, dev, TS))  # skipped
    emit(Happening(ONLINE, other, TS))  # another device: its own interval
    clock.now += 0.1
    emit(Happening(ONLINE, dev, TS))
    assert [p["values"]["device_id"] for _, p in outbox.queued] == [dev.id, other.id, dev.id]
    assert hooks.get("h1").counters.skipped_interval == 1


async def test_calls_per_second_of_one_webhook_are_bounded(world):
    hooks, domain, dev, _, outbox, clock = world
    await hooks.create(spec())
    for i in range(int(MAX_CALLS_PER_S) + 50):
        domain.write_key(dev, "v1", str(i).encode())
    assert len(outbox.queued) == MAX_CALLS_PER_S and hooks.get("h1").counters.skipped_rate == 50
    clock.now += 0.5  # half a second refills half the bucket
    for i in range(100):
        domain.write_key(dev, "v1", str(i).encode())
    assert len(outbox.queued) == MAX_CALLS_PER_S * 1.5


async def test_call_for_automations(world):
    hooks, domain, dev, _, outbox, _ = world
    await hooks.create(spec(on="offline:TMPL1"))
    assert hooks.call("h1", Happening(VALUE, dev, TS, pin="v1", value=b"5"))
    assert outbox.queued[-1][1]["values"]["trigger"] == "call"
    with pytest.raises(WebhookError):
        hooks.call("nope", Happening(VALUE, dev, TS))


# --- delivery: each status against a real receiver ---


@pytest.fixture
async def receiver():
    """An aiohttp app on 127.0.0.1: answers the status queued in ``answers`` (200 when empty)."""
    got: list[tuple[str, str, dict, bytes]] = []
    answers: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        got.append((request.method, request.path_qs, dict(request.headers), await request.read()))
        status = answers.pop(0) if answers else 200
        headers = {"Location": "http://127.0.0.1:9/elsewhere"} if 300 <= status < 400 else None
        return web.Response(status=status, text="x", headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", got, answers
    await runner.cleanup()


async def test_deliver_answers(world, receiver):
    hooks, domain, dev, _, outbox, _ = world
    base, got, answers = receiver
    await hooks.create(spec(url=base + "/in?d={device_id}", body='{"n": "{device_name}", "v": {datastream_value}}'))
    domain.write_key(dev, "v1", b"21.5")
    payload = outbox.queued[-1][1]
    await outbox.deliver(payload)
    method, path, headers, body = got[-1]
    assert (method, path, headers["Content-Type"]) == ("POST", f"/in?d={dev.id}", "application/json")
    assert json.loads(body) == {"n": 'Boiler "A"\n', "v": 21.5}
    assert dev.token.encode() not in body and dev.token not in path
    hook = hooks.get("h1")
    for status, permanent in ((500, False), (429, False), (408, False), (404, True), (302, True)):
        answers.append(status)
        with pytest.raises(DeliveryFailed) as err:
            await outbox.deliver(payload)
        assert err.value.permanent == permanent, status
        hook.failures = 0  # keep it enabled for the next status
    assert len(got) == 6  # the 302 was not followed
    answers.append(503)
    with pytest.raises(DeliveryFailed):
        await outbox.deliver(payload)
    assert hook.failures == 1
    await outbox.deliver(payload)
    assert hook.failures == 0 and hook.counters.ok == 2


async def test_consecutive_failures_disable_and_enable_again(world, receiver):
    hooks, domain, dev, _, outbox, _ = world
    base, got, answers = receiver
    disabled = []
    hooks.on_disabled.append(lambda hook, reason, device_id: disabled.append((hook.name, reason)))
    await hooks.create(spec(url=base + "/x"))
    domain.write_key(dev, "v1", b"1")
    payload = outbox.queued[-1][1]
    answers.extend([500, 500, 500])
    for _ in range(3):
        with pytest.raises(DeliveryFailed) as err:
            await outbox.deliver(payload)
    assert err.value.permanent  # the one that disabled it: no retry
    hook = hooks.get("h1")
    assert not hook.enabled and disabled == [("h1", hook.disabled_reason)] and "HTTP 500" in hook.disabled_reason
    assert ("TMPL1", "v1") not in domain.reactions.watched
    await outbox.deliver(payload)  # a call still queued is dropped, not made
    assert len(got) == 3 and hook.counters.skipped_off == 1
    # Stored: a restart keeps it disabled.
    again = Webhooks(hooks.store, domain, FakeOutbox(), Settings())
    await again.load()
    assert not again.get("h1").enabled and again.get("h1").failures == 3
    await hooks.enable("h1")
    assert hook.enabled and hook.failures == 0 and ("TMPL1", "v1") in domain.reactions.watched


async def test_connection_refused_is_a_retried_failure(world):
    hooks, domain, dev, _, outbox, _ = world
    await hooks.create(spec(url="http://127.0.0.1:9/nothing-listens"))
    domain.write_key(dev, "v1", b"1")
    with pytest.raises(DeliveryFailed) as err:
        await outbox.deliver(outbox.queued[-1][1])
    assert not err.value.permanent and hooks.get("h1").counters.failed == 1
