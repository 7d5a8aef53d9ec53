"""The store never stops, and a stop tells the truth (issue 10, findings 1 and 7).

A full disk is made real with RLIMIT_FSIZE: a write past the limit fails with EFBIG (CPython ignores
SIGXFSZ), which SQLite reports as it reports a full disk. Files under the limit (the recovery file)
can still be written.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import subprocess
import sys

import pytest

from blynk_server.testing import server_argv
from protocol import Command, Status

from .conftest import connect, metric, write_acked, write_restart_read

FILE_LIMIT = 1_500_000  # bytes: the WAL reaches it after a few rounds of big values
PINS = range(10, 250)  # pins with no datastream: stored as sent


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


async def test_a_full_disk_keeps_rows_and_a_stop_saves_them_for_the_next_start(rig):
    env = {"BLYNK_FLUSH_INTERVAL": "0.05", "BLYNK_MESSAGE_RATE": "1000000"}
    r = rig(env=env)
    token = r.token()
    r.srv.stop()
    r.srv.preexec_fn = _limit_file_size
    r.srv.start()
    earlier = len(r.srv.stderr())  # the log file holds the first run too
    dev = await connect(r.srv, token)
    try:
        filler = b"x" * 1000
        for _ in range(40):  # ~240 KB of values per round; the WAL passes the limit within a few
            for pin in PINS:
                dev.virtual_write(pin, filler)
            assert await dev.ping() == Status.SUCCESS
            if await metric(r.srv, "blynk_store_flush_errors_total"):
                break
            await asyncio.sleep(0.1)  # let a flush run; the disk fills when it does
        else:
            pytest.fail("the file size limit was never hit")
        for pin in PINS:  # acknowledged after the disk is full: these must survive
            dev.virtual_write(pin, f"final-{pin}")
        await write_acked(dev, 6, 123)
    finally:
        await dev.close()
    assert r.srv.proc is not None
    r.srv.proc.send_signal(15)
    code = r.srv.proc.wait(30)
    r.srv.proc = None
    log = r.srv.stderr()[earlier:]
    assert code == 1, log[-2000:]
    assert "every pending write flushed" not in log
    m = re.search(r"stopped; (\d+) rows could not be written \((.+?)\): saved to (\S+recovery-\d+\.jsonl)", log)
    assert m, log[-2000:]
    assert int(m.group(1)) >= len(PINS)
    assert os.path.exists(m.group(3))
    assert "Traceback" not in log

    r.srv.preexec_fn = None
    r.srv.start()
    assert any("Replayed" in line for line in r.srv.lines), r.srv.lines
    assert not os.path.exists(m.group(3))
    dev = await connect(r.srv, token)
    try:
        sid = dev.send(Command.HARDWARE_SYNC, b"vr\x0010\x00249\x006")
        got = {}
        for _ in range(3):
            cmd, msg_id, body = await dev.recv()
            assert msg_id == sid and cmd == Command.HARDWARE
            _, pin, value = body.split(b"\0", 2)
            got[int(pin)] = value
        assert got == {10: b"final-10", 249: b"final-249", 6: b"123"}
    finally:
        await dev.close()
    await write_restart_read(r.srv, token)


def _serve(data_dir, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(server_argv(data_dir), capture_output=True, text=True, timeout=60, **kw)


def test_a_data_dir_that_cannot_be_used_is_one_line_and_exit_2(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = _serve(not_a_dir)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert re.search(r"blynk-server: cannot use the data dir .*file", result.stderr), result.stderr


def test_a_data_dir_that_cannot_be_written_is_one_line_and_exit_2(tmp_path):
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "blynk_server", "template", "list", "--data-dir", str(data)], check=True)
    if os.geteuid() == 0:  # root writes through any mode bits: no file may grow at all instead

        def no_writes() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

        result = _serve(data, preexec_fn=no_writes)
    else:
        os.chmod(data, 0o500)
        try:
            result = _serve(data)
        finally:
            os.chmod(data, 0o700)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert re.search(r"blynk-server: cannot (use|write)", result.stderr), result.stderr
