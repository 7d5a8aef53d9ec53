"""Plain TCP device sockets read from the listener's epoll set (``hardware/direct.py``), on both event loops
the server may run on and on whichever twin is imported: a session joins the set after its first bytes,
leaves it when its socket ends or the server closes it (the transport then finds the end and the
connection is lost the usual way), bytes that came while a session was paused are read when it
resumes, a set that read rests before it reads again (``read_coalesce_ms``),
and with ``direct_reads`` off every transport reads its own socket."""

from __future__ import annotations

import asyncio
import contextlib
import select

import pytest

from blynk_server import config
from blynk_server.devclient import DeviceClient
from blynk_server.hardware import direct, hotpath
from blynk_server.model import Datastream
from protocol import Command, Status, encode_frame

from .conftest import running

uvloop = pytest.importorskip("uvloop")
pytestmark = pytest.mark.skipif(not direct.available(), reason="no epoll here: every transport reads its own socket")

LOOPS = {"asyncio": asyncio.SelectorEventLoop, "uvloop": uvloop.new_event_loop}


async def _device(server, name: str):
    template = await server.provisioning.create_template(name, [Datastream("v1", "Value", "int", 0, 100)])
    return await server.provisioning.create_device(template.id, name)


@contextlib.asynccontextmanager
async def _logged_in(server, name: str):
    """A device of a template of its own, logged in on the device port; closed at the end (closing a
    client twice is harmless, so a test may close it first)."""
    dev = await _device(server, name)
    client = await DeviceClient.connect(*server.hardware.address, dev.token)
    try:
        yield dev, client
    finally:
        await client.close()


def _offline(server, device_id: int) -> asyncio.Event:
    went = asyncio.Event()
    server.domain.on_device_offline.append(lambda d: d.id == device_id and went.set())
    return went


async def _reads_from_the_set_until_the_device_closes(data_dir) -> None:
    async with running(data_dir) as server, _logged_in(server, "direct") as (dev, client):
        reads = server.hardware.context.direct
        session = server.hub.link(dev.id)
        assert session._direct_fd >= 0 and reads.sessions == {session._direct_fd: session}
        client.virtual_write(1, 42)
        assert await client.ping() == Status.SUCCESS  # the write before it was read and handled
        assert server.domain.device_by_token(dev.token).values["v1"][0] == b"42"
        went = _offline(server, dev.id)
        await client.close()  # the set sees the end; the transport reads again and finds it
        await asyncio.wait_for(went.wait(), 5)
        assert reads.sessions == {} and session._direct_fd == -1 and session.closed


async def _a_replaced_session_leaves_the_set(data_dir) -> None:
    async with running(data_dir) as server, _logged_in(server, "twice") as (dev, _):
        reads = server.hardware.context.direct
        older = server.hub.link(dev.id)
        second = await DeviceClient.connect(*server.hardware.address, dev.token)  # closes the older one
        newer = server.hub.link(dev.id)
        try:
            assert newer is not older and older.closed and older._direct_fd == -1
            assert list(reads.sessions.values()) == [newer]
            assert await second.ping() == Status.SUCCESS
        finally:
            await second.close()


async def _a_burst_waits_its_turn_and_is_answered_whole(data_dir) -> None:
    """More than one read's worth at once: the session pauses its events in the set for its turn, and
    resumes them, and every frame is answered in order."""
    async with running(data_dir, message_rate=1e6) as server, _logged_in(server, "burst") as (dev, client):
        burst = 2000  # 10,000 bytes: three reads of recv_buffer (4,096)
        client.send_raw(b"".join(encode_frame(Command.PING, i) for i in range(1, burst + 1)))
        answers = [await client.recv() for _ in range(burst)]
        assert answers == [(Command.RESPONSE, i, Status.SUCCESS) for i in range(1, burst + 1)]
        assert server.hub.link(dev.id)._direct_fd >= 0


async def _bytes_that_came_while_paused_are_read_when_it_resumes(data_dir) -> None:
    """Bytes that arrived while the session's events were off in the set (the flood bucket spent) are
    read once they are switched on again."""
    async with (
        running(data_dir, message_rate=100, message_burst=10) as server,
        _logged_in(server, "paused") as (dev, client),
    ):
        client.send_raw(b"".join(encode_frame(Command.PING, i) for i in range(1, 61)))  # 50 over: 0.5 s
        assert await _answered_up_to(client, 60) == list(range(1, 61))
        session = server.hub.link(dev.id)
        assert session._flood_paused and session._direct_paused  # its events are off in the set
        client.send_raw(b"".join(encode_frame(Command.PING, i) for i in range(61, 66)))
        assert [i for i in await _answered_up_to(client, 65) if i > 60] == list(range(61, 66))
        assert session._direct_fd >= 0  # read from the set, once its events were on again


