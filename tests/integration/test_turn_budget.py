"""The turn budget on real sockets: past ``turn_budget`` frames in one loop turn, reads wait for a later
turn; every value is still stored, each device's frames in order, and /metrics shows the deferral."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from blynk_server.devclient import DeviceClient
from blynk_server.model import Datastream
from protocol import Status
from tests.http.test_metrics import value

from .conftest import admin_url, running

DEVICES = 20
WRITES = 5


async def scrape(srv) -> dict:
    async with aiohttp.ClientSession() as http, http.get(admin_url(srv, "/metrics")) as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_reads_over_the_budget_are_deferred_not_lost(tmp_path):
    async with running(tmp_path / "data", turn_budget=1) as srv:
        template = await srv.provisioning.create_template("T", [Datastream("v1", "Value", "int", 0, 1000)])
        records = [await srv.provisioning.create_device(template.id, f"d{i}") for i in range(DEVICES)]
        host, port = srv.hardware.address
        clients = [await DeviceClient.connect(host, port, r.token) for r in records]
        try:
            for _ in range(WRITES):  # written before the loop polls: the sockets turn readable together
                for i, client in enumerate(clients):
                    client.virtual_write(1, i)
                    client.virtual_write(1, i + 100)
            # A device's ping is answered after the writes it sent before it: they were all handled.
            assert await asyncio.gather(*(c.ping() for c in clients)) == [Status.SUCCESS] * DEVICES
            for i, r in enumerate(records):
                assert srv.domain.device(r.id).values["v1"][0] == str(i + 100).encode()
            m = await scrape(srv)
            assert value(m, "blynk_turn_budget_frames") == 1
            assert value(m, "blynk_reads_deferred_total") >= 1
            assert value(m, "blynk_turns_budget_spent_total") >= 1
            assert value(m, "blynk_reads_deferred_waiting") == 0
            assert value(m, "blynk_loop_turn_seconds_count") is not None  # sampled by the lag ticks (test_looplag)
            assert value(m, "blynk_pin_writes_total") == DEVICES * WRITES * 2
        finally:
            for c in clients:
                await c.close()
