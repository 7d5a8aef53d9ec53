"""Automation latency: ``python -m benchmarks.automation_latency [--rounds 500]``.

A real server process; an automation ``DEVICE_A:V1 > 30 -> write:DEVICE_B:V2=1`` made with the CLI
(through the running server). Device A writes V1 = 10 then V1 = 31 (each 31 is a new edge; the per-minute run cap is raised for this), and the time
from A's write of 31 to device B receiving ``vw 2 1`` is taken, ``--rounds`` times; p50, p99 and max
are printed. Issue 14 asks for B to receive it within 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from blynk_server.devclient import DeviceClient
from blynk_server.testing import run_cli, start_server
from protocol import Command

PACE = 0.05  # seconds between rounds: 3 frames a round, 60/s, under the default 100 messages/s


async def measure(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        # The cap of runs per automation and minute (60) would skip most rounds: raised for the measurement.
        env = {"BLYNK_AUTOMATION_RUNS_PER_MINUTE": str(2 * rounds)}
        started = start_server(
            data, "--host", "127.0.0.1", "--port", "0", "--admin-port", "0", stderr=Path(tmp) / "err", env=env
        )
        try:
            host, port = started.ready.hardware
            run_cli(data, "template", "create", "--id", "TMPLlat", "--name", "Lat",
                    "--datastream", "pin=V1,type=double", "--datastream", "pin=V2,type=int")  # fmt: skip
            a = run_cli(data, "device", "create", "--template", "TMPLlat", "--name", "A").stdout.strip()
            b = run_cli(data, "device", "create", "--template", "TMPLlat", "--name", "B").stdout.strip()
            run_cli(data, "automation", "create", "--name", "lat", "--when", f"{a}:V1 > 30", "--do", f"write:{b}:V2=1")
            dev_a = await DeviceClient.connect(host, port, a)
            dev_b = await DeviceClient.connect(host, port, b)
            lat = []
            for _ in range(rounds):
                dev_a.virtual_write(1, 10)
                await dev_a.ping()  # applied: the next 31 is an edge
                t0 = time.perf_counter()
                dev_a.virtual_write(1, 31)
                await dev_b.expect(lambda f: f[0] == Command.HARDWARE and f[2] == b"vw\x002\x001")
                lat.append((time.perf_counter() - t0) * 1000)
                await asyncio.sleep(PACE)  # stay under the device's message rate: no flood pause measured
            await dev_a.close()
            await dev_b.close()
        finally:
            started.proc.terminate()
            started.proc.wait(30)
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(
        f"automation A:V1>30 -> B:V2=1, {rounds} rounds: p50 {statistics.median(lat):.2f} ms,"
        f" p99 {p99:.2f} ms, max {lat[-1]:.2f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=500)
    asyncio.run(measure(ap.parse_args().rounds))


if __name__ == "__main__":
    main()
