"""Webhooks end to end: the whole server on the test's loop, a real device over TCP, a real aiohttp
receiver on 127.0.0.1, the admin API over HTTP and the durable outbox across a restart."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time

import aiohttp
import pytest
from aiohttp import web

from blynk_server.app import BlynkServer
from blynk_server.cli import main
from blynk_server.devclient import DeviceClient
from blynk_server.model import Datastream
from protocol import Status

from .conftest import admin_url, no_loop_thread_errors, start_server

WAIT = 10.0  # bound on awaiting what the server does (never a sleep: the awaits end when it happens)


class Receiver:
    """An HTTP server that records each request and answers the statuses queued in ``answers``."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str, dict, bytes]] = []
        self.answers: list[int] = []
        self.changed = asyncio.Condition()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, port: int = 0) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.answers.pop(0) if self.answers else 200
        async with self.changed:
            self.got.append((request.method, request.path_qs, dict(request.headers), body))
            self.changed.notify_all()
        return web.Response(status=status, text="ok")

    async def wait_for(self, n: int) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: len(self.got) >= n), WAIT)


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


class Servers:
    def __init__(self, data_dir) -> None:
        self.data_dir = data_dir
        self.running: list[BlynkServer] = []

    async def start(self, **settings) -> BlynkServer:
        srv = await start_server(self.data_dir, **settings)
        self.running.append(srv)
        return srv

    async def stop(self, srv: BlynkServer) -> None:
        self.running.remove(srv)
        assert await srv.stop() == 0


@pytest.fixture
async def servers(tmp_path):
    """Start servers on one data dir (one at a time); each is stopped cleanly, with no SQLite on the loop."""
    with no_loop_thread_errors():
        servers = Servers(tmp_path / "data")
        try:
            yield servers
        finally:
            for srv in servers.running:
                assert await srv.stop() == 0


async def device_on(srv: BlynkServer, name: str = 'Boiler "east"'):
    tpl = await srv.provisioning.create_template("T", [Datastream("v1", "Temp", "double")])
    record = await srv.provisioning.create_device(tpl.id, name)
    return tpl, record


async def connect(srv: BlynkServer, token: str) -> DeviceClient:
    host, port = srv.hardware.address
    return await DeviceClient.connect(host, port, token)


async def admin_call(srv: BlynkServer, method: str, path: str, body=None) -> tuple[int, object]:
    key = (srv.settings.data_dir / "admin-api-key").read_text().strip()
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, admin_url(srv, path), json=body, headers={"Authorization": f"Bearer {key}"}) as resp,
    ):
        text = await resp.text()
        return resp.status, json.loads(text) if text else None


async def test_a_write_on_the_watched_pin_calls_the_webhook_with_the_device_name(servers, receiver):
    srv = await servers.start()
    tpl, record = await device_on(srv)
    status, hook = await admin_call(
        srv,
        "POST",
        "/api/webhooks",
        {
            "name": "to-node-red",
            "url": receiver.url + "/in/{device_id}",
            "on": f"datastream:{tpl.id}:V1",
            "headers": {"X-Device": "{device_name}"},
            "body": '{"device": "{device_name}", "value": {datastream_value}, "at": "{timestamp}"}',
            "every_s": 3600,
        },
    )
    assert status == 201, hook
    device = await connect(srv, record.token)
    try:
        device.virtual_write(1, 21.5)
        device.virtual_write(1, 22)  # within every_s of the first: skipped
        device.virtual_write(2, 1)  # not the watched pin
        assert await device.ping() == Status.SUCCESS  # the writes before it were handled
        await receiver.wait_for(1)
    finally:
        await device.close()
    method, path, headers, body = receiver.got[0]
    assert (method, path) == ("POST", f"/in/{record.id}")
    sent = json.loads(body)
    assert sent["device"] == 'Boiler "east"' and sent["value"] == 21.5 and sent["at"].endswith("Z")
    assert headers["X-Device"] == 'Boiler "east"'
    everything = json.dumps([path, headers, body.decode()])
    assert record.token not in everything
    status, shown = await admin_call(srv, "GET", "/api/webhooks/to-node-red")
    assert status == 200 and shown["stats"]["skipped_interval"] == 1 and shown["stats"]["queued"] == 1
    await srv.outbox.wait_idle()
    status, shown = await admin_call(srv, "GET", "/api/webhooks/to-node-red")
    assert shown["stats"]["ok"] == 1 and len(receiver.got) == 1
    async with aiohttp.ClientSession() as http, http.get(admin_url(srv, "/metrics")) as resp:
        metrics = await resp.text()
    assert 'blynk_webhook_calls_total{name="to-node-red",result="ok"} 1.0' in metrics
    assert 'blynk_webhook_calls_skipped_total{name="to-node-red",reason="interval"} 1.0' in metrics


