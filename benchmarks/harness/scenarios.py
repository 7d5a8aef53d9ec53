"""The scenarios: one orchestrator per workload, run against blynk-server and the MQTT peers alike.

The orchestrator starts the target, spreads simulated devices over worker processes, runs the
timed window while sampling the server's processed counter and its CPU/RSS from ``/proc``, then
waits for a quiet period so ``sent == processed`` can be checked. Every loop here is bounded in
count and time.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from benchmarks.harness import targets, telegen
from benchmarks.harness.engine import worker_main
from benchmarks.harness.targets import (
    AmqttTarget,
    BlynkTarget,
    CFloorTarget,
    FloorTarget,
    MosquittoTarget,
    Target,
    cleanup,
    cpu_steal,
    make_workdir,
    proc_cpu_seconds,
    proc_cpu_split,
    run_delay_ms,
    steal_ms,
)
from blynk_server.testing import rss_bytes

_POOL = ThreadPoolExecutor(max_workers=64)  # blocking Pipe.recv() calls, one per worker


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 3)


def split(items: list, parts: int) -> list[list]:
    parts = max(1, min(parts, len(items) or 1))
    return [items[i::parts] for i in range(parts)]


class Workers:
    """Worker processes (spawned: never fork a running event loop) and their pipes."""

    def __init__(self, specs: list[dict]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes = []
        self.procs = []
        for spec in specs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, spec), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    async def _recv(self, conn, timeout: float):
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(_POOL, conn.poll, timeout)
        if not ok:
            raise TimeoutError("worker did not answer")
        return conn.recv()

    async def gather(self, timeout: float = 120) -> list:
        return list(await asyncio.gather(*(self._recv(c, timeout) for c in self.pipes)))

    async def run(self, duration: float) -> list[dict]:
        for c in self.pipes:
            c.send(("run", duration))
        return await self.gather(duration + 60)

    def cpu(self) -> float:
        return sum(proc_cpu_seconds(p.pid) for p in self.procs if p.is_alive())

    async def close(self) -> None:
        for c in self.pipes:
            try:
                c.send(("close",))
            except OSError:
                pass
        try:
            await self.gather(30)
        except (TimeoutError, EOFError, OSError):
            pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()  # our own worker, by its handle
                p.join(5)


class Pools:
    """Several pools (Python workers, C generators) driven as one; answers concatenated in pool order."""

    def __init__(self, *pools) -> None:
        self.pools = pools

    async def gather(self, timeout: float = 120) -> list:
        parts = await asyncio.gather(*(p.gather(timeout) for p in self.pools))
        return [x for part in parts for x in part]

    async def run(self, duration: float) -> list[dict]:
        parts = await asyncio.gather(*(p.run(duration) for p in self.pools))
        return [x for part in parts for x in part]

    def cpu(self) -> float:
        return sum(p.cpu() for p in self.pools)

    async def close(self) -> None:
        for p in self.pools:
            await p.close()


def main_generator(mode: str, generator: str) -> tuple[str, object]:
    """Which generator sends the main load: ("c", binary) for telemetry and ping-pong when telegen builds,
    else ("python", None).

    ``generator`` is "auto" (C when a compiler is there, else Python with a note), "c" (C or an error)
    or "python".
    """
    if mode not in ("telemetry", "pingpong") or generator == "python":
        return "python", None
    binary, why = telegen.build()
    if binary is None:
        if generator == "c":
            raise RuntimeError(f"telegen: {why}")
        if why not in _NOTED:
            _NOTED.add(why)
            print(f"# telegen: {why}; the telemetry load runs on the Python senders (generator=python)")
        return "python", None
    return "c", binary


_NOTED: set[str] = set()


@dataclass
class Sampler:
    """Polls the target's processed counter about once a second during the window."""

    target: Target
    samples: list[tuple[float, float]] = field(default_factory=list)
    sys_source: list | None = None

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(100_000):
            if self.target.kind == "blynk":
                value = await loop.run_in_executor(_POOL, self.target.processed)
                self.samples.append((time.time(), value))
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
                return
            except TimeoutError:
                pass

    @staticmethod
    def rate(samples: list[tuple[float, float]], t0: float, t1: float) -> float | None:
        inside = [s for s in samples if t0 <= s[0] <= t1]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


