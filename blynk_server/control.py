"""Who owns a data dir, and how to reach the server that does.

A running server is the only writer of its data dir. It holds an exclusive ``flock`` on
``<data_dir>/server.lock`` (its pid written in it) for its whole life, and serves its admin API on the
unix socket ``<data_dir>/control.sock`` (mode 0600 in the 0700 data dir: the file permissions are the
access check, no API key). A CLI command takes the same lock while it works on the store itself, so a
server cannot start under it; when the lock is taken by a server, the command asks that server over the
socket instead (:class:`ControlClient`).

Standard library only; the client is synchronous (``http.client`` over ``AF_UNIX``).
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

LOCK_FILE = "server.lock"
CONTROL_SOCKET = "control.sock"
DEFAULT_TIMEOUT = 60.0  # seconds a request may take (a firmware upload, a large import)
START_WAIT = 5.0  # seconds to wait for the socket of a server that holds the lock but has not bound it yet
SUN_PATH_MAX = 107  # bytes of a unix socket path (sun_path is 108 with the NUL)


@dataclass(frozen=True)
class Holder:
    """The process that holds a data dir's lock: its pid, and what it is (``server`` or ``cli``)."""

    pid: int | None
    role: str


class DataDirLock:
    """The exclusive, non-blocking ``flock`` on ``<data_dir>/server.lock``.

    The lock belongs to the open file, so it ends with the process however it ends (no stale lock
    after a crash); the file itself is never removed (removing it would let two processes lock two
    different files). ``role`` is written after the pid so that a waiting command can tell a server
    from another command."""

    def __init__(self, data_dir: Path | str, role: str = "server") -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self.role = role
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock; False (at once) when another open file holds it."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.role}\n".encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # no pid left behind for a reader to mistake for a live holder
        finally:
            os.close(fd)  # closing the last descriptor of the open file releases the flock

    def holder(self) -> Holder | None:
        """Who holds the lock now (this object included); None when nobody does. The pid is None when
        the holder has not written it yet (the moment between its flock and its write)."""
        if self._fd is not None:
            return Holder(os.getpid(), self.role)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 256, 0).decode("ascii", "replace").split()
            else:
                return None  # we could lock it: nobody holds it (closing the fd below unlocks)
        finally:
            os.close(fd)
        pid = int(text[0]) if text and text[0].isdigit() else None
        return Holder(pid, text[1] if len(text) > 1 else "server")

    def holder_pid(self) -> int | None:
        h = self.holder()
        return h.pid if h is not None else None

    def __enter__(self) -> DataDirLock:
        if not self.acquire():
            raise DataDirBusy(self.path.parent, self.holder())
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class DataDirBusy(RuntimeError):
    """The data dir's lock is held by another process."""

    def __init__(self, data_dir: Path, holder: Holder | None) -> None:
        self.holder = holder
        pid = holder.pid if holder is not None and holder.pid is not None else "unknown"
        if holder is not None and holder.role == "cli":
            msg = f"another blynk-server command (pid {pid}) is working on {data_dir}; run this one when it is done"
        else:
            msg = f"another blynk-server (pid {pid}) runs on {data_dir}"
        super().__init__(msg)


def lock_holder(data_dir: Path | str) -> Holder | None:
    """Who holds the data dir's lock, or None (also when the data dir does not exist)."""
    return DataDirLock(data_dir).holder()


def server_running(data_dir: Path | str) -> bool:
    """True when a server (not a CLI command) holds the data dir's lock."""
    h = lock_holder(data_dir)
    return h is not None and h.role != "cli"


class ControlError(Exception):
    """The server could not be reached or did not answer (not an HTTP error status: those are returned)."""


