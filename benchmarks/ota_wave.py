"""OTA wave: N simulated Edgent devices download a firmware at once under a per-device rate limit.

Reports per-device achieved rates (median, spread vs the limit), the largest gap between bytes, the
server's CPU, the ping RTT of 100 other devices during the wave, and the final status of every device.

    python benchmarks/ota_wave.py --devices 1000 --size 1048576 --rate 50000
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import multiprocessing
import random
import re
import resource
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from blynk_server.devclient import DeviceClient
from blynk_server.testing import run_cli, start_server
from protocol import Command
from protocol.firmware import build_tag


def cli(data: Path, *args: str) -> str:
    return run_cli(data, *args).stdout


def info(version: str, build: str) -> dict:
    return {
        "mcu": version,
        "fw-type": "TMPLwave",
        "build": build,
        "blynk": "1.4.0",
        "h-beat": "60",
        "buff-in": "1024",
        "dev": "sim",
        "tmpl": "TMPLwave",
    }


class _Download(asyncio.Protocol):
    """A lean HTTP/1.0 download: counts bytes, hashes them as they come, notes the longest gap."""

    def __init__(self, done: asyncio.Future) -> None:
        self.done = done
        self.head = b""
        self.length = -1
        self.got = 0
        self.md5 = hashlib.md5()
        self.t0 = self.last = 0.0
        self.gap = 0.0
        self.x_md5 = ""

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self.length < 0:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, data = self.head.split(b"\r\n\r\n", 1)
            self.length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
            self.x_md5 = re.search(rb"(?i)x-md5:\s*(\w+)", head).group(1).decode()
            self.t0 = self.last = now
            if not data:
                return
        if self.got:
            self.gap = max(self.gap, now - self.last)
        self.last = now
        self.got += len(data)
        self.md5.update(data)
        if self.got >= self.length and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def download(url: str) -> tuple[int, float, float, bool]:
    u = urlsplit(url)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    transport, proto = await loop.create_connection(lambda: _Download(done), u.hostname, u.port)
    transport.write(f"GET {u.path}?{u.query} HTTP/1.0\r\nHost: {u.hostname}\r\n\r\n".encode())
    await done
    transport.close()
    return proto.got, proto.last - proto.t0, proto.gap, proto.md5.hexdigest() == proto.x_md5


async def device(host: str, port: int, token: str, build: str, out: dict, start: asyncio.Event) -> None:
    c = await DeviceClient.connect(host, port, token, info=info("1.0.0", "Nov  1 2026 00:00:00"), timeout=30)
    await start.wait()
    frame = await c.expect(lambda f: f[0] == Command.INTERNAL and f[2].startswith(b"ota\0"), timeout=120)
    url = frame[2].split(b"\0")[1].decode()
    await c.close()
    n, secs, gap, ok = await download(url)
    out["bytes"], out["secs"], out["gap"] = n, secs, gap
    out["ok"] = ok and n == out["size"]
    c = await DeviceClient.connect(host, port, token, info=info("2.0.0", build), timeout=30)
    await asyncio.sleep(1.0)
    await c.close()


async def pinger(host: str, port: int, token: str, rtts: list, stop: asyncio.Event) -> None:
    c = await DeviceClient.connect(host, port, token, info=info("9.9.9", "x"), timeout=30)
    while not stop.is_set():
        t = time.perf_counter()
        await c.ping(timeout=30)
        rtts.append(time.perf_counter() - t)
        await asyncio.sleep(0.2)
    await c.close()


def ping_process(host: str, port: int, tokens: list[str], conn, seconds_file: str) -> None:
    """Pingers in a process of their own, so the downloaders' busy loop does not inflate their RTTs."""

    async def run() -> list[float]:
        rtts: list[float] = []
        stop = asyncio.Event()
        tasks = [asyncio.create_task(pinger(host, port, t, rtts, stop)) for t in tokens]
        conn.send("ready")
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "baseline"
        rtts.clear()
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "measure"
        conn.send(list(rtts))
        rtts.clear()
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "stop"
        stop.set()
        await asyncio.gather(*tasks)
        return rtts

    conn.send(asyncio.run(run()))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--size", type=int, default=1024 * 1024)
    ap.add_argument("--rate", type=int, default=50_000, help="per-device limit, bytes/s")
    ap.add_argument("--pingers", type=int, default=100)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * (args.devices + args.pingers) + 1000))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    tmp = Path(tempfile.mkdtemp(prefix="ota-wave-"))
    data = tmp / "data"
    cli(data, "template", "create", "--id", "TMPLwave", "--name", "wave")
    rows = [(f"wave{i:06d}tok{random.randrange(10**9):09d}", f"d{i}") for i in range(args.devices + args.pingers)]
    with open(tmp / "devices.csv", "w", newline="") as fh:
        csv.writer(fh).writerows((t, n, "TMPLwave") for t, n in rows)
    cli(data, "device", "import", str(tmp / "devices.csv"))
    build = "Nov 22 2026 12:00:00"
    fw = bytearray(random.Random(1).randbytes(args.size))
    tag = build_tag(mcu="2.0.0", fw_type="TMPLwave", build=build)
    fw[4096 : 4096 + len(tag)] = tag
    (tmp / "fw.bin").write_bytes(fw)
    fw_id = json.loads(cli(data, "ota", "upload", str(tmp / "fw.bin")))["id"]
    ids = {d["token"]: d["id"] for d in json.loads(cli(data, "device", "list", "--json"))}
    targets = [ids[t] for t, _ in rows[: args.devices]]

    started = start_server(
        data, "--log-level", "WARNING", stderr=tmp / "server.log", env={"BLYNK_OTA_POLL_INTERVAL": "0.2"}
    )
    proc, (host, port), admin = started.proc, started.ready.hardware, started.ready.admin
    ps = psutil.Process(proc.pid)
    try:
        results = [{"size": len(fw)} for _ in range(args.devices)]
        start = asyncio.Event()
        parent, child = multiprocessing.Pipe()
        pinger_proc = multiprocessing.Process(
            target=ping_process, args=(host, port, [t for t, _ in rows[args.devices :]], child, ""), daemon=True
        )
        pinger_proc.start()
        await asyncio.get_running_loop().run_in_executor(None, parent.recv)  # "ready"
        tasks = [
            asyncio.create_task(device(host, port, t, build, results[i], start))
            for i, (t, _) in enumerate(rows[: args.devices])
        ]
        await asyncio.sleep(0.1)
        while (
            sum(
                1
                for c in psutil.net_connections("tcp")
                if c.laddr and c.laddr.port == port and c.status == "ESTABLISHED"
            )
            < args.devices + args.pingers
        ):
            await asyncio.sleep(0.5)
        parent.send("baseline")
        await asyncio.sleep(3.0)  # the same pingers with no wave: the reference RTT
        parent.send("measure")
        base = sorted(await asyncio.get_running_loop().run_in_executor(None, parent.recv))
        cpu0 = ps.cpu_times()
        t0 = time.monotonic()
        cmd = [
            "ota",
            "ship",
            "--name",
            "wave",
            "--firmware",
            str(fw_id),
            "--template",
            "TMPLwave",
            "--rate",
            str(args.rate),
        ] + sum((["--device", str(i)] for i in targets), [])
        start.set()
        cli(data, *cmd)
        await asyncio.gather(*tasks)
        wall = time.monotonic() - t0
        cpu1 = ps.cpu_times()
        parent.send("stop")
        rtts = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
        pinger_proc.join(10)
        rep = json.loads(cli(data, "ota", "report", "wave"))
        metrics = urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}/metrics", timeout=10).read().decode()
        server_gap = float(re.search(r"^blynk_ota_max_send_gap_seconds (\S+)", metrics, re.M).group(1))
        rates = [r["bytes"] / r["secs"] for r in results]
        gaps = [r["gap"] for r in results]
        med = statistics.median(rates)
        cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        rtts.sort()
        summary = {
            "devices": args.devices,
            "size": args.size,
            "rate_limit": args.rate,
            "wall_s": round(wall, 1),
            "all_bytes_ok": all(r["ok"] for r in results),
            "rate_median": round(med),
            "rate_min": round(min(rates)),
            "rate_max": round(max(rates)),
            "rate_p5": round(statistics.quantiles(rates, n=20)[0]),
            "rate_p95": round(statistics.quantiles(rates, n=20)[-1]),
            "median_vs_limit_pct": round(100 * (med - args.rate) / args.rate, 2),
            "max_gap_client_s": round(max(gaps), 3),
            "max_gap_server_s": round(server_gap, 3),
            "gap_p99_s": round(sorted(gaps)[int(0.99 * len(gaps))], 3),
            "server_cpu_s": round(cpu, 1),
            "server_cpu_pct": round(100 * cpu / wall, 1),
            "ping_rtt_ms_before_wave": {
                "n": len(base),
                "p50": round(1000 * base[len(base) // 2], 2),
                "p99": round(1000 * base[int(0.99 * len(base))], 2),
            },
            "ping_rtt_ms": {
                "n": len(rtts),
                "p50": round(1000 * rtts[len(rtts) // 2], 2),
                "p99": round(1000 * rtts[int(0.99 * len(rtts))], 2),
                "max": round(1000 * rtts[-1], 2),
            },
            "final_status": {k: v for k, v in rep["counts"].items() if v},
            "shipment_state": rep["shipment"]["state"],
        }
        print(json.dumps(summary, indent=2))
    finally:
        proc.terminate()
        proc.wait(20)


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
