"""Blynk.Air shipments end to end: real server subprocess, simulated Edgent devices over loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import aiohttp
import pytest

from blynk_server.devclient import DeviceClient
from blynk_server.ota import status as st

from .conftest import (
    admin,
    edgent_update,
    http_get,
    image,
    info,
    new_device,
    no_ota,
    report,
    ship,
    upload,
    wait_ota,
    wait_status,
)

# Multi-second runs (OTA shipments end to end with real downloads (the state machine's rules: tests/unit/test_ota_service.py)): in the slow step of .ci/run, not the default run.
pytestmark = pytest.mark.slow


def test_upload_parses_tag_and_refuses_untagged(ota_server, tmp_path, unique):
    data = image("1.2.3", unique)
    fw = upload(ota_server, tmp_path, data)
    assert (fw["type"], fw["version"], fw["board"], fw["build"]) == (unique, "1.2.3", "ESP32", "Nov 22 2026 12:00:00")
    assert fw["md5"] == hashlib.md5(data).hexdigest() and fw["sha256"] == hashlib.sha256(data).hexdigest()
    assert (ota_server.data_dir / "firmware" / f"{fw['sha256']}.bin").read_bytes() == data
    again = upload(ota_server, tmp_path, data)
    assert again["id"] == fw["id"] and again["created"] is False
    plain = image("0", unique, tag=False, seed=9)
    (tmp_path / "plain.bin").write_bytes(plain)
    bad = ota_server.cli("ota", "upload", str(tmp_path / "plain.bin"), check=False)
    assert bad.returncode == 2 and "no blnkinf tag" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    ok = upload(ota_server, tmp_path, plain, "--type", unique, "--version", "2.0")
    assert ok["version"] == "2.0" and ok["tag"] is None


async def test_shipment_statuses(ota_server, tmp_path, unique):
    """Success (online now and offline-then-login), type and version mismatch, rollback, mobile."""
    srv = ota_server
    srv.new_template(unique)
    fw = upload(srv, tmp_path, image("1.1.0", unique, seed=2))
    ids = {n: new_device(srv, unique, n) for n in ("online", "late", "other", "newer", "rollback", "mobile")}
    online = await DeviceClient.connect(srv.host, srv.port, ids["online"][1], info=info("1.0.0", unique))
    other = await DeviceClient.connect(srv.host, srv.port, ids["other"][1], info=info("1.0.0", "OTHER"))
    newer = await DeviceClient.connect(srv.host, srv.port, ids["newer"][1], info=info("1.1.1.1", unique))
    s = ship(srv, f"s-{unique}", fw["id"], unique)
    sid = s["id"]
    assert s["state"] == "live"

    # Online at start: the command comes at once, with a non-zero msg id and the device token.
    msg_id, url = await wait_ota(online)
    assert msg_id != 0 and f"?token={ids['online'][1]}" in url and f"/static/fw_{sid}_" in url
    await online.close()
    res = await edgent_update(srv, ids["online"][1], url, "1.1.0", unique)
    assert res.headers["content-length"] == str(len(res.body)) and "transfer-encoding" not in res.headers
    assert base64.b64decode(res.headers["x-sha256"]) == hashlib.sha256(res.body).digest()
    assert (res.headers["x-fw-type"], res.headers["x-fw-ver"]) == (unique, "1.1.0")
    d = await wait_status(srv, sid, ids["online"][0], st.SUCCESS)
    assert [e["status"] for e in d["timeline"]] == [
        st.STARTED,
        st.REQUEST_SENT,
        st.FIRMWARE_REQUESTED,
        st.FIRMWARE_UPLOADED,
        st.SUCCESS,
    ]
    await wait_status(srv, sid, ids["other"][0], st.TYPE_MISMATCH)
    await wait_status(srv, sid, ids["newer"][0], st.VERSION_MISMATCH)
    await no_ota(other, 0.2)
    await other.close()
    await newer.close()

    # Offline at start: handled when it logs in, after its info message is answered.
    late = await DeviceClient.connect(srv.host, srv.port, ids["late"][1], info=info("1.0.0", unique))
    _, url = await wait_ota(late)
    await late.close()
    await edgent_update(srv, ids["late"][1], url, "1.1.0", unique)
    await wait_status(srv, sid, ids["late"][0], st.SUCCESS)

    # Rollback: downloads the image, then comes back with the old version.
    rb = await DeviceClient.connect(srv.host, srv.port, ids["rollback"][1], info=info("1.0.0", unique))
    _, url = await wait_ota(rb)
    await rb.close()
    assert (await http_get(url)).status == 200
    await wait_status(srv, sid, ids["rollback"][0], st.FIRMWARE_UPLOADED)
    rb = await DeviceClient.connect(srv.host, srv.port, ids["rollback"][1], info=info("1.0.0", unique))
    await wait_status(srv, sid, ids["rollback"][0], st.ROLLBACK)
    await no_ota(rb, 0.3)
    await rb.close()

    # A phone fetches the image for the device (mobile variant of the URL).
    mob = await DeviceClient.connect(srv.host, srv.port, ids["mobile"][1], info=info("1.0.0", unique))
    _, url = await wait_ota(mob)
    res = await http_get(url + "&mobile=1")
    assert res.status == 200 and hashlib.md5(res.body).hexdigest() == fw["md5"]
    await wait_status(srv, sid, ids["mobile"][0], st.UPLOADED_TO_MOBILE)
    await mob.close()

    show = srv.cli("ota", "show", str(sid)).stdout
    assert "Success" in show and "Firmware type mismatch" in show and "Rollback" in show
    csv_out = srv.cli("ota", "report", str(sid), "--format", "csv").stdout
    assert csv_out.splitlines()[0].startswith("shipment_id,device_id") and len(csv_out.splitlines()) == 7
    rep = json.loads(srv.cli("ota", "report", str(sid), "--format", "json").stdout)
    assert rep["counts"][st.SUCCESS] == 2
    async with aiohttp.ClientSession() as s, s.get(f"http://{srv.admin_host}:{srv.admin_port}/metrics") as r:
        text = await r.text()
    assert (
        "blynk_ota_bytes_served" in text and f'blynk_ota_devices{{shipment="s-{unique}",status="Success"}} 2.0' in text
    )


async def test_range_resume_stall_and_rate(ota_server, tmp_path, unique):
    srv = ota_server
    srv.new_template(unique)
    size = 300_000
    data = image("2.0.0", unique, size=size, seed=3)
    fw = upload(srv, tmp_path, data)
    (a, ta), (b, tb) = new_device(srv, unique, "a"), new_device(srv, unique, "b")
    rate = 150_000
    sid = ship(srv, f"r-{unique}", fw["id"], unique, rate=rate)["id"]
    ca = await DeviceClient.connect(srv.host, srv.port, ta, info=info("1.0.0", unique))
    cb = await DeviceClient.connect(srv.host, srv.port, tb, info=info("1.0.0", unique))
    (_, url_a), (_, url_b) = await wait_ota(ca), await wait_ota(cb)
    await ca.close()
    await cb.close()

    # A broken download, then a resume with Range in the same attempt.
    first = await http_get(url_a, stop_after=100_000)
    assert first.status == 200
    await wait_status(srv, sid, a, st.UPLOAD_FAILURE)
    got = len(first.body)
    rest = await http_get(url_a, range_from=got)
    assert rest.status == 206 and rest.headers["content-range"] == f"bytes {got}-{size - 1}/{size}"
    assert hashlib.md5(first.body + rest.body).hexdigest() == fw["md5"]
    d = await wait_status(srv, sid, a, st.FIRMWARE_UPLOADED)
    assert d["attempts"] == 1

    # A full download at the shipment's rate. How closely it keeps to the rate, and its longest gap, are
    # timings: measured by benchmarks/ota_wave.py (benchmarks/RESULTS.md), not asserted here.
    full = await http_get(url_a)
    assert full.body == data

    # A client that stops reading: Upload failure after the (1 s) stall timeout.
    stalled = asyncio.create_task(http_get(url_b, stall_after=8192, stall_for=4.0, rcvbuf=4096))
    await wait_status(srv, sid, b, st.UPLOAD_FAILURE, timeout=6.0)
    stalled.cancel()


async def test_attempts_limit_and_reset(ota_server, tmp_path, unique):
    srv = ota_server
    srv.new_template(unique)
    fw = upload(srv, tmp_path, image("3.0.0", unique, seed=4))
    did, token = new_device(srv, unique, "d")
    sid = ship(srv, f"l-{unique}", fw["id"], unique, attempts=2, reset="3s")["id"]
    c = await DeviceClient.connect(srv.host, srv.port, token, info=info("1.0.0", unique))
    _, url = await wait_ota(c)
    await c.close()
    for _ in range(2):
        assert (await http_get(url, stop_after=1000)).status == 200
    refused = await http_get(url)
    assert refused.status == 429 and "Download limit reached" in json.loads(refused.body)["error"]["message"]
    await wait_status(srv, sid, did, st.DOWNLOAD_LIMIT)
    # A login inside the period gets no command; after the reset period it does.
    c = await DeviceClient.connect(srv.host, srv.port, token, info=info("1.0.0", unique))
    await no_ota(c, 0.5)
    await c.close()
    await asyncio.sleep(3.0)
    c = await DeviceClient.connect(srv.host, srv.port, token, info=info("1.0.0", unique))
    _, url = await wait_ota(c)
    await c.close()
    assert (await http_get(url)).status == 200


async def test_user_control_and_condition(ota_server, tmp_path, unique):
    srv = ota_server
    srv.new_template(unique)
    fw = upload(srv, tmp_path, image("1.0.0", unique, seed=5, build="Dec  1 2026 09:00:00"))
    did, token = new_device(srv, unique, "u")
    c = await DeviceClient.connect(srv.host, srv.port, token, info=info("1.0.0", unique, "Nov 30 2026 09:00:00"))
    sid = ship(srv, f"u-{unique}", fw["id"], unique, condition="earlier-build", user_control=True)["id"]
    await wait_status(srv, sid, did, st.AWAITING_USER)
    await no_ota(c, 0.3)
    admin(srv, f"shipments/{sid}/approve", {"device": did})
    _, url = await wait_ota(c)
    assert url.startswith(f"http://{srv.host}:{srv.port}/")
    await c.close()
    # Same version, newer build: "earlier build" applies, so Success needs the new build string.
    await edgent_update(srv, token, url, "1.0.0", unique)
    await wait_status(srv, sid, did, st.SUCCESS)
    state = json.loads(srv.cli("ota", "list", "--json").stdout)
    assert next(s for s in state if s["id"] == sid)["state"] == "live"  # "all devices" never finishes by itself


async def test_staged_rollout_pauses_itself(ota_server, tmp_path, unique):
    srv = ota_server
    srv.new_template(unique)
    fw = upload(srv, tmp_path, image("4.0.0", unique, seed=6))
    devs = [new_device(srv, unique, f"w{i}") for i in range(4)]
    clients = [await DeviceClient.connect(srv.host, srv.port, t, info=info("1.0.0", unique)) for _, t in devs]
    sid = ship(
        srv,
        f"w-{unique}",
        fw["id"],
        unique,
        devices=[d for d, _ in devs],
        first_wave=50,
        max_failure_ratio=0.5,
    )["id"]
    urls = [(await wait_ota(c))[1] for c in clients[:2]]
    for c in clients[:2]:
        await c.close()
    for url in urls:  # the first wave downloads, then both come back on the old firmware: Rollback
        assert (await http_get(url)).status == 200
    for did, token in devs[:2]:
        await wait_status(srv, sid, did, st.FIRMWARE_UPLOADED)
        back = await DeviceClient.connect(srv.host, srv.port, token, info=info("1.0.0", unique))
        await wait_status(srv, sid, did, st.ROLLBACK)
        await back.close()
    for c in clients[2:]:
        await no_ota(c, 0.5)
        await c.close()
    rep = await report(srv, sid)
    assert rep["shipment"]["state"] == "paused" and "first wave" in rep["shipment"]["reason"]
    # The operator resumes: the rest of the targets get the update.
    clients = [await DeviceClient.connect(srv.host, srv.port, t, info=info("1.0.0", unique)) for _, t in devs[2:]]
    admin(srv, f"shipments/{sid}/resume")
    for c in clients:
        await wait_ota(c)
        await c.close()


async def test_state_survives_restart(make_server, tmp_path, unique):
    srv = make_server(env={"BLYNK_OTA_POLL_INTERVAL": "0.1"})
    srv.new_template(unique)
    fw = upload(srv, tmp_path, image("5.0.0", unique, seed=7))
    did, token = new_device(srv, unique, "p")
    sid = ship(srv, f"p-{unique}", fw["id"], unique)["id"]
    c = await DeviceClient.connect(srv.host, srv.port, token, info=info("1.0.0", unique))
    _, url = await wait_ota(c)
    await c.close()
    assert (await http_get(url)).status == 200
    await wait_status(srv, sid, did, st.FIRMWARE_UPLOADED)
    admin(srv, f"shipments/{sid}/pause")
    assert srv.stop() == 0
    srv.start()
    rep = await report(srv, sid)
    assert rep["shipment"]["state"] == "paused"
    c = await DeviceClient.connect(srv.host, srv.port, token, info=info("5.0.0", unique, "Nov 22 2026 12:00:00"))
    await wait_status(srv, sid, did, st.SUCCESS)
    await c.close()


async def test_admin_api_and_wildcard_host(make_server, tmp_path, unique):
    """Upload and ship through the admin API; on a 0.0.0.0 listener the URL names the address the device used."""
    srv = make_server("--host", "0.0.0.0", env={"BLYNK_OTA_POLL_INTERVAL": "0.1"})
    srv.new_template(unique)
    did, token = new_device(srv, unique, "api")
    base = f"http://{srv.admin_host}:{srv.admin_port}/api/ota"
    key = {"X-API-Key": srv.api_key}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/firmware", data=image("0.1", unique, tag=False), headers=key) as r:
            assert r.status == 400 and "no blnkinf tag" in (await r.json())["error"]["message"]
        async with s.post(f"{base}/firmware?name=x.bin", data=image("7.0.0", unique, seed=8), headers=key) as r:
            assert r.status == 201
            fw = await r.json()
        async with s.post(
            f"{base}/shipments", json={"name": "x" * 41, "firmware": fw["id"], "template": unique}, headers=key
        ) as r:
            assert r.status == 400 and "40" in (await r.json())["error"]["message"]
        async with s.post(
            f"{base}/shipments",
            json={"name": "api", "firmware": fw["id"], "template": unique},
            headers={"X-API-Key": "wrong"},
        ) as r:
            assert r.status in (401, 403)
        c = await DeviceClient.connect("127.0.0.1", srv.port, token, info=info("1.0.0", unique))
        async with s.post(
            f"{base}/shipments",
            json={"name": "api", "firmware": fw["id"], "template": unique, "devices": [did], "rate": 100000},
            headers=key,
        ) as r:
            assert r.status == 201, await r.text()
            sid = (await r.json())["id"]
        _, url = await wait_ota(c)
        assert url.startswith(f"http://127.0.0.1:{srv.port}/static/fw_{sid}_")
        await c.close()
        await edgent_update(srv, token, url, "7.0.0", unique)
        await wait_status(srv, sid, did, st.SUCCESS)
        async with s.get(f"{base}/shipments/{sid}", headers=key) as r:
            assert (await r.json())["shipment"]["state"] == "finished"
        async with s.post(f"{base}/shipments/{sid}/pause", headers=key) as r:
            assert r.status == 409
