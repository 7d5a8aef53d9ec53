"""The device path while a webhook target hangs: ``python -m benchmarks.webhook_hang``.

The load harness's command scenario (``--devices`` devices writing V1 ``--rate`` times a second, 100 quiet
probe devices pinging every 100 ms, 20 devices receiving ``/external/api/update`` commands) against a
fresh ``blynk-server`` subprocess, run several times:

- ``baseline``: no webhook;
- ``hang every=S``: a webhook on ``datastream:TEMPLATE:V1`` (every device's telemetry pin) whose target,
  in this process, accepts connections and never answers; one run per ``--every`` value (0 = a call per
  write: 10,000 calls/s into the outbox at the defaults, far more than 4 workers with a 10 s timeout
  can make, so the outbox fills to ``outbox_max_rows`` and drops the oldest).

Printed per run: probe ping p50/p99/max, command p50/p99, what the server processed, and the webhook's
own counters from ``/metrics`` (queued, failed, skipped) plus the connections the hanging target got.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time

from benchmarks.harness.__main__ import machine
from benchmarks.harness.engine import raise_nofile
from benchmarks.harness.scenarios import run_load
from benchmarks.harness.targets import BlynkTarget, cleanup, make_workdir

KEYS = (
    "logged_in",
    "sent_per_s",
    "processed_per_s",
    "sent_equals_processed",
    "probe_p50_ms",
    "probe_p99_ms",
    "probe_max_ms",
    "command_p50_ms",
    "command_p99_ms",
    "commands_delivered",
    "server_cpu_pct",
    "hang_connections",
    "webhook_queued",
    "webhook_failed",
    "webhook_skipped_interval",
    "webhook_skipped_rate",
)


class Hanging:
    """A TCP server that accepts and reads, and never answers."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=4096)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await reader.read(65536):
                pass  # read what comes, answer nothing
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def webhook_counters(target: BlynkTarget) -> dict:
    _, text = target._get("/metrics")
    out = {}
    for key, pattern in (
        ("webhook_queued", r'^blynk_webhook_calls_queued_total\{name="hang"\}\s+(\S+)'),
        ("webhook_failed", r'^blynk_webhook_calls_total\{name="hang",result="failed"\}\s+(\S+)'),
        ("webhook_skipped_interval", r'^blynk_webhook_calls_skipped_total\{name="hang",reason="interval"\}\s+(\S+)'),
        ("webhook_skipped_rate", r'^blynk_webhook_calls_skipped_total\{name="hang",reason="rate"\}\s+(\S+)'),
    ):
        m = re.search(pattern, text, re.M)
        out[key] = int(float(m.group(1))) if m else None
    return out


def start_profiler(args, label: str, pid: int) -> subprocess.Popen | None:
    """``--profile DIR``: py-spy samples the server (without pausing it) for the run, into collapsed
    stacks ``DIR/<label>.txt`` (one line per stack, its sample count last)."""
    if not args.profile:
        return None
    spy = shutil.which("py-spy") or os.environ.get("PY_SPY")
    if spy is None:
        raise SystemExit("--profile needs py-spy on PATH (or PY_SPY=/path/to/py-spy)")
    os.makedirs(args.profile, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9=.-]+", "_", label)
    out = os.path.join(args.profile, f"{name}.txt")
    cmd = [spy, "record", "--pid", str(pid), "--nonblocking", "--threads", "--format", "raw", "-o", out]
    cmd += ["--rate", "200", "--duration", str(int(args.duration) + 3)]
    cmd += os.environ.get("BENCH_PYSPY_ARGS", "").split()  # e.g. "--gil": only the thread holding the GIL
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def one_run(label: str, every: float | None, hang: Hanging, args) -> dict:
    workdir = make_workdir()
    target = BlynkTarget(workdir / "blynk")
    try:
        n_probe, n_new, n_cmd = args.probes, int(args.duration / 0.25) + 10, 20
        ids = target.provision(args.devices + n_probe + n_new + n_cmd)
        main, probes = ids[: args.devices], ids[args.devices : args.devices + n_probe]
        new_ids = ids[args.devices + n_probe : args.devices + n_probe + n_new]
        cmd_ids = ids[args.devices + n_probe + n_new :]
        if every is not None:
            target._cli(
                "webhook",
                "create",
                "--name",
                "hang",
                "--url",
                f"http://127.0.0.1:{hang.port}/hook",
                "--on",
                f"datastream:{target.template}:V1",
                "--body",
                '{"device": "{device_name}", "value": {datastream_value}, "ts": {timestamp_ms}}',
                "--every",
                str(every),
            )
        target.start()
        before = hang.connections
        profiler = start_profiler(args, label, target.pid)
        res = await run_load(
            target,
            mode="telemetry",
            ids=main,
            rate=args.rate,
            command_ids=cmd_ids,
            probes=probes,
            new_ids=new_ids,
            workers=args.workers,
            duration=args.duration,
            concurrency=50,  # logins in flight: under the server's pending_logins_per_ip (64)
        )
        res["target"] = label
        if profiler is not None:
            profiler.wait(60)
        res["hang_connections"] = hang.connections - before if every is not None else None
        res.update(webhook_counters(target))
        return res
    finally:
        target.stop()
        cleanup(workdir)


async def main_async(args) -> list[dict]:
    hang = Hanging()
    await hang.start()
    results = []
    try:
        runs: list[tuple[str, float | None]] = [("baseline (no webhook)", None)]
        runs += [(f"hang every={e:g}", e) for e in args.every]
        for label, every in runs:
            res = await one_run(label, every, hang, args)
            print(json.dumps(res), flush=True)
            results.append(res)
    finally:
        await hang.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--rate", type=float, default=10.0, help="writes per device per second")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--probes", type=int, default=100)
    p.add_argument("--every", type=float, action="append", help="webhook every_s of a hanging run (repeatable)")
    p.add_argument("--profile", metavar="DIR", help="sample the server with py-spy into DIR (costs CPU)")
    args = p.parse_args(argv)
    args.every = args.every or [0.0, 10.0]
    raise_nofile()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} {machine()}")
    print("# " + " ".join(["python", "-m", "benchmarks.webhook_hang", *(argv or sys.argv[1:])]))
    results = asyncio.run(main_async(args))
    width = max(len(r["target"]) for r in results)
    print("\n| figure | " + " | ".join(r["target"] for r in results) + " |")
    print("|---|" + "---:|" * len(results))
    for key in KEYS:
        print(f"| {key} | " + " | ".join(str(r.get(key)) for r in results) + " |")
    del width
    return 0


if __name__ == "__main__":
    sys.exit(main())
