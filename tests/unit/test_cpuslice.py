"""The event loop's scheduler slice (``cpuslice``): asked for by one thread, for that thread alone, on
this kernel; its range checked when the settings load; refused with a reason where there is none."""

from __future__ import annotations

import pytest

from blynk_server import config, cpuslice


def test_the_slice_is_the_requesting_threads_alone(in_thread):
    default = in_thread(cpuslice.thread_slice_ns)
    if default is None:
        pytest.skip("this kernel reports no per-thread slice (Linux 6.12+ on x86_64, aarch64, riscv64)")

    def ask():
        why_not = cpuslice.request_slice(250)
        return why_not, cpuslice.thread_slice_ns(), in_thread(cpuslice.thread_slice_ns)

    why_not, mine, started_by_me = in_thread(ask)
    assert why_not is None
    assert mine == 250_000
    assert started_by_me == default  # SCHED_FLAG_RESET_ON_FORK: later threads keep the kernel's slice
    assert cpuslice.thread_slice_ns() == default  # the test's own thread untouched


def test_elsewhere_the_caller_is_told_why(monkeypatch):
    monkeypatch.setattr(cpuslice.platform, "machine", lambda: "sparc64")
    assert cpuslice.request_slice(100).startswith("no per-thread slice on ")
    assert cpuslice.thread_slice_ns() is None


@pytest.mark.parametrize(
    ("raw", "ok"), [("0", True), ("100", True), ("100000", True), ("99", False), ("100001", False)]
)
def test_the_slice_setting_is_checked_when_the_settings_load(raw, ok):
    env = {"BLYNK_LOOP_SLICE_US": raw}
    if ok:
        assert config.load(env=env).loop_slice_us == int(raw)
    else:
        with pytest.raises(ValueError, match="loop_slice_us must be 0 or 100..100000"):
            config.load(env=env)


def test_the_default_is_a_short_slice():
    assert config.Settings().loop_slice_us == 100
    with pytest.raises(ValueError):
        cpuslice.request_slice(50)