async def _settle_blynk(target: BlynkTarget, expected: float, base: float, timeout: float = 15) -> float:
    """Wait until the processed counter reaches ``expected`` or stops moving; returns the processed delta."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    last, still = -1.0, 0
    while time.monotonic() < deadline:
        value = await loop.run_in_executor(_POOL, target.processed) - base
        if value >= expected:
            return value
        still = still + 1 if value == last else 0
        if still >= 4:
            return value
        last = value
        await asyncio.sleep(0.25)
    return last


async def _sys_value(workdir, target: MosquittoTarget, wait: float = 2.5) -> float | None:
    """Read the broker's $SYS received-publish counter once (a short-lived subscriber)."""
    w = Workers(
        [
            {
                "kind": "mqtt",
                "host": "127.0.0.1",
                "port": target.port,
                "ids": ["sysread"],
                "mode": "sys",
                "subscribe": target.sys_topic,
                "drain": 0,
            }
        ]
    )
    try:
        await w.gather(30)
        res = await w.run(wait)
    finally:
        await w.close()
    samples = res[0]["sys_samples"]
    return samples[-1][2] if samples else None


def _login_summary(conn: list[dict]) -> dict:
    lat = [x for c in conn for x in c["login_lat"]]
    return {
        "logged_in": sum(c["logged_in"] for c in conn),
        "login_errors": sum(c["errors"] for c in conn),
        "login_error_samples": [e for c in conn for e in c["error_samples"]][:3],
        "login_p50_ms": ms(pct(lat, 50)),
        "login_p99_ms": ms(pct(lat, 99)),
        "login_wall_s": round(max(c["t_all"] for c in conn) - min(c["t_connect"] for c in conn), 3),
    }


