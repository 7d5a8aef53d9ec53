"""The provisioning CLI while a server holds the data dir, in process: every command becomes the admin API
request the contract names (paths, JSON shapes), over the control socket; 4xx answers exit 2 with the
server's message, 5xx and a silent server exit 1. The server here is a stand-in aiohttp app on the test's
loop that records what it was asked and answers as the real admin API does."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from blynk_server.cli import main
from blynk_server.control import DataDirLock, listen_socket

DEVICE = {
    "id": 7,
    "token": "tok7tok7tok7",
    "name": "seven",
    "template_id": "TMPLr",
    "created_at": 1,
    "last_seen": None,
    "info": None,
    "timezone": None,
    "online": True,
}


pytestmark = pytest.mark.usefixtures("keep_umask")


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)


@pytest.fixture
async def fake_server(tmp_path):
    """(data dir, requests seen as (method, path_qs, json or None)) of a stand-in server holding the lock."""
    data = tmp_path / "data"
    data.mkdir()
    seen: list[tuple[str, str, object]] = []

    @web.middleware
    async def record(request: web.Request, handler) -> web.StreamResponse:
        body = await request.json() if request.can_read_body and request.content_type == "application/json" else None
        seen.append((request.method, request.path_qs, body))
        return await handler(request)

    async def templates(request: web.Request) -> web.Response:
        if request.method == "POST":
            body = await request.json()
            if body["id"] == "TMPLdup":
                return _error("Template already exists.", 409)
            return web.json_response({"id": body["id"], "name": body["name"], "datastreams": []}, status=201)
        return web.json_response([{"id": "TMPLr", "name": "R", "datastreams": [{"pin": "V1", "type": "int"}]}])

    async def devices(request: web.Request) -> web.Response:
        if request.method == "POST":
            body = await request.json()
            if body["template_id"] != "TMPLr":
                return _error("Template not found.", 404)
            return web.json_response(DEVICE | {"token": body.get("token", "generatedtoken")}, status=201)
        token = request.query.get("token")
        return web.json_response([DEVICE] if token in (None, DEVICE["token"]) else [])

    async def device(request: web.Request) -> web.Response:
        if request.match_info["id"] != "7":
            return _error("Device not found.", 404)
        if request.method == "DELETE":
            return web.Response(status=204)
        return web.json_response(DEVICE)

    async def values(request: web.Request) -> web.Response:
        return web.json_response({"v1": {"value": "5", "ts": 2}})

    async def meta(request: web.Request) -> web.Response:
        return web.json_response({"Location": "attic"})

    async def import_devices(request: web.Request) -> web.Response:
        rows = (await request.json())["devices"]
        if any(r["token"] == "takentoken" for r in rows):
            return _error("token takentoken already exists", 409)
        return web.json_response([DEVICE] * len(rows), status=201)

    async def broken(request: web.Request) -> web.Response:
        return _error("OTA is not running.", 503)

    app = web.Application(middlewares=[record])
    app.router.add_route("*", "/api/templates", templates)
    app.router.add_route("*", "/api/devices", devices)
    app.router.add_post("/api/devices/import", import_devices)
    app.router.add_route("*", "/api/devices/{id}", device)
    app.router.add_get("/api/devices/{id}/values", values)
    app.router.add_get("/api/devices/{id}/meta", meta)
    app.router.add_get("/api/ota/firmware", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    with DataDirLock(data):
        await web.SockSite(runner, listen_socket(data)).start()
        yield data, seen
        await runner.cleanup()


async def _cli(capsys, data, *args: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, [*args, "--data-dir", str(data)])
    out = capsys.readouterr()
    return code, out.out, out.err


async def test_commands_become_admin_api_requests(fake_server, capsys, tmp_path):
    data, seen = fake_server
    code, out, _ = await _cli(
        capsys, data, "template", "create", "--id", "TMPLn", "--name", "N", "--datastream", "pin=V1"
    )
    assert code == 0 and json.loads(out)["id"] == "TMPLn"
    assert seen.pop() == ("POST", "/api/templates", {"id": "TMPLn", "name": "N", "datastreams": ["pin=V1"]})
    assert await _cli(capsys, data, "template", "list") == (0, "TMPLr\tR\tV1:int\n", "")

    assert await _cli(capsys, data, "device", "create", "--template", "TMPLr", "--name", "x") == (
        0,
        "generatedtoken\n",
        "",
    )
    assert seen.pop() == ("POST", "/api/devices", {"template_id": "TMPLr", "name": "x"})
    code, out, _ = await _cli(
        capsys, data, "device", "create", "--template", "TMPLr", "--name", "x", "--token", "mytoken99"
    )
    assert out == "mytoken99\n" and seen.pop()[2] == {"template_id": "TMPLr", "name": "x", "token": "mytoken99"}

    code, out, _ = await _cli(capsys, data, "device", "list", "--json", "--template", "TMPLr")
    assert json.loads(out) == [{k: v for k, v in DEVICE.items() if k != "online"}]  # the store's columns only
    assert seen.pop()[:2] == ("GET", "/api/devices?template_id=TMPLr")

    code, out, _ = await _cli(capsys, data, "device", "show", DEVICE["token"])
    shown = json.loads(out)
    assert shown["values"] == {"V1": {"value": "5", "ts": 2}} and shown["metadata"] == {"Location": "attic"}
    assert [s[1] for s in seen[-3:]] == [
        "/api/devices?token=tok7tok7tok7",
        "/api/devices/7/values",
        "/api/devices/7/meta",
    ]

    assert await _cli(capsys, data, "device", "delete", "7") == (0, "deleted device 7 (seven)\n", "")
    assert seen[-2:] == [("GET", "/api/devices/7", None), ("DELETE", "/api/devices/7", None)]

    csv = tmp_path / "import.csv"
    csv.write_text("token,name,template\nimporttoken1,a,TMPLr\nimporttoken2,,TMPLr\n")
    assert await _cli(capsys, data, "device", "import", str(csv)) == (0, "imported 2 devices\n", "")
    devices = [
        {"token": "importtoken1", "name": "a", "template_id": "TMPLr"},
        {"token": "importtoken2", "name": "Device import", "template_id": "TMPLr"},
    ]
    assert seen.pop() == ("POST", "/api/devices/import", {"devices": devices})


async def test_refusals_exit_2_with_the_servers_message_and_failures_exit_1(fake_server, capsys, tmp_path):
    data, _ = fake_server
    assert await _cli(capsys, data, "template", "create", "--id", "TMPLdup", "--name", "d") == (
        2,
        "",
        "blynk-server: Template already exists.\n",
    )
    code, _, err = await _cli(capsys, data, "device", "create", "--template", "TMPLzz", "--name", "x")
    assert (code, err) == (2, "blynk-server: no template 'TMPLzz'\n")
    for ref in ("8", "nosuchtoken"):
        code, _, err = await _cli(capsys, data, "device", "show", ref)
        assert (code, err) == (2, f"blynk-server: no device {ref!r}\n")
    csv = tmp_path / "import.csv"
    csv.write_text("takentoken,a,TMPLr\n")
    code, _, err = await _cli(capsys, data, "device", "import", str(csv))
    assert (code, err) == (2, "blynk-server: token takentoken already exists\n")
    csv.write_text("goodtoken1,a,TMPLgone\n")  # templates are checked against the server's list, with the line
    code, _, err = await _cli(capsys, data, "device", "import", str(csv))
    assert (code, err) == (2, f"blynk-server: {csv}:1: no template 'TMPLgone'\n")
    assert await _cli(capsys, data, "ota", "firmware") == (
        1,
        "",
        "blynk-server: the server failed: OTA is not running.\n",
    )
