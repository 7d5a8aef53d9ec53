"""TLS for devices: the same sessions behind --tls-port, with the plain port still serving."""

from __future__ import annotations

import ssl

import pytest

from blynk_server.devclient import DeviceClient
from protocol import Command


async def test_tls_login_write_and_sync(make_server, cert):
    crt, key = cert
    srv = make_server("--tls-port", "0", "--cert", str(crt), "--key", str(key))
    assert srv.tls_port
    srv.new_template("TMPLtls", "pin=V1,type=int")
    token = srv.new_device("TMPLtls")
    ctx = ssl.create_default_context(cafile=str(crt))
    c = await DeviceClient.connect("127.0.0.1", srv.tls_port, token, ssl=ctx)
    assert await c.ping() == 200
    c.virtual_write(1, 7)
    msg_id = c.send(Command.HARDWARE_SYNC, b"vr\x001")
    assert await c.recv() == (Command.HARDWARE, msg_id, b"vw\x001\x007")
    await c.close()
    plain = await DeviceClient.connect("127.0.0.1", srv.port, token)
    assert await plain.ping() == 200
    await plain.close()


def test_tls_port_without_cert_is_refused(make_server):
    with pytest.raises(RuntimeError, match="needs --cert and --key"):
        make_server("--tls-port", "0")
