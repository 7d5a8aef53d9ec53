"""Helpers for the hardware-server tests: a provisioned device on the shared server."""

from __future__ import annotations

import pytest

from blynk_server.devclient import DeviceClient

DATASTREAMS = (
    "pin=V0,name=Switch,type=int,min=0,max=1,sync",
    "pin=V1,name=Temp,type=double,min=-40,max=85,history,sync",
    "pin=V2,name=Text,type=string",
    "pin=V3,name=Level,type=int,min=0,max=100",
    "pin=V4,name=Where,type=location",
    "pin=V5,name=Mode,type=enum,enum=0|1|2",
)


@pytest.fixture
def device(server, device_pools):
    """(server, template id, token) of a fresh device with the standard datastreams (the template is
    shared by the module's tests; none of them changes it)."""
    pool = device_pools(DATASTREAMS)
    return server, pool.template, pool.take()


@pytest.fixture
async def client(device):
    srv, _, token = device
    c = await DeviceClient.connect("127.0.0.1", srv.port, token)
    yield c
    await c.close()
