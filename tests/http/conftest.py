"""Helpers for the HTTP tests: URLs of a running server, a provisioned device, raw-socket HTTP."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

SPEC = (
    "pin=V1,type=int,min=0,max=100",
    "pin=V2,type=double",
    "pin=V3,type=string",
    "pin=V4,type=location",
    "pin=V5,type=int,history",
    "pin=V6,type=int,default=7",
    "pin=V7,id=20,type=int,alias=Level",  # an id that is not its pin's number (Blynk's dataStreamId)
    "pin=V20,type=string",  # 20 is V7's: the default rule gives it 256
)


class Device:
    """A provisioned device on a server, with its URLs."""

    def __init__(self, srv, tid: str, token: str) -> None:
        self.srv = srv
        self.tid = tid
        self.token = token
        self.base = f"http://{srv.host}:{srv.port}"
        self.admin = f"http://{srv.admin_host}:{srv.admin_port}"

    def ext(self, path: str, query: str = "") -> str:
        sep = "&" if query else ""
        return f"{self.base}/external/api/{path}?token={self.token}{sep}{query}"


def provision(srv, tid: str) -> Device:
    srv.new_template(tid, *SPEC)
    return Device(srv, tid, srv.new_device(tid))


@pytest.fixture
def device(server, device_pools) -> Device:
    """A fresh device of the SPEC datastreams (the template is shared by the module's tests)."""
    pool = device_pools(SPEC)
    return Device(server, pool.template, pool.take())


class Http:
    """An aiohttp client session with the two calls the tests make."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def fetch(self, method: str, url: str, **kw) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.request(method, url, **kw) as resp:
            return resp.status, await resp.text(), resp

    async def error(self, url: str, method: str = "GET", **kw) -> tuple[int, str]:
        """Status and ``error.message`` of a Blynk-cloud style JSON error."""
        async with self.session.request(method, url, **kw) as resp:
            body = await resp.json(content_type=None)
            return resp.status, body["error"]["message"]


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield Http(session)


@pytest.fixture
def raw_exchange():
    return _raw_exchange


async def _raw_exchange(host: str, port: int, data: bytes, responses: int, timeout: float = 5.0) -> list[bytes]:
    """Send raw bytes, read ``responses`` HTTP responses (by Content-Length); returns their bodies."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    bodies = []
    try:
        for _ in range(responses):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            bodies.append(head.split(b"\r\n")[0] + b"|" + await asyncio.wait_for(reader.readexactly(length), timeout))
    finally:
        writer.close()
    return bodies
