"""The Platform API (issue 13): OAuth2 client credentials and Blynk's ``/api/v1/organization/...`` routes,
over real HTTP against the whole server on the test's loop."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3

import aiohttp
import pytest

from blynk_server import cli
from blynk_server.app import API_KEY_FILE
from blynk_server.model import Datastream, MetaField, now_ms
from blynk_server.provisioning import make_event_def

from .conftest import admin_url, hw_url, running

ORG = "/api/v1/organization"


def api_key(server) -> str:
    return (server.settings.data_dir / API_KEY_FILE).read_text().strip()


def basic(client_id: str, secret: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


async def new_client(server, http, scope: str = "read-write") -> dict:
    """A client made through the admin API (with the API key), as an operator would."""
    async with http.post(
        admin_url(server, "/api/oauth-clients"),
        json={"name": "integration", "scope": scope},
        headers={"Authorization": f"Bearer {api_key(server)}"},
    ) as resp:
        assert resp.status == 201
        return await resp.json()


async def get_token(server, http, client: dict, base: str | None = None) -> str:
    url = (base or admin_url(server, "")) + "/oauth2/token?grant_type=client_credentials"
    async with http.post(url, headers=basic(client["client_id"], client["client_secret"])) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 86400
    return body["access_token"]


class Platform:
    """Calls to the Platform routes with one bearer token."""

    def __init__(self, http: aiohttp.ClientSession, base: str, token: str) -> None:
        self.http = http
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, **kw) -> tuple[int, object]:
        async with self.http.request(method, self.base + path, headers=self.headers, **kw) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text else None


@pytest.fixture
async def garden(server):
    """A template with a history datastream, a string one and a declared event; one device of it."""
    tpl = await server.provisioning.create_template(
        "Garden",
        [
            Datastream("v1", "Temperature", "int", 0, 100, history=True),
            Datastream("v2", "Label", "string"),
            Datastream("v5", "Humidity", "double", id=7, alias="hum"),  # an id that is not its pin
        ],
        "TMPLgarden",
        [MetaField(3, "Serial", "text", "none"), MetaField(4, "Floor", "number", min=0, max=10)],
    )
    await server.provisioning.put_event_def(tpl.id, make_event_def("overheat", "Overheat", "critical"))
    record = await server.provisioning.create_device(tpl.id, "Greenhouse")
    return tpl, record


async def test_done_when_a_client_lists_devices_reads_and_writes_pages_history_and_reads_the_timeline(
    server, http, garden
):
    """Issue 13's "Done when": a client with a token from client credentials, on the documented paths only."""
    tpl, record = garden
    client = await new_client(server, http)
    api = Platform(http, admin_url(server, ""), await get_token(server, http, client))

    status, page = await api.call("GET", f"{ORG}/devices?page=0&size=50")
    assert status == 200 and page["totalElements"] == 2  # with the Quickstart device of a first start
    listed = next(d for d in page["content"] if d["id"] == record.id)
    assert {k: listed[k] for k in ("name", "templateId", "orgId", "status", "token")} == {
        "name": "Greenhouse",
        "templateId": "TMPLgarden",
        "orgId": 1,
        "status": "OFFLINE",
        "token": record.token,
    }

    status, _ = await api.call(
        "POST", f"{ORG}/device/datastream", json={"deviceId": record.id, "dataStreamId": 1, "value": 42}
    )
    assert status == 204
    status, values = await api.call("GET", f"/api/v2/organization/device/datastreams?deviceId={record.id}")
    assert status == 200
    v1 = next(v for v in values if v["dataStreamId"] == 1)
    assert v1["value"] == 42 and v1["pin"] == "v1" and v1["dataStreamLabel"] == "Temperature" and v1["updatedAt"]

    start = now_ms() - 60_000
    points = [{"ts": start + i, "value": i} for i in range(5)]
    body = {"deviceId": record.id, "dataStreamId": 1, "values": points}
    assert (await api.call("POST", f"{ORG}/device/import/batch", json=body))[0] == 204
    history = f"{ORG}/device/datastream/history?deviceId={record.id}&dataStreamId=1&from={start}&size=2"
    seen = []
    for page_no in range(4):
        status, page = await api.call("GET", f"{history}&page={page_no}")
        assert status == 200 and page["totalElements"] == 6  # the five imported and the 42 written
        seen += page["content"]
    assert [p["value"] for p in seen] == [0, 1, 2, 3, 4, 42]
    assert [p["createdAt"] for p in seen[:5]] == [start + i for i in range(5)]

    event = {"deviceId": record.id, "eventCode": "overheat", "eventDescription": "42 C"}
    assert (await api.call("POST", f"{ORG}/device/trigger-event", json=event))[0] == 204
    status, timeline = await api.call("GET", f"{ORG}/device/timeline?deviceId={record.id}&eventType=CRITICAL")
    assert status == 200 and timeline["totalElements"] == 1
    entry = timeline["content"][0]
    assert (entry["eventCode"], entry["eventType"], entry["description"], entry["isResolved"]) == (
        "overheat",
        "CRITICAL",
        "42 C",
        False,
    )


