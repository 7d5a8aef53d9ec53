"""The server process's event loop thread runs with the short scheduler slice it asks for
(``loop_slice_us``), its other threads with the kernel's; the start-up log says which it got."""

from __future__ import annotations

from pathlib import Path

import pytest

from blynk_server import cpuslice


def _slices(pid: int) -> dict[str, int]:
    """Each thread's ``se.slice`` (ns) by name, as the kernel shows it in /proc."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        name = (task / "comm").read_text().strip()
        for line in (task / "sched").read_text().splitlines():
            if line.startswith("se.slice"):
                out[f"{name}:{task.name}"] = int(line.split(":")[1])
    return out


def test_the_loop_thread_has_the_short_slice_and_says_so(make_server, in_thread):
    default = in_thread(cpuslice.thread_slice_ns)
    srv = make_server()
    log = srv.stderr()
    if default is None:
        assert "event loop thread keeps the kernel's scheduler slice: " in log
        pytest.skip("this kernel has no per-thread slice (Linux 6.12+ on x86_64, aarch64, riscv64)")
    assert "event loop thread: a 100 microsecond scheduler slice" in log
    slices = _slices(srv.proc.pid)
    loop = slices.pop(f"{Path(f'/proc/{srv.proc.pid}/comm').read_text().strip()}:{srv.proc.pid}")
    assert loop == 100_000
    assert slices and set(slices.values()) == {default}, slices  # the store writer and the rest: the kernel's


def test_a_slice_of_0_leaves_the_kernels(make_server, in_thread):
    default = in_thread(cpuslice.thread_slice_ns)
    srv = make_server(env={"BLYNK_LOOP_SLICE_US": "0"})
    assert "scheduler slice" not in srv.stderr()
    if default is not None:
        assert set(_slices(srv.proc.pid).values()) == {default}


def test_a_slice_out_of_range_is_refused_before_anything_starts(tmp_path):
    from blynk_server.testing import ServerStartError, start_server

    with pytest.raises(ServerStartError) as exc:
        start_server(tmp_path / "data", stderr=tmp_path / "err.log", env={"BLYNK_LOOP_SLICE_US": "5"}, timeout=20)
    assert "loop_slice_us must be 0 or 100..100000" in str(exc.value)
