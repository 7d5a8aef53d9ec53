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
def device(server, unique):
    """(server, template id, token) of a fresh device with the standard datastreams."""
    server.new_template(unique, *DATASTREAMS)
    return server, unique, server.new_device(unique, "dut")


@pytest.fixture
async def client(device):
    srv, _, token = device
    c = await DeviceClient.connect("127.0.0.1", srv.port, token)
    yield c
    await c.close()