async def test_device_lifecycle_search_and_templates(server, http, garden):
    tpl, record = garden
    api = Platform(http, admin_url(server, ""), await get_token(server, http, await new_client(server, http)))
    status, made = await api.call(
        "POST", f"{ORG}/device/create", json={"templateId": tpl.id, "name": "Shed", "orgId": 1}
    )
    assert status == 200 and made["name"] == "Shed" and server.domain.device(made["id"]) is not None
    status, found = await api.call("GET", f"{ORG}/search/devices?query=she&sortBy=name")
    assert status == 200 and [d["name"] for d in found["content"]] == ["Shed"]
    status, info = await api.call("GET", f"{ORG}/device?deviceId={made['id']}")
    assert status == 200 and info["token"] == server.domain.device(made["id"]).token
    status, edited = await api.call("PUT", f"{ORG}/device?deviceId={made['id']}", json={"name": "Tool shed"})
    assert status == 200 and edited["name"] == "Tool shed" == server.domain.device(made["id"]).record.name
    assert (await api.call("PUT", f"{ORG}/device?deviceId={made['id']}", json={"name": "x" * 51}))[0] == 400
    assert (await api.call("DELETE", f"{ORG}/device?deviceId={made['id']}"))[0] == 204
    assert server.domain.device(made["id"]) is None
    assert (await api.call("GET", f"{ORG}/device?deviceId={made['id']}")) == (
        404,
        {"error": {"message": f"Device with identifier {made['id']} is not found or belong to another organization."}},
    )
    status, bad = await api.call("POST", f"{ORG}/device/create", json={"templateId": tpl.id, "name": "x" * 51})
    assert status == 400 and "1..50" in bad["error"]["message"]
    assert (await api.call("POST", f"{ORG}/device/create", json={"templateId": "TMPLnone", "name": "A"}))[0] == 404
    assert (await api.call("GET", f"{ORG}/devices?orgId=2"))[0] == 404

    status, templates = await api.call("GET", f"{ORG}/templates")
    assert status == 200 and "TMPLgarden" in [t["id"] for t in templates["content"]]
    status, streams = await api.call("GET", f"{ORG}/template/datastreams?templateId=TMPLgarden")
    assert [(d["id"], d["label"], d["type"], d["pinType"], d["isHistory"]) for d in streams] == [
        (1, "Temperature", "INT", "VIRTUAL", True),
        (2, "Label", "STRING", "VIRTUAL", False),
        (7, "Humidity", "DOUBLE", "VIRTUAL", False),
    ]
    status, events = await api.call("GET", f"{ORG}/template/events?templateId=TMPLgarden")
    assert {"name": "Overheat", "eventCode": "overheat", "type": "CRITICAL"}.items() <= next(
        e for e in events if e["eventCode"] == "overheat"
    ).items()
    assert (await api.call("GET", f"{ORG}/template?templateId=TMPLnope"))[0] == 404


