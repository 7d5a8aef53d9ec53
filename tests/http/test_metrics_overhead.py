"""Scraping /metrics over and over while a device pipelines pin writes: every write is counted and every
scrape answers. What the scraping costs in writes per second is measured by
``python benchmarks/metrics_overhead.py`` (see benchmarks/RESULTS.md); tests do not time things.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from blynk_server.devclient import DeviceClient
from protocol import Command, encode_frame

N = 5_000  # pin writes per run, pipelined on one connection


async def _write_all(srv, token: str) -> None:
    """N pin writes pipelined on one connection; returns once a PING after them is answered."""
    client = await DeviceClient.connect(srv.host, srv.port, token)
    try:
        client.send_raw(
            b"".join(encode_frame(Command.HARDWARE, (i % 60000) + 1, b"vw\x001\x00%d" % i) for i in range(N))
        )
        await client.writer.drain()
        await client.ping(timeout=60)
    finally:
        await client.close()


async def _scrape_until_cancelled(url: str, statuses: list[int]) -> None:
    async with aiohttp.ClientSession() as s:
        while True:
            async with s.get(url) as r:
                await r.read()
                statuses.append(r.status)
            await asyncio.sleep(0)  # back to back: let the writes' reads interleave


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
    await _write_all(srv, token)  # not scraped
    statuses: list[int] = []
    for _ in range(2):
        task = asyncio.create_task(_scrape_until_cancelled(url, statuses))
        try:
            await _write_all(srv, token)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert statuses and set(statuses) == {200}
    assert await _hardware_messages_in(url) == 3 * N  # none lost or miscounted
