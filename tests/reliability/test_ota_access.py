"""OTA downloads reach only their shipment's live targets, and only through the secret URL (issue 10,
finding 8); numbers of any length in OTA inputs get a short 400/404/416 (finding 10)."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3

import aiohttp
import pytest

from blynk_server.devclient import DeviceClient
from blynk_server.ota import status as st
from blynk_server.testing import run_cli
from tests.ota.conftest import OTA_ENV, edgent_update, image, info, new_device, report, ship, upload, wait_ota

from .conftest import assert_no_traceback, metric

# Multi-second runs (every OTA door refusal end to end): in the slow step of .ci/run, not the default run.
pytestmark = pytest.mark.slow

HUGE = "9" * 5000  # past Python's 4,300-digit int() limit, and far past SQLite's 64-bit integers
URL = re.compile(r"^http://[^/]+/static/fw_(\d+)_([A-Za-z0-9_-]+)\.bin\?token=([A-Za-z0-9_-]+)$")


async def _get(url: str, **headers: str) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession(auto_decompress=False) as s, s.get(url, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


async def _refused(url: str, status: int) -> dict:
    """The download is refused with ``status`` and a JSON message, and no firmware byte goes out."""
    code, headers, body = await _get(url)
    assert code == status, (code, body[:200])
    assert "x-MD5" not in headers and len(body) < 200
    return json.loads(body)["error"]


async def test_only_live_targets_download(make_server, tmp_path, unique):
    srv = make_server(env=OTA_ENV)
    a, b, c = unique, f"{unique}b", f"{unique}c"
    for t in (a, b, c):
        srv.new_template(t)
    data = image("2.0.0", a, seed=11)
    fw = upload(srv, tmp_path, data)
    (a1, ta1), (b1, tb1) = new_device(srv, a, "a1"), new_device(srv, b, "b1")
    sid = ship(srv, f"all-{unique}", fw["id"], a)["id"]  # every device of template A

    dev = await DeviceClient.connect(srv.host, srv.port, ta1, info=info("1.0.0", a))
    _, url = await wait_ota(dev)
    await dev.close()
    m = URL.match(url)
    assert m is not None and int(m.group(1)) == sid and m.group(3) == ta1, url
    secret = m.group(2)
    assert len(secret) >= 22  # secrets.token_urlsafe(16): 128 bits
    base = url.split("?")[0]

    # A device of another template, even one that claims the firmware's type, gets nothing.
    other = await DeviceClient.connect(srv.host, srv.port, tb1, info=info("1.0.0", a))
    await other.close()
    err = await _refused(f"{base}?token={tb1}", 403)
    assert "not a target" in err["message"]
    # No token, an unknown token, no secret, a wrong secret, the old sha-prefix form: refused.
    await _refused(base, 403)
    await _refused(f"{base}?token=nosuchtoken", 403)
    await _refused(url.replace(f"_{secret}.bin", ".bin"), 404)
    wrong = ("A" if secret[0] != "A" else "B") + secret[1:]
    await _refused(url.replace(secret, wrong), 404)
    await _refused(url.replace(secret, fw["sha256"][:12]), 404)
    await _refused(url.replace(f"fw_{sid}_", f"fw_{sid + 1}_"), 404)

    # The target downloads the exact image.
    res = await edgent_update(srv, ta1, url, "2.0.0", a)
    assert res.body == data

    # A device list: a device of the right template outside the list is refused with the secret URL.
    fw_c = upload(srv, tmp_path, image("3.0.0", c, seed=12))
    (c1, tc1), (c2, tc2) = new_device(srv, c, "c1"), new_device(srv, c, "c2")
    sid_c = ship(srv, f"list-{unique}", fw_c["id"], c, devices=[c1])["id"]
    dev = await DeviceClient.connect(srv.host, srv.port, tc1, info=info("1.0.0", c))
    _, url_c = await wait_ota(dev)
    await dev.close()
    await _refused(url_c.replace(tc1, tc2), 403)
    code, _, body = await _get(url_c)
    assert code == 200 and hashlib.md5(body).hexdigest() == fw_c["md5"]

    # Neither refused device is in a report; the secret is in no report or listing.
    listed_a = {d["device_id"] for d in (await report(srv, sid))["devices"]}
    listed_c = {d["device_id"] for d in (await report(srv, sid_c))["devices"]}
    assert a1 in listed_a and b1 not in listed_a and listed_c == {c1} and c2 not in listed_c
    for out in (srv.cli("ota", "report", str(sid)).stdout, srv.cli("ota", "list", "--json").stdout):
        assert secret not in out

    # A paused shipment serves nothing; a cancelled one is gone.
    admin = f"http://{srv.admin_host}:{srv.admin_port}/api/ota/shipments/{sid}"
    async with aiohttp.ClientSession(headers={"X-API-Key": srv.api_key}) as s:
        async with s.post(f"{admin}/pause") as r:
            assert r.status == 200
        await _refused(url, 409)
        async with s.post(f"{admin}/cancel") as r:
            assert r.status == 200
    await _refused(url, 404)
    assert await metric(srv, "blynk_ota_downloads_total", outcome="refused") == 10  # each refusal above, counted
    assert_no_traceback(srv)


def test_old_data_dir_gets_secrets(tmp_path, unique):
    """A data dir from before the secrets: each shipment gets its own at the next open."""
    data_dir = tmp_path / "data"
    run_cli(data_dir, "template", "create", "--id", unique, "--name", unique)
    path = tmp_path / "fw.bin"
    path.write_bytes(image("1.0.0", unique, seed=13))
    fw = json.loads(run_cli(data_dir, "ota", "upload", str(path)).stdout)
    for name in ("one", "two"):
        run_cli(data_dir, "ota", "ship", "--name", name, "--firmware", str(fw["id"]), "--template", unique)
    with sqlite3.connect(data_dir / "blynk.sqlite3") as db:
        db.execute("ALTER TABLE ota_shipments DROP COLUMN secret")
    assert "one" in run_cli(data_dir, "ota", "list").stdout
    with sqlite3.connect(data_dir / "blynk.sqlite3") as db:
        secrets = [r[0] for r in db.execute("SELECT secret FROM ota_shipments ORDER BY id")]
    assert len(secrets) == 2 and len(set(secrets)) == 2 and all(len(s) >= 22 for s in secrets)


async def test_numbers_of_any_length(make_server, tmp_path, unique):
    srv = make_server(env=OTA_ENV)
    srv.new_template(unique)
    size = 64 * 1024
    fw = upload(srv, tmp_path, image("2.0.0", unique, size=size, seed=14))
    did, token = new_device(srv, unique, "n")
    sid = ship(srv, f"n-{unique}", fw["id"], unique, attempts=50)["id"]
    dev = await DeviceClient.connect(srv.host, srv.port, token, info=info("1.0.0", unique))
    _, url = await wait_ota(dev)
    await dev.close()

    # Range: a start past any file is unsatisfiable; an end or a suffix past it means "to the end".
    code, headers, _ = await _get(url, Range=f"bytes={HUGE}-")
    assert code == 416 and headers["Content-Range"] == f"bytes */{size}"
    code, headers, _ = await _get(url, Range=f"bytes=1000-{HUGE}")
    assert code == 206 and headers["Content-Range"] == f"bytes 1000-{size - 1}/{size}"
    code, headers, body = await _get(url, Range=f"bytes=-{HUGE}")
    assert code == 206 and len(body) == size
    code, _, _ = await _get(url, Range=f"bytes={'0' * 5000}1-")
    assert code == 206
    # The shipment id in the download path.
    code, _, body = await _get(re.sub(r"fw_\d+_", f"fw_{HUGE}_", url))
    assert code == 404 and json.loads(body)["error"]["message"]

    admin = f"http://{srv.admin_host}:{srv.admin_port}/api/ota"
    async with aiohttp.ClientSession(headers={"X-API-Key": srv.api_key}) as s:

        async def expect(method: str, path: str, status: int, **kw) -> str:
            async with s.request(method, admin + path, **kw) as r:
                text = await r.text()
                assert r.status == status, (method, path[:40], r.status, text[:300])
                message = json.loads(text)["error"]["message"]
                assert "Traceback" not in message and "sys.set_int_max_str_digits" not in message
                return message

        for ref in (HUGE, "9" * 25, str(2**63)):
            await expect("GET", f"/shipments/{ref}", 404)
            await expect("POST", f"/shipments/{ref}/pause", 404)
            await expect("POST", f"/shipments/{ref}/approve", 404, json={"device": did})
        for device in (10**30, "9" * 25, HUGE, -1, 0, True, "x", None):
            await expect("POST", f"/shipments/{sid}/approve", 400, json={"device": device})
        await expect("POST", f"/shipments/{sid}/approve", 400, data=f'{{"device": {HUGE}}}')
        await expect("POST", f"/shipments/{sid}/approve", 400, json={})

        good = {"name": "x", "firmware": fw["id"], "template": unique}
        bad_fields = [
            {"firmware": HUGE},
            {"firmware": 10**30},
            {"attempts": 10**30},
            {"attempts": "3"},
            {"attempts": 0},
            {"rate": 10**30},
            {"rate": 1},
            {"max_in_flight": -1},
            {"reset": "9" * 400 + "h"},
            {"reset": 10**300},
            {"reset": "0s"},
            {"first_wave": 0},
            {"max_failure_ratio": 2},
            {"user_control": "yes"},
            {"name": "123"},
            {"name": 5},
            {"template": ["x"]},
            {"condition": {}},
            {"host_url": "http://a\x00b"},
            {"host_url": "http://" + "a" * 300},
            {"devices": [HUGE]},
            {"devices": [10**30]},
            {"devices": list(range(1, 10_002))},
            {"devices": "1,2"},
            {"devices": 0},
        ]
        for bad in bad_fields:
            await expect("POST", "/shipments", 400, json={**good, **bad})
        for raw in (
            f'{{"name": "x", "firmware": {HUGE}, "template": "{unique}"}}',
            f'{{"name": "x", "firmware": {fw["id"]}, "template": "{unique}", "rate": 1e400}}',
            f'{{"name": "x", "firmware": {fw["id"]}, "template": "{unique}", "first_wave": NaN}}',
            "[1, 2]",
        ):
            await expect("POST", "/shipments", 400, data=raw)
        await expect("POST", "/shipments", 404, json={**good, "devices": [2**62]})
        # Under the admin body cap (16 MiB, for device imports) but over the shipment's 10,000 targets.
        await expect("POST", "/shipments", 400, json={**good, "devices": [1] * 400_000})

    # The CLI: one line on stderr, exit 2.
    for args in (("ota", "show", HUGE), ("ota", "approve", str(sid), "9" * 25), ("ota", "pause", "9" * 25)):
        out = srv.cli(*args, check=False)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr[-500:]
    assert (await report(srv, sid))["devices"][0]["status"] != st.SUCCESS
    assert_no_traceback(srv)
