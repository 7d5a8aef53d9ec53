"""Harnesses that drive the real Blynk client libraries against the server subprocess.

Each Python client runs in its own thread with a bounded loop; calls into the client (virtual_write,
sync) are queued and run on that thread between two turns of its loop, so the library is only ever
touched from one thread. Everything the client receives and logs is recorded for the assertions.
The Node client runs as a subprocess (node_client.js) that takes JSON commands on stdin and prints
JSON lines of what happened.
"""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from blynk_server.devclient import DeviceClient
from protocol import Command, Status
from protocol.body import join_fields

HERE = Path(__file__).parent
NODE_MODULE = HERE / "node_modules" / "blynk-library" / "blynk.js"
TEMPLATE = ("pin=V1,type=int,min=0,max=100,sync", "pin=V2,type=string,sync", "pin=V3,type=string")


def wait_for(predicate: Callable[[], object], timeout: float, what: str, step: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def stored_values(srv, token: str) -> dict:
    """The device's values as the CLI reads them from the store (after the write-behind flush)."""
    shown = json.loads(srv.cli("device", "show", token).stdout)
    values = shown.get("values", {})
    out = {}
    for key, value in values.items():
        out[key] = value.get("value") if isinstance(value, dict) else value
    return out


def wait_stored(srv, token: str, pin: str, value: str, timeout: float = 5.0) -> None:
    wait_for(lambda: str(stored_values(srv, token).get(pin)) == value, timeout, f"{pin}={value} in the store")


async def bridge_write(srv, target_token: str, pin: int, value: str, sender_token: str) -> None:
    """Write ``value`` to the target's V``pin`` the way another device does: a BRIDGE. The server
    stores it and forwards it to the target as BRIDGE (15) ``vw pin value``."""
    c = await DeviceClient.connect("127.0.0.1", srv.port, sender_token)
    try:
        reply = await c.request(Command.BRIDGE, join_fields(64, "i", target_token))
        assert reply[2] == Status.SUCCESS, reply
        c.send(Command.BRIDGE, join_fields(64, "vw", pin, value))
        # A failed delivery is answered (DEVICE_NOT_IN_NETWORK); success is silent.
        extra = await c.silence(0.3)
        assert not [f for f in extra if f[0] == Command.RESPONSE and f[2] != Status.SUCCESS], extra
    finally:
        await c.close()


@pytest.fixture
def provision(server, unique):
    """(server, target token, sender token): a device for the client under test and one to bridge from."""

    def make() -> tuple:
        server.new_template(unique, *TEMPLATE)
        return server, server.new_device(unique, "dut"), server.new_device(unique, "sender")

    return make


class PyClientRunner:
    """Runs a Python Blynk client in a thread; subclasses create it and say how to turn its loop."""

    name = "?"

    def __init__(self, token: str, port: int, heartbeat: int = 10) -> None:
        self.token = token
        self.port = port
        self.heartbeat = heartbeat
        self.events: queue.Queue = queue.Queue()  # ("write", pin, values) and ("frame", cmd, id, len)
        self.received: list[tuple] = []  # every frame the client parsed: (cmd, msg_id, len)
        self.sent: list[tuple] = []  # frames it sent (where the library lets us see them)
        self.logs: list[str] = []
        self.error: BaseException | None = None
        self._calls: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.blynk = None

    def log(self, *args) -> None:
        self.logs.append(" ".join(map(str, args)))

    def on_write(self, pin: int, values: list) -> None:
        self.events.put(("write", pin, list(values)))

    def start(self) -> PyClientRunner:
        ready = threading.Event()

        def main() -> None:
            try:
                self.blynk = self.create()
                ready.set()
                while not self._stop.is_set():
                    while True:
                        try:
                            fn = self._calls.get_nowait()
                        except queue.Empty:
                            break
                        fn()
                    self.turn()
            except BaseException as exc:  # noqa: BLE001 - reported to the test
                self.error = exc
            finally:
                ready.set()
                self.close_socket()

        self._thread = threading.Thread(target=main, name=f"{self.name}-runner", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the client's thread, between two turns of its loop."""
        self._calls.put(fn)

    def next_write(self, pin: int, timeout: float = 5.0) -> list:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name}: no write to V{pin} within {timeout}s; logs: {self.logs[-20:]}")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event[0] == "write" and event[1] == pin:
                return event[2]

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.close_socket()

    # --- per library ---

    def create(self):
        raise NotImplementedError

    def turn(self) -> None:
        raise NotImplementedError

    def connected(self) -> bool:
        raise NotImplementedError

    def close_socket(self) -> None:
        raise NotImplementedError


class BlynklibRunner(PyClientRunner):
    """PyPI blynklib 0.2.6: LOGIN (2), info, and it waits for the info's ACK; one frame per recv()."""

    name = "blynklib"

    def create(self):
        import blynklib

        runner = self

        class Recording(blynklib.Blynk):
            def process(self, msg_type, msg_id, msg_len, msg_args):
                runner.received.append((msg_type, msg_id, msg_len))
                return super().process(msg_type, msg_id, msg_len, msg_args)

            def send(self, data):
                if data and len(data) >= 5:
                    runner.sent.append((data[0], int.from_bytes(data[1:3], "big"), int.from_bytes(data[3:5], "big")))
                return super().send(data)

        b = Recording(self.token, server="127.0.0.1", port=self.port, heartbeat=self.heartbeat, log=self.log)
        b._events = {}  # the library keeps handlers in a class attribute: one dict per instance here
        b.RECONNECT_SLEEP = 0.2  # stop() must not wait a whole second inside disconnect()
        for pin in (1, 2, 3):

            @b.handle_event(f"write V{pin}")
            def _write(pin_num, values):
                runner.on_write(pin_num, values)

        self.connects = 0

        @b.handle_event("connect")
        def _connected():
            runner.connects += 1

        return b

    def turn(self) -> None:
        b = self.blynk
        if not b.connected():
            b.connect(timeout=1)  # bounded: run() would retry for up to 30 s
        else:
            b.run()

    def connected(self) -> bool:
        return self.blynk is not None and self.blynk.connected()

    def close_socket(self) -> None:
        sock = getattr(self.blynk, "_socket", None)
        if sock is not None:
            sock.close()


class BlynkLibRunner(PyClientRunner):
    """PyPI blynk-library-python 0.2.0 (module BlynkLib): HW_LOGIN (29), connects in the constructor."""

    name = "BlynkLib"

    def log(self, *args) -> None:
        super().log(*args)
        # The library logs every frame: ('>', cmd, id, '|', ...) in and ('<', cmd, id, '|', ...) out.
        if len(args) >= 4 and args[0] in (">", "<") and args[3] == "|":
            rest = args[4:]
            frame = (args[1], args[2], rest)
            (self.received if args[0] == ">" else self.sent).append(frame)

    def create(self):
        import BlynkLib

        runner = self
        b = BlynkLib.Blynk(self.token, server="127.0.0.1", port=self.port, heartbeat=self.heartbeat, log=self.log)
        self.connects = 0

        @b.ON("connected")
        def _connected(*args, **kwargs):
            runner.connects += 1

        for pin in (1, 2, 3):

            @b.ON(f"V{pin}")
            def _write(values, pin=pin):
                runner.on_write(pin, values)

        return b

    def turn(self) -> None:
        self.blynk.run()

    def connected(self) -> bool:
        import BlynkLib

        return self.blynk is not None and self.blynk.state == BlynkLib.CONNECTED

    def close_socket(self) -> None:
        conn = getattr(self.blynk, "conn", None)
        if conn is not None:
            conn.close()


@pytest.fixture
def py_clients():
    """Start Python client runners; all are stopped (and their sockets closed) afterwards."""
    started: list[PyClientRunner] = []

    def start(cls, token: str, port: int, heartbeat: int = 10) -> PyClientRunner:
        runner = cls(token, port, heartbeat).start()
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.stop()


class NodeClient:
    """node_client.js in a subprocess: JSON commands in, JSON events out."""

    def __init__(self, token: str, port: int) -> None:
        self.proc = subprocess.Popen(
            ["node", str(HERE / "node_client.js"), "127.0.0.1", str(port), token],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=HERE,
        )
        self.events: list[dict] = []
        self._lock = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue  # the library's own console.log output
            with self._lock:
                self.events.append(json.loads(line))
                self._lock.notify_all()

    def send(self, **command) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def wait(
        self, predicate: Callable[[dict], bool], timeout: float = 5.0, what: str = "event", start: int = 0
    ) -> dict:
        """The first event from index ``start`` on that matches ``predicate``."""
        deadline = time.monotonic() + timeout
        seen = start
        with self._lock:
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"node: no {what} within {timeout}s; events: {self.events[-20:]}")
                self._lock.wait(left)

    def frames(self, cmd: int | None = None) -> list[dict]:
        with self._lock:
            return [e for e in self.events if e["event"] == "frame" and (cmd is None or e["cmd"] == cmd)]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(op="quit")
                self.proc.wait(3)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def node_client():
    """Start node_client.js processes; skips when node or the npm module is not installed."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not NODE_MODULE.exists():
        pytest.skip("npm blynk-library@0.5.4 is not installed in tests/compat/node_modules (see .ci/run)")
    started: list[NodeClient] = []

    def start(token: str, port: int) -> NodeClient:
        client = NodeClient(token, port)
        started.append(client)
        return client

    yield start
    for client in started:
        client.close()


def run_async(coro):
    """Run a coroutine from a synchronous test (the client harnesses are threads, not tasks)."""
    return asyncio.run(coro)


@pytest.fixture
def compat():
    """This module, for the tests (with --import-mode=importlib a conftest is not importable by name)."""
    return sys.modules[__name__]


def device_info(srv, token: str) -> dict:
    shown = json.loads(srv.cli("device", "show", token).stdout)
    return shown.get("info") or {}


def http_update(srv, token: str, pin: str, value: str) -> None:
    """``GET /external/api/update?token=T&V1=42`` on the device port: the server stores the value and
    sends it to the device as HARDWARE (20). Skips the test where the HTTP API is not there (yet)."""
    url = f"http://127.0.0.1:{srv.port}/external/api/update?" + urllib.parse.urlencode({"token": token, pin: value})
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        pytest.skip(f"HTTP API not available on the device port: {exc}")
    if status == 404:
        pytest.skip("HTTP API /external/api/update not available on the device port (404)")
    assert status == 200, f"{url} -> {status}"
