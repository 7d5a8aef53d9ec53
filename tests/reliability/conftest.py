"""Shared helpers for the hostile-device tests (issue 10): a provisioned server, devices that log in,
ping and write with acknowledgement, a control device that keeps pinging through an attack, the
server's RSS, a "write, restart, read back" check, and the SQLite integrity check.

A Blynk write (``vw``) has no reply. A write counts as *acknowledged* once a PING sent after it on the
same connection is answered: the server handles one connection's frames in order, so the write was
applied before the answer went out. That is what "acknowledged writes are not lost" means here.

The fixtures and helpers below are used by several test modules; keep their names and signatures stable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from blynk_server.devclient import DeviceClient
from blynk_server.testing import rss_bytes
from protocol import Command, Status
from protocol.body import join_fields

DB_NAME = "blynk.sqlite3"

# The standard datastreams of a reliability device (same pins as tests/server/conftest.py).
DATASTREAMS = (
    "pin=V0,name=Switch,type=int,min=0,max=1,sync",
    "pin=V1,name=Temp,type=double,min=-1e12,max=1e12,history,sync",
    "pin=V2,name=Text,type=string",
    "pin=V3,name=Level,type=int,min=0,max=100",
    "pin=V4,name=Where,type=location",
    "pin=V5,name=Mode,type=enum,enum=0|1|2",
    "pin=V6,name=Counter,type=int,min=0,max=1e15",
)
COUNTER_PIN = 6  # an int pin with a wide range: for increasing write sequences


# --- process facts ----------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    return round(rss_bytes(pid) / 2**20, 1)


def tracebacks(text: str) -> list[str]:
    """Each Python traceback in a log, with the 30 lines that follow its first line."""
    lines = text.splitlines()
    return ["\n".join(lines[i : i + 30]) for i, line in enumerate(lines) if "Traceback (most recent call last)" in line]


def assert_no_traceback(srv) -> None:
    """The server's stderr holds no traceback (an unhandled error anywhere is a finding)."""
    found = tracebacks(srv.stderr())
    assert not found, f"{len(found)} traceback(s) in the server log; first:\n{found[0]}"


# --- the data dir -----------------------------------------------------------------------------------


def db_path(data_dir: Path) -> Path:
    return Path(data_dir) / DB_NAME


def integrity_check(data_dir: Path) -> str:
    """``PRAGMA integrity_check`` of the server's database ("ok" when sound); read-only, safe while it runs."""
    conn = sqlite3.connect(f"file:{db_path(data_dir)}?mode=ro", uri=True, timeout=10)
    try:
        return "; ".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall())
    finally:
        conn.close()


def stored_value(data_dir: Path, token: str, pin: str) -> tuple[bytes, int] | None:
    """(value, ts ms) of ``pin`` (e.g. "v6") of the device with ``token`` as the database holds it."""
    conn = sqlite3.connect(f"file:{db_path(data_dir)}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute(
            "SELECT v.value, v.ts FROM pin_values v JOIN devices d ON d.id = v.device_id WHERE d.token = ? AND v.pin = ?",
            (token, pin),
        ).fetchone()
    finally:
        conn.close()
    return None if row is None else (bytes(row[0]), int(row[1]))


# --- provisioning -----------------------------------------------------------------------------------


def provision(srv, template: str, n: int, *, datastreams: tuple[str, ...] = DATASTREAMS) -> list[str]:
    """A template (created when new) and ``n`` devices of it, imported in one CSV; returns their tokens."""
    if template not in _template_ids(srv):
        srv.new_template(template, *datastreams)
    if n == 1:
        return [srv.new_device(template, "rel")]
    csv = srv.data_dir.parent / f"import-{template}-{time.monotonic_ns()}.csv"
    tokens = [os.urandom(16).hex() for _ in range(n)]
    csv.write_text("token,name,template\n" + "".join(f"{t},rel{i},{template}\n" for i, t in enumerate(tokens)))
    srv.cli("device", "import", str(csv))
    return tokens


