"""The data dir lock and the control-socket client (blynk_server.control), in process, no server."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
import textwrap

import pytest
from aiohttp import web

from blynk_server.control import (
    CONTROL_SOCKET,
    LOCK_FILE,
    ControlClient,
    ControlError,
    DataDirBusy,
    DataDirLock,
    Holder,
    error_message,
    listen_socket,
    lock_holder,
    server_running,
)

HOLDER = textwrap.dedent(
    """
    import sys
    from blynk_server.control import DataDirLock
    lock = DataDirLock(sys.argv[1], role=sys.argv[2])
    print("locked" if lock.acquire() else "busy", flush=True)
    sys.stdin.read()  # hold it until the test closes our stdin
    """
)


@pytest.fixture
def holder_process(tmp_path):
    """Start a process that takes the lock with a role; yields (process, its first line)."""
    started: list[subprocess.Popen] = []

    def start(role: str = "server") -> tuple[subprocess.Popen, str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(tmp_path), role],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        return proc, proc.stdout.readline().strip()

    yield start
    for proc in started:
        proc.stdin.close()
        proc.wait(10)


def test_lock_is_exclusive_across_processes_and_names_its_holder(tmp_path, holder_process):
    proc, line = holder_process("server")
    assert line == "locked"
    lock = DataDirLock(tmp_path, role="cli")
    assert not lock.acquire()
    assert lock.holder() == Holder(proc.pid, "server")
    assert lock.holder_pid() == proc.pid
    assert lock_holder(tmp_path) == Holder(proc.pid, "server") and server_running(tmp_path)
    with pytest.raises(DataDirBusy, match=rf"another blynk-server \(pid {proc.pid}\) runs on"):
        lock.__enter__()
    assert stat.S_IMODE((tmp_path / LOCK_FILE).stat().st_mode) == 0o600
    proc.stdin.close()  # the holder exits: the kernel drops its lock, whatever it left in the file
    proc.wait(10)
    assert lock.acquire()
    assert lock.holder() == Holder(os.getpid(), "cli") and not server_running(tmp_path)
    lock.release()
    assert lock_holder(tmp_path) is None and lock.holder_pid() is None


def test_a_command_holding_the_lock_is_told_apart_from_a_server(tmp_path, holder_process):
    proc, line = holder_process("cli")
    assert line == "locked"
    assert lock_holder(tmp_path) == Holder(proc.pid, "cli") and not server_running(tmp_path)
    with pytest.raises(DataDirBusy, match=rf"another blynk-server command \(pid {proc.pid}\) is working"):
        DataDirLock(tmp_path).__enter__()
    with pytest.raises(ControlError, match=rf"another blynk-server command \(pid {proc.pid}\)"):
        ControlClient(tmp_path).request("GET", "/api/health")


def test_release_and_context_manager(tmp_path, holder_process):
    with DataDirLock(tmp_path) as lock:
        assert lock.held and (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()} server\n"
        assert holder_process()[1] == "busy"  # another process cannot take it
        assert DataDirLock(tmp_path).holder_pid() == os.getpid()  # another open file in this process sees it
    assert not lock.held and (tmp_path / LOCK_FILE).read_text() == ""
    assert holder_process()[1] == "locked"


def test_no_lock_file_means_no_holder(tmp_path):
    assert lock_holder(tmp_path / "missing") is None
    assert not server_running(tmp_path)


async def _serve(tmp_path):
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "peer": str(request.transport.get_extra_info("sockname"))})

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body[::-1], headers={"X-Type": request.content_type})

    async def create(request: web.Request) -> web.Response:
        data = await request.json()
        if "name" not in data:
            return web.json_response({"error": {"message": "name is required."}}, status=400)
        return web.json_response({"created": data["name"], "q": request.query.get("q")}, status=201)

    app = web.Application()
    app.router.add_get("/api/health", health)
    app.router.add_post("/echo", echo)
    app.router.add_post("/api/things", create)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.SockSite(runner, listen_socket(tmp_path)).start()
    return runner


async def test_client_speaks_http_over_the_control_socket(tmp_path):
    lock = DataDirLock(tmp_path)
    assert lock.acquire()
    runner = await _serve(tmp_path)
    try:
        assert stat.S_IMODE((tmp_path / CONTROL_SOCKET).stat().st_mode) == 0o600
        client = ControlClient(tmp_path, timeout=10)
        status, body = await asyncio.to_thread(client.request, "GET", "/api/health")
        assert status == 200 and body["status"] == "ok"
        status, body = await asyncio.to_thread(client.request, "POST", "/api/things?q=1", {"name": "x"})
        assert (status, body) == (201, {"created": "x", "q": "1"})
        status, body = await asyncio.to_thread(client.request, "POST", "/api/things", {})
        assert status == 400 and error_message(body, status) == "name is required."
        status, body = await asyncio.to_thread(
            client.request, "POST", "/echo", body=b"abc", headers={"Content-Type": "application/octet-stream"}
        )
        assert (status, body) == (200, b"cba")
        firmware = tmp_path / "fw.bin"
        firmware.write_bytes(b"0123456789")
        with open(firmware, "rb") as fh:
            fh.read(2)
            status, body = await asyncio.to_thread(client.request, "POST", "/echo", body=fh)
        assert (status, body) == (200, b"98765432")
        status, body = await asyncio.to_thread(client.request, "GET", "/nowhere")
        assert status == 404 and isinstance(body, bytes)
    finally:
        await runner.cleanup()
        lock.release()


async def test_client_reaches_a_socket_in_a_data_dir_with_a_long_path(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert len(str(deep / CONTROL_SOCKET)) > 108
    runner = await _serve(deep)
    try:
        status, body = await asyncio.to_thread(ControlClient(deep).request, "GET", "/api/health")
        assert status == 200 and body["status"] == "ok"
    finally:
        await runner.cleanup()


def test_no_server_and_a_dead_socket_are_clear_errors(tmp_path):
    with pytest.raises(ControlError, match="no blynk-server runs on"):
        ControlClient(tmp_path).request("GET", "/api/health")
    with DataDirLock(tmp_path) as lock:
        with pytest.raises(
            ControlError, match=rf"a server holds the data dir .* \(pid {os.getpid()}\) but its control"
        ):
            ControlClient(tmp_path, start_wait=0).request("GET", "/api/health")
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(tmp_path / CONTROL_SOCKET))  # a socket file nobody listens on: a server that died
        dead.close()
        with pytest.raises(ControlError, match="but its control socket does not answer"):
            ControlClient(tmp_path).request("GET", "/api/health")
        assert lock.held


def test_error_message_shapes():
    assert error_message({"error": {"message": "Device not found."}}, 404) == "Device not found."
    assert error_message({"error": "bad token"}, 400) == "bad token"
    assert error_message(b"plain text\n", 500) == "plain text"
    assert error_message(b"", 503) == "the server answered 503 Service Unavailable"
