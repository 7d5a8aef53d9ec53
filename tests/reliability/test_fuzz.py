"""A bounded fuzz run against a live server: random and mutated frame sequences from many connections
(the generator and runner of ``benchmarks/fuzz.py``; its long run is ``python -m benchmarks.fuzz``).

Seeded, so a failure replays: ``BLYNK_FUZZ_SEED`` (default 10), ``BLYNK_FUZZ_FRAMES`` (default 20,000).
It asserts what issue 10 asks of a hostile device: no traceback in the server log, the server stays up
with bounded memory, a control device's pings are answered throughout, and afterwards a write still
survives a restart (the store still flushes).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from .conftest import COUNTER_PIN, write_restart_read

FRAMES = int(os.environ.get("BLYNK_FUZZ_FRAMES", "20000"))
SEED = int(os.environ.get("BLYNK_FUZZ_SEED", "10"))
RSS_GROWTH_MB = 150  # the stated bound: fuzzing may not grow the server by more than this

# 20,000 fuzzed frames then a restart (about 11 s): in the slow run, not the default one.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _load_fuzz() -> ModuleType:
    """benchmarks/ is not an installed package: load the fuzzer module from its file."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz.py"
    spec = importlib.util.spec_from_file_location("blynk_bench_fuzz", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


fz = _load_fuzz()


async def test_fuzzed_frames_leave_the_server_standing(rig, tmp_path) -> None:
    r = rig("--message-rate", "1000000")
    srv = r.srv
    tokens = r.tokens(32)
    control = r.token()
    findings = tmp_path / "fuzz-findings.md"
    res = await fz.fuzz(
        "127.0.0.1",
        srv.port,
        tokens,
        control,
        frames=FRAMES,
        seed=SEED,
        log_path=srv.stderr_path,
        pid=srv.proc.pid,
        connections=8,
        findings=findings,
        reproduce_budget=10.0,
    )
    summary = res.summary()
    print(f"fuzz seed={SEED}: {summary}")
    assert res.server_alive, f"the server died during the fuzz run (seed {SEED}); log tail:\n{srv.stderr()[-3000:]}"
    assert not res.tracebacks, (
        f"{len(res.tracebacks)} distinct traceback(s) (seed {SEED}):\n" + findings.read_text()[:6000]
        if findings.exists()
        else str(res.tracebacks)[:6000]
    )
    assert res.frames >= FRAMES
    assert not res.control_failures, f"the control device failed: {res.control_failures[:5]}"
    assert res.control_pings > 0
    assert res.rss_max_mb - res.rss_start_mb < RSS_GROWTH_MB, summary
    await write_restart_read(srv, control, COUNTER_PIN)
