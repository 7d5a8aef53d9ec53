"""Smoke test of the load harness: it runs, devices log in, and it counts right (never a speed assertion).

Small N for a couple of seconds against each target: every frame the harness says it sent must be
counted by the server's own side (``/metrics`` for blynk-server, ``$SYS`` for the MQTT brokers)
after a quiet period. The telemetry load runs once on each generator: the C one (``telegen.c``,
skipped with the reason when it cannot be built) and the Python senders. The MQTT peers skip with the
reason when they are not installed. Ping-pong runs on both generators too, and so do the floors (a
bare uvloop server, and the same in C) under telemetry.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# benchmarks/ is not an installed package. Expose it alone, through a directory holding a link to it, on
# sys.path and PYTHONPATH (the harness's worker processes import it too). Putting the checkout itself
# there would make `import protocol` find the uncompiled in-tree copy instead of the installed one.
_LINKS = Path(tempfile.mkdtemp(prefix="blynk-bench-path-"))
atexit.register(shutil.rmtree, _LINKS, ignore_errors=True)  # made at collection: every run made one and left it
(_LINKS / "benchmarks").symlink_to(ROOT / "benchmarks", target_is_directory=True)
sys.path.append(str(_LINKS))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_LINKS), os.environ.get("PYTHONPATH", "")) if p)

from benchmarks.harness import cbuild, scenarios, telegen  # noqa: E402
from benchmarks.harness.scenarios import _sys_value, run_load  # noqa: E402
from benchmarks.harness.targets import (  # noqa: E402
    AmqttTarget,
    BlynkTarget,
    CFloorTarget,
    FloorTarget,
    MosquittoTarget,
    cpu_steal,
    run_delay_ms,
    steal_ms,
)

# A load run against three servers (about 20 s): in the slow run, not the default one.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]
GENERATORS = pytest.mark.parametrize("generator", ["c", "python"])


def _need(generator: str) -> None:
    if generator == "c":
        binary, why = telegen.build()
        if binary is None:
            pytest.skip(f"telegen: {why}")


@GENERATORS
def test_blynk_counts_and_probes(tmp_path, generator):
    _need(generator)
    target = BlynkTarget(tmp_path / "blynk")
    ids = target.provision(30)
    target.start()
    try:
        res = asyncio.run(
            run_load(
                target,
                mode="telemetry",
                ids=ids[:20],
                rate=20,
                duration=1.5,
                workers=1,
                probes=ids[20:25],
                new_ids=ids[25:],
                generator=generator,
            )
        )
        assert res["generator"] == generator
        assert res["logged_in"] == 20 and res["login_errors"] == 0
        assert res["alive"] == 20 and res["dropped_connections"] == 0 and res["bad_status"] == {}
        assert res["sent"] > 0
        assert res["processed_total"] == res["sent"], res  # sent == processed, read from /metrics
        assert res["metrics_source"] == "/metrics"
        assert res["probe_pings"] > 0 and res["probe_p99_ms"] is not None
        assert res["new_logins"] >= 1 and res["new_login_errors"] == 0
        # the timing workers say how they are scheduled (fifo where permitted, else the slice or why not)
        assert res["instrument_scheduling"].startswith(("fifo", "slice 100 us", "default: ")), res
        assert res["host_steal_ms"] is None or res["host_steal_ms"] >= 0  # not pinned: all CPUs' steal
        assert res["server_run_delay_ms"] is None or res["server_run_delay_ms"] >= 0
        pp = asyncio.run(run_load(target, mode="pingpong", ids=ids[:10], duration=1.0, workers=1, generator=generator))
        assert pp["generator"] == generator
        assert pp["logged_in"] == 10 and pp["alive"] == 10
        assert set(pp["bad_status"]) <= {1}  # QUOTA_LIMIT: this server keeps the default flood limit
        assert pp["pongs_per_s"] > 0 and pp["rtt_p50_ms"] <= pp["rtt_p99_ms"]
    finally:
        target.stop()


def test_steal_is_counted_by_cpu():
    before = {0: 10.0, 1: 20.0}
    after = {0: 10.25, 1: 21.0, 2: 5.0}  # a CPU that came online in between is not counted
    assert steal_ms(before, after, None) == 1250
    assert steal_ms(before, after, {0}) == 250 and steal_ms(before, after, {1}) == 1000
    assert steal_ms({}, after, None) is None  # no /proc/stat
    now = cpu_steal()
    assert all(isinstance(c, int) and s >= 0 for c, s in now.items())


def test_run_delay_is_the_main_threads_wait_for_a_cpu():
    """``/proc/<pid>/schedstat``'s second field: it never goes back, and a thread that waits behind a
    busy one on a single CPU adds to it."""
    if run_delay_ms(os.getpid()) is None:
        pytest.skip("no /proc/<pid>/schedstat on this kernel")
    # A child pinned to one CPU beside a busy sibling: its waits for that CPU are counted.
    code = (
        "import os, time, multiprocessing as mp\n"
        "cpu = min(os.sched_getaffinity(0)); os.sched_setaffinity(0, {cpu})\n"
        "def spin():\n"
        "    end = time.monotonic() + 0.5\n"
        "    while time.monotonic() < end: pass\n"
        "p = mp.get_context('fork').Process(target=spin); p.start()\n"
        "end = time.monotonic() + 0.5\n"
        "while time.monotonic() < end: pass\n"
        "p.join(); print(open('/proc/self/schedstat').read().split()[1])\n"
    )
    before = run_delay_ms(os.getpid())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert int(out.stdout) > 0  # two spinners on one CPU: each waited for the other
    assert run_delay_ms(os.getpid()) >= before
    assert run_delay_ms(2**22 + 12345) is None  # no such process


@GENERATORS
@pytest.mark.parametrize("cls", [MosquittoTarget, AmqttTarget], ids=["mosquitto", "amqtt"])
def test_mqtt_peer_counts(tmp_path, cls, generator):
    why = cls.available()
    if why:
        pytest.skip(why)
    _need(generator)
    target = cls(tmp_path / cls.name)
    ids = target.provision(10)
    target.start()
    try:

        async def go() -> tuple[dict, float | None]:
            res = await run_load(
                target, mode="telemetry", ids=ids, rate=20, duration=1.5, workers=1, generator=generator
            )
            return res, await _sys_value(None, target)

        res, processed = asyncio.run(go())
        assert res["generator"] == generator
        assert res["logged_in"] == 10 and res["login_errors"] == 0 and res["alive"] == 10
        assert res["sent"] > 0
        assert processed == res["sent"], (processed, res)  # the broker's own $SYS count
        pp = asyncio.run(run_load(target, mode="pingpong", ids=ids, duration=1.0, workers=1, generator=generator))
        assert pp["generator"] == generator and pp["alive"] == 10
        assert pp["pongs_per_s"] > 0 and pp["rtt_p50_ms"] <= pp["rtt_p99_ms"]
    finally:
        target.stop()


@GENERATORS
@pytest.mark.parametrize("floor", [FloorTarget, CFloorTarget])
def test_the_floors_count_telemetry(tmp_path, generator, floor):
    _need(generator)
    why = floor.available()
    if why:
        pytest.skip(f"{floor.name}: {why}")
    target = floor(tmp_path / floor.name)
    ids = target.provision(10)
    target.start()
    try:
        res = asyncio.run(
            run_load(target, mode="telemetry", ids=ids, rate=20, duration=1.5, workers=1, generator=generator)
        )
        assert res["logged_in"] == 10 and res["alive"] == 10 and res["sent"] > 0
        assert res["processed_total"] == res["sent"], res  # the floor's own count file
        assert res["metrics_source"] == "floor count file"
    finally:
        target.stop()


def test_without_a_compiler_the_python_senders_run(monkeypatch, capsys):
    monkeypatch.setattr(cbuild, "_built", {})  # forget this process's builds
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setattr(scenarios, "_NOTED", set())
    assert scenarios.main_generator("telemetry", "auto") == ("python", None)
    assert "# telegen: /nonexistent/cc failed" in capsys.readouterr().out  # the note says why
    with pytest.raises(RuntimeError, match="telegen"):
        scenarios.main_generator("telemetry", "c")  # asked for C: no silent fallback
    assert scenarios.main_generator("pingpong", "auto") == ("python", None)
    assert scenarios.main_generator("flood", "auto") == ("python", None)  # telemetry and ping-pong have a C one


@GENERATORS
@pytest.mark.parametrize(
    ("peer", "name"), [(FloorTarget, "telemetry"), (MosquittoTarget, "command")], ids=["floor", "mosquitto"]
)
def test_windows_in_turn_add_up(peer, name, generator):
    """``--rounds``: both servers loaded at once, their windows in turn; each one's counts add up over
    its windows (every frame sent counted by the server), and every window's probes are there."""
    why = peer.available()
    if why:
        pytest.skip(why)
    _need(generator)
    args = argparse.Namespace(
        devices=20,
        duration=2.0,
        rounds=2,
        rate=200,  # 8,000 messages a target: its CPU well over /proc's 10 ms tick (800 read 0.0 once)
        probes=5,
        workers=1,
        generator=generator,
        peers=[peer.name],
        message_rate=1e9,
        no_default_limit=True,
    )
    results = asyncio.run(scenarios.scenario(name, args))
    assert [r["target"] for r in results] == ["blynk-server", peer.name]
    for res in results:
        assert res["rounds"] == 2 and res["logged_in"] == 20 and res["alive"] == 20, res
        assert res["sent"] > 0 and res["sent_equals_processed"] is True, res
        assert res["server_cpu_us_per_msg"] > 0
        assert res["probe_pings"] > 0 and res["new_logins"] >= 2 and res["new_login_errors"] == 0
        # each window's own tails, the pooled maximum among them
        assert len(res["windows"]) == 2 and all("host_steal_ms" in w for w in res["windows"]), res
        # the main thread's wait for its CPU: the windows' own add up to the run's
        delays = [w["server_run_delay_ms"] for w in res["windows"]]
        if None not in delays:
            assert min(delays) >= 0 and abs(sum(delays) - res["server_run_delay_ms"]) <= 2, res
        assert max(w["probe_max_ms"] for w in res["windows"]) == res["probe_max_ms"]
    if name == "command":
        assert all(all(w["command_p99_ms"] is not None for w in r["windows"]) for r in results), results
        assert all(r["commands_delivered"] == r["commands_sent"] > 0 for r in results), results
