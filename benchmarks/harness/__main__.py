"""``python -m benchmarks.harness SCENARIO [options]``: run one scenario on blynk-server and its peers.

Prints one JSON line per run, then a side-by-side table with the ratio blynk-server / mosquitto.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time

from benchmarks.harness import targets
from benchmarks.harness.engine import raise_nofile
from benchmarks.harness.scenarios import scenario

DEFAULTS = {  # scenario: (devices, duration)
    "flood": (1000, 20),
    "telemetry": (10000, 20),
    "command": (10000, 20),
    "pingpong": (100, 10),
    "idle": (15000, 10),
    "loginstorm": (10000, 5),
}
NOT_IN_TABLE = ("target", "mode", "login_error_samples", "bad_status", "windows")  # the JSON line has them
RATIO_KEYS = (
    "processed_per_s",
    "sent_per_s",
    "pongs_per_s",
    "login_wall_s",
    "rss_per_session_kb",
    "server_cpu_pct",
    "server_cpu_us_per_msg",
    "server_cpu_us_per_pong",
    "probe_p99_ms",
    "new_login_max_ms",
    "login_p99_ms",
    "rtt_p99_ms",
    "command_p99_ms",
)


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    return f"nproc={os.cpu_count()} cpu={model} python={platform.python_version()} commit={commit}"


def table(results: list[dict]) -> str:
    """Side by side: one column per run, and blynk-server / mosquitto where both have the number."""
    if not results:
        return ""
    keys = [k for k in results[0] if k not in NOT_IN_TABLE]
    for r in results[1:]:
        keys += [k for k in r if k not in keys and k not in NOT_IN_TABLE]
    names = [r["target"] for r in results]
    blynk = next((r for r in results if r["target"] == "blynk-server"), None)
    mosq = next((r for r in results if r["target"] == "mosquitto"), None)
    width = max(14, *(len(n) for n in names))
    lines = [f"{'':24}" + "".join(f"{n:>{width + 2}}" for n in names) + ("   blynk/mosquitto" if mosq else "")]
    for k in keys:
        row = f"{k:24}" + "".join(f"{str(r.get(k, '')):>{width + 2}}" for r in results)
        if mosq and blynk and k in RATIO_KEYS:
            a, b = blynk.get(k), mosq.get(k)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
                row += f"   {a / b:.2f}x"
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.harness", description=__doc__)
    p.add_argument("scenario", choices=sorted(DEFAULTS))
    p.add_argument("--devices", type=int, help="simulated devices (connections) in the main load")
    p.add_argument("--duration", type=float, help="seconds of the measured window")
    p.add_argument("--workers", type=int, default=2, help="load-generator processes for the main load")
    p.add_argument("--probes", type=int, default=100, help="flood: quiet probe connections pinging every 100 ms")
    p.add_argument("--batch", type=int, default=32, help="flood: frames per socket write")
    p.add_argument("--rate", type=float, default=10.0, help="telemetry/command: writes per second per device")
    p.add_argument(
        "--generator",
        choices=("auto", "c", "python"),
        default="auto",
        help="telemetry/command/pingpong main load: the C generator telegen.c (auto: when a C compiler is there) or the Python senders",
    )
    p.add_argument("--concurrency", type=int, default=500, help="idle: connections being opened at once per worker")
    p.add_argument(
        "--message-rate",
        type=float,
        default=1e9,
        help="blynk-server --message-rate for the main run (flood also runs the default 100)",
    )
    p.add_argument("--no-default-limit", action="store_true", help="flood: skip the run at the default rate limit")
    p.add_argument(
        "--peers",
        default="mosquitto,amqtt",
        help="comma list of peers to run too: mosquitto, amqtt, floor (a bare uvloop server; ping-pong, idle, login storm, telemetry), cfloor (the same in C, one epoll loop) ('' for none)",
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="run the servers under test on CPU 0 and the load generator on the others (Linux)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="telemetry/command: split the window into ROUNDS windows per target, the targets' windows in turn"
        " (all targets up at once), so that the machine's slow minutes fall on all of them alike",
    )
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    d_devices, d_duration = DEFAULTS[args.scenario]
    args.devices = args.devices or d_devices
    args.duration = args.duration or d_duration
    args.peers = [x for x in args.peers.split(",") if x]
    nofile = raise_nofile()
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} {machine()} nofile={nofile}")
    if args.pin:
        others = targets.pin({0})
        print(f"# pinned: the servers on CPU 0, the load generator on CPU {','.join(map(str, sorted(others)))}")
    print(f"# {' '.join(sys.argv)}")
    try:
        import uvloop

        results = uvloop.run(scenario(args.scenario, args))
    except ImportError:  # pragma: no cover
        results = asyncio.run(scenario(args.scenario, args))
    for r in results:
        print(json.dumps(r))
    print(table(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine(), "argv": sys.argv, "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
