"""Server CPU of one device-API HTTP request: ``python -m benchmarks.http_requests [--requests N]
[--rounds R] [--tree DIR ...]``.

For each ``--tree`` (a source tree put first on the server's ``PYTHONPATH``; default: whatever this
process imports) a ``blynk-server`` subprocess on 127.0.0.1 with ephemeral ports, one template and one
device, logged in on the binary protocol (so ``update`` delivers a command to it), and
``BLYNK_HTTP_REQUEST_RATE=0``: the per-device HTTP rate (50/s by default) would answer most of these
requests 429. Then, per round and per tree in turn (trees interleaved, so a busy machine skews them
alike), N requests ``GET /external/api/update?token=T&V1=x`` with ``http.client`` on one keep-alive
connection, then N each on a new connection. Every answer must be 200. The figure is the server's CPU
(utime + stime from ``/proc/PID/stat``, in clock ticks) over the phase divided by N; the median of the
rounds is printed per tree and phase, with the idle server's own CPU over a quiet second for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from blynk_server.devclient import DeviceClient
from blynk_server.testing import StartedServer, parse_ready, run_cli, server_argv, start_server
from protocol import Command

TICK = os.sysconf("SC_CLK_TCK")
PHASES = ("keep-alive", "new connection")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Device:
    """A device logged in on the binary protocol, on an event loop in a thread of its own: it pings
    every 2 s (the server drops a silent device) and drains the commands the requests deliver."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-device", daemon=True)
        self.thread.start()
        self.client = self._call(DeviceClient.connect(host, port, token))
        self.received = 0
        self._task = self._call(self._start())

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _start(self) -> asyncio.Task:
        return asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.client.send(Command.PING)
            try:
                while True:
                    await self.client.recv(2.0)
                    self.received += 1
            except TimeoutError:
                pass

    def close(self) -> None:
        async def stop() -> None:
            self._task.cancel()
            await self.client.close()

        self._call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Target:
    """One server under test and the figures of its rounds (µs of server CPU, or instructions, per
    request)."""

    label: str
    server: StartedServer
    token: str
    device: Device
    callgrind: Path | None  # the out-file callgrind was given (None: not under callgrind)
    figures: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})

    @property
    def address(self) -> tuple[str, int]:
        return self.server.ready.hardware


def check(resp: http.client.HTTPResponse) -> None:
    resp.read()
    if resp.status != 200:
        raise SystemExit(f"answer {resp.status} {resp.reason}: every request must be answered 200")


def keep_alive(target: Target, path: str, n: int) -> None:
    conn = http.client.HTTPConnection(*target.address)
    try:
        for _ in range(n):
            conn.request("GET", path)
            check(conn.getresponse())
    finally:
        conn.close()


def new_connections(target: Target, path: str, n: int) -> None:
    for _ in range(n):
        conn = http.client.HTTPConnection(*target.address)
        try:
            conn.request("GET", path)
            check(conn.getresponse())
        finally:
            conn.close()


def measure(target: Target, phase: str, n: int, dump: Path | None = None) -> float:
    """µs of server CPU per request over ``n`` requests of ``phase``; under callgrind (``dump``: where
    its profile of these requests goes) instructions per request instead."""
    path = f"/external/api/update?token={target.token}&V1=x"
    run = keep_alive if phase == "keep-alive" else new_connections
    pid = target.server.proc.pid
    if target.callgrind is None:
        before = cpu_seconds(pid)
        run(target, path, n)
        return (cpu_seconds(pid) - before) / n * 1e6
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    dumps = set(target.callgrind.parent.glob(target.callgrind.name + ".*"))
    run(target, path, n)
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    (new,) = set(target.callgrind.parent.glob(target.callgrind.name + ".*")) - dumps
    summary = next(line for line in new.read_text().splitlines() if line.startswith("summary:"))
    if dump is not None:
        shutil.move(new, dump)
    return int(summary.split()[1]) / n


def under_callgrind(data: Path, env: dict[str, str]) -> StartedServer:
    """The server run by callgrind (instrumentation off until ``measure`` zeroes the counters)."""
    out = data / "stdout.log"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={data / 'callgrind.out'}", *server_argv(data)]
    with open(out, "w") as stdout, open(data / "stderr.log", "w") as stderr:
        proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, cwd=data, env={**os.environ, **env})
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        lines = out.read_text().splitlines()
        if ready := next(filter(None, map(parse_ready, lines)), None):
            return StartedServer(proc, ready, lines)
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the server under callgrind did not start: see {data}/stderr.log")


def start(stack: ExitStack, data: Path, tree: str | None, callgrind: bool) -> Target:
    """A server (of ``tree`` when given) with one template, one device logged in, no HTTP rate limit."""
    env = {"BLYNK_HTTP_REQUEST_RATE": "0"}  # no per-device HTTP rate (a setting with no CLI flag)
    if tree:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (tree, os.environ.get("PYTHONPATH"))))
    if callgrind:
        server = under_callgrind(data, env)
    else:
        server = start_server(data, stderr=data / "stderr.log", cwd=data, env=env)

    def stop() -> None:
        server.proc.terminate()
        server.proc.wait(30)

    stack.callback(stop)
    run_cli(data, "template", "create", "--id", "TMPLh", "--name", "TMPLh", "--datastream", "pin=V1,type=string")
    token = run_cli(data, "device", "create", "--template", "TMPLh", "--name", "bench").stdout.strip()
    device = Device(*server.ready.hardware, token)
    stack.callback(device.close)
    return Target(tree or "default", server, token, device, data / "callgrind.out" if callgrind else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3000, help="requests per phase and round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (medians printed)")
    ap.add_argument("--tree", action="append", help="source tree to run the server from (repeat to compare)")
    ap.add_argument("--callgrind", metavar="DIR", type=Path, help="run the servers under callgrind; profiles to DIR")
    args = ap.parse_args()
    trees = args.tree or [None]
    unit = "instructions" if args.callgrind else "µs server CPU"
    if args.callgrind:
        args.callgrind.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="blynk-http-requests-") as tmp, ExitStack() as stack:
        targets = []
        for i, tree in enumerate(trees):
            (data := Path(tmp) / f"server{i}").mkdir()
            targets.append(start(stack, data, tree, args.callgrind is not None))
        for t in targets:  # warm-up: imports, caches, the first connections
            measure(t, "keep-alive", 200)
            measure(t, "new connection", 200)
        idle = {}
        for t in targets:
            before = cpu_seconds(t.server.proc.pid)
            time.sleep(1.0)
            idle[t.label] = (cpu_seconds(t.server.proc.pid) - before) * 1e6
        for r in range(args.rounds):
            for phase in PHASES:
                for i, t in enumerate(targets):
                    dump = args.callgrind / f"server{i}-{phase.replace(' ', '-')}-{r}.out" if args.callgrind else None
                    t.figures[phase].append(measure(t, phase, args.requests, dump))
        for i, t in enumerate(targets):
            print(f"server{i} {t.label}: idle {idle[t.label]:.0f} µs CPU/s; device frames received {t.device.received}")
            for phase in PHASES:
                runs = t.figures[phase]
                print(f"  {phase}: {statistics.median(runs):.0f} {unit}/request (rounds {[round(x) for x in runs]})")


if __name__ == "__main__":
    main()