class Load:
    """One target's main load, quiet probes, fresh logins and commands, connected once (``start``).

    ``window`` runs one measured window of it and can run again on the same connections: ``--rounds``
    takes the windows of two targets in turn, so that both see the same machine, minute by minute.
    ``summary`` adds the windows up. The main load runs on ``telegen.c`` unless ``generator`` says
    "python" or no C compiler is there (see :func:`main_generator`); probes, fresh logins and commands
    always run in Python workers.
    """

    def __init__(
        self,
        target: Target,
        *,
        mode: str,
        ids: list[str],
        workers: int = 2,
        batch: int = 32,
        rate: float = 10.0,
        probes: list[str] = (),
        new_ids: list[str] = (),
        command_ids: list[str] = (),
        concurrency: int = 500,
        connect_at: float | None = None,
        probe_interval: float = 0.1,
        generator: str = "auto",
    ) -> None:
        self.target, self.mode, self.ids = target, mode, ids
        self.gen_kind, self.binary = main_generator(mode, generator)
        kind = target.kind
        where = {"kind": kind, "host": "127.0.0.1", "port": target.port}  # every worker's
        self.specs = [
            {
                **where,
                "ids": part,
                "mode": mode,
                "batch": batch,
                "rate": rate,
                "concurrency": concurrency,
                "connect_at": connect_at,
                "sndbuf": 32768 if mode == "flood" else 0,
            }
            for part in split(list(ids), workers)
        ]
        self.extra: list[dict] = []
        self.probing = bool(probes or new_ids)
        if self.probing:
            self.extra.append(
                {
                    **where,
                    "ids": list(probes),
                    "mode": "probe",
                    "new_ids": list(new_ids),
                    "interval": probe_interval,
                    "concurrency": 100,
                }
            )
        self.commanding = bool(command_ids)
        if self.commanding:
            self.extra.append(
                {
                    **where,
                    "ids": list(command_ids),
                    "mode": "command",
                    "interval": 0.02,
                    "concurrency": 50,
                }
            )
        if kind == "mqtt":
            self.extra.append({**where, "ids": ["sysmon"], "mode": "sys", "subscribe": target.sys_topic})
        self.pool: Pools | None = None
        self.main_pool = None
        self.head: dict = {}
        self.base = 0.0  # blynk-server's processed counter before the first window

    async def start(self) -> None:
        """Connect every device and probe, let the logins settle, and note the memory they took."""
        target = self.target
        rss_empty = rss_bytes(target.pid)
        self.main_pool = telegen.Generators(self.binary, self.specs) if self.gen_kind == "c" else Workers(self.specs)
        try:
            self.pool = Pools(self.main_pool, Workers(self.extra))
        except BaseException:
            await self.main_pool.close()
            raise
        conn = await self.pool.gather(300)
        out: dict = {
            "target": target.name,
            "mode": self.mode,
            "devices": len(self.ids),
            "generator": self.gen_kind,
            **_login_summary(conn[: len(self.specs)]),
        }
        if self.extra:  # how the timing workers are scheduled (engine.instrument_scheduling)
            out["instrument_scheduling"] = next(
                (c["scheduling"] for c in conn[len(self.specs) :] if c["scheduling"]), None
            )
        await asyncio.sleep(2.0 if len(self.ids) > 2000 else 0.5)  # let logins, info messages and GC settle
        out["rss_empty_mb"] = round(rss_empty / 2**20, 1)
        out["rss_loaded_mb"] = round(rss_bytes(target.pid) / 2**20, 1)
        if out["logged_in"]:
            out["rss_per_session_kb"] = round((rss_bytes(target.pid) - rss_empty) / out["logged_in"] / 1024, 3)
        self.head = out
        if target.kind == "blynk":
            self.base = target.processed()

    async def window(self, duration: float) -> dict:
        """One measured window: the server's CPU over it (and with its drain: what the window's messages
        cost after it), the processed counter sampled about once a second, and the workers' results."""
        target, pool, main_pool = self.target, self.pool, self.main_pool
        sampler = Sampler(target)
        stop = asyncio.Event()
        sampling = asyncio.create_task(sampler.run(stop))
        steal0, delay0 = cpu_steal(), run_delay_ms(target.pid)
        cpu0, hcpu0, gcpu0, t0 = proc_cpu_split(target.pid), pool.cpu(), main_pool.cpu(), time.time()

        async def at_window_end() -> tuple[tuple[float, float], float, float, float, dict[int, float], float | None]:
            await asyncio.sleep(duration)  # CPU over the window only, not the drain after it
            return (
                proc_cpu_split(target.pid),
                pool.cpu(),
                main_pool.cpu(),
                time.time(),
                cpu_steal(),
                run_delay_ms(target.pid),
            )

        end = asyncio.create_task(at_window_end())
        res = await pool.run(duration)
        cpu1, hcpu1, gcpu1, t1, steal1, delay1 = await end
        cpu_drained = proc_cpu_split(target.pid)
        stop.set()
        await sampling
        return {
            "t0": t0,
            "t1": t1,
            "cpu": (cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]),
            "cpu_drained": (cpu_drained[0] - cpu0[0], cpu_drained[1] - cpu0[1]),
            "harness_cpu": hcpu1 - hcpu0,
            "generator_cpu": gcpu1 - gcpu0,
            "steal": (steal0, steal1),
            "run_delay": (delay0, delay1),
            "samples": sampler.samples,
            "res": res,
        }

    async def summary(self, windows: list[dict]) -> dict:
        """The figures of the windows together: their counts added, their latencies pooled."""
        target, mode, n = self.target, self.mode, len(self.specs)
        out = dict(self.head)
        main = [r for w in windows for r in w["res"][:n]]
        last = windows[-1]["res"]  # counts since the start: dropped, statuses, alive
        elapsed = sum(max((r["elapsed"] for r in w["res"][:n]), default=w["t1"] - w["t0"]) for w in windows)
        span = sum(w["t1"] - w["t0"] for w in windows)
        sent = sum(r["sent"] for r in main)
        user = sum(w["cpu"][0] for w in windows)
        cpu = user + sum(w["cpu"][1] for w in windows)
        out.update(
            {
                "duration_s": round(elapsed, 2),
                "sent": sent,
                "sent_per_s": round(sent / elapsed),
                "server_cpu_pct": round(100 * cpu / span, 1),
                # user space apart: the kernel's share swings with how many messages a wakeup finds
                "server_user_pct": round(100 * user / span, 1),
                "harness_cpu_pct": round(100 * sum(w["harness_cpu"] for w in windows) / span, 1),
                "generator_cpu_pct": round(100 * sum(w["generator_cpu"] for w in windows) / span, 1),
                "rss_end_mb": round(rss_bytes(target.pid) / 2**20, 1),
                "dropped_connections": sum(r["dropped"] for r in last),
                "alive": sum(r["alive"] for r in last[:n]),
                "bad_status": {k: v for r in last for k, v in r["bad_status"].items()},
            }
        )
        out.update(_waits(windows))
        if len(windows) > 1:
            out["rounds"] = len(windows)
        if mode == "telemetry":
            out["skipped_behind_schedule"] = sum(r["skipped"] for r in main)
            if self.gen_kind == "c":  # the Python senders do not count it
                out["send_blocked"] = sum(r["blocked"] for r in main)
        if mode == "pingpong":
            rtts = [x for r in main for x in r["rtts"]]
            out["pongs_per_s"] = round(sum(r["pongs"] for r in main) / elapsed)
            # The server's CPU per answered ping: what the Python generator (the bound at 100 connections)
            # does not hide, as pongs_per_s does.
            out["server_cpu_us_per_pong"] = _per(out["server_cpu_pct"], out["pongs_per_s"])
            out["rtt_p50_ms"], out["rtt_p99_ms"] = ms(pct(rtts, 50)), ms(pct(rtts, 99))
        probes, commands = self._instruments(windows)
        if probes:
            rtts = [x for p in probes for x in p["rtts"]]
            logins = [x for p in probes for x in p["new_login_lat"]]
            out["probe_pings"] = len(rtts)
            out["probe_p50_ms"], out["probe_p99_ms"] = ms(pct(rtts, 50)), ms(pct(rtts, 99))
            out["probe_max_ms"] = ms(max(rtts) if rtts else None)
            out["new_logins"] = len(logins)
            out["new_login_errors"] = sum(p["new_login_errors"] for p in probes)
            out["new_login_p50_ms"] = ms(pct(logins, 50))
            out["new_login_max_ms"] = ms(max(logins) if logins else None)
        if commands:
            lat = [x for c in commands for x in c["cmd_lat"]]
            out["commands_delivered"] = len(lat)
            out["commands_sent"] = sum(c["sent"] for c in commands)
            out["command_p50_ms"], out["command_p99_ms"] = ms(pct(lat, 50)), ms(pct(lat, 99))
        if mode in ("flood", "telemetry"):
            await self._processed(out, windows, sent, elapsed)
        if len(windows) > 1:
            out["windows"] = [self._latencies(w) for w in windows]
        return out

    def _instruments(self, windows: list[dict]) -> tuple[list[dict], list[dict]]:
        """The probe worker's results and the command worker's, one per window (none: empty)."""
        n = len(self.specs)  # the main load's workers come first, then the probe's, then the command's
        probes = [w["res"][n] for w in windows] if self.probing else []
        commands = [w["res"][n + self.probing] for w in windows] if self.commanding else []
        return probes, commands

    def _latencies(self, window: dict) -> dict:
        """One window's waits and latency tails (``--rounds``): which window a pooled maximum came from,
        and whether the server was kept from its core then."""
        out = _waits([window])
        probes, commands = self._instruments([window])
        if probes:
            rtts, logins = probes[0]["rtts"], probes[0]["new_login_lat"]
            out["probe_p99_ms"], out["probe_max_ms"] = ms(pct(rtts, 99)), ms(max(rtts) if rtts else None)
            out["new_login_max_ms"] = ms(max(logins) if logins else None)
        if commands:
            out["command_p99_ms"] = ms(pct(commands[0]["cmd_lat"], 99))
        return out

    async def _processed(self, out: dict, windows: list[dict], sent: int, elapsed: float) -> None:
        """What the server says it processed, and the CPU per message. One window: the rate of its
        counter over the window (as it was before ``--rounds``). Several: the counter's whole change
        over the windows, and the CPU of each window with its drain, where the rest of its messages'
        work falls (the store's flush of the last second's values); that of both targets alike."""
        target = self.target
        if len(windows) == 1:
            w = windows[0]
            samples = w["samples"] if target.kind == "blynk" else [(t, v) for t, _, v in w["res"][-1]["sys_samples"]]
            out["processed_per_s"] = _r(Sampler.rate(samples, w["t0"] + 1, w["t0"] + elapsed + 0.5))
        if target.kind == "blynk":
            out["processed_total"] = await _settle_blynk(target, sent, self.base)
            out["sent_equals_processed"] = out["processed_total"] == sent
            out.update(await asyncio.get_running_loop().run_in_executor(_POOL, target.turn_budget))
            out["metrics_source"] = target.metrics_source
        else:
            if len(windows) > 1:  # $SYS comes once a second: its last value before the first window, and at the end
                before = [v for t, _, v in windows[-1]["res"][-1]["sys_samples"] if t < windows[0]["t0"]]
                end = await _sys_value(None, target)
                if end is not None:
                    out["processed_total"] = round(end - (before[-1] if before else 0.0))
                    # the broker counts the command probe's publishes too
                    out["sent_equals_processed"] = out["processed_total"] == sent + out.get("commands_sent", 0)
            out["metrics_source"] = target.sys_topic
        if len(windows) > 1 and out.get("processed_total"):
            out["processed_per_s"] = round(out["processed_total"] / elapsed)
            processed = out["processed_total"]
            user = sum(w["cpu_drained"][0] for w in windows)
            out["server_cpu_us_per_msg"] = round(
                1e6 * (user + sum(w["cpu_drained"][1] for w in windows)) / processed, 2
            )
            out["server_user_us_per_msg"] = round(1e6 * user / processed, 2)
        elif out.get("processed_per_s"):
            out["server_cpu_us_per_msg"] = _per(out["server_cpu_pct"], out["processed_per_s"])
            out["server_user_us_per_msg"] = _per(out["server_user_pct"], out["processed_per_s"])

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        elif self.main_pool is not None:
            await self.main_pool.close()


