"""The legacy ``PUT /{token}/extra/pin/{pin}``: every point lands in history exactly once, whether or
not the pin's datastream keeps history itself; the first point is the current value."""

from __future__ import annotations

import pytest

from blynk_server.model import Datastream, now_ms

from .conftest import hw_url


@pytest.mark.parametrize("history", [True, False], ids=["history-datastream", "no-history"])
async def test_every_point_lands_in_history_once(server, http, history):
    tpl = await server.provisioning.create_template("Meter", [Datastream("v5", "Power", "int", history=history)])
    record = await server.provisioning.create_device(tpl.id, "Meter 1")
    now = now_ms()
    body = [
        {"value": 5, "timestamp": now - 10},
        {"value": 6, "timestamp": now - 20},
        {"value": 7, "timestamp": now - 30},
    ]
    async with http.put(hw_url(server, f"/{record.token}/extra/pin/V5"), json=body) as resp:
        assert resp.status == 200
    assert server.domain.device(record.id).values["v5"] == (b"5", now - 10)
    points = await server.store.run(server.store.history, record.id, "v5")
    assert points == [(now - 30, b"7"), (now - 20, b"6"), (now - 10, b"5")]
