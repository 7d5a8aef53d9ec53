"""What scraping /metrics costs the device path: pin writes per second pipelined on one connection,
with and without a scraper hitting /metrics every 50 ms (far more often than Prometheus would).

Moved here from tests/http/test_metrics_overhead.py, which printed the rates; the test keeps the
correctness half (every write counted while scraping). Run from the repo root::

    python benchmarks/metrics_overhead.py [--writes 200000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from blynk_server.devclient import DeviceClient
from blynk_server.testing import run_cli, start_server
from protocol import Command, encode_frame


async def throughput(host: str, port: int, token: str, n: int) -> float:
    """Frames/s for ``n`` pin writes pipelined on one connection, ended by a PING round trip."""
    client = await DeviceClient.connect(host, port, token)
    try:
        batch = b"".join(encode_frame(Command.HARDWARE, (i % 60000) + 1, b"vw\x001\x00%d" % i) for i in range(n))
        start = time.perf_counter()
        client.send_raw(batch)
        await client.writer.drain()
        await client.ping(timeout=120)
        return n / (time.perf_counter() - start)
    finally:
        await client.close()


async def scrape_forever(url: str, counter: list[int], every: float = 0.05) -> None:
    async with aiohttp.ClientSession() as s:
        while True:
            async with s.get(url) as r:
                await r.read()
            counter[0] += 1
            await asyncio.sleep(every)


async def measure(host: str, port: int, url: str, token: str, n: int, runs: int) -> None:
    await throughput(host, port, token, n)  # warm-up
    plain, scraped, scrapes = [], [], [0]
    for _ in range(runs):
        plain.append(await throughput(host, port, token, n))
        task = asyncio.create_task(scrape_forever(url, scrapes))
        try:
            scraped.append(await throughput(host, port, token, n))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    p, s = statistics.median(plain), statistics.median(scraped)
    print(f"device writes/s: no scraping {p:,.0f} (runs {[round(x) for x in plain]})")
    print(f"device writes/s: scraped every 50 ms {s:,.0f} (runs {[round(x) for x in scraped]}); scrapes={scrapes[0]}")
    print(f"ratio scraped/plain: {s / p:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writes", type=int, default=200_000, help="pin writes per run")
    ap.add_argument("--runs", type=int, default=3, help="runs with and without scraping (medians printed)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="blynk-metrics-overhead-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        started = start_server(data, "--message-rate", "10000000", stderr=Path(tmp) / "stderr.log", cwd=Path(tmp))
        try:
            run_cli(data, "template", "create", "--id", "TMPLb", "--name", "TMPLb", "--datastream", "pin=V1,type=int")
            token = run_cli(data, "device", "create", "--template", "TMPLb", "--name", "bench").stdout.strip()
            (host, port), (ahost, aport) = started.ready.hardware, started.ready.admin
            asyncio.run(measure(host, port, f"http://{ahost}:{aport}/metrics", token, args.writes, args.runs))
        finally:
            started.proc.terminate()
            started.proc.wait(30)


if __name__ == "__main__":
    main()