def _template_ids(srv) -> set[str]:
    """Ids from ``template list`` (one tab-separated line per template, the id first)."""
    out = srv.cli("template", "list", check=False).stdout
    return {line.split("\t", 1)[0] for line in out.splitlines() if line.strip()}


@dataclass
class Rig:
    """A server a test owns, with one template of the standard datastreams and a way to add devices."""

    srv: object
    template: str
    _made: int = 0

    def token(self) -> str:
        self._made += 1
        return self.srv.new_device(self.template, f"rel{self._made}")

    def tokens(self, n: int) -> list[str]:
        return provision(self.srv, self.template, n)

    async def device(self, token: str | None = None, **kw) -> DeviceClient:
        return await connect(self.srv, token or self.token(), **kw)


@pytest.fixture
def rig(make_server) -> Callable[..., Rig]:
    """Factory: ``rig(*flags, env={...})`` starts a fresh server (stopped after the test) with the
    standard template ``TMPLrel``."""

    def make(*flags: str, env: dict | None = None, data_dir: Path | None = None) -> Rig:
        srv = make_server(*flags, env=env, data_dir=data_dir)
        srv.new_template("TMPLrel", *DATASTREAMS)
        return Rig(srv, "TMPLrel")

    return make


# --- devices ----------------------------------------------------------------------------------------


async def connect(srv, token: str, **kw) -> DeviceClient:
    """A logged-in device (HW_LOGIN + info message) on the server's device port."""
    return await DeviceClient.connect("127.0.0.1", srv.port, token, **kw)


async def ping_rtt(client: DeviceClient, timeout: float = 5.0) -> float:
    """One PING round trip in seconds; raises when the answer is not 200 or does not come."""
    t0 = time.perf_counter()
    status = await client.ping(timeout)
    if status != Status.SUCCESS:
        raise AssertionError(f"ping answered with status {status}")
    return time.perf_counter() - t0


async def write_acked(client: DeviceClient, pin: int, value: object, timeout: float = 5.0) -> float:
    """``vw pin value`` then a PING; returns when the server has applied the write (its wall time, s).

    Any frame with the write's msg id before the ping's answer is a rejection and raises.
    """
    wid = client.virtual_write(pin, value)
    pid = client.send(Command.PING)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = await client.recv(max(0.0, deadline - loop.time()))
        if frame[1] == wid and frame[0] == Command.RESPONSE:
            raise AssertionError(f"write v{pin}={value!r} rejected with status {frame[2]}")
        if frame[1] == pid and frame[0] == Command.RESPONSE:
            if frame[2] != Status.SUCCESS:
                raise AssertionError(f"ping after write answered {frame[2]}")
            return time.time()


async def read_pin(client: DeviceClient, pin: int, timeout: float = 5.0) -> bytes | None:
    """The server's value of virtual pin ``pin``, asked with HARDWARE_SYNC (``vr pin``); None when it has
    none (the PING sent after the sync is answered first)."""
    sid = client.send(Command.HARDWARE_SYNC, join_fields("vr", pin))
    pid = client.send(Command.PING)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    value = None
    while True:
        cmd, msg_id, body = await client.recv(max(0.0, deadline - loop.time()))
        if msg_id == sid and cmd == Command.HARDWARE:
            parts = body.split(b"\0", 2)
            if len(parts) == 3 and parts[0] == b"vw" and parts[1] == str(pin).encode():
                value = parts[2]
        elif msg_id == pid and cmd == Command.RESPONSE:
            return value


async def write_restart_read(srv, token: str, pin: int = COUNTER_PIN, value: object | None = None) -> bytes:
    """Write ``value`` (acknowledged), SIGTERM the server (exit 0 expected), start it again on the same
    data dir and read the pin back: the store still flushes. Returns what was read (asserted equal)."""
    value = value if value is not None else int(time.time() * 1000) % 10**12
    dev = await connect(srv, token)
    try:
        await write_acked(dev, pin, value)
    finally:
        await dev.close()
    code = srv.stop()
    assert code == 0, f"server exited {code} on SIGTERM; stderr tail:\n{srv.stderr()[-3000:]}"
    srv.start()
    dev = await connect(srv, token)
    try:
        got = await read_pin(dev, pin)
    finally:
        await dev.close()
    assert got == str(value).encode(), f"v{pin}: wrote {value!r}, read back {got!r} after a restart"
    return got


