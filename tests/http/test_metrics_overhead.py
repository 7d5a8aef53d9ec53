"""Scraping /metrics every 50 ms (far more often than Prometheus would) while a device pipelines pin
writes: every write is counted, every scrape answers. The printed write rates with and without the
scraper are for reading, not asserted (tests do not time things; see benchmarks/RESULTS.md).

Run alone for numbers: ``pytest tests/http/test_metrics_overhead.py -q -s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time

import aiohttp

from blynk_server.devclient import DeviceClient
from protocol import Command, encode_frame

N = 200_000


async def _throughput(srv, token: str) -> float:
    """Frames/s for N pin writes pipelined on one connection, ended by a PING round trip."""
    client = await DeviceClient.connect(srv.host, srv.port, token)
    try:
        batch = b"".join(encode_frame(Command.HARDWARE, (i % 60000) + 1, b"vw\x001\x00%d" % i) for i in range(N))
        start = time.perf_counter()
        client.send_raw(batch)
        await client.writer.drain()
        await client.ping(timeout=60)
        return N / (time.perf_counter() - start)
    finally:
        await client.close()


async def _scrape_forever(url: str, counter: list[int]) -> None:
    async with aiohttp.ClientSession() as s:
        while True:
            async with s.get(url) as r:
                await r.read()
            counter[0] += 1
            await asyncio.sleep(0.05)


async def _hardware_messages_in(url: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith('blynk_messages_in_total{command="hardware"}'):
            return float(line.split()[-1])
    raise AssertionError("no blynk_messages_in_total for hardware in /metrics")


async def test_scraping_while_writing_counts_every_write(make_server):
    srv = make_server("--message-rate", "10000000")
    srv.new_template("TMPLb", "pin=V1,type=int")
    token = srv.new_device("TMPLb")
    url = f"http://{srv.admin_host}:{srv.admin_port}/metrics"
    await _throughput(srv, token)  # warm-up
    plain, scraped, scrapes = [], [], [0]
    for _ in range(3):
        plain.append(await _throughput(srv, token))
        task = asyncio.create_task(_scrape_forever(url, scrapes))
        try:
            scraped.append(await _throughput(srv, token))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    p, s = statistics.median(plain), statistics.median(scraped)
    print(
        f"\ndevice writes/s: no scraping {p:,.0f} (runs {[round(x) for x in plain]}); "
        f"scraped every 50 ms {s:,.0f} (runs {[round(x) for x in scraped]}); scrapes={scrapes[0]}"
    )
    assert scrapes[0] > 0
    assert await _hardware_messages_in(url) == 7 * N  # warm-up + 6 runs: none lost or miscounted
