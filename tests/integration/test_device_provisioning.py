"""Dynamic provisioning end to end: an Edgent-style device with no token (a fake on 127.0.0.1 serving
``/board_info.json`` and ``/config`` as Edgent's ConfigMode does, that logs in over the real binary
protocol once configured) obtains a token through ``blynk-server provision device`` and logs in; plus
the admin API, expiry, a wrong template, the limits, the rate limit and re-provisioning."""

from __future__ import annotations

import asyncio
import json
import os

import aiohttp
import pytest
from aiohttp import web

from blynk_server.cli import main
from blynk_server.devclient import DEFAULT_INFO, DeviceClient, LoginFailed
from blynk_server.model import Datastream
from protocol import Status

from .conftest import running


class FakeEdgent:
    """An Edgent device in config mode: its access point's HTTP server, on 127.0.0.1. ``/config`` is
    answered as ConfigMode.h answers it; then the device "joins the network" and logs in to the host
    and port it was given, sending its info with ``tmpl`` (its ``BLYNK_TEMPLATE_ID``)."""

    def __init__(self, tmpl: str, info_tmpl: str | None = None) -> None:
        self.tmpl = tmpl
        self.info_tmpl = info_tmpl or tmpl  # what its info message says (a wrong firmware: another id)
        self.config: dict[str, str] = {}
        self.connected: asyncio.Future = asyncio.get_running_loop().create_future()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> FakeEdgent:
        app = web.Application()
        app.router.add_get("/board_info.json", self.board_info)
        app.router.add_get("/config", self.configure)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        if self.connected.done() and not self.connected.exception():
            await self.connected.result().close()
        await self.runner.cleanup()

    async def board_info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "board": "Garden",
                "tmpl_id": self.tmpl,
                "fw_type": self.tmpl,
                "fw_ver": "0.1.0",
                "ssid": "Blynk Garden-4Y1H",
                "bssid": "aa:bb:cc:dd:ee:01",
                "mac": "aa:bb:cc:dd:ee:00",
                "last_error": 0,
                "wifi_scan": True,
                "static_ip": True,
            }
        )

    async def configure(self, request: web.Request) -> web.Response:
        q = request.query
        token, ssid = q.get("blynk", ""), q.get("ssid", "")
        if len(token) != 32 or not ssid:  # ConfigMode.h's check
            return web.json_response({"status": "error", "msg": "Configuration invalid"}, status=500)
        self.config = dict(q)
        asyncio.get_running_loop().create_task(self._connect(q["host"], int(q["port_ssl"]), token))
        return web.json_response({"status": "ok", "msg": "Trying to connect..."})

    async def _connect(self, host: str, port: int, token: str) -> None:
        info = DEFAULT_INFO | {"tmpl": self.info_tmpl, "fw-type": self.tmpl}
        try:
            self.connected.set_result(await DeviceClient.connect(host, port, token, info))
        except Exception as exc:
            self.connected.set_exception(exc)


@pytest.fixture
async def edgent_template(server):
    tpl = await server.provisioning.create_template("Garden", [Datastream("v1", "Value", "int", 0, 100)])
    await server.device_provisioning.set_allowed(tpl.id, True)
    return tpl


async def admin_call(srv, method: str, path: str, body=None) -> tuple[int, object]:
    key = (srv.settings.data_dir / "admin-api-key").read_text().strip()
    host, port = srv.admin_address
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, f"http://{host}:{port}{path}", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as resp,
    ):
        return resp.status, await resp.json() if resp.content_type == "application/json" else await resp.text()


async def metrics(srv) -> str:
    host, port = srv.admin_address
    async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}/metrics") as resp:
        return await resp.text()


async def cli(srv, capsys, *argv: str) -> tuple[int, str, str]:
    umask = os.umask(0o077)
    try:
        code = await asyncio.to_thread(main, [*argv, "--data-dir", str(srv.settings.data_dir)])
    finally:
        os.umask(umask)
    out, err = capsys.readouterr()
    return code, out, err


async def login(srv, token: str, tmpl: str) -> DeviceClient:
    host, port = srv.hardware.address
    return await DeviceClient.connect(host, port, token, DEFAULT_INFO | {"tmpl": tmpl})


