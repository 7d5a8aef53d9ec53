"""HTTPS and binary TLS on the same TLS port: the sniffing hand-off works behind TLS too."""

from __future__ import annotations

import ssl

import aiohttp

from blynk_server.devclient import DeviceClient
from protocol import Command


async def test_https_write_reaches_tls_device(make_server, cert):
    crt, key = cert
    srv = make_server("--tls-port", "0", "--cert", str(crt), "--key", str(key))
    srv.new_template("TMPLtls", "pin=V1,type=int")
    token = srv.new_device("TMPLtls")
    ctx = ssl.create_default_context(cafile=str(crt))
    client = await DeviceClient.connect(srv.host, srv.tls_port, token, ssl=ctx)
    base = f"https://127.0.0.1:{srv.tls_port}/external/api"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
            async with s.get(f"{base}/update?token={token}&v1=42") as r:
                assert r.status == 200
            frame = await client.expect(lambda f: f[0] == Command.HARDWARE)
            assert frame[1] != 0 and frame[2] == b"vw\x001\x0042"
            for _ in range(3):  # keep-alive over TLS
                async with s.get(f"{base}/get?token={token}&v1") as r:
                    assert await r.text() == "42"
            async with s.ws_connect(f"wss://127.0.0.1:{srv.tls_port}/websockets") as ws:
                await ws.close()
    finally:
        await client.close()
