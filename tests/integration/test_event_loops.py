"""The device session on both event loops the server may run on: asyncio's own selector loop and uvloop.

They find a ``BufferedProtocol`` differently: asyncio's transports (and its ``sslproto`` for TLS) ask
``isinstance(protocol, asyncio.BufferedProtocol)`` when the sniffer hands the transport over, uvloop
looks for ``get_buffer``. The compiled ``HardwareSession`` is an extension type that keeps
``asyncio.BufferedProtocol`` as a base for the former; here both loops carry a whole device exchange
(login, writes, a command pushed from HTTP, reads that fill the buffer and wait their turn) over plain
TCP and TLS, on whichever twin is imported. Over plain TCP the listener's poller reads the socket
(``hardware/poller.py``), unless ``batch_reads`` is off; over TLS the transport does."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest

from blynk_server.devclient import DeviceClient
from blynk_server.hardware.hotpath import HardwareSession
from blynk_server.model import Datastream
from protocol import Command, Status, encode_frame

from .conftest import hw_url, running

uvloop = pytest.importorskip("uvloop")

LOOPS = {"asyncio": asyncio.SelectorEventLoop, "uvloop": uvloop.new_event_loop}
BURST = 2000  # PINGs sent at once: 10,000 bytes, more than one read of recv_buffer (4,096)


def test_the_session_is_a_buffered_protocol():
    assert issubclass(HardwareSession, asyncio.BufferedProtocol)


def _session_of(server, token: str):
    device = server.domain.device_by_token(token)
    return next(s for s in server.hardware.sessions if s.device is device)


async def _exchange(client: DeviceClient, server, token: str, http: aiohttp.ClientSession, polled: bool) -> None:
    assert await client.ping() == Status.SUCCESS
    assert (_session_of(server, token)._fd >= 0) is polled
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


async def _scenario(data_dir, crt, key, batch_reads: bool) -> None:
    settings = {"tls_port": 0, "cert": crt, "key": key, "message_rate": 1e6, "batch_reads": batch_reads}
    async with running(data_dir, **settings) as server, aiohttp.ClientSession() as http:
        template = await server.provisioning.create_template("Loops", [Datastream("v1", "Value", "int", 0, 100)])
        plain, tls = [await server.provisioning.create_device(template.id, name) for name in ("plain", "tls")]
        client = await DeviceClient.connect(*server.hardware.address, plain.token)
        try:
            await _exchange(client, server, plain.token, http, polled=batch_reads)
        finally:
            await client.close()
        tls_context = ssl.create_default_context(cafile=str(crt))
        client = await DeviceClient.connect(*server.hardware.tls_address, tls.token, ssl=tls_context)
        try:
            await _exchange(client, server, tls.token, http, polled=False)
        finally:
            await client.close()


@pytest.mark.parametrize("batch_reads", [True, False], ids=["poller", "transport-reads"])
@pytest.mark.parametrize("loop", LOOPS)
def test_a_device_exchange_on_each_loop(loop, batch_reads, tmp_path, cert):
    crt, key = cert
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(_scenario(tmp_path / "data", crt, key, batch_reads))
