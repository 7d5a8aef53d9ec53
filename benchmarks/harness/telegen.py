"""The C load generator (``telegen.c``) for the telemetry and ping-pong main loads: build it, run it,
read its answers.

A Python sender costs ~10 µs per message, so at 10,000 devices × 10 msg/s the generator, not the
server, saturated the 2-core machine. ``telegen.c`` sends each message with one ``send()`` from a
prebuilt buffer. The wire bytes still come from ``engine.py`` (login packets, the info frame, the
telemetry frame, the ping), so both protocols and both generators send the same bytes. In ping-pong a
Python sender set the pace of both servers at 1,000 connections (its core at 97-99 %, the server's
below 92 %); ``telegen`` sends each device's next ping as its answer comes.

:class:`Generators` has the interface of ``scenarios.Workers`` (``gather``, ``run``, ``cpu``,
``close``) and answers with the same dicts, so ``run_load`` treats both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.harness import cbuild
from benchmarks.harness.engine import info_frame, login_packet, ping_frame, telemetry_frame
from benchmarks.harness.targets import proc_cpu_seconds

SOURCE = Path(__file__).with_name("telegen.c")
_POOL = ThreadPoolExecutor(max_workers=16)  # blocking readline() on the generators' stdout


def build() -> tuple[Path | None, str]:
    """``telegen``, compiled once per source (``cbuild``); returns (binary, "") or (None, why not)."""
    return cbuild.build(SOURCE)


class Generators:
    """One ``telegen`` process per spec (a spec as ``run_load`` builds it for the Python workers)."""

    def __init__(self, binary: Path, specs: list[dict]) -> None:
        self.procs: list[subprocess.Popen] = []
        self._tmp = Path(tempfile.mkdtemp(prefix="blynk-telegen-run-"))  # 0700: the tokens are secrets
        try:
            for i, spec in enumerate(specs):
                self.procs.append(self._start(binary, spec, self._tmp / f"logins-{i}"))
        except BaseException:
            self._kill()
            raise

    @staticmethod
    def _start(binary: Path, spec: dict, logins: Path) -> subprocess.Popen:
        kind = spec["kind"]
        pingpong = spec["mode"] == "pingpong"
        logins.write_text("".join(login_packet(kind, ident).hex() + "\n" for ident in spec["ids"]))
        argv = [
            str(binary),
            spec["host"],
            str(spec["port"]),
            kind,
            str(logins),
            repr(float(spec["rate"])),
            "0",  # the duration comes with "go"
            (ping_frame(kind) if pingpong else telemetry_frame(kind)).hex(),
            "--concurrency",
            str(spec.get("concurrency") or 0),
            "--drain",
            repr(float(spec.get("drain", 1.0))),
            "--login-timeout",
            repr(float(spec.get("login_timeout", 30))),
            "--pingpong",
            "1" if pingpong else "0",
        ]
        if kind == "blynk":
            argv += ["--info", info_frame().hex()]
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    async def _line(self, proc: subprocess.Popen, timeout: float) -> dict:
        loop = asyncio.get_running_loop()
        try:
            line = await asyncio.wait_for(loop.run_in_executor(_POOL, proc.stdout.readline), timeout)
        except TimeoutError:
            raise TimeoutError("telegen did not answer") from None
        if not line:
            raise RuntimeError(f"telegen exited with {proc.wait()}")
        return json.loads(line)

    async def gather(self, timeout: float = 120) -> list[dict]:
        """The login summaries (``Worker.connect_all``'s keys); the login files go once they are read."""
        try:
            out = list(await asyncio.gather(*(self._line(p, timeout) for p in self.procs)))
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
        return out

    async def run(self, duration: float) -> list[dict]:
        """One paced window; answers with ``Worker.run``'s keys."""
        for p in self.procs:
            p.stdin.write(f"go {duration!r}\n")
            p.stdin.flush()
        res = await asyncio.gather(*(self._line(p, duration + 60) for p in self.procs))
        return [_as_worker_result(r) for r in res]

    def cpu(self) -> float:
        total = 0.0
        for p in self.procs:
            with contextlib.suppress(OSError):  # already gone
                total += proc_cpu_seconds(p.pid)
        return total

    async def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(OSError, ValueError):
                p.stdin.write("close\n")
                p.stdin.close()
        loop = asyncio.get_running_loop()
        for p in self.procs:
            try:
                await loop.run_in_executor(_POOL, p.wait, 30)
            except subprocess.TimeoutExpired:
                pass
        self._kill()

    def _kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()  # our own child, by its handle
                p.wait(10)
            with contextlib.suppress(OSError, ValueError):
                p.stdout.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


def _as_worker_result(r: dict) -> dict:
    """telegen's result line in the shape of ``Worker.run``'s dict (JSON keys are strings)."""
    return {
        "sent": r["sent"],
        "elapsed": r["elapsed"],
        "pongs": r["pongs"],
        "rtts": r["rtts"],
        "dropped": r["dropped"],
        "bad_status": {int(k): v for k, v in r["bad_status"].items()},
        "cmd_lat": [],
        "hw_received": r["hw_received"],
        "sys_samples": [],
        "new_login_lat": [],
        "new_login_errors": 0,
        "skipped": r["skipped"],
        "alive": r["alive"],
        "blocked": r["blocked"],
    }