@contextlib.contextmanager
def _short_path(path: Path):
    """A path to ``path`` that fits in sun_path: itself, or ``/proc/self/fd/N/<name>`` through a
    descriptor of its directory (Linux) when the data dir's path is long."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield str(path)
        return
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dfd}/{path.name}"
    finally:
        os.close(dfd)


def listen_socket(data_dir: Path | str, backlog: int = 64) -> socket.socket:
    """The server side: a listening socket on ``<data_dir>/control.sock``, mode 0600, for
    ``aiohttp.web.SockSite``. Call it only while holding the data dir's lock: a socket file left by a
    server that died is removed first."""
    path = Path(data_dir) / CONTROL_SOCKET
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _short_path(path) as where:
            sock.bind(where)
        os.chmod(path, 0o600)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            with _short_path(self._path) as where:
                sock.connect(where)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


Json = dict | list | str | int | float | bool | None


class ControlClient:
    """HTTP/1.1 to the admin API of the server running on ``data_dir``, over its control socket.

    One connection per request (the CLI makes few). :meth:`request` returns ``(status, body)`` with the
    body parsed when it is JSON, else bytes; it raises :class:`ControlError` only when there is no
    answer (no server, or it went away, or ``timeout`` passed)."""

    def __init__(self, data_dir: Path | str, timeout: float = DEFAULT_TIMEOUT, start_wait: float = START_WAIT) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / CONTROL_SOCKET
        self.timeout = timeout
        self.start_wait = start_wait

    def request(
        self,
        method: str,
        path: str,
        json_body: Json = None,
        body: bytes | BinaryIO | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Json | bytes]:
        hdrs = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if body is not None and not isinstance(body, bytes):  # a file: http.client streams it
            hdrs.setdefault("Content-Length", str(os.fstat(body.fileno()).st_size - body.tell()))
        conn = self._connect()
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            ctype = resp.getheader("Content-Type", "")
        except TimeoutError:
            raise ControlError(f"the server on {self.data_dir} did not answer within {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ControlError(f"the server on {self.data_dir} went away: {exc}") from None
        finally:
            conn.close()
        if ctype.startswith("application/json") and data:
            try:
                return resp.status, json.loads(data)
            except ValueError:
                pass
        return resp.status, data

    def _connect(self) -> _UnixHTTPConnection:
        """A connected connection. A server that holds the lock but has no socket yet is starting:
        wait up to ``start_wait`` for it; a socket that refuses, or no lock holder, fails at once."""
        deadline = time.monotonic() + self.start_wait
        delay = 0.02
        while True:
            conn = _UnixHTTPConnection(self.path, self.timeout)
            try:
                conn.connect()
                return conn
            except FileNotFoundError:
                holder = lock_holder(self.data_dir)
                if holder is None:
                    raise ControlError(f"no blynk-server runs on {self.data_dir}") from None
                if holder.role == "cli" or time.monotonic() >= deadline:
                    raise ControlError(self._not_answering(holder)) from None
            except OSError as exc:  # refused (a socket file left by a dead server), permissions, timeout
                holder = lock_holder(self.data_dir)
                if holder is None:
                    raise ControlError(f"no blynk-server runs on {self.data_dir}") from None
                raise ControlError(f"{self._not_answering(holder)} ({exc.strerror or exc})") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def _not_answering(self, holder: Holder) -> str:
        pid = holder.pid if holder.pid is not None else "unknown"
        if holder.role == "cli":
            return f"another blynk-server command (pid {pid}) is working on {self.data_dir}"
        return f"a server holds the data dir {self.data_dir} (pid {pid}) but its control socket does not answer"


def error_message(body: Json | bytes, status: int) -> str:
    """The message of an admin API error body: ``{"error": {"message": m}}`` or ``{"error": m}``."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(err, str):
            return err
    if isinstance(body, bytes) and body.strip():
        return body.decode("utf-8", "replace").strip()[:500]
    return f"the server answered {status} {http.client.responses.get(status, '')}".rstrip()


__all__ = [
    "CONTROL_SOCKET",
    "LOCK_FILE",
    "ControlClient",
    "ControlError",
    "DataDirBusy",
    "DataDirLock",
    "Holder",
    "error_message",
    "listen_socket",
    "lock_holder",
    "server_running",
]
