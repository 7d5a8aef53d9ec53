"""A short scheduler slice for the event loop's thread, so that it takes its core back as soon as it wakes.

Linux since 6.6 (EEVDF) lets a running thread finish its slice before one that wakes after it may run,
whatever their nice values. Pinned to one core at 10,000 devices x 2 msg/s, the store writer woke for
each flush and ran 3.5-5.5 ms at a stretch, nice 10 and all, while the event loop, woken by device
reads, waited runnable for up to 4.9 ms (``perf sched timehist``; benchmarks/RESULTS.md, issue 12 step
14). Since Linux 6.12 a thread may ask for its own slice (``sched_setattr``'s ``sched_runtime``, 0.1 to
100 ms), and one that wakes with a shorter slice than the running thread's preempts it (the kernel's
PREEMPT_SHORT). Any thread may ask this for itself; no privilege is needed.

``SCHED_FLAG_RESET_ON_FORK`` keeps the threads this one starts later at the kernel's default slice.
Elsewhere (another system, an older kernel, a seccomp filter) nothing changes and the caller is told why.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys

MIN_SLICE_US = 100  # the kernel clamps a requested slice to 0.1..100 ms
MAX_SLICE_US = 100_000
DEFAULT_SLICE_US = 100  # the event loop's (``loop_slice_us``) and the load harness's probes'

# sched_setattr / sched_getattr by architecture (asm-generic numbers on arm64 and riscv).
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275), "riscv64": (274, 275)}
_ATTR = struct.Struct("IIQiIQQQ")  # struct sched_attr as of Linux 3.14 (SCHED_ATTR_SIZE_VER0, 48 bytes)
SCHED_FLAG_RESET_ON_FORK = 0x01


def check_slice_us(us: int) -> None:
    """The range of ``loop_slice_us``: 0 (the kernel's default) or what the kernel grants."""
    if us != 0 and not MIN_SLICE_US <= us <= MAX_SLICE_US:
        raise ValueError(f"loop_slice_us must be 0 or {MIN_SLICE_US}..{MAX_SLICE_US}, not {us}")


def _syscalls() -> tuple[int, int] | None:
    return _SYSCALLS.get(platform.machine()) if sys.platform == "linux" else None


def _syscall(number: int, *args) -> int:
    """``syscall(2)`` with every argument a C long, as the kernel takes them; -1 on failure (errno set)."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(ctypes.c_long(number), *(a if isinstance(a, ctypes.Array) else ctypes.c_long(a) for a in args))


def thread_slice_ns() -> int | None:
    """The calling thread's slice in nanoseconds as the kernel reports it; None where it reports none
    (a kernel before 6.12 says 0 for an ordinary thread, other systems have no such call)."""
    numbers = _syscalls()
    if numbers is None:
        return None
    buf = ctypes.create_string_buffer(_ATTR.size)
    if _syscall(numbers[1], 0, buf, _ATTR.size, 0) != 0:
        return None
    return _ATTR.unpack(buf.raw)[5] or None


def request_slice(us: int) -> str | None:
    """Ask for a ``us`` microsecond slice for the calling thread, its policy and nice value kept.
    Returns None once the kernel reports the slice granted, else why it is not."""
    check_slice_us(us)
    numbers = _syscalls()
    if numbers is None:
        return f"no per-thread slice on {sys.platform}/{platform.machine()}"
    policy = os.sched_getscheduler(0)
    if policy not in (os.SCHED_OTHER, os.SCHED_BATCH, os.SCHED_IDLE):
        return "the thread has a real-time policy, which preempts ordinary threads anyway"
    nice = os.getpriority(os.PRIO_PROCESS, 0)  # on Linux: this thread's
    attr = ctypes.create_string_buffer(
        _ATTR.pack(_ATTR.size, policy, SCHED_FLAG_RESET_ON_FORK, nice, 0, us * 1000, 0, 0)
    )
    if _syscall(numbers[0], 0, attr, 0) != 0:
        return f"sched_setattr: {os.strerror(ctypes.get_errno())}"
    granted = thread_slice_ns()
    if granted != us * 1000:
        return f"the kernel ({platform.release()}) keeps its own slice (custom slices need Linux 6.12+)"
    return None