def _waits(windows: list[dict]) -> dict:
    """How long the server could not run over the windows: what the hypervisor took of the CPUs
    (``cpu_steal``; of the servers' CPUs and of the harness's apart under ``--pin``), and the server's
    main thread's wait for its CPU (``run_delay_ms``), which also counts what that steal misses."""
    pairs = [w["steal"] for w in windows]
    server = targets.SERVER_CPUS

    def total(cpus: set[int] | None) -> float | None:
        each = [steal_ms(before, after, cpus) for before, after in pairs]
        return None if None in each else sum(each)

    delays = [w["run_delay"] for w in windows]
    known = None not in (ms_ for pair in delays for ms_ in pair)
    waited = {"server_run_delay_ms": round(sum(after - before for before, after in delays)) if known else None}
    if server is None:
        return {"host_steal_ms": total(None), **waited}
    harness = set(pairs[0][0]) - server
    return {"host_steal_ms_server_cpus": total(server), "host_steal_ms_harness_cpus": total(harness), **waited}


async def run_load(target: Target, *, duration: float, **kw) -> dict:
    """One timed run of a :class:`Load` (its keyword arguments) against a started target."""
    load = Load(target, **kw)
    try:
        await load.start()
        return await load.summary([await load.window(duration)])
    finally:
        await load.close()