async def _answered_up_to(client, last: int) -> list[int]:
    """The msg ids of the answers received until the one of ``last``, each once (the frame that spent
    the bucket is answered twice: its own answer and QUOTA_LIMIT)."""
    ids: list[int] = []
    while not ids or ids[-1] != last:
        command, msg_id, _ = await client.recv()
        assert command == Command.RESPONSE
        if msg_id not in ids:
            ids.append(msg_id)
    return ids


def _end_rest(reads) -> None:
    """What the rest's timer does when it fires (its own firing cancelled)."""
    reads._rest.cancel()
    reads._rested()


async def _a_set_that_read_rests_and_then_reads_what_came(data_dir) -> None:
    """Coalescing: after a wakeup that read, the set is not watched until its rest ends (a timer, ended
    here by the test, long before its 1 s); what came meanwhile is read then, and the set
    rests again. An idle set is read at once: the first ping is answered without a rest's end."""
    async with running(data_dir, read_coalesce_ms=1000) as server, _logged_in(server, "rests") as (dev, client):
        reads = server.hardware.context.direct
        if reads._rest is not None:  # the info message after the login was read from the set
            _end_rest(reads)
        assert reads._rest is None  # that poll read nothing: the set is watched again
        assert await client.ping() == Status.SUCCESS  # read at once
        rest = reads._rest
        assert rest is not None  # it read: it rests
        client.virtual_write(1, 42)  # on the server's socket once sent (loopback)
        assert select.select([reads._fd], [], [], 5)[0] == [reads._fd]  # the set holds a ready socket...
        assert reads._gate.poll(0) == []  # ... and the loop, watching the gate, is not woken for it
        values = server.domain.device_by_token(dev.token).values
        assert "v1" not in values
        _end_rest(reads)
        assert values["v1"][0] == b"42"  # read by the poll that ended the rest
        assert reads._rest is not None and reads._rest is not rest  # it read again: another rest...
        assert not reads._gate_on  # ... and the gate stayed off from one rest to the next
        _end_rest(reads)
        assert reads._rest is None and reads._gate_on  # a poll that read nothing: watched again
        assert await client.ping() == Status.SUCCESS


async def _no_rest_with_coalescing_off(data_dir) -> None:
    async with running(data_dir, read_coalesce_ms=0) as server, _logged_in(server, "norest") as (_, client):
        reads = server.hardware.context.direct
        assert await client.ping() == Status.SUCCESS
        assert reads._gate is None and reads._rest is None


async def _off_every_transport_reads_its_own(data_dir) -> None:
    async with running(data_dir, direct_reads=False) as server:
        dev = await _device(server, "off")
        assert server.hardware.context.direct is None
        client = await DeviceClient.connect(*server.hardware.address, dev.token)
        try:
            assert server.hub.link(dev.id)._direct_fd == -1
            assert await client.ping() == Status.SUCCESS
        finally:
            await client.close()


SCENARIOS = [
    _reads_from_the_set_until_the_device_closes,
    _a_replaced_session_leaves_the_set,
    _a_burst_waits_its_turn_and_is_answered_whole,
    _bytes_that_came_while_paused_are_read_when_it_resumes,
    _a_set_that_read_rests_and_then_reads_what_came,
    _no_rest_with_coalescing_off,
    _off_every_transport_reads_its_own,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("loop", LOOPS)
def test_direct_reads(loop, scenario, tmp_path):
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(scenario(tmp_path / "data"))


@pytest.mark.parametrize("coalesce", [-0.001, 0.0005, 1.5])
def test_a_rest_outside_0_or_1_ms_to_1_s_is_refused(coalesce):
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="read_coalesce_ms"):
            hotpath.DirectReads(loop, coalesce)
    finally:
        loop.close()


@pytest.mark.parametrize(
    ("raw", "ok"), [("0", True), ("1", True), ("1000", True), ("1001", False), ("-1", False), ("0.5", False)]
)
def test_the_rest_setting_is_checked_when_the_settings_load(raw, ok):
    env = {"BLYNK_READ_COALESCE_MS": raw}
    if ok:
        assert config.load(env=env).read_coalesce_ms == float(raw)
    else:
        with pytest.raises(
            ValueError, match=r"read_coalesce_ms must be 0 or 1..1000 \(the loop's timers count whole milliseconds\)"
        ):
            config.load(env=env)
