"""Start a real ``blynk-server`` as a subprocess and learn where it listens.

The tests and the benchmarks run the installed server as a process of its own, on ephemeral ports
(``--port 0 --admin-port 0``), and need the addresses it bound. Once it listens it prints one line,
``blynk-server ready hardware=H:P admin=H:P [tls=H:P]`` (an IPv6 host in brackets); this module is
the one place that starts it that way and reads that line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

Address = tuple[str, int]

READY = re.compile(r"blynk-server ready hardware=(\S+) admin=(\S+)(?: tls=(\S+))?")
STDERR_TAIL = 4000  # characters of the server's stderr quoted when it does not start


def rss_bytes(pid: int) -> int:
    """Resident set size of a process in bytes, from /proc/<pid>/statm; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


class ServerStartError(RuntimeError):
    """The server exited, or did not print its ready line in time."""


@dataclass(frozen=True)
class Ready:
    """The addresses from a ready line; hosts without the brackets of the IPv6 form."""

    hardware: Address
    admin: Address
    tls: Address | None = None


@dataclass
class StartedServer:
    """A server that printed its ready line. ``lines`` keeps growing: its stdout is read until it closes."""

    proc: subprocess.Popen[str]
    ready: Ready
    lines: list[str]


def _address(hostport: str) -> Address:
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"not host:port: {hostport!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def parse_ready(line: str) -> Ready | None:
    """The addresses in a ``blynk-server ready ...`` line; None for any other line."""
    m = READY.search(line)
    if m is None:
        return None
    return Ready(_address(m.group(1)), _address(m.group(2)), _address(m.group(3)) if m.group(3) else None)


def server_argv(data_dir: Path, *extra: str) -> list[str]:
    """``python -m blynk_server serve`` on 127.0.0.1, ephemeral device and admin ports, then ``extra``."""
    return [
        sys.executable, "-m", "blynk_server", "serve", "--data-dir", str(data_dir),
        "--host", "127.0.0.1", "--port", "0", "--admin-port", "0", *extra,
    ]  # fmt: skip


class CliError(RuntimeError):
    """A ``blynk-server`` provisioning command exited non-zero."""


def run_cli(data_dir: Path, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m blynk_server <args> --data-dir DIR`` (the flag goes after the sub-command), output
    captured as text, run beside the data dir; ``check`` raises CliError with its stderr on failure."""
    argv = [sys.executable, "-m", "blynk_server", *args, "--data-dir", str(data_dir)]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=Path(data_dir).parent, timeout=timeout)
    if check and result.returncode != 0:
        raise CliError(f"{argv} failed ({result.returncode}): {result.stderr}")
    return result


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-STDERR_TAIL:]
    except OSError:
        return ""


def start_server(
    data_dir: Path,
    *extra: str,
    stderr: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    preexec_fn: Callable[[], None] | None = None,
) -> StartedServer:
    """Start the server and wait up to ``timeout`` seconds for its ready line.

    Its stderr is appended to the file ``stderr``; its stdout lines are collected by a daemon thread.
    ``env`` is added to this process's environment. When the server exits or stays silent, it is
    killed and :class:`ServerStartError` says why, with its stdout and the tail of its stderr.
    """
    with open(stderr, "ab") as err:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            server_argv(data_dir, *extra),
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            text=True,
            preexec_fn=preexec_fn,
        )
    lines: list[str] = []
    found: list[Ready] = []
    done = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if not found and (ready := parse_ready(line)) is not None:
                found.append(ready)
                done.set()
        done.set()  # stdout closed: the server is gone

    threading.Thread(target=pump, name=f"blynk-server-{proc.pid}-stdout", daemon=True).start()
    done.wait(timeout)
    if found:
        return StartedServer(proc, found[0], lines)
    why = "exited" if done.is_set() else f"did not print its ready line within {timeout:g} s"
    proc.kill()
    code = proc.wait(10)
    raise ServerStartError(f"blynk-server {why} (exit code {code}); stdout: {lines}\nstderr:\n{_tail(stderr)}")