async def test_device_and_template_metadata(server, http, garden):
    _, record = garden
    api = Platform(http, admin_url(server, ""), await get_token(server, http, await new_client(server, http)))
    status, fields = await api.call("GET", f"{ORG}/template/metafields?templateId=TMPLgarden")
    assert status == 200 and [(f["id"], f["name"], f["type"], f["defaultValue"]) for f in fields] == [
        (3, "Serial", "Text", "none"),
        (4, "Floor", "Number", None),
    ]
    meta = f"{ORG}/device/metadata"
    status, values = await api.call("GET", f"{meta}?deviceId={record.id}")
    assert [(v["id"], v["name"], v["value"]) for v in values] == [(3, "Serial", "none"), (4, "Floor", "")]
    assert (await api.call("POST", meta, json={"deviceId": record.id, "metaFieldId": 3, "value": "SN-1"}))[0] == 204
    assert (await api.call("POST", meta, json={"deviceId": record.id, "metaFieldId": "Floor", "value": 2}))[0] == 204
    status, values = await api.call("GET", f"{meta}?deviceId={record.id}")
    assert [v["value"] for v in values] == ["SN-1", 2]
    status, err = await api.call("POST", meta, json={"deviceId": record.id, "metaFieldId": 4, "value": 11})
    assert status == 400 and "range" in err["error"]["message"]
    status, err = await api.call("POST", meta, json={"deviceId": record.id, "metaFieldId": 99, "value": "x"})
    assert (status, err) == (404, {"error": {"message": "Meta field with identifier 99 is not found!"}})


async def test_update_many_and_value_refusals(server, http, garden):
    _, record = garden
    api = Platform(http, admin_url(server, ""), await get_token(server, http, await new_client(server, http)))
    body = [{"dataStreamId": 1, "value": 7}, {"dataStreamId": 2, "value": "hello"}]
    assert (await api.call("POST", f"{ORG}/device/datastreams?deviceId={record.id}", json=body))[0] == 204
    dev = server.domain.device(record.id)
    assert dev.values["v1"][0] == b"7" and dev.values["v2"][0] == b"hello"
    status, err = await api.call(
        "POST", f"{ORG}/device/datastream", json={"deviceId": record.id, "dataStreamId": 9, "value": 1}
    )
    assert (status, err) == (404, {"error": {"message": "Data stream with identifier 9 is not found!"}})
    status, err = await api.call(
        "POST", f"{ORG}/device/datastream", json={"deviceId": record.id, "dataStreamId": 1, "value": "x"}
    )
    assert status == 400 and err["error"]["message"] == "Value doesn't match the Datastream data type."
    # dataStreamId is the datastream's own id, not its pin: id 7 is V5, and there is no id 5.
    one = {"deviceId": record.id, "dataStreamId": 7, "value": 55.5}
    assert (await api.call("POST", f"{ORG}/device/datastream", json=one))[0] == 204
    assert dev.values["v5"][0] == b"55.5"
    status, values = await api.call(
        "GET", f"/api/v2/organization/device/datastreams?deviceId={record.id}&dataStreamIds=7"
    )
    assert values == [
        {
            "dataStreamId": 7,
            "pin": "v5",
            "dataStreamLabel": "Humidity",
            "dataStreamAlias": "hum",
            "value": 55.5,
            "updatedAt": dev.values["v5"][1],
        }
    ]
    assert (await api.call("POST", f"{ORG}/device/datastream", json=one | {"dataStreamId": 5}))[0] == 404
    # All or none: a bad second value leaves the first unwritten.
    body = [{"dataStreamId": 1, "value": 8}, {"dataStreamId": 1, "value": "x"}]
    assert (await api.call("POST", f"{ORG}/device/datastreams?deviceId={record.id}", json=body))[0] == 400
    assert dev.values["v1"][0] == b"7"
    prop = {"deviceId": record.id, "dataStreamId": 2, "property": "color", "value": "#FF0000"}
    assert (await api.call("POST", f"{ORG}/device/datastream/property", json=prop))[0] == 204
    assert dev.properties[("v2", "color")] == b"#FF0000"
    too_many = [{"dataStreamId": 1, "value": 1}] * 65
    assert (await api.call("POST", f"{ORG}/device/datastreams?deviceId={record.id}", json=too_many))[0] == 400


