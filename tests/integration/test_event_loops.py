"""The device session on both event loops the server may run on: asyncio's own selector loop and uvloop.

They find a ``BufferedProtocol`` differently: asyncio's transports (and its ``sslproto`` for TLS) ask
``isinstance(protocol, asyncio.BufferedProtocol)`` when the sniffer hands the transport over, uvloop
looks for ``get_buffer``. The compiled ``HardwareSession`` is an extension type that keeps
``asyncio.BufferedProtocol`` as a base for the former; here both loops carry a whole device exchange
(login, writes, a command pushed from HTTP, reads that fill the buffer and wait their turn) over plain
TCP and TLS, on whichever twin is imported."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest

from blynk_server.devclient import DeviceClient
from blynk_server.hardware import direct
from blynk_server.hardware.hotpath import HardwareSession
from blynk_server.model import Datastream
from protocol import Command, Status, encode_frame

from .conftest import hw_url, running

uvloop = pytest.importorskip("uvloop")

LOOPS = {"asyncio": asyncio.SelectorEventLoop, "uvloop": uvloop.new_event_loop}
BURST = 2000  # PINGs sent at once: 10,000 bytes, more than one read of recv_buffer (4,096)


def test_the_session_is_a_buffered_protocol():
    assert issubclass(HardwareSession, asyncio.BufferedProtocol)


async def _exchange(client: DeviceClient, server, token: str, http: aiohttp.ClientSession) -> None:
    assert await client.ping() == Status.SUCCESS
    client.virtual_write(1, 42)
    assert await client.ping() == Status.SUCCESS  # the write before it was handled
    assert server.domain.device_by_token(token).values["v1"][0] == b"42"
    async with http.get(hw_url(server, f"/external/api/update?token={token}&v1=7")) as resp:
        assert resp.status == 200
    command = await client.expect(lambda f: f[0] == Command.HARDWARE)
    assert command[2] == b"vw\x001\x007"
    client.send_raw(b"".join(encode_frame(Command.PING, i) for i in range(1, BURST + 1)))
    answers = [await client.recv() for _ in range(BURST)]
    assert answers == [(Command.RESPONSE, i, Status.SUCCESS) for i in range(1, BURST + 1)]


async def _scenario(data_dir, crt, key) -> None:
    settings = {"tls_port": 0, "cert": crt, "key": key, "message_rate": 1e6}
    async with running(data_dir, **settings) as server, aiohttp.ClientSession() as http:
        template = await server.provisioning.create_template("Loops", [Datastream("v1", "Value", "int", 0, 100)])
        plain, tls = [await server.provisioning.create_device(template.id, name) for name in ("plain", "tls")]
        client = await DeviceClient.connect(*server.hardware.address, plain.token)
        try:
            assert (server.hub.link(plain.id)._direct_fd >= 0) == direct.available()  # read from the epoll set
            await _exchange(client, server, plain.token, http)
        finally:
            await client.close()
        tls_context = ssl.create_default_context(cafile=str(crt))
        client = await DeviceClient.connect(*server.hardware.tls_address, tls.token, ssl=tls_context)
        try:
            assert server.hub.link(tls.id)._direct_fd == -1  # TLS: its transport reads it
            await _exchange(client, server, tls.token, http)
        finally:
            await client.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_device_exchange_on_each_loop(loop, tmp_path, cert):
    crt, key = cert
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(_scenario(tmp_path / "data", crt, key))
