"""/metrics after known traffic on a fresh server: exact values, parsed with prometheus_client."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from blynk_server.devclient import DeviceClient
from protocol import Command, Status


async def scrape(srv) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as s, s.get(f"http://{srv.admin_host}:{srv.admin_port}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def test_metrics_exact_after_known_traffic(make_server):
    srv = make_server("--message-rate", "20")
    srv.new_template("TMPLm", "pin=V1,type=int")
    token = srv.new_device("TMPLm")
    base = f"http://{srv.host}:{srv.port}/external/api"
    before = await scrape(srv)
    assert value(before, "blynk_sessions_online") == 0
    assert value(before, "blynk_logins_total", result="ok") == 0

    client = await DeviceClient.connect(srv.host, srv.port, token)  # HW_LOGIN + INTERNAL(info)
    bad = await DeviceClient.open(srv.host, srv.port)
    try:
        assert await bad.login("x" * 32) == Status.INVALID_TOKEN
        for _ in range(3):
            assert await client.ping() == Status.SUCCESS
        client.virtual_write(1, 1)
        client.virtual_write(1, 2)
        assert await client.ping() == Status.SUCCESS
        async with aiohttp.ClientSession() as s:
            for url in (f"{base}/get?token={token}&v1", f"{base}/get?token={token}&v1", f"{base}/get?token=bad&v1"):
                async with s.get(url) as r:
                    await r.read()
            async with s.get(f"{base}/update?token={token}&v1=3") as r:
                assert r.status == 200
        await client.expect(lambda f: f[0] == Command.HARDWARE)
        # A burst over the 20 msg/s budget pauses reading once.
        for _ in range(60):
            client.send(Command.PING)
        answers = [await client.recv(15) for _ in range(61)]  # 60 pings answered, and one QUOTA_LIMIT
        assert sorted(f[2] for f in answers).count(Status.SUCCESS) == 60, answers
        m, scrapes = await scrape(srv), 2
        for _ in range(100):  # the writes above reach the store at the next write-behind flush
            if (value(m, "blynk_store_flush_rows_count") or 0) >= 1:
                break
            await asyncio.sleep(0.1)
            m, scrapes = await scrape(srv), scrapes + 1
    finally:
        await client.close()
        await bad.close()

    assert value(m, "blynk_sessions_online") == 1
    assert value(m, "blynk_logins_total", result="ok") == 1
    assert value(m, "blynk_logins_total", result="invalid_token") == 1
    assert value(m, "blynk_messages_in_total", command="hw_login") == 2
    assert value(m, "blynk_messages_in_total", command="internal") == 1
    assert value(m, "blynk_messages_in_total", command="hardware") == 2
    assert value(m, "blynk_messages_in_total", command="ping") == 4 + 60
    assert value(m, "blynk_messages_out_total", command="hardware") == 1
    # login ok, info, bad login, 4 pings, and the 60-ping burst minus none dropped (paused, not dropped)
    assert value(m, "blynk_messages_out_total", command="response") == 3 + 4 + 60 + 1  # + one QUOTA_LIMIT
    assert value(m, "blynk_flood_pauses_total") >= 1
    assert value(m, "blynk_quota_limit_sent_total") == 1
    assert value(m, "blynk_pin_writes_total") == 3
    assert value(m, "blynk_http_writes_delivered_total") == 1
    assert value(m, "blynk_received_bytes_total") > 0 and value(m, "blynk_sent_bytes_total") > 0
    assert (
        value(m, "blynk_http_requests_total", app="device", route="/external/api/get", method="GET", status="200") == 2
    )
    assert (
        value(m, "blynk_http_requests_total", app="device", route="/external/api/get", method="GET", status="400") == 1
    )
    assert (
        value(m, "blynk_http_requests_total", app="device", route="/external/api/update", method="GET", status="200")
        == 1
    )
    # 0: that update came on the keep-alive connection of the three gets, which aiohttp had read
    assert value(m, "blynk_http_short_path_total") == 0
    assert value(m, "blynk_http_request_duration_seconds_count", app="device", route="/external/api/get") == 3
    assert (
        value(m, "blynk_http_request_duration_seconds_bucket", app="device", route="/external/api/get", le="+Inf") == 3
    )
    # the earlier scrapes are themselves counted
    assert (
        value(m, "blynk_http_requests_total", app="admin", route="/metrics", method="GET", status="200") == scrapes - 1
    )
    assert value(m, "blynk_store_pending_rows") is not None
    assert value(m, "blynk_store_flush_rows_count") >= 1
    assert value(m, "blynk_event_loop_lag_seconds") >= 0  # exported; its size is the machine's, not asserted

    for _ in range(100):  # a flood-paused session sees the close only when reading resumes
        after = await scrape(srv)
        if value(after, "blynk_sessions_online") == 0:
            break
        await asyncio.sleep(0.1)
    assert value(after, "blynk_sessions_online") == 0
    assert value(after, "blynk_http_requests_total", app="admin", route="/metrics", method="GET", status="200") >= 2
