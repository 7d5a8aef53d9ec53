"""Shared fixtures: a real ``blynk-server`` process on ephemeral loopback ports, and its CLI.

The server runs as a subprocess from a temporary working directory, so what is tested is the
installed package, not the in-tree sources.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

from blynk_server.testing import run_cli, start_server
from protocol import Command, Status


class ServerProcess:
    """A running server: its ports, data dir, output, and CLI on the same data dir."""

    def __init__(self, data_dir: Path, *extra: str, env: dict | None = None, preexec_fn=None) -> None:
        self.data_dir = data_dir
        self.extra = extra
        self.env = {**os.environ, **(env or {})}
        self.preexec_fn = preexec_fn  # run in the child before exec (resource limits)
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.stderr_path = data_dir.parent / f"{data_dir.name}-stderr.log"

    def start(self, timeout: float = 20.0) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.lines = []
        started = start_server(
            self.data_dir,
            *self.extra,
            stderr=self.stderr_path,
            cwd=self.data_dir.parent,
            env=self.env,
            timeout=timeout,
            preexec_fn=self.preexec_fn,
        )
        self.proc, self.lines = started.proc, started.lines
        (self.host, self.port), (self.admin_host, self.admin_port) = started.ready.hardware, started.ready.admin
        self.tls_port = started.ready.tls[1] if started.ready.tls else None
        return self

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def api_key(self) -> str:
        return (self.data_dir / "admin-api-key").read_text().strip()

    @property
    def quickstart_token(self) -> str | None:
        for line in self.lines:
            m = re.search(r'BLYNK_AUTH_TOKEN "([^"]+)"', line)
            if m:
                return m.group(1)
        return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the server and wait for it; returns its exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            self.proc = None
        # The store refuses SQLite on the event loop's thread (LoopThreadError): no test may have made the
        # server do it, even where the error was caught and logged.
        assert "LoopThreadError" not in self.stderr(), self.stderr()[-4000:]
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_cli(self.data_dir, *args, check=check)

    def new_template(self, tid: str, *datastreams: str) -> dict:
        args = ["template", "create", "--id", tid, "--name", tid]
        for ds in datastreams:
            args += ["--datastream", ds]
        return json.loads(self.cli(*args).stdout)

    def declare_events(self, template: str, *codes: str, **fields: object) -> None:
        """Declare event codes on ``template`` through the admin API (devices may log only the codes
        their template declares); declaring one again replaces it."""
        for code in codes:
            request = urllib.request.Request(
                f"http://{self.admin_host}:{self.admin_port}/api/templates/{quote(template, safe='')}"
                f"/events/{quote(code, safe='')}",
                data=json.dumps(fields).encode(),
                headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
                method="PUT",
            )
            urllib.request.urlopen(request, timeout=10).close()

    def new_device(self, template: str, name: str = "dev") -> str:
        return self.cli("device", "create", "--template", template, "--name", name).stdout.strip()

    def new_devices(self, template: str, n: int, name: str = "dev") -> list[str]:
        """``n`` devices of ``template`` in one ``device import`` (one CLI run, not ``n``); their tokens."""
        tokens = [os.urandom(16).hex() for _ in range(n)]
        csv = self.data_dir.parent / f"import-{template}-{next(_counter)}.csv"
        csv.write_text("token,name,template\n" + "".join(f"{t},{name}{i},{template}\n" for i, t in enumerate(tokens)))
        self.cli("device", "import", str(csv))
        return tokens


class DevicePool:
    """Fresh devices of one template on a shared server, provisioned ``batch`` at a time: a test that
    needs its own device takes one without two CLI runs of its own."""

    def __init__(self, srv: ServerProcess, datastreams: tuple[str, ...], batch: int = 16) -> None:
        self.srv, self.batch = srv, batch
        self.template = f"P{os.getpid()}x{next(_counter)}"
        srv.new_template(self.template, *datastreams)
        self._free: list[str] = []

    def take(self) -> str:
        if not self._free:
            self._free = self.srv.new_devices(self.template, self.batch)
        return self._free.pop()


@pytest.fixture
def keep_umask():
    """The CLI's main() makes the process's umask private; give the test process its own back."""
    umask = os.umask(0o077)
    yield
    os.umask(umask)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server per test module (fast); tests provision their own templates and devices."""
    srv = ServerProcess(tmp_path_factory.mktemp("srv") / "data").start()
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def device_pools(server):
    """``device_pools(datastreams)``: the module's :class:`DevicePool` of those datastreams on ``server``."""
    pools: dict[tuple[str, ...], DevicePool] = {}

    def get(datastreams: tuple[str, ...]) -> DevicePool:
        if datastreams not in pools:
            pools[datastreams] = DevicePool(server, datastreams)
        return pools[datastreams]

    return get


@pytest.fixture
def make_server(tmp_path):
    """Factory for servers a test owns (restarts, special flags); all are stopped afterwards."""
    started: list[ServerProcess] = []

    def make(*extra: str, data_dir: Path | None = None, env: dict | None = None, preexec_fn=None) -> ServerProcess:
        srv = ServerProcess(data_dir or tmp_path / f"data{len(started)}", *extra, env=env, preexec_fn=preexec_fn)
        srv.start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.kill()


def pytest_sessionfinish(session, exitstatus):
    """In CI, fail the run if the tests did not exercise the framer they were meant to (an in-tree
    ``protocol/`` shadowing the installed one silently turns every Cython test into a skip)."""
    expected = os.environ.get("BLYNK_EXPECT_IMPLEMENTATION")
    if not expected:
        return
    import protocol
    from blynk_server import domain

    if expected != protocol.IMPLEMENTATION:
        print(
            f"\nERROR: tests ran on the {protocol.IMPLEMENTATION} framer from {protocol.__file__}, expected {expected}"
        )
        session.exitstatus = 1
    if expected != domain.PINWRITE_IMPLEMENTATION:
        print(f"\nERROR: tests ran on the {domain.PINWRITE_IMPLEMENTATION} pin writer, expected {expected}")
        session.exitstatus = 1


@pytest.fixture
def cert(tmp_path):
    """A self-signed certificate for 127.0.0.1: (cert path, key path)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    key, crt = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return crt, key


_counter = iter(range(1, 10**9))


@pytest.fixture
def unique():
    """A unique id for templates and names inside a shared server."""
    return f"T{os.getpid()}x{next(_counter)}"


async def _until_ping(client, timeout: float = 5.0) -> list[tuple]:
    """Send a PING and return every frame that arrives before its answer.

    The server handles one connection's frames in order, so when the answer comes everything sent
    before the PING has been handled, and anything it sent back is in the list: this is how a test
    waits for "the server has done it, and said nothing" instead of sleeping through a quiet window.
    """
    ping_id = client.send(Command.PING)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    before = []
    while True:
        frame = await client.recv(max(0.0, deadline - loop.time()))
        if frame[0] == Command.RESPONSE and frame[1] == ping_id:
            assert frame[2] == Status.SUCCESS, f"PING answered {frame[2]}"
            return before
        before.append(frame)


@pytest.fixture
def until_ping():
    """``await until_ping(client)``: the frames the server sends before answering a PING sent now."""
    return _until_ping


def _in_thread(fn):
    """``fn()`` run in a new thread, its result returned (what holds per thread, as a scheduler slice)."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(10)
    assert not t.is_alive()
    return out[0]


@pytest.fixture
def in_thread():
    """``in_thread(fn)``: ``fn()`` run in a thread of its own, its result returned."""
    return _in_thread