def _r(x: float | None) -> float | None:
    return None if x is None else round(x)


def _per(cpu_pct: float, rate: float | None) -> float | None:
    """Microseconds of the server's CPU per message, from its CPU share and the message rate."""
    return round(cpu_pct * 1e4 / rate, 2) if rate else None


def targets_for(peers: list[str], workdir) -> list[Target]:
    out: list[Target] = [BlynkTarget(workdir / "blynk")]
    for name in peers:
        cls = {"mosquitto": MosquittoTarget, "amqtt": AmqttTarget, "floor": FloorTarget, "cfloor": CFloorTarget}[name]
        why = cls.available()
        if why:
            print(f"# skipping {name}: {why}")
            continue
        out.append(cls(workdir / name))
    return out


def _ids(target: Target, name: str, args) -> tuple[list[str], list[str], list[str], list[str]]:
    """Provision the devices of one run: the main load, the quiet probes, the fresh logins, the
    commands' devices."""
    n_main = args.devices
    n_probe = args.probes if name in ("flood", "telemetry", "command") else 0
    n_new = int(args.duration / 0.25) + 10 if name in ("flood", "telemetry", "command") else 0
    n_cmd = 20 if name == "command" else 0
    ids = target.provision(n_main + n_probe + n_new + n_cmd)
    main, probes = ids[:n_main], ids[n_main : n_main + n_probe]
    return main, probes, ids[n_main + n_probe : n_main + n_probe + n_new], ids[n_main + n_probe + n_new :]