async def test_an_edgent_device_without_a_token_gets_one_through_the_cli_and_logs_in(server, edgent_template, capsys):
    device = await FakeEdgent(edgent_template.id).start()
    try:
        host, port = server.hardware.address
        code, out, err = await cli(
            server, capsys, "provision", "device", device.url, "--ssid", "home", "--pass", "secret",
            "--server-host", host, "--server-port", str(port), "--name", "Greenhouse",
        )  # fmt: skip
        assert (code, err) == (0, "")
        client = await asyncio.wait_for(device.connected, 10)  # logged in, its info answered 200
        assert device.config["ssid"] == "home" and device.config["pass"] == "secret"
        dev = server.domain.authenticate(device.config["blynk"])
        assert dev is not None and dev.online and dev.record.name == "Greenhouse"
        assert out.startswith(f"device {dev.id} (template {edgent_template.id}) got its token")
        assert dev.id not in server.device_provisioning.pending  # activated
        client.virtual_write(1, 42)
        assert await client.ping() == Status.SUCCESS
        assert dev.values["v1"][0] == b"42"
        text = await metrics(server)
        assert 'blynk_provision_tokens_issued_total{kind="new"} 1.0' in text
        assert 'blynk_provision_activations_total{kind="new"} 1.0' in text
        assert "blynk_provision_pending 0.0" in text
    finally:
        await device.stop()


async def test_a_device_whose_info_names_another_template_is_refused_as_an_invalid_token(server, edgent_template):
    status, issued = await admin_call(server, "POST", "/api/provision/token", {"template_id": edgent_template.id})
    assert status == 201 and set(issued) >= {"token", "deviceId", "expires_at"}
    assert len(issued["token"]) == 32  # Edgent takes only 32-character tokens
    with pytest.raises(LoginFailed) as failed:
        await login(server, issued["token"], "TMPLother123")
    assert failed.value.status == Status.INVALID_TOKEN
    assert issued["deviceId"] in server.device_provisioning.pending  # still waiting for the right device
    assert 'blynk_provision_refused_total{reason="template"} 1.0' in await metrics(server)
    client = await login(server, issued["token"], edgent_template.id)  # the right firmware is activated
    await client.close()
    assert issued["deviceId"] not in server.device_provisioning.pending


async def test_a_bad_token_gets_the_normal_invalid_token_answer(server, edgent_template):
    host, port = server.hardware.address
    client = await DeviceClient.open(host, port)
    try:
        assert await client.login("x" * 32) == Status.INVALID_TOKEN
    finally:
        await client.close()


async def test_an_expired_token_is_refused_and_its_device_deleted_by_the_sweep(server, edgent_template):
    service = server.device_provisioning
    issued = await service.issue_provision_token(edgent_template.id)
    status, pending = await admin_call(server, "GET", f"/api/provision/pending?template_id={edgent_template.id}")
    assert status == 200 and [p["device_id"] for p in pending] == [issued.device_id]
    assert "token" not in pending[0] and pending[0]["expired"] is False
    real = service.clock
    service.clock = lambda: real() + server.settings.provision_token_ttl * 1000 + 1
    with pytest.raises(LoginFailed) as failed:
        await login(server, issued.token, edgent_template.id)
    assert failed.value.status == Status.INVALID_TOKEN
    assert (await admin_call(server, "GET", "/api/provision/pending"))[1][0]["expired"] is True
    assert await service.sweep() == 1
    assert server.domain.device(issued.device_id) is None
    text = await metrics(server)
    assert "blynk_provision_expired_total 1.0" in text
    assert 'blynk_provision_refused_total{reason="expired"} 1.0' in text


