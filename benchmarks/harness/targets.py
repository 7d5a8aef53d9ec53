"""The servers under test: blynk-server, mosquitto and amqtt, each started by us on loopback.

Each target knows how to provision client identities, start and stop its process (we end only the
PID we started), report the process's CPU time and RSS from ``/proc``, and read its count of
processed messages from its own side (Prometheus ``/metrics`` for blynk-server, ``$SYS`` for MQTT).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from benchmarks.harness import cbuild
from blynk_server.testing import run_cli, start_server

CFLOOR_SOURCE = Path(__file__).with_name("cfloor.c")

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ``--pin``: the CPUs the servers under test run on (the harness keeps the others); None: not pinned.
SERVER_CPUS: set[int] | None = None


def pin(server_cpus: set[int]) -> set[int]:
    """Servers started from now on run on ``server_cpus``; this process and what it starts later (the
    load generators) on the other CPUs. Returns those."""
    global SERVER_CPUS
    others = set(os.sched_getaffinity(0)) - server_cpus
    if not others:
        raise ValueError(f"no CPU left for the load generator besides {sorted(server_cpus)}")
    SERVER_CPUS = set(server_cpus)
    os.sched_setaffinity(0, others)
    return others


def _raise_nofile() -> None:  # runs in the child before exec (every server target's)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if SERVER_CPUS:  # before exec: every thread the server starts inherits it
        os.sched_setaffinity(0, SERVER_CPUS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_steal() -> dict[int, float]:
    """Seconds of each CPU the hypervisor gave to another guest while this one had work for it
    (``/proc/stat``'s steal, in 10 ms ticks); {} without /proc/stat. A server's latency over a window
    counts such a stretch, however short its own work: the figure says how much of that a window had."""
    try:
        with open("/proc/stat") as fh:
            lines = [line.split() for line in fh if line.startswith("cpu") and line[3].isdigit()]
    except OSError:
        return {}
    return {int(f[0][3:]): int(f[8]) / CLK_TCK for f in lines if len(f) > 8}


def steal_ms(before: dict[int, float], after: dict[int, float], cpus: set[int] | None) -> float | None:
    """Milliseconds stolen from ``cpus`` (all of them: None) between two ``cpu_steal`` readings."""
    if not before or not after:
        return None
    return round(1000 * sum(after[c] - before[c] for c in after if c in before and (cpus is None or c in cpus)))


def run_delay_ms(pid: int) -> float | None:
    """Milliseconds the main thread of ``pid`` (an event loop's; mosquitto's only thread) has spent
    ready to run but not running, since it started (``/proc/<pid>/schedstat``'s second field); None
    where the kernel has no such file. On this VM it also grows by each stretch the hypervisor took the
    core while the thread was on it, which ``/proc/stat``'s steal mostly misses (209 ms against 20 ms
    of steal in one run: RESULTS, issue 12 step 16)."""
    try:
        with open(f"/proc/{pid}/schedstat") as fh:
            return int(fh.read().split()[1]) / 1e6
    except (OSError, ValueError, IndexError):
        return None


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process."""
    return sum(proc_cpu_split(pid))


def _wait_port(port: int, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open within {timeout}s")


class Target:
    """A server process under test."""

    name = "?"
    kind = "?"  # client protocol: "blynk" or "mqtt"
    proc: subprocess.Popen | None = None
    host = "127.0.0.1"
    port = 0

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def provision(self, n: int) -> list[str]:
        raise NotImplementedError

    def start(self, **options) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """SIGTERM the process we started, then SIGKILL it if it does not go."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def processed(self) -> float | None:
        """Messages the server has processed (writes/publishes); None when it reports them via $SYS."""
        return None


class BlynkTarget(Target):
    name = "blynk-server"
    kind = "blynk"
    template = "TMPLbench01"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.data_dir = workdir / "data"
        self.admin_port = 0
        self.lines: list[str] = []
        self.metrics_source = "/metrics"
        self._created_template = False

    def _cli(self, *args: str) -> str:
        return run_cli(self.data_dir, *args).stdout

    def provision(self, n: int) -> list[str]:
        """``n`` new devices with distinct tokens, imported in one CSV (fast for thousands)."""
        if not self._created_template:
            self._cli(
                "template",
                "create",
                "--id",
                self.template,
                "--name",
                "bench",
                "--datastream",
                "pin=V1,name=Value,type=double",
            )
            self._created_template = True
        tokens = [secrets.token_hex(16) for _ in range(n)]
        csv = self.workdir / f"devices-{secrets.token_hex(4)}.csv"
        csv.write_text(
            "token,name,template\n" + "".join(f"{t},bench{i},{self.template}\n" for i, t in enumerate(tokens))
        )
        self._cli("device", "import", str(csv))
        return tokens

    def start(
        self, message_rate: float | None = None, log_level: str = "WARNING", args: tuple[str, ...] = (), **_: object
    ) -> None:
        extra = ["--message-rate", str(message_rate)] if message_rate else []
        extra += [*args, *os.environ.get("BENCH_SERVER_ARGS", "").split()]  # e.g. "--flush-interval 10"
        self.stderr_path = self.workdir / "server-stderr.log"
        started = start_server(
            self.data_dir,
            "--log-level",
            log_level,
            *extra,
            stderr=self.stderr_path,
            cwd=self.workdir,
            preexec_fn=_raise_nofile,
        )
        self.proc, self.lines = started.proc, started.lines
        self.port, self.admin_port = started.ready.hardware[1], started.ready.admin[1]

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    def counters(self) -> dict[str, float]:
        """Messages received by command name, from the server's own counters."""
        _, text = self._get("/metrics")
        out: dict[str, float] = {}
        # blynk_messages_in_total{command="hardware"} (frames received from devices, by command)
        pattern = r'^blynk_messages_(?:in|received)_total\{[^}]*command="(\w+)"[^}]*\}\s+(\S+)'
        for m in re.finditer(pattern, text, re.M):
            key = m.group(1).upper()
            out[key] = out.get(key, 0.0) + float(m.group(2))
        return out

    def turn_budget(self) -> dict[str, float]:
        """The turn budget's counters (reads deferred to a later loop turn, turns that spent it)."""
        _, text = self._get("/metrics")
        out = {}
        for name in ("blynk_reads_deferred_total", "blynk_turns_budget_spent_total"):
            m = re.search(rf"^{name}\s+(\S+)", text, re.M)
            if m:
                out[name.removeprefix("blynk_").removesuffix("_total")] = float(m.group(1))
        return out

    def processed(self) -> float:
        return self.counters().get("HARDWARE", 0.0)

    def has_http_api(self) -> bool:
        """Is the device HTTP API there (a 404 for an unknown token is 'there'; a closed socket is not)?"""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=3) as s:
                s.sendall(b"GET /external/api/isHardwareConnected?token=x HTTP/1.1\r\nHost: x\r\n\r\n")
                s.settimeout(3)
                data = s.recv(100)
            return data.startswith(b"HTTP/1.")
        except OSError:
            return False


class FloorTarget(Target):
    """``floor_server.py``: the least a uvloop server in Python does per connection (ping-pong, idle,
    telemetry: it counts the HARDWARE frames it receives and stores nothing)."""

    name = "floor"
    kind = "blynk"
    scenarios = ("pingpong", "idle", "loginstorm", "telemetry")
    metrics_source = "floor count file"

    @staticmethod
    def available() -> str | None:
        return None

    def provision(self, n: int) -> list[str]:
        return [secrets.token_hex(16) for _ in range(n)]  # any token logs in

    def start(self, **_: object) -> None:
        self.port = free_port()
        with open(self.workdir / "floor.log", "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.harness.floor_server", str(self.port), str(self._count_file)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=_raise_nofile,
                cwd=Path(__file__).resolve().parents[2],  # the checkout, where benchmarks/ lives
            )
        _wait_port(self.port, 10, self.proc)

    @property
    def _count_file(self) -> Path:
        return self.workdir / "hardware-frames"

    def processed(self) -> float:
        try:
            return float(self._count_file.read_text() or 0)
        except (OSError, ValueError):
            return 0.0

    def turn_budget(self) -> dict[str, float]:
        return {}  # the floor has none


class CFloorTarget(FloorTarget):
    """``cfloor.c``: the floor's work in C on one epoll loop, no Python (built like ``telegen.c``). The
    uvloop floor's CPU above it is what uvloop and a Python callback per read cost."""

    name = "cfloor"

    @staticmethod
    def available() -> str | None:
        return cbuild.build(CFLOOR_SOURCE)[1] or None

    def start(self, **_: object) -> None:
        binary, _why = cbuild.build(CFLOOR_SOURCE)
        self.port = free_port()
        with open(self.workdir / "cfloor.log", "ab") as err:
            self.proc = subprocess.Popen(
                [str(binary), str(self.port), str(self._count_file)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=_raise_nofile,
            )
        _wait_port(self.port, 10, self.proc)


class MosquittoTarget(Target):
    name = "mosquitto"
    kind = "mqtt"
    sys_topic = "$SYS/broker/publish/messages/received"

    @staticmethod
    def available() -> str | None:
        """None when usable; otherwise why not."""
        return None if MosquittoTarget.binary() else "mosquitto is not installed (apt-get install mosquitto)"

    @staticmethod
    def binary() -> str | None:
        return shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
        )

    def provision(self, n: int) -> list[str]:
        return [f"c{secrets.token_hex(8)}" for _ in range(n)]

    def start(self, **_: object) -> None:
        self.port = free_port()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"per_listener_settings false\nlistener {self.port} 127.0.0.1\nmax_connections -1\n"
            "allow_anonymous true\npersistence false\nsys_interval 1\nlog_dest stderr\n"
            "log_type error\nlog_type warning\n"
        )
        with open(self.workdir / "mosquitto.log", "ab") as err:
            self.proc = subprocess.Popen(
                [self.binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=err, preexec_fn=_raise_nofile
            )
        _wait_port(self.port, 10, self.proc)

    def version(self) -> str:
        out = subprocess.run([self.binary(), "-h"], capture_output=True, text=True)
        return (out.stdout + out.stderr).splitlines()[0] if out.stdout or out.stderr else "?"


class AmqttTarget(MosquittoTarget):
    name = "amqtt"
    sys_topic = "$SYS/broker/messages/publish/received"

    @staticmethod
    def available() -> str | None:
        if importlib.util.find_spec("amqtt") is None:
            return "amqtt is not installed (pip install amqtt)"
        return None

    def start(self, **_: object) -> None:
        self.port = free_port()
        conf = self.workdir / "amqtt.yaml"
        conf.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: 127.0.0.1:{self.port}\n    max_connections: -1\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
            "  amqtt.plugins.sys.broker.BrokerSysPlugin:\n    sys_interval: 1\n"
        )
        with open(self.workdir / "amqtt.log", "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from amqtt.scripts.broker_script import main; main()", "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=_raise_nofile,
            )
        _wait_port(self.port, 20, self.proc)

    def version(self) -> str:
        from importlib.metadata import version

        return f"amqtt {version('amqtt')}"


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="blynk-bench-"))


def cleanup(path: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(path)
