"""Persistence, provisioning CLI, configuration layers and the first start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import time

import aiohttp
import pytest

from blynk_server.control import CONTROL_SOCKET, LOCK_FILE, DataDirLock
from blynk_server.devclient import DeviceClient
from blynk_server.testing import ServerStartError, run_cli
from protocol import Command
from protocol.body import join_fields


async def _sync_values(srv, token: str, *pins: int) -> list[bytes]:
    c = await DeviceClient.connect("127.0.0.1", srv.port, token)
    c.send(Command.HARDWARE_SYNC, join_fields("vr", *pins))
    frames = await c.silence(0.4)
    await c.close()
    return [f[2] for f in frames]


async def test_clean_shutdown_keeps_every_value(make_server, tmp_path):
    srv = make_server(env={"BLYNK_FLUSH_INTERVAL": "30"})  # nothing flushes before the shutdown
    srv.new_template("TMPLkeep", "pin=V1,type=double,history")
    token = srv.new_device("TMPLkeep")
    c = await DeviceClient.connect("127.0.0.1", srv.port, token)
    for i in range(200):
        c.virtual_write(i % 50, i)
    assert (await c.request(Command.PROPERTY, b"1\x00label\x00Temp"))[2] == 200
    await c.close()
    await asyncio.sleep(0.3)
    assert srv.stop(signal.SIGTERM) == 0
    srv.start()
    got = await _sync_values(srv, token, *range(50))
    assert got == [f"vw\0{p}\0{150 + p}".encode() for p in range(50)]


async def test_a_flush_larger_than_one_statement_keeps_every_row(make_server):
    """The writer batches up to 1,000 rows per INSERT: 1,250 values and history points cross a boundary."""
    srv = make_server(env={"BLYNK_FLUSH_INTERVAL": "30", "BLYNK_MESSAGE_RATE": "100000"})  # no flood control
    srv.new_template("TMPLbulk", *(f"pin=V{p},type=int,history" for p in range(250)))
    tokens = [srv.new_device("TMPLbulk") for _ in range(5)]
    for n, token in enumerate(tokens):
        c = await DeviceClient.connect("127.0.0.1", srv.port, token)
        for p in range(250):
            c.virtual_write(p, n * 1000 + p)
        await c.close()
    await asyncio.sleep(0.3)
    assert srv.stop(signal.SIGTERM) == 0
    db = sqlite3.connect(srv.data_dir / "blynk.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM history").fetchone()[0] == 1250
    db.close()
    srv.start()
    for n, token in enumerate(tokens):
        got = await _sync_values(srv, token, *range(250))
        assert got == [f"vw\0{p}\0{n * 1000 + p}".encode() for p in range(250)]


async def test_crash_loses_at_most_one_flush_interval(make_server):
    srv = make_server(env={"BLYNK_FLUSH_INTERVAL": "0.2"})
    srv.new_template("TMPLcrash")
    token = srv.new_device("TMPLcrash")
    c = await DeviceClient.connect("127.0.0.1", srv.port, token)
    c.virtual_write(1, "before")
    assert await c.ping() == 200
    await asyncio.sleep(1.0)  # several flush intervals
    srv.stop(signal.SIGKILL)
    await c.close()
    srv.start()
    assert await _sync_values(srv, token, 1) == [b"vw\x001\x00before"]


async def test_device_created_while_running_logs_in_at_once_and_delete_closes_it(server):
    server.new_template("TMPLlive")
    token = server.new_device("TMPLlive", "new one")
    assert len(token) == 32 and all(ch.isalnum() or ch in "-_" for ch in token)
    c = await DeviceClient.connect("127.0.0.1", server.port, token)
    assert await c.ping() == 200
    await c.close()
    assert "deleted" in server.cli("device", "delete", token).stdout
    failed = server.cli("device", "show", token, check=False)
    assert failed.returncode == 2 and "no device" in failed.stderr
    c = await DeviceClient.open("127.0.0.1", server.port)
    assert await c.login(token) == 9
    await c.close()


def test_template_and_device_cli(server, tmp_path):
    tpl = server.new_template(
        "TMPLcli", "pin=V1,name=T,type=double,min=-1,max=1,history,sync", "pin=V7,type=enum,enum=1|2"
    )
    assert tpl["datastreams"][0] == {
        "id": 1,
        "alias": "T",
        "pin": "V1",
        "name": "T",
        "type": "double",
        "min": -1.0,
        "max": 1.0,
        "default": None,
        "enum_values": [],
        "history": True,
        "sync": True,
    }
    listed = server.cli("template", "list").stdout
    assert "TMPLcli" in listed and "V1:double" in listed
    dup = server.cli("template", "create", "--id", "TMPLcli", "--name", "x", check=False)
    assert dup.returncode == 2 and "already exists" in dup.stderr
    bad = server.cli(
        "template", "create", "--id", "TMPLbad", "--name", "x", "--datastream", "pin=V1,type=float", check=False
    )
    assert bad.returncode == 2 and "one of" in bad.stderr  # "is not one of" before provisioning.py
    token = server.new_device("TMPLcli", "one")
    devices = json.loads(server.cli("device", "list", "--json", "--template", "TMPLcli").stdout)
    assert [d["token"] for d in devices] == [token]
    missing = server.cli("device", "create", "--template", "NOPE", "--name", "x", check=False)
    assert missing.returncode == 2 and "no template" in missing.stderr


async def test_device_import_from_csv(server, tmp_path):
    server.new_template("TMPLimp")
    tokens = [f"imported{i:02d}abcdefghijklmnopqrstuv"[:32] for i in range(3)]
    csv = tmp_path / "devices.csv"
    csv.write_text("token,name,template\n" + "".join(f"{t},Dev {i},TMPLimp\n" for i, t in enumerate(tokens)))
    assert "imported 3 devices" in server.cli("device", "import", str(csv)).stdout
    again = server.cli("device", "import", str(csv), check=False)
    assert again.returncode == 2 and "already exists" in again.stderr
    c = await DeviceClient.connect("127.0.0.1", server.port, tokens[2])
    assert await c.ping() == 200
    await c.close()


def test_config_file_and_environment_layers(make_server, tmp_path):
    cfg = tmp_path / "blynk.toml"
    cfg.write_text('[server]\nflush-interval = 0.5\nlog-level = "DEBUG"\n')
    srv = make_server("--config", str(cfg), env={"BLYNK_LOG_LEVEL": "WARNING"})
    assert srv.port > 0
    time.sleep(0.3)
    # The environment overrides the file: WARNING hides the INFO lines a DEBUG level would print.
    assert " INFO " not in srv.stderr() and " DEBUG " not in srv.stderr()
    bad = tmp_path / "bad.toml"
    bad.write_text("nonsense = 1\n")
    result = srv.cli("device", "list", "--config", str(bad), check=False)
    assert result.returncode == 2 and "unknown setting 'nonsense'" in result.stderr


def test_first_start_prints_quickstart_and_api_key(make_server):
    srv = make_server()
    out = "\n".join(srv.lines)
    assert "#define BLYNK_TEMPLATE_ID" in out and f"{srv.port});" in out
    assert srv.quickstart_token and len(srv.quickstart_token) == 32
    assert srv.api_key in out
    srv.stop()
    srv.start()
    assert srv.quickstart_token is None  # only on the first start


async def test_cli_goes_through_the_running_server(server, unique):
    """With a server on the data dir, the CLI asks it: a change takes effect at once on every door."""
    holder = (server.data_dir / LOCK_FILE).read_text().split()
    assert holder == [str(server.proc.pid), "server"]
    server.new_template(unique, "pin=V1,type=double")
    token = server.new_device(unique, "online one")
    c = await DeviceClient.connect("127.0.0.1", server.port, token)  # logs in at once
    c.virtual_write(1, 21.5)
    assert await c.ping() == 200
    listed = json.loads(server.cli("device", "list", "--json", "--template", unique).stdout)
    assert [d["token"] for d in listed] == [token] and set(listed[0]) == {
        "id", "token", "name", "template_id", "created_at", "last_seen", "info", "timezone"
    }  # fmt: skip
    shown = json.loads(server.cli("device", "show", token).stdout)
    assert shown["id"] == listed[0]["id"] and shown["metadata"] == {}
    assert shown["values"]["V1"]["value"] == "21.5"  # the server's memory: no flush needed
    assert (
        server.cli("device", "delete", str(shown["id"])).stdout.strip() == f"deleted device {shown['id']} (online one)"
    )
    await asyncio.wait_for(c.closed.wait(), 1.0)  # the server dropped the session when it deleted the device
    await c.close()
    url = f"http://127.0.0.1:{server.port}/external/api/isHardwareConnected?token={token}"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 400 and "Invalid token" in (await r.json())["error"]["message"]
    c = await DeviceClient.open("127.0.0.1", server.port)
    assert await c.login(token) == 9
    await c.close()
    missing = server.cli("device", "delete", token, check=False)
    assert missing.returncode == 2 and f"no device '{token}'" in missing.stderr


def test_cli_without_a_server_takes_the_lock(tmp_path):
    data = tmp_path / "data"
    tpl = json.loads(run_cli(data, "template", "create", "--id", "TMPLdirect", "--name", "d").stdout)
    assert tpl["id"] == "TMPLdirect"
    token = run_cli(data, "device", "create", "--template", "TMPLdirect", "--name", "d1").stdout.strip()
    shown = json.loads(run_cli(data, "device", "show", token).stdout)
    assert shown["token"] == token and shown["name"] == "d1"
    assert (data / LOCK_FILE).read_text() == ""  # released, no pid left behind
    assert not (data / CONTROL_SOCKET).exists()
    bad = run_cli(data, "device", "create", "--template", "TMPLdirect", "--name", "x", "--token", "short", check=False)
    assert bad.returncode == 2 and "8..64 characters" in bad.stderr
    # Another command (here: this test) holds the lock: the CLI fails at once and says who.
    with DataDirLock(data, role="cli"):
        busy = run_cli(data, "device", "list", check=False)
        assert busy.returncode == 2
        assert f"another blynk-server command (pid {os.getpid()}) is working on {data}" in busy.stderr
    # A server holds it, but its socket is a dead one (it hangs, or died leaving the file): exit 1, said so.
    with DataDirLock(data):
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(data / CONTROL_SOCKET))
        dead.close()
        stuck = run_cli(data, "device", "list", check=False)
        assert stuck.returncode == 1
        assert f"a server holds the data dir {data} (pid {os.getpid()}) but its control socket does not answer" in (
            stuck.stderr
        )
    assert json.loads(run_cli(data, "device", "list", "--json").stdout)[0]["token"] == token
    assert run_cli(data, "device", "delete", token).stdout.startswith("deleted device")
    assert json.loads(run_cli(data, "device", "list", "--json").stdout) == []


def test_a_server_does_not_start_on_a_data_dir_in_use(make_server, tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    with DataDirLock(data, role="cli"), pytest.raises(ServerStartError, match=r"exit code 2"):
        make_server(data_dir=data)
    srv = make_server(data_dir=data)
    with pytest.raises(ServerStartError, match=rf"another blynk-server \(pid {srv.proc.pid}\) runs on"):
        make_server(data_dir=data)
    assert srv.stop() == 0
    assert not (data / CONTROL_SOCKET).exists()
    assert json.loads(run_cli(data, "template", "list", "--json").stdout)[0]["name"] == "Quickstart"
