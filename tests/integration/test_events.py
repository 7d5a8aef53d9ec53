"""Events on the whole server (on the test's loop) with real device connections: a declared code logged
by a device is stored with its level, mailed and shown on the timeline; an undeclared one is refused
(status 2, HTTP 400); online/offline honour the template's offline-ignore period; the admin API and
the CLI (through the running server) manage definitions and read the timeline."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from blynk_server.cli import main
from blynk_server.control import CONTROL_SOCKET
from blynk_server.devclient import DeviceClient
from blynk_server.reactions import OFFLINE, ONLINE
from protocol import Command, Status
from protocol.body import join_fields

from .conftest import hw_url


class FakeMailer:
    def __init__(self) -> None:
        self.sent: list[tuple[list[str], str, str]] = []

    def send(self, to: list[str], subject: str, body: str) -> None:
        self.sent.append((to, subject, body))


@pytest.fixture
async def admin(server):
    """The admin API over the control socket (no key there, as the CLI uses it)."""
    connector = aiohttp.UnixConnector(path=str(server.settings.data_dir / CONTROL_SOCKET))
    async with aiohttp.ClientSession(connector=connector, base_url="http://control") as session:
        yield session


async def timeline(admin, device_id: int, query: str = "") -> dict:
    async with admin.get(f"/api/devices/{device_id}/timeline{query}") as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_declared_event_is_stored_with_its_level_mailed_and_on_the_timeline(server, template, http, admin):
    mailer = server.events.mailer = FakeMailer()
    async with admin.post(
        f"/api/templates/{template.id}/events",
        json={"code": "overheat", "name": "Overheat", "level": "critical", "emails": ["ops@example.com"]},
    ) as resp:
        assert resp.status == 201
    record = await server.provisioning.create_device(template.id, "Greenhouse")
    gone = asyncio.Event()
    server.domain.reactions.listen(lambda h: h.kind == OFFLINE and h.device.id == record.id and gone.set())
    host, port = server.hardware.address
    device = await DeviceClient.connect(host, port, record.token)
    try:
        ok = await device.request(Command.EVENT_LOG, join_fields("overheat", "42 C"))
        assert ok[2] == Status.SUCCESS
        refused = await device.request(Command.EVENT_LOG, b"undeclared")
        assert refused[2] == Status.ILLEGAL_COMMAND
        async with http.get(hw_url(server, f"/external/api/logEvent?token={record.token}&code=undeclared")) as resp:
            assert resp.status == 400
            body = await resp.json()
            assert body == {"error": {"message": "Can't find Event with this code in Product template"}}
    finally:
        await device.close()
    await asyncio.wait_for(gone.wait(), 5)
    page = await timeline(admin, record.id)
    events = [(e["code"], e["name"], e["level"], e["description"]) for e in page["events"]]
    assert events == [  # the device went away (offline-ignore period 0: recorded at once)
        ("offline", "Offline", "warning", None),
        ("overheat", "Overheat", "critical", "42 C"),
        ("online", "Online", "info", None),
    ]
    [(to, subject, body)] = mailer.sent
    assert to == ["ops@example.com"] and "Greenhouse" in subject and "Overheat" in subject
    assert record.token not in subject + body
    assert server.domain.stats.events_undeclared == 2
    async with admin.get("/metrics") as resp:
        text = await resp.text()
    assert "blynk_events_undeclared_total 2.0" in text and 'blynk_system_events_total{code="online"}' in text


async def test_online_and_offline_honour_the_ignore_period(server, template, admin):
    record = await server.provisioning.create_device(template.id, "flaky")
    dev = server.domain.device(record.id)
    seen: dict[str, asyncio.Event] = {ONLINE: asyncio.Event(), OFFLINE: asyncio.Event()}
    server.domain.reactions.listen(lambda h: h.device is dev and h.kind in seen and seen[h.kind].set())
    went = asyncio.Event()
    server.domain.on_device_offline.append(lambda d: d is dev and went.set())
    async with admin.put(f"/api/templates/{template.id}/event-settings", json={"offline_ignore_s": 3600}) as resp:
        assert resp.status == 200
    host, port = server.hardware.address

    device = await DeviceClient.connect(host, port, record.token)
    await asyncio.wait_for(seen[ONLINE].wait(), 5)
    await device.close()
    await asyncio.wait_for(went.wait(), 5)  # the server saw it go: an offline is pending
    assert server.events.stats.offline_pending == 1
    seen[ONLINE].clear()
    device = await DeviceClient.connect(host, port, record.token)  # back within the hour
    assert await device.ping() == Status.SUCCESS
    assert server.events.stats.offline_ignored == 1 and not seen[ONLINE].is_set()

    # A short period: the next disconnection is recorded once it passes, with the time it went.
    await server.provisioning.set_offline_ignore(template.id, 0.05)
    went.clear()
    await device.close()
    await asyncio.wait_for(went.wait(), 5)
    await asyncio.wait_for(seen[OFFLINE].wait(), 5)
    page = await timeline(admin, record.id, "?code=online,offline")
    assert [e["code"] for e in page["events"]] == ["offline", "online"]
    assert page["events"][0]["ts"] <= server.domain.device(record.id).record.last_seen


async def test_event_admin_api_and_openapi(server, template, admin):
    base = f"/api/templates/{template.id}/events"
    async with admin.post(base, json={"code": "door", "every_s": 30}) as resp:
        assert resp.status == 201 and (await resp.json())["name"] == "door"
    async with admin.post(base, json={"code": "door"}) as resp:
        assert resp.status == 409
    async with admin.post(base, json={"code": "x", "level": "fatal"}) as resp:
        assert resp.status == 400 and "level" in (await resp.json())["error"]["message"]
    async with admin.put(f"{base}/door", json={"name": "Door", "level": "warning"}) as resp:
        assert resp.status == 200
    async with admin.get(base) as resp:
        assert [(e["code"], e["name"], e["level"]) for e in await resp.json()] == [("door", "Door", "warning")]
    async with admin.delete(f"{base}/door") as resp:
        assert resp.status == 204
    async with admin.delete(f"{base}/door") as resp:
        assert resp.status == 404
    async with admin.get("/api/templates/TMPLnone/events") as resp:
        assert resp.status == 404
    async with admin.get("/api/devices/999/timeline") as resp:
        assert resp.status == 404
    async with admin.get("/api/openapi.json") as resp:
        paths = (await resp.json())["paths"]
    assert "(added by another module)" not in json.dumps(
        {p: paths[p] for p in paths if "event" in p or "timeline" in p}
    )
    assert set(paths["/api/templates/{template_id}/events"]) == {"get", "post"}


async def test_cli_through_the_running_server(server, template, capsys, keep_umask):
    loop = asyncio.get_running_loop()
    data = ["--data-dir", str(server.settings.data_dir)]

    async def cli(*argv: str) -> int:
        return await loop.run_in_executor(None, main, [*argv, *data])

    assert (
        await cli("event", "create", "--template", template.id, "--code", "overheat", "--name", "Overheat")
        + await cli("event", "create", "--template", template.id, "--code", "leak", "--name", "Leak")
        + await cli("event", "settings", "--template", template.id, "--offline-ignore", "2m")
    ) == 0
    assert server.domain.event_defs.offline_ignore_s(template.id) == 120
    capsys.readouterr()
    assert await cli("event", "list", "--template", template.id) == 0
    assert capsys.readouterr().out.splitlines() == [
        "leak\tinfo\tevery=-\tLeak\t-",
        "overheat\tinfo\tevery=-\tOverheat\t-",
    ]
    record = await server.provisioning.create_device(template.id, "d")
    dev = server.domain.device(record.id)
    server.domain.log_event(dev, "overheat", "hot")
    server.domain.log_event(dev, "leak", None)
    assert await cli("timeline", record.token, "--since", "1h", "--code", "overheat") == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line.endswith("\tinfo\toverheat\tOverheat\thot")
    assert await cli("timeline", str(record.id), "--limit", "1", "--json") == 0
    page = json.loads(capsys.readouterr().out)
    assert [e["code"] for e in page["events"]] == ["leak"] and page["next_cursor"]
    assert await cli("event", "create", "--template", template.id, "--code", "leak", "--name", "L") == 2
    assert "already exists" in capsys.readouterr().err
