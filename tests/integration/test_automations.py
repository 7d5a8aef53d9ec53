"""Automations on the whole server: rules made through the admin API (and the CLI over the control
socket), fired by real device connections, acting on real device connections."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from blynk_server.cli import main
from blynk_server.devclient import DeviceClient
from protocol import Command, Status

BERLIN = ZoneInfo("Europe/Berlin")


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def admin(server, http):
    """``call(method, path, json) -> (status, body)`` on the admin API over TCP, with the key."""
    key = (server.settings.data_dir / "admin-api-key").read_text().strip()
    host, port = server.admin_address

    async def call(method: str, path: str, body: object = None) -> tuple[int, object]:
        headers = {"Authorization": f"Bearer {key}"}
        async with http.request(method, f"http://{host}:{port}{path}", json=body, headers=headers) as resp:
            return resp.status, (await resp.json() if resp.content_type == "application/json" else await resp.text())

    return call


@pytest.fixture
async def devices(server, template):
    """Two devices of the template, connected and logged in: (records, clients)."""
    records = [await server.provisioning.create_device(template.id, name) for name in ("A", "B")]
    host, port = server.hardware.address
    clients = [await DeviceClient.connect(host, port, r.token) for r in records]
    try:
        yield records, clients
    finally:
        for c in clients:
            await c.close()


async def frames_until_answered(device: DeviceClient) -> list[tuple]:
    """Every frame the server sent the device before it answered a ping sent now: whatever the server
    did for writes it handled earlier was queued on this connection before that answer."""
    msg_id = device.send(Command.PING)
    out = []
    while True:
        frame = await device.recv()
        if frame[0] == Command.RESPONSE and frame[1] == msg_id:
            assert frame[2] == Status.SUCCESS
            return out
        out.append(frame)


def writes(frames: list[tuple]) -> list[bytes]:
    return [f[2] for f in frames if f[0] == Command.HARDWARE]


async def test_v1_over_30_on_a_writes_v2_on_b_on_the_edge_only(server, devices, admin):
    (a, b), (dev_a, dev_b) = devices
    status, made = await admin(
        "POST", "/api/automations", {"name": "pump", "when": f"{a.token}:V1 > 30", "do": [f"write:{b.token}:V2=1"]}
    )
    assert status == 201, made
    assert made["when"] == f"device:{a.id}:V1 > 30" and made["do"] == [f"write:{b.id}:V2=1"]

    dev_a.virtual_write(1, 35)
    frame = await dev_b.expect(lambda f: f[0] == Command.HARDWARE)
    assert frame[2] == b"vw\x002\x001"

    dev_a.virtual_write(1, 36)  # still above: nothing
    await frames_until_answered(dev_a)
    assert writes(await frames_until_answered(dev_b)) == []

    dev_a.virtual_write(1, 20)
    dev_a.virtual_write(1, 31)  # below, then above: fires again
    frame = await dev_b.expect(lambda f: f[0] == Command.HARDWARE)
    assert frame[2] == b"vw\x002\x001"

    status, runs = await admin("GET", "/api/automations/pump/runs")
    assert status == 200 and [r["trigger"]["value"] for r in runs] == ["31", "35"]
    assert all(r["outcomes"][0]["ok"] and r["outcomes"][0]["online"] for r in runs)
    status, listed = await admin("GET", "/api/automations")
    assert [x["name"] for x in listed] == ["pump"] and listed[0]["runs"] == 2
    everything = repr((runs, listed, await admin("GET", "/api/automations/pump")))
    assert a.token not in everything and b.token not in everything
    assert (await admin("DELETE", "/api/automations/pump"))[0] == 204
    assert (await admin("GET", "/api/automations/pump"))[0] == 404


async def test_automations_writing_their_own_trigger_stop_at_the_depth_limit(server, devices, admin):
    (a, _), (dev_a, _) = devices
    assert server.settings.automation_max_depth == 3
    for name, when, value in (("down", "V1 > 30", 0), ("up", "V1 < 30", 100)):
        status, body = await admin(
            "POST", "/api/automations", {"name": name, "when": f"{a.id}:{when}", "do": [f"write:{a.id}:V1={value}"]}
        )
        assert status == 201, body

    dev_a.virtual_write(1, 35)
    # down writes 0 (depth 1), up writes 100 (depth 2), down writes 0 (depth 3): that one triggers nothing.
    assert writes(await frames_until_answered(dev_a)) == [b"vw\x001\x000", b"vw\x001\x00100", b"vw\x001\x000"]
    assert server.domain.device(a.id).values["v1"][0] == b"0"
    status, text = await admin("GET", "/metrics")
    assert "blynk_automation_loop_stops_total 1.0" in text
    assert 'blynk_automation_runs_total{automation="down"} 2.0' in text
    assert 'blynk_automation_runs_total{automation="up"} 1.0' in text


async def test_a_cron_automation_fires_when_the_fake_clock_passes_its_time(server, devices, admin):
    (_, b), (_, dev_b) = devices
    clock = FakeClock(datetime(2026, 5, 1, 7, 0, tzinfo=BERLIN).timestamp())
    server.automations.clock = clock
    status, made = await admin(
        "POST",
        "/api/automations",
        {"name": "morning", "cron": "07:30", "tz": "Europe/Berlin", "do": [f"write:{b.id}:V2=1"]},
    )
    assert status == 201, made
    assert made["next_run"] == "2026-05-01T05:30:00.000Z"

    clock.now += 29 * 60
    assert server.automations.tick() == 0
    assert writes(await frames_until_answered(dev_b)) == []
    clock.now += 60
    assert server.automations.tick() == 1
    frame = await dev_b.expect(lambda f: f[0] == Command.HARDWARE)
    assert frame[2] == b"vw\x002\x001"
    status, runs = await admin("GET", "/api/automations/morning/runs")
    assert [r["trigger"]["kind"] for r in runs] == ["schedule"]


async def test_refusals_and_the_openapi_document(server, template, admin):
    status, body = await admin(
        "POST", "/api/automations", {"name": "x", "when": "TMPLnope:V1 > 3", "do": ["webhook:h"]}
    )
    assert status == 404 and "TMPLnope" in body["error"]["message"]
    status, body = await admin("POST", "/api/automations", {"name": "x", "cron": "0 7 * *", "do": ["webhook:h"]})
    assert status == 400 and "five fields" in body["error"]["message"]
    status, body = await admin("POST", "/api/automations", {"name": "x", "when": f"{template.id}:V1 > 3", "bogus": 1})
    assert status == 400 and "bogus" in body["error"]["message"]
    status, body = await admin("POST", "/api/automations", [1])
    assert status == 400
    status, doc = await admin("GET", "/api/openapi.json")
    assert {"/api/automations", "/api/automations/{name}", "/api/automations/{name}/runs"} <= set(doc["paths"])
    assert "added by another module" not in repr(doc["paths"]["/api/automations"])


async def test_the_cli_goes_through_the_running_server(server, devices):
    (a, b), (dev_a, dev_b) = devices
    data = str(server.settings.data_dir)
    loop = asyncio.get_running_loop()
    umask = os.umask(0o077)
    os.umask(umask)

    def cli(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(list(argv))
        finally:
            os.umask(umask)
        return code, out.getvalue(), err.getvalue()

    code, out, err = await loop.run_in_executor(
        None,
        cli,
        "automation", "create", "--data-dir", data, "--name", "cli",
        "--when", f"{a.token}:V1 changed", "--do", f"write:{b.token}:V2=1",
    )  # fmt: skip
    assert code == 0, err
    assert a.token not in out and f"device:{a.id}:V1 changed" in out
    dev_a.virtual_write(1, 5)
    frame = await dev_b.expect(lambda f: f[0] == Command.HARDWARE)  # applied at once, by the server
    assert frame[2] == b"vw\x002\x001"
    code, out, _ = await loop.run_in_executor(None, cli, "automation", "list", "--data-dir", data)
    assert code == 0 and out.startswith("cli\t")
    code, out, _ = await loop.run_in_executor(None, cli, "automation", "show", "cli", "--data-dir", data)
    assert code == 0 and '"latest_runs"' in out and '"value": "5"' in out
    code, _, err = await loop.run_in_executor(None, cli, "automation", "show", "nope", "--data-dir", data)
    assert code == 2 and "no automation 'nope'" in err
    code, out, _ = await loop.run_in_executor(None, cli, "automation", "delete", "cli", "--data-dir", data)
    assert code == 0 and server.automations.rules == {}