def _telemetry(args, main: list[str], probes: list[str], new_ids: list[str], cmd_ids: list[str]) -> dict:
    """The telemetry and command scenarios' ``Load`` keywords."""
    return {
        "mode": "telemetry",
        "ids": main,
        "rate": args.rate,
        "command_ids": cmd_ids,
        "probes": probes,
        "new_ids": new_ids,
        "generator": args.generator,
        "workers": args.workers,
    }


def _no_command_api(target: Target) -> dict:
    return {
        "target": target.name,
        "mode": "command",
        "status": "pending: the device HTTP API (/external/api/update) is not served on the device port yet",
    }


async def scenario(name: str, args) -> list[dict]:
    """Run scenario ``name`` on blynk-server and each peer; returns one result dict per run."""
    workdir = make_workdir()
    results: list[dict] = []
    try:
        targets = []
        for target in targets_for(args.peers, workdir):
            if name not in getattr(target, "scenarios", (name,)):
                print(f"# skipping {target.name}: it has no {name} scenario")
                continue
            targets.append(target)
        if getattr(args, "rounds", 1) > 1:
            if name not in ("telemetry", "command"):
                raise ValueError(f"--rounds is for telemetry and command, not {name}")
            return await _in_turn(name, targets, args)
        for target in targets:
            runs = [("", args.message_rate)]
            if name == "flood" and target.kind == "blynk" and not args.no_default_limit:
                runs.append((" (default --message-rate 100)", None))
            for label, message_rate in runs:
                main, probes, new_ids, cmd_ids = _ids(target, name, args)
                target.start(message_rate=message_rate)
                try:
                    if name == "command" and target.kind == "blynk" and not target.has_http_api():
                        results.append(_no_command_api(target))
                        continue
                    kw: dict = {"workers": args.workers, "duration": args.duration}
                    if name == "flood":
                        res = await run_load(
                            target, mode="flood", ids=main, probes=probes, new_ids=new_ids, batch=args.batch, **kw
                        )
                    elif name in ("telemetry", "command"):
                        res = await run_load(
                            target, duration=args.duration, **_telemetry(args, main, probes, new_ids, cmd_ids)
                        )
                    elif name == "pingpong":
                        res = await run_load(target, mode="pingpong", ids=main, **kw)
                    elif name == "idle":
                        res = await run_load(target, mode="idle", ids=main, concurrency=args.concurrency, **kw)
                    elif name == "loginstorm":
                        res = await run_load(
                            target, mode="idle", ids=main, concurrency=0, connect_at=time.time() + 4.0, **kw
                        )
                    else:
                        raise ValueError(name)
                    res["target"] = target.name + label
                    res["message_rate_flag"] = message_rate if target.kind == "blynk" else None
                    results.append(res)
                finally:
                    target.stop()
    finally:
        if not os.environ.get("BENCH_KEEP"):  # data dirs and server logs; keep them with BENCH_KEEP=1
            cleanup(workdir)
    return results


async def _in_turn(name: str, targets: list[Target], args) -> list[dict]:
    """``--rounds N``: every target started and its load connected at once, then N windows of
    ``duration / N`` each, the targets' windows in turn, so that a slow or noisy minute of the machine
    falls on all of them alike; one result per target, its windows added up (``Load.summary``)."""
    started: list[Target] = []
    loads: list[Load] = []
    results: list[dict] = []
    try:
        for target in targets:
            main, probes, new_ids, cmd_ids = _ids(target, name, args)
            target.start(message_rate=args.message_rate)
            started.append(target)
            if name == "command" and target.kind == "blynk" and not target.has_http_api():
                results.append(_no_command_api(target))
                continue
            load = Load(target, **_telemetry(args, main, probes, new_ids, cmd_ids))
            loads.append(load)
            await load.start()
        windows: list[list[dict]] = [[] for _ in loads]
        for _ in range(args.rounds):
            for load, done in zip(loads, windows, strict=True):
                done.append(await load.window(args.duration / args.rounds))
        for load, done in zip(loads, windows, strict=True):
            res = await load.summary(done)
            res["message_rate_flag"] = args.message_rate if load.target.kind == "blynk" else None
            results.append(res)
        return results
    finally:
        for load in loads:
            await load.close()
        for target in started:
            target.stop()