async def test_a_500_is_retried_with_backoff_then_delivered(servers, receiver):
    srv = await servers.start(outbox_retry_base=0.01, outbox_retry_max=0.05)
    tpl, record = await device_on(srv)
    await srv.webhooks.create(
        {
            "name": "h",
            "url": receiver.url + "/x",
            "on": f"datastream:{tpl.id}:V1",
            "body": "{datastream_value}",
            "content_type": "text",
        }
    )
    receiver.answers.extend([500, 503])
    device = await connect(srv, record.token)
    try:
        device.virtual_write(1, 7)
        await receiver.wait_for(3)
    finally:
        await device.close()
    await srv.outbox.wait_idle()
    assert [g[3] for g in receiver.got] == [b"7", b"7", b"7"]
    hook = srv.webhooks.get("h")
    assert (hook.counters.failed, hook.counters.ok, hook.failures, hook.enabled) == (2, 1, 0, True)
    assert srv.outbox.stats.retried == 2 and srv.outbox.stats.delivered == 1


async def test_consecutive_failures_disable_the_webhook(servers, receiver):
    srv = await servers.start(outbox_retry_base=0.01, outbox_retry_max=0.05, webhook_max_failures=3)
    tpl, record = await device_on(srv)
    await srv.webhooks.create({"name": "flaky", "url": receiver.url + "/x", "on": f"datastream:{tpl.id}:V1"})
    receiver.answers.extend([500] * 10)
    device = await connect(srv, record.token)
    try:
        device.virtual_write(1, 1)
        await receiver.wait_for(3)
        await srv.outbox.wait_idle()
        device.virtual_write(1, 2)  # disabled: not even queued (the pin is no longer watched)
        assert await device.ping() == Status.SUCCESS
    finally:
        await device.close()
    await srv.outbox.wait_idle()
    assert len(receiver.got) == 3
    status, shown = await admin_call(srv, "GET", "/api/webhooks/flaky")
    assert status == 200 and shown["enabled"] is False and shown["failures"] == 3
    assert "3 consecutive failures" in shown["disabled_reason"]
    assert srv.outbox.stats.gave_up == 1  # the third failure is not retried
    async with aiohttp.ClientSession() as http, http.get(admin_url(srv, "/metrics")) as resp:
        assert 'blynk_webhook_disabled{name="flaky"} 1.0' in await resp.text()
    # As Blynk does, an event says so: on the timeline of the device whose call failed last.
    status, page = await admin_call(srv, "GET", f"/api/devices/{record.id}/timeline?code=webhook")
    assert status == 200 and [(e["code"], e["level"]) for e in page["events"]] == [("webhook", "warning")]
    assert "webhook flaky disabled: 3 consecutive failures" in page["events"][0]["description"]
    status, shown = await admin_call(srv, "POST", "/api/webhooks/flaky/enable")
    assert status == 200 and shown["enabled"] is True and shown["failures"] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_call_queued_while_the_receiver_is_down_survives_a_restart(servers):
    port = _free_port()  # nothing listens there yet: connection refused
    srv = await servers.start(outbox_retry_base=3600)
    tpl, record = await device_on(srv)
    await srv.webhooks.create(
        {
            "name": "later",
            "url": f"http://127.0.0.1:{port}/x",
            "on": f"datastream:{tpl.id}:V1",
            "body": '{"n": "{device_name}"}',
        }
    )
    device = await connect(srv, record.token)
    try:
        device.virtual_write(1, 5)
        assert await device.ping() == Status.SUCCESS
    finally:
        await device.close()
    await srv.outbox.wait_idle()  # the first attempt failed; the next is an hour away
    assert srv.webhooks.get("later").counters.failed == 1 and srv.outbox.stats.depth == 1
    await servers.stop(srv)

    receiver = await Receiver().start(port)
    try:
        srv = await servers.start(outbox_retry_base=3600)
        assert srv.outbox.stats.depth == 1
        srv.outbox.clock = lambda: time.time() + 7200  # the retry is due now
        srv.outbox.wake()
        await receiver.wait_for(1)
        await srv.outbox.wait_idle()
        assert json.loads(receiver.got[0][3]) == {"n": 'Boiler "east"'}
        assert srv.outbox.stats.depth == 0 and srv.webhooks.get("later").failures == 0
    finally:
        await receiver.stop()