async def test_a_template_must_allow_it(server):
    tpl = await server.provisioning.create_template("Closed", [])
    status, err = await admin_call(server, "POST", "/api/provision/token", {"template_id": tpl.id})
    assert status == 403 and err == {"error": {"message": "Dynamic provisioning is not allowed for this template."}}
    assert (await admin_call(server, "GET", f"/api/templates/{tpl.id}/provisioning"))[1]["allowed"] is False
    status, state = await admin_call(server, "PUT", f"/api/templates/{tpl.id}/provisioning", {"allowed": True})
    assert status == 200 and state == {"template_id": tpl.id, "allowed": True, "pending": 0}
    assert (await admin_call(server, "POST", "/api/provision/token", {"template_id": tpl.id}))[0] == 201
    assert (await admin_call(server, "PUT", f"/api/templates/{tpl.id}/provisioning", {"allowed": "yes"}))[0] == 400
    assert (await admin_call(server, "POST", "/api/provision/token", {"template_id": "TMPLnope"}))[0] == 404
    assert (await admin_call(server, "POST", "/api/provision/token", {}))[0] == 400


async def test_pending_tokens_per_template_are_bounded(tmp_path):
    async with running(tmp_path / "data", provision_max_pending=2) as srv:
        tpl = await srv.provisioning.create_template("Garden", [])
        await srv.device_provisioning.set_allowed(tpl.id, True)
        body = {"template_id": tpl.id}
        assert [(await admin_call(srv, "POST", "/api/provision/token", body))[0] for _ in range(2)] == [201, 201]
        status, err = await admin_call(srv, "POST", "/api/provision/token", body)
        assert status == 429
        assert err["error"]["message"] == "Too many pending provision tokens for this template (at most 2)."
        assert 'blynk_provision_refused_total{reason="pending_limit"} 1.0' in await metrics(srv)
        first = min(srv.device_provisioning.pending)
        await srv.provisioning.delete_device(first)  # a deleted device's token no longer counts
        status, issued = await admin_call(srv, "POST", "/api/provision/token", body)
        assert status == 201
        await srv.device_provisioning.sweep()
        assert set(srv.device_provisioning.pending) == {first + 1, issued["deviceId"]}


async def test_issuing_is_rate_limited(tmp_path):
    async with running(tmp_path / "data", provision_tokens_per_minute=2) as srv:
        tpl = await srv.provisioning.create_template("Garden", [])
        await srv.device_provisioning.set_allowed(tpl.id, True)
        body = {"template_id": tpl.id}
        assert [(await admin_call(srv, "POST", "/api/provision/token", body))[0] for _ in range(2)] == [201, 201]
        status, err = await admin_call(srv, "POST", "/api/provision/token", body)
        assert (status, err) == (429, {"error": {"message": "Too many provision tokens: at most 2 per minute."}})
        assert len(srv.provisioning.devices(tpl.id)) == 2  # no device made for the refused one
        assert 'blynk_provision_refused_total{reason="rate"} 1.0' in await metrics(srv)


async def test_reprovisioning_gives_a_new_token_and_keeps_the_device_and_its_data(server, edgent_template):
    service = server.device_provisioning
    first = await service.issue_provision_token(edgent_template.id, "Pump")
    client = await login(server, first.token, edgent_template.id)
    client.virtual_write(1, 7)
    assert await client.ping() == Status.SUCCESS
    status, again = await admin_call(server, "POST", f"/api/devices/{first.device_id}/provision/token")
    assert status == 201 and again["deviceId"] == first.device_id and again["kind"] == "reprovision"
    assert again["token"] != first.token
    await asyncio.wait_for(client.closed.wait(), 5)  # the session of the old token is closed
    await client.close()
    host, port = server.hardware.address
    old = await DeviceClient.open(host, port)
    try:
        assert await old.login(first.token) == Status.INVALID_TOKEN
    finally:
        await old.close()
    client = await login(server, again["token"], edgent_template.id)
    await client.close()
    dev = server.domain.device(first.device_id)
    assert dev.record.name == "Pump" and dev.values["v1"][0] == b"7" and dev.id not in service.pending
    assert 'blynk_provision_activations_total{kind="reprovision"} 1.0' in await metrics(server)
    assert (await admin_call(server, "POST", "/api/devices/99999/provision/token"))[0] == 404