async def test_read_scope_only_reads(server, http, garden):
    _, record = garden
    api = Platform(http, admin_url(server, ""), await get_token(server, http, await new_client(server, http, "read")))
    assert (await api.call("GET", f"{ORG}/devices"))[0] == 200
    for path, body in (
        ("/device/datastream", {"deviceId": record.id, "dataStreamId": 1, "value": 1}),
        ("/device/create", {"templateId": "TMPLgarden", "name": "No"}),
        ("/device/trigger-event", {"deviceId": record.id, "eventCode": "overheat"}),
    ):
        status, err = await api.call("POST", ORG + path, json=body)
        assert (status, err) == (403, {"error": {"message": "This access token is read-only (scope read)."}})
    assert (await api.call("DELETE", f"{ORG}/device?deviceId={record.id}"))[0] == 403
    assert server.domain.device(record.id) is not None and "v1" not in server.domain.device(record.id).values


async def test_bad_credentials_and_grant_types(server, http):
    client = await new_client(server, http)
    url = admin_url(server, "/oauth2/token")

    async def ask(query: str = "?grant_type=client_credentials", **kw) -> tuple[int, dict]:
        async with http.post(url + query, **kw) as resp:
            return resp.status, await resp.json()

    refused = {"error": "invalid_client", "error_description": "Client ID is not found or password is wrong."}
    assert await ask(headers=basic(client["client_id"], "wrong")) == (401, refused)
    assert await ask(headers=basic("oa2-client-id_nobody", client["client_secret"])) == (401, refused)
    assert await ask() == (401, refused)
    assert (await ask("?grant_type=password", headers=basic(client["client_id"], client["client_secret"])))[1][
        "error"
    ] == "unsupported_grant_type"
    assert (await ask("", headers=basic(client["client_id"], client["client_secret"])))[1]["error"] == "invalid_request"
    # The form fields of RFC 6749 §2.3.1 work as well as HTTP Basic.
    form = {
        "grant_type": "client_credentials",
        "client_id": client["client_id"],
        "client_secret": client["client_secret"],
    }
    status, body = await ask("", data=form)
    assert status == 200 and body["token_type"] == "Bearer"
    # A made-up bearer token and the admin API key do not open Platform routes; a Platform token does
    # not open admin routes.
    for token in ("made-up", api_key(server)):
        async with http.get(admin_url(server, f"{ORG}/devices"), headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert await resp.json() == {"error": {"message": "Invalid or expired access token."}}
    async with http.get(
        admin_url(server, "/api/devices"), headers={"Authorization": f"Bearer {body['access_token']}"}
    ) as resp:
        assert resp.status == 401


async def test_deleted_client_tokens_stop_working(server, http):
    client = await new_client(server, http)
    api = Platform(http, admin_url(server, ""), await get_token(server, http, client))
    assert (await api.call("GET", f"{ORG}/templates"))[0] == 200
    async with http.delete(
        admin_url(server, f"/api/oauth-clients/{client['client_id']}"),
        headers={"Authorization": f"Bearer {api_key(server)}"},
    ) as resp:
        assert resp.status == 204
    assert (await api.call("GET", f"{ORG}/templates"))[0] == 401


async def test_expired_token_is_refused(tmp_path):
    # A lifetime of 0 s: every token is expired as soon as it is issued (no waiting in the test).
    async with running(tmp_path / "data", platform_token_ttl=0) as server, aiohttp.ClientSession() as http:
        client = await new_client(server, http)
        async with http.post(
            admin_url(server, "/oauth2/token?grant_type=client_credentials"),
            headers=basic(client["client_id"], client["client_secret"]),
        ) as resp:
            token = (await resp.json())["access_token"]
        status, err = await Platform(http, admin_url(server, ""), token).call("GET", f"{ORG}/devices")
        assert (status, err) == (401, {"error": {"message": "Invalid or expired access token."}})


async def test_token_endpoint_is_rate_limited_per_client_and_per_peer(tmp_path):
    async with (
        running(tmp_path / "data", platform_token_rate=0.001, platform_token_burst=2) as server,
        aiohttp.ClientSession() as http,
    ):
        client = await new_client(server, http)
        url = admin_url(server, "/oauth2/token?grant_type=client_credentials")
        statuses = []
        for _ in range(3):
            async with http.post(url, headers=basic(client["client_id"], client["client_secret"])) as resp:
                statuses.append(resp.status)
                last = resp
                body = await resp.json()
        assert statuses == [200, 200, 429]
        assert int(last.headers["Retry-After"]) >= 1
        assert body["error"]["message"].startswith("Too many token requests")
        # Another client from the same address is refused too: the per-peer budget is spent.
        other = await new_client(server, http)
        async with http.post(url, headers=basic(other["client_id"], other["client_secret"])) as resp:
            assert resp.status == 429
        async with http.get(admin_url(server, "/metrics")) as resp:
            metrics = await resp.text()
        assert "blynk_platform_throttled_total 2.0" in metrics
        assert "blynk_platform_tokens_issued_total 2.0" in metrics


async def test_paging_bounds(server, http, garden):
    _, record = garden
    api = Platform(http, admin_url(server, ""), await get_token(server, http, await new_client(server, http)))
    for size in ("0", "1001", "x"):
        status, err = await api.call("GET", f"{ORG}/devices?size={size}")
        assert status == 400, size
    status, page = await api.call("GET", f"{ORG}/devices?page=7&size=10")
    assert (status, page) == (200, {"content": [], "totalElements": 2})
    history = f"{ORG}/device/datastream/history?deviceId={record.id}&pin=v1"
    status, err = await api.call("GET", f"{history}&size=1000&page=10")
    assert status == 400 and "narrow from/to" in err["error"]["message"]
    status, err = await api.call("GET", f"{ORG}/device/timeline?deviceId={record.id}&size=100&page=10")
    assert status == 400
    status, err = await api.call("GET", f"{ORG}/device/timeline?deviceId={record.id}&eventType=NOPE")
    assert status == 400
    assert (await api.call("GET", f"{ORG}/device?deviceId=abc"))[0] == 400


async def test_device_port_serves_the_platform_api_only_behind_its_flag(server, http, tmp_path):
    client = await new_client(server, http)
    async with http.post(
        hw_url(server, "/oauth2/token?grant_type=client_credentials"),
        headers=basic(client["client_id"], client["client_secret"]),
    ) as resp:
        assert resp.status == 404  # off by default
    async with running(tmp_path / "other", platform_on_device_port=True) as on:
        client = await new_client(on, http)
        token = await get_token(on, http, client, base=hw_url(on, ""))
        api = Platform(http, hw_url(on, ""), token)
        status, page = await api.call("GET", f"{ORG}/devices")
        assert status == 200 and [d["name"] for d in page["content"]] == ["Quickstart Device"]
        assert (await Platform(http, hw_url(on, ""), "wrong").call("GET", f"{ORG}/devices"))[0] == 401


async def test_cli_creates_lists_and_deletes_clients_with_and_without_a_server(tmp_path, capsys, keep_umask):
    data = tmp_path / "data"
    loop = asyncio.get_running_loop()
    argv = ["oauth-client", "create", "--name", "offline", "--scope", "read", "--data-dir", str(data)]
    assert await loop.run_in_executor(None, cli.main, argv) == 0  # no server runs: on the store itself
    made = json.loads(capsys.readouterr().out)
    assert made["scope"] == "read" and made["client_id"].startswith("oa2-client-id_")
    db = sqlite3.connect(data / "blynk.sqlite3")
    stored = db.execute("SELECT secret_hash FROM oauth_clients").fetchall()
    db.close()
    assert stored and made["client_secret"] not in stored[0][0]  # only its hash is kept
    async with running(data) as server, aiohttp.ClientSession() as http:
        token = await get_token(server, http, made)  # a client made without a server works on it
        assert (await Platform(http, admin_url(server, ""), token).call("GET", f"{ORG}/devices"))[0] == 200
        argv = ["oauth-client", "list", "--json", "--data-dir", str(data)]
        assert await loop.run_in_executor(None, cli.main, argv) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [c["client_id"] for c in listed] == [made["client_id"]] and "client_secret" not in listed[0]
        argv = ["oauth-client", "delete", made["client_id"], "--data-dir", str(data)]
        assert await loop.run_in_executor(None, cli.main, argv) == 0
        assert (await Platform(http, admin_url(server, ""), token).call("GET", f"{ORG}/devices"))[0] == 401


async def test_openapi_documents_the_platform_routes(server, http):
    async with http.get(admin_url(server, "/api/openapi.json")) as resp:
        doc = await resp.json()
    for path in (f"{ORG}/devices", "/oauth2/token", f"{ORG}/device/datastream/history", f"{ORG}/device/timeline"):
        assert path in doc["paths"], path
    assert doc["paths"][f"{ORG}/devices"]["get"]["security"] == [{"platformBearer": []}]


async def test_get_provision_token_gives_a_token_an_edgent_device_logs_in_with(server, http):
    """Blynk's "Get provision token" (``POST /device/provision/token``, body ``{orgId, ownerId}``): the
    token opens a login whose info names the template, and the device is activated."""
    from blynk_server.devclient import DEFAULT_INFO, DeviceClient

    tpl = await server.provisioning.create_template("Lamp", [Datastream("v1", "Level", "int")], "TMPLlamp")
    client = await new_client(server, http)
    api = Platform(http, admin_url(server, ""), await get_token(server, http, client))

    status, body = await api.call("POST", f"{ORG}/device/provision/token", json={"orgId": 1, "ownerId": 101})
    assert status == 400 and "templateId is required" in body["error"]["message"]  # no template allows it
    status, body = await api.call(
        "POST", f"{ORG}/device/provision/token", json={"orgId": 1, "ownerId": 101, "templateId": tpl.id}
    )
    assert status == 403 and "not allowed" in body["error"]["message"]

    await server.device_provisioning.set_allowed(tpl.id, True)
    status, body = await api.call("POST", f"{ORG}/device/provision/token", json={"orgId": 1, "ownerId": 101})
    assert status == 200 and set(body) == {"token", "deviceId"}
    assert server.device_provisioning.pending[body["deviceId"]].template_id == tpl.id

    host, port = server.hardware.address
    device = await DeviceClient.connect(host, port, body["token"], DEFAULT_INFO | {"tmpl": tpl.id})
    try:
        device.virtual_write(1, 7)
        await device.ping()
        assert body["deviceId"] not in server.device_provisioning.pending  # activated by its info
        assert server.domain.device(body["deviceId"]).values["v1"][0] == b"7"
    finally:
        await device.close()

    status, body = await api.call("POST", f"{ORG}/device/provision/token", json={"orgId": 2, "ownerId": 101})
    assert status == 404  # another organization
    read_only = Platform(
        http, admin_url(server, ""), await get_token(server, http, await new_client(server, http, "read"))
    )
    status, _ = await read_only.call("POST", f"{ORG}/device/provision/token", json={"orgId": 1, "ownerId": 101})
    assert status == 403  # issuing a token creates a device: a write