async def test_admin_api_refusals(servers, receiver):
    srv = await servers.start()
    tpl, _ = await device_on(srv)
    good = {"name": "a", "url": receiver.url, "on": f"online:{tpl.id}"}
    assert (await admin_call(srv, "POST", "/api/webhooks", good))[0] == 201
    assert (await admin_call(srv, "POST", "/api/webhooks", good))[0] == 409
    status, err = await admin_call(srv, "POST", "/api/webhooks", good | {"name": "b", "url": "gopher://x/"})
    assert status == 400 and "http" in err["error"]["message"]
    status, err = await admin_call(srv, "POST", "/api/webhooks", good | {"name": "b", "body": "{device_token}"})
    assert status == 400 and "never sent" in err["error"]["message"]
    assert (await admin_call(srv, "POST", "/api/webhooks", good | {"name": "b", "on": "online:NOPE"}))[0] == 404
    assert (await admin_call(srv, "GET", "/api/webhooks/zzz"))[0] == 404
    assert (await admin_call(srv, "DELETE", "/api/webhooks/a"))[0] == 204
    assert (await admin_call(srv, "GET", "/api/webhooks"))[1] == []


async def test_cli_with_and_without_the_running_server(servers, capsys):
    srv = await servers.start()
    tpl, _ = await device_on(srv)
    data = str(srv.settings.data_dir)
    umask = os.umask(0o077)  # main() makes it private; give the test process its own back after

    async def cli(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(main, ["webhook", *argv, "--data-dir", data])
        out, err = capsys.readouterr()
        return code, out, err

    try:
        code, out, _ = await cli(
            "create", "--name", "nr", "--url", "http://127.0.0.1:1/x", "--on", f"event:{tpl.id}:overheat",
            "--header", "X-A: 1", "--body", '{"c": "{event_code}"}', "--every", "30",
        )  # fmt: skip
        assert code == 0 and json.loads(out)["headers"] == {"X-A": "1"}
        assert srv.webhooks.get("nr").every_s == 30  # through the server: it has it at once
        code, out, _ = await cli("list")
        assert out.startswith(f"nr\tenabled\tevent:{tpl.id}:overheat\tPOST http://127.0.0.1:1/x")
        code, _, err = await cli("create", "--name", "bad", "--url", "ftp://x/", "--on", f"online:{tpl.id}")
        assert code == 2 and "http:// or https://" in err
        await servers.stop(srv)

        code, out, _ = await cli("show", "nr")  # no server: the store under the lock
        assert code == 0 and json.loads(out)["on"] == f"event:{tpl.id}:overheat"
        code, out, _ = await cli("delete", "nr")
        assert code == 0 and out == "deleted webhook nr\n"
        code, _, err = await cli("show", "nr")
        assert code == 2 and "not found" in err
    finally:
        os.umask(umask)
    srv = await servers.start()
    assert srv.webhooks.list() == []
