"""OTA test helpers: firmware images, a simulated Edgent device (DeviceClient + raw HTTP/1.0 client)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import time
import urllib.request
from urllib.parse import urlsplit

import aiohttp
import pytest

from blynk_server.devclient import DeviceClient
from protocol import Command
from protocol.firmware import build_tag

OTA_ENV = {"BLYNK_OTA_STALL_TIMEOUT": "1", "BLYNK_OTA_POLL_INTERVAL": "0.1"}  # poll: the tick for waiting devices


def image(
    version: str,
    fw_type: str,
    size: int = 64 * 1024,
    build: str = "Nov 22 2026 12:00:00",
    seed: int = 1,
    tag: bool = True,
) -> bytes:
    """A fake firmware: random bytes with a blnkinf tag 1 KB in."""
    rnd = random.Random(seed)
    data = bytearray(rnd.randbytes(size))
    if tag:
        t = build_tag(mcu=version, fw_type=fw_type, build=build, blynk="1.4.0", dev="ESP32")
        data[1024 : 1024 + len(t)] = t
    return bytes(data)


def info(version: str, fw_type: str, build: str = "Nov 20 2026 10:00:00") -> dict:
    return {
        "mcu": version,
        "fw-type": fw_type,
        "build": build,
        "blynk": "1.4.0",
        "h-beat": "40",
        "buff-in": "1024",
        "dev": "ESP32",
        "tmpl": fw_type,
    }


@pytest.fixture(scope="module")
def ota_server(request, tmp_path_factory):
    """A server with short OTA timeouts (stall 1 s, a tick every 0.1 s)."""
    cls = next(p.ServerProcess for p in request.config.pluginmanager.get_plugins() if hasattr(p, "ServerProcess"))
    srv = cls(tmp_path_factory.mktemp("ota") / "data", env=OTA_ENV).start()
    yield srv
    srv.kill()


def new_device(srv, template: str, name: str) -> tuple[int, str]:
    token = srv.new_device(template, name)
    return json.loads(srv.cli("device", "show", token).stdout)["id"], token


def upload(srv, tmp_path, data: bytes, *extra: str) -> dict:
    path = tmp_path / f"fw-{hashlib.md5(data).hexdigest()[:8]}.bin"
    path.write_bytes(data)
    return json.loads(srv.cli("ota", "upload", str(path), *extra).stdout)


def admin(srv, path: str, body: dict | None = None) -> dict:
    """POST to the running server's OTA admin API (how the CLI reaches a running server too); the
    answer's JSON. Blocking, for a few milliseconds: the server is another process."""
    req = urllib.request.Request(
        f"http://{srv.admin_host}:{srv.admin_port}/api/ota/{path}",
        data=json.dumps(body or {}).encode(),
        headers={"X-API-Key": srv.api_key, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def ship(srv, name: str, firmware: int, template: str, **fields) -> dict:
    """A shipment through the admin API; ``fields`` as its JSON (rate=..., devices=[...], ...)."""
    return admin(srv, "shipments", {"name": name, "firmware": firmware, "template": template, **fields})


async def report(srv, sid: int) -> dict:
    url = f"http://{srv.admin_host}:{srv.admin_port}/api/ota/shipments/{sid}"
    async with aiohttp.ClientSession() as s, s.get(url, headers={"X-API-Key": srv.api_key}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def device_status(srv, sid: int, did: int) -> str:
    rep = await report(srv, sid)
    return next(d["status"] for d in rep["devices"] if d["device_id"] == did)


async def wait_status(srv, sid: int, did: int, status: str, timeout: float = 8.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rep = await report(srv, sid)
        d = next((d for d in rep["devices"] if d["device_id"] == did), None)
        if d is not None and d["status"] == status:
            return d
        if time.monotonic() > deadline:
            raise AssertionError(f"device {did} status {d and d['status']!r}, wanted {status!r}: {d}")
        await asyncio.sleep(0.1)


async def wait_ota(client: DeviceClient, timeout: float = 5.0) -> tuple[int, str]:
    """The next ``ota`` command: (msg id, URL)."""
    frame = await client.expect(lambda f: f[0] == Command.INTERNAL and f[2].startswith(b"ota\0"), timeout)
    return frame[1], frame[2].split(b"\0")[1].decode()


async def no_ota(client: DeviceClient, duration: float = 1.0) -> None:
    frames = await client.silence(duration)
    assert not [f for f in frames if f[0] == Command.INTERNAL and f[2].startswith(b"ota\0")]


class HttpResult:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.elapsed = 0.0
        self.max_gap = 0.0


async def http_get(
    url: str,
    *,
    range_from: int | None = None,
    stop_after: int | None = None,
    stall_after: int | None = None,
    stall_for: float = 0.0,
    rcvbuf: int | None = None,
    timeout: float = 30.0,
) -> HttpResult:
    """An HTTP/1.0 GET as ESP8266 Edgent sends it, on a raw socket. ``stop_after``: close after that
    many body bytes; ``stall_after``: stop reading for ``stall_for`` seconds after that many."""
    u = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (u.hostname, u.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=8192 if rcvbuf else 2**20)
    req = f"GET {u.path}?{u.query} HTTP/1.0\r\nHost: {u.hostname}\r\nConnection: keep-alive\r\n"
    if range_from is not None:
        req += f"Range: bytes={range_from}-\r\n"
    writer.write((req + "\r\n").encode())
    res = HttpResult()
    t0 = time.monotonic()
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode().split("\r\n")
        res.status = int(lines[0].split()[1])
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                res.headers[k.strip().lower()] = v.strip()
        length = int(res.headers.get("content-length", "-1"))
        body = bytearray()
        last = time.monotonic()
        stalled = False
        while length < 0 or len(body) < length:
            if stop_after is not None and len(body) >= stop_after:
                break
            if stall_after is not None and not stalled and len(body) >= stall_after:
                stalled = True
                await asyncio.sleep(stall_for)
                last = time.monotonic()
            chunk = await asyncio.wait_for(reader.read(4096 if rcvbuf else 65536), timeout)
            if not chunk:
                break
            now = time.monotonic()
            if body:
                res.max_gap = max(res.max_gap, now - last)
            last = now
            body += chunk
        res.body = bytes(body)
    finally:
        res.elapsed = time.monotonic() - t0
        writer.close()
    return res


async def edgent_update(srv, token: str, url: str, new_version: str, fw_type: str) -> HttpResult:
    """What Edgent does after ``ota``: (already disconnected) download, verify, come back with the new version."""
    res = await http_get(url)
    assert res.status == 200
    assert hashlib.md5(res.body).hexdigest() == res.headers["x-md5"]
    client = await DeviceClient.connect(
        srv.host, srv.port, token, info=info(new_version, fw_type, res.headers["x-fw-build"])
    )
    await client.silence(0.3)
    await client.close()
    return res