async def test_claim_and_rename_after_activation(server, edgent_template):
    issued = await server.device_provisioning.issue_provision_token(edgent_template.id)
    path = f"/api/devices/{issued.device_id}/claim"
    status, err = await admin_call(server, "POST", path, {"owner": "ann@example.com"})
    assert (status, err) == (400, {"error": {"message": "The device is not activated yet."}})
    client = await login(server, issued.token, edgent_template.id)
    await client.close()
    status, claimed = await admin_call(server, "POST", path, {"owner": "ann@example.com", "name": "Kitchen"})
    assert status == 200 and claimed["owner"] == "ann@example.com" and claimed["name"] == "Kitchen"
    assert server.domain.device(issued.device_id).record.name == "Kitchen"
    assert (await admin_call(server, "POST", path, {"name": "x" * 51}))[0] == 400
    rows = await server.store.run(server.store.query, "SELECT name FROM devices WHERE id = ?", (issued.device_id,))
    assert rows == [("Kitchen",)]


async def test_cli_commands_with_and_without_a_running_server(tmp_path, capsys):
    data = tmp_path / "data"
    async with running(data) as srv:
        tpl = await srv.provisioning.create_template("Garden", [])
        code, out, _ = await cli(srv, capsys, "provision", "allow", tpl.id)
        assert code == 0 and json.loads(out)["allowed"] is True
        code, out, _ = await cli(srv, capsys, "provision", "token", "--template", tpl.id, "--name", "One")
        issued = json.loads(out)
        assert code == 0 and srv.domain.device(issued["deviceId"]).record.name == "One"  # the server made it
        code, out, _ = await cli(srv, capsys, "provision", "pending", "--template", tpl.id)
        assert out.startswith(f"{issued['deviceId']}\t{tpl.id}\tnew\tpending\t")
        assert issued["token"] not in out
    # No server: the same commands on the data dir, under its lock; what they did is there at the next start.
    code, out, _ = await cli(srv, capsys, "provision", "token", "--template", tpl.id)
    second = json.loads(out)
    assert code == 0
    code, out, _ = await cli(srv, capsys, "provision", "reprovision", str(issued["deviceId"]))
    assert code == 0 and json.loads(out)["deviceId"] == issued["deviceId"]
    renewed = json.loads(out)["token"]
    code, _, err = await cli(srv, capsys, "provision", "claim", str(second["deviceId"]), "--owner", "ann")
    assert code == 2 and "not activated yet" in err
    async with running(data) as srv:
        assert set(srv.device_provisioning.pending) == {issued["deviceId"], second["deviceId"]}
        client = await login(srv, renewed, tpl.id)
        await client.close()
        code, out, _ = await cli(srv, capsys, "provision", "claim", renewed, "--name", "Renamed")
        assert code == 0 and srv.domain.device(issued["deviceId"]).record.name == "Renamed"
        code, _, err = await cli(srv, capsys, "provision", "allow", "TMPLnope")
        assert code == 2 and "no template" in err


async def test_provision_device_refuses_what_a_device_in_config_mode_would_not_say(server, edgent_template, capsys):
    async def board(request: web.Request) -> web.Response:
        return web.json_response({"board": "x"})  # no tmpl_id

    app = web.Application()
    app.router.add_get("/board_info.json", board)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        code, _, err = await cli(
            server, capsys, "provision", "device", f"http://{host}:{port}", "--ssid", "home", "--server-host", "h"
        )
        assert code == 2 and "names no template" in err
        assert server.device_provisioning.pending == {}  # no token was issued
    finally:
        await runner.cleanup()


async def test_the_device_https_api_provision_call_activates_a_pending_device(server, edgent_template):
    issued = await server.device_provisioning.issue_provision_token(edgent_template.id)
    host, port = server.hardware.address
    url = f"http://{host}:{port}/external/api/provision"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, params={"token": issued.token, "templateId": "TMPLother123"}) as resp:
            assert (resp.status, await resp.json()) == (400, {"error": {"message": "Invalid token."}})
        async with http.get(url, params={"token": "y" * 32, "templateId": edgent_template.id}) as resp:
            assert (resp.status, await resp.json()) == (400, {"error": {"message": "Invalid token."}})
        assert issued.device_id in server.device_provisioning.pending
        params = {"token": issued.token, "templateId": edgent_template.id, "ver": "0.1.0", "boType": "ESP32"}
        async with http.get(url, params=params) as resp:
            assert resp.status == 200
    assert issued.device_id not in server.device_provisioning.pending