# --- the server's /metrics --------------------------------------------------------------------------


async def metric(srv, name: str, **labels: str) -> float:
    """One sample of the server's ``/metrics``: ``name`` with exactly ``labels``; 0 when it is absent."""
    selector = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
    url = f"http://{srv.admin_host}:{srv.admin_port}/metrics"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        m = re.search(rf"^{re.escape(name + selector)} (\S+)$", await r.text(), re.M)
    return float(m.group(1)) if m else 0.0


async def wait_metric(srv, name: str, done: Callable[[float], bool], timeout: float = 15.0, **labels: str) -> float:
    """The sample's value once ``done(value)``; fails after ``timeout`` s. The server is another process:
    its counters are what there is to wait on, so they are read again every 50 ms."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done(value := await metric(srv, name, **labels)):
        assert loop.time() < deadline, f"{name}{labels or ''} stayed at {value} for {timeout} s"
        await asyncio.sleep(0.05)
    return value


# --- a control device that keeps pinging during an attack ---------------------------------------------


@dataclass
class ControlStats:
    rtts: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    writes_acked: int = 0
    last_value: int | None = None

    def pct_ms(self, p: float) -> float | None:
        if not self.rtts:
            return None
        s = sorted(self.rtts)
        return round(s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] * 1000, 3)

    @property
    def max_ms(self) -> float | None:
        return round(max(self.rtts) * 1000, 3) if self.rtts else None


class Control:
    """A well-behaved device beside the attack: pings every ``interval`` s (one outstanding) and writes an
    increasing counter to V6 every ``write_every`` pings. ``async with Control(srv, token) as c:``;
    afterwards ``c.stats`` holds RTTs, failures and the last acknowledged value."""

    def __init__(self, srv, token: str, interval: float = 0.05, write_every: int = 5, timeout: float = 5.0) -> None:
        self.srv, self.token, self.interval, self.write_every, self.timeout = srv, token, interval, write_every, timeout
        self.stats = ControlStats()
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.client: DeviceClient | None = None

    async def __aenter__(self) -> Control:
        self.client = await connect(self.srv, self.token)
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        if self.client is not None:
            await self.client.close()

    async def _run(self) -> None:
        n = 0
        assert self.client is not None
        while not self._stop.is_set():
            n += 1
            try:
                if self.write_every and n % self.write_every == 0:
                    value = n
                    t0 = time.perf_counter()
                    await write_acked(self.client, COUNTER_PIN, value, self.timeout)
                    self.stats.rtts.append(time.perf_counter() - t0)
                    self.stats.writes_acked += 1
                    self.stats.last_value = value
                else:
                    self.stats.rtts.append(await ping_rtt(self.client, self.timeout))
            except (TimeoutError, AssertionError, ConnectionError, OSError) as exc:
                self.stats.failures.append(f"{type(exc).__name__}: {exc}"[:200])
                if self.client.closed.is_set() or len(self.stats.failures) > 20:
                    return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)


class RssSampler:
    """Samples a PID's RSS every ``interval`` s in the background: ``async with RssSampler(pid) as s``."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[int] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def max_mb(self) -> float:
        return round(max(self.samples, default=0) / 2**20, 1)

    async def __aenter__(self) -> RssSampler:
        self.samples.append(rss_bytes(self.pid))
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        self.samples.append(rss_bytes(self.pid))

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)
            self.samples.append(rss_bytes(self.pid))


async def gather_bounded(factories: list[Callable[[], Awaitable]], limit: int) -> list:
    """Run coroutine factories with at most ``limit`` at once; exceptions are returned, not raised."""
    sem = asyncio.Semaphore(limit)

    async def one(f: Callable[[], Awaitable]):
        async with sem:
            return await f()

    return await asyncio.gather(*(one(f) for f in factories), return_exceptions=True)
