"""Admin firmware uploads go up to ``ota_max_firmware``, streamed to disk (issue 10, finding 9): a
2-3 MB ESP32 image is accepted raw and as multipart (aiohttp's default body cap is 1 MiB); past the
limit the answer is 413 and no temp file stays behind."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time

import aiohttp

from blynk_server.devclient import DeviceClient
from tests.ota.conftest import OTA_ENV, http_get, image, info, new_device, ship, wait_ota

from .conftest import assert_no_traceback

LIMIT = 200_000


def _leftovers(srv) -> list[str]:
    folder = srv.data_dir / "firmware"
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".bin")) if folder.exists() else []


async def test_big_images_upload(make_server, unique):
    srv = make_server()
    base = f"http://{srv.admin_host}:{srv.admin_port}/api/ota/firmware"
    raw = image("1.0.0", unique, size=2_500_000, seed=21)
    multi = image("1.0.1", unique, size=3_000_000, seed=22)
    async with aiohttp.ClientSession(headers={"X-API-Key": srv.api_key}) as s:
        async with s.post(f"{base}?name=esp32.bin", data=raw) as r:
            assert r.status == 201, await r.text()
            fw = await r.json()
        assert (fw["size"], fw["sha256"], fw["version"]) == (len(raw), hashlib.sha256(raw).hexdigest(), "1.0.0")
        assert (srv.data_dir / "firmware" / f"{fw['sha256']}.bin").read_bytes() == raw
        form = aiohttp.FormData()
        form.add_field("note", "ignored")
        form.add_field("upfile", multi, filename="big.bin", content_type="application/octet-stream")
        async with s.post(base, data=form) as r:
            assert r.status == 201, await r.text()
            fw2 = await r.json()
        assert (fw2["size"], fw2["md5"], fw2["file_name"]) == (len(multi), hashlib.md5(multi).hexdigest(), "big.bin")
        async with s.post(base, data=raw) as r:  # the same content again: the same id
            assert r.status == 200 and (await r.json())["id"] == fw["id"]
    assert _leftovers(srv) == []
    assert_no_traceback(srv)


async def test_over_the_limit_is_413(make_server, tmp_path, unique, monkeypatch):
    monkeypatch.setenv("BLYNK_OTA_MAX_FIRMWARE", str(LIMIT))  # for the server and the CLI
    srv = make_server()
    base = f"http://{srv.admin_host}:{srv.admin_port}/api/ota/firmware"
    over = image("1.0.0", unique, size=LIMIT + 1, seed=23)
    at_limit = image("1.0.0", unique, size=LIMIT, seed=24)

    async def chunks():
        for i in range(0, len(over), 50_000):
            yield over[i : i + 50_000]

    async with aiohttp.ClientSession(headers={"X-API-Key": srv.api_key}) as s:
        form = aiohttp.FormData()
        form.add_field("file", over, filename="over.bin")
        # Declared too long; sent chunked (the limit is met while streaming); multipart.
        for data in (over, chunks(), form):
            async with s.post(base, data=data) as r:
                assert r.status == 413, await r.text()
                assert str(LIMIT) in (await r.json())["error"]["message"]
            assert _leftovers(srv) == []
        async with s.post(base, data=at_limit) as r:
            assert r.status == 201, await r.text()
        async with s.post(base, data=b"") as r:
            assert r.status == 400 and "empty" in (await r.json())["error"]["message"]
    # The CLI has the same limit.
    path = tmp_path / "over.bin"
    path.write_bytes(over)
    out = srv.cli("ota", "upload", str(path), check=False)
    assert out.returncode == 2 and str(LIMIT) in out.stderr
    assert _leftovers(srv) == []
    path.write_bytes(image("1.0.2", unique, size=1000, seed=25))
    out = srv.cli("ota", "upload", str(path), "--version", "x" * 65, check=False)
    assert out.returncode == 2 and "longer than 64" in out.stderr
    assert json.loads(srv.cli("ota", "upload", str(path)).stdout)["version"] == "1.0.2"
    assert_no_traceback(srv)


async def test_cut_short_or_malformed(make_server, tmp_path, unique):
    """A client that goes away mid-body, or sends a broken multipart body: a one-line log or a 400,
    never a traceback, and no temp file stays. One left by a crash a day ago goes at the next start."""
    folder = tmp_path / "data" / "firmware"
    folder.mkdir(parents=True)
    stale, fresh = folder / ".upload-crash.tmp", folder / ".upload-running.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    srv = make_server(data_dir=tmp_path / "data")
    assert _leftovers(srv) == [fresh.name]
    fresh.unlink()
    head = f"POST /api/ota/firmware HTTP/1.1\r\nHost: x\r\nX-API-Key: {srv.api_key}\r\n"
    for extra in ("", "Content-Type: multipart/form-data; boundary=BB\r\n"):
        r, w = await asyncio.open_connection(srv.admin_host, srv.admin_port)
        body = b'--BB\r\nContent-Disposition: form-data; name="f"; filename="a.bin"\r\n\r\n' if extra else b""
        w.write(f"{head}{extra}Content-Length: 1000000\r\n\r\n".encode() + body + b"x" * 100_000)
        await w.drain()
        w.close()
        deadline = time.monotonic() + 10
        while srv.stderr().count("firmware upload not received") < (2 if extra else 1):
            assert time.monotonic() < deadline, srv.stderr()[-2000:]
            await asyncio.sleep(0.05)
    async with aiohttp.ClientSession(headers={"X-API-Key": srv.api_key}) as s:
        bad = b"--XX\r\n\r\nabcdefghijkl"
        headers = {"Content-Type": "multipart/form-data; boundary=BB"}
        async with s.post(f"http://{srv.admin_host}:{srv.admin_port}/api/ota/firmware", data=bad, headers=headers) as r:
            assert r.status == 400 and "well-formed" in (await r.json())["error"]["message"]
    assert _leftovers(srv) == []
    assert_no_traceback(srv)


async def test_large_image_downloads(make_server, unique):
    """A 17 MiB image (served from a map of the file, never read whole) downloads whole and by Range."""
    srv = make_server(env=OTA_ENV)
    srv.new_template(unique)
    data = image("5.0.0", unique, size=17 * 2**20, seed=26)
    url = f"http://{srv.admin_host}:{srv.admin_port}/api/ota/firmware"
    async with aiohttp.ClientSession(headers={"X-API-Key": srv.api_key}) as s, s.post(url, data=data) as r:
        assert r.status == 201, await r.text()
        fw = await r.json()
    _, token = new_device(srv, unique, "big")
    ship(srv, f"big-{unique}", fw["id"], unique)
    dev = await DeviceClient.connect(srv.host, srv.port, token, info=info("1.0.0", unique))
    _, url = await wait_ota(dev)
    await dev.close()
    full = await http_get(url)
    assert full.status == 200 and hashlib.md5(full.body).hexdigest() == fw["md5"]
    tail = await http_get(url, range_from=len(data) - 1000)
    assert tail.status == 206 and tail.body == data[-1000:]
    # The file gone from the data dir (an operator's mistake): 503 with a message, not a traceback.
    (srv.data_dir / "firmware" / f"{fw['sha256']}.bin").unlink()
    gone = await http_get(url)
    assert gone.status == 503 and b"cannot be read" in gone.body
    assert_no_traceback(srv)
