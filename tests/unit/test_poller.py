"""The batched reader of device sockets (``hardware/poller.py`` and its compiled twin ``_poller_c``), on
real sockets: every ready socket of a wakeup read before any read is handed over, each read at most what
its session offers, pauses, the end of a stream, errors, and one failing session not costing the
others their reads. A wakeup is one ``_ready()`` call (what the loop calls when the epoll descriptor is
readable); socket pairs are readable as soon as the peer has written, so nothing here waits on time."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct

import pytest

from blynk_server.hardware import poller as pure_poller
from tests.unit import fakes

both_twins = fakes.both_twins
pytestmark = [
    pytest.mark.usefixtures("both_twins"),  # each test on the compiled and the pure twin
    pytest.mark.skipif(not pure_poller.available(), reason="epoll is Linux only"),
]


class Reader:
    """What a session is to the poller: it offers ``offer`` bytes and records what it is handed."""

    def __init__(self, buf: bytearray, offer: int = 4096) -> None:
        self.buf = buf
        self.offer = offer
        self.got: list[bytes] = []
        self.ended: list[BaseException | None] = []
        self.on_read = None  # called in buffer_updated, before it returns

    def read_offer(self) -> int:
        return self.offer

    def buffer_updated(self, nbytes: int) -> None:
        self.got.append(bytes(self.buf[:nbytes]))
        if self.on_read is not None:
            self.on_read()

    def read_ended(self, exc: BaseException | None) -> None:
        self.ended.append(exc)


class Loop:
    """The loop as the poller uses it: it only registers and unregisters its epoll descriptor."""

    def __init__(self) -> None:
        self.readers: dict[int, object] = {}

    def add_reader(self, fd: int, callback) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> bool:
        return self.readers.pop(fd, None) is not None


@pytest.fixture
def make(both_twins):
    """A poller of the twin under test on a recording loop, and the socket pairs it made (closed after)."""
    made: list[socket.socket] = []

    def make_poller(size: int = 4096, loop: Loop | None = None):
        buf = bytearray(size)
        return both_twins.poller(loop or Loop(), buf), buf

    def pair() -> tuple[socket.socket, socket.socket]:
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        made.extend((ours, peer))
        return ours, peer

    yield make_poller, pair
    for s in made:
        s.close()


def drained(sock: socket.socket) -> bool:
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    return False


def test_each_ready_socket_is_read_once_and_handed_to_its_own_session(make):
    (make_poller, pair) = make
    poller, buf = make_poller()
    readers = []
    for i in range(3):
        ours, peer = pair()
        reader = Reader(buf)
        poller.add(ours.fileno(), reader)
        peer.send(f"device {i}".encode())
        readers.append(reader)
    poller._ready()
    assert [r.got for r in readers] == [[b"device 0"], [b"device 1"], [b"device 2"]]
    poller._ready()  # nothing more arrived: nothing more handed over
    assert [len(r.got) for r in readers] == [1, 1, 1]


def test_every_ready_socket_is_read_before_any_read_is_handed_over(make):
    (make_poller, pair) = make
    poller, buf = make_poller()
    socks, readers = [], []
    for i in range(4):
        ours, peer = pair()
        reader = Reader(buf)
        poller.add(ours.fileno(), reader)
        peer.send(b"x" * (i + 1))
        socks.append(ours)
        readers.append(reader)
    seen: list[list[bool]] = []
    for reader in readers:
        reader.on_read = lambda: seen.append([drained(s) for s in socks])
    poller._ready()
    assert seen == [[True] * 4] * 4  # at every hand-over, every socket of the wakeup had been read
    assert sorted(r.got[0] for r in readers) == [b"x", b"xx", b"xxx", b"xxxx"]


def test_a_read_takes_at_most_what_the_session_offers_and_the_rest_waits_for_the_next_wakeup(make):
    (make_poller, pair) = make
    poller, buf = make_poller()
    ours, peer = pair()
    reader = Reader(buf, offer=4)
    poller.add(ours.fileno(), reader)
    peer.send(b"0123456789")
    for _ in range(3):
        poller._ready()
    assert reader.got == [b"0123", b"4567", b"89"]


def test_a_paused_socket_is_not_read_until_it_is_resumed(make):
    (make_poller, pair) = make
    poller, buf = make_poller()
    ours, peer = pair()
    reader = Reader(buf)
    poller.add(ours.fileno(), reader)
    poller.pause(ours.fileno())
    peer.send(b"held")
    poller._ready()
    assert reader.got == []
    poller.resume(ours.fileno())
    poller._ready()
    assert reader.got == [b"held"]


def test_the_end_of_the_stream_ends_the_reads_and_lets_go_of_the_socket(make):
    (make_poller, pair) = make
    poller, buf = make_poller()
    ours, peer = pair()
    reader = Reader(buf)
    poller.add(ours.fileno(), reader)
    peer.send(b"last words")
    peer.shutdown(socket.SHUT_WR)
    poller._ready()
    assert reader.got == [b"last words"]
    poller._ready()
    assert reader.ended == [None]
    assert len(poller) == 0
    poller._ready()  # let go of: not reported again
    assert reader.ended == [None]


def test_a_reset_connection_ends_the_reads_with_the_error(make):
    (make_poller, _) = make
    poller, buf = make_poller()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    try:
        ours.setblocking(False)
        reader = Reader(buf)
        poller.add(ours.fileno(), reader)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # linger 0: a RST
        poller._ready()
        assert len(reader.ended) == 1
        assert isinstance(reader.ended[0], OSError) and reader.ended[0].errno == errno.ECONNRESET
        assert len(poller) == 0
    finally:
        ours.close()


def test_discard_by_another_session_leaves_the_socket_to_its_reader(make):
    """A descriptor the transport closed may already be a new connection's when the old session's
    ``connection_lost`` runs: only the session registered under it may let it go."""
    (make_poller, pair) = make
    poller, buf = make_poller()
    ours, peer = pair()
    new, old = Reader(buf), Reader(buf)
    poller.add(ours.fileno(), new)
    poller.discard(ours.fileno(), old)
    peer.send(b"still read")
    poller._ready()
    assert new.got == [b"still read"]
    poller.discard(ours.fileno(), new)
    assert len(poller) == 0


def test_a_session_closed_by_an_earlier_read_of_the_wakeup_is_not_handed_its_bytes(make):
    (make_poller, pair) = make
    poller, buf = make_poller()
    (a, a_peer), (b, b_peer) = pair(), pair()
    first, second = Reader(buf), Reader(buf)
    poller.add(a.fileno(), first)
    poller.add(b.fileno(), second)
    first.on_read = lambda: poller.discard(b.fileno(), second)  # e.g. a newer login with b's token
    second.on_read = lambda: poller.discard(a.fileno(), first)
    a_peer.send(b"a")
    b_peer.send(b"b")
    poller._ready()
    assert len(first.got) + len(second.got) == 1  # whichever went first closed the other


def test_a_failing_session_is_ended_and_the_others_still_get_their_reads(make, caplog):
    (make_poller, pair) = make
    poller, buf = make_poller()
    readers = []
    for i in range(3):
        ours, peer = pair()
        reader = Reader(buf)
        poller.add(ours.fileno(), reader)
        peer.send(bytes([65 + i]))
        readers.append(reader)
    failure = RuntimeError("a bug in one session")

    def fail():
        raise failure

    readers[1].on_read = fail
    with caplog.at_level(logging.ERROR, logger="blynk_server.hardware.poller"):
        poller._ready()
    assert [r.got for r in readers] == [[b"A"], [b"B"], [b"C"]]
    assert readers[1].ended == [failure] and readers[0].ended == readers[2].ended == []
    assert len(poller) == 2
    assert "device read failed" in caplog.text


def test_a_wakeup_larger_than_the_staging_area_is_handed_over_in_parts(make):
    (make_poller, pair) = make
    poller, buf = make_poller()
    count = pure_poller.STAGING // 4096 + 4  # their reads fill the staging area more than once
    readers = []
    for i in range(count):
        ours, peer = pair()
        reader = Reader(buf)
        poller.add(ours.fileno(), reader)
        peer.sendall(bytes([i]) * 4096)
        readers.append(reader)
    poller._ready()
    assert [r.got for r in readers] == [[bytes([i]) * 4096] for i in range(count)]


def test_at_most_max_events_sockets_are_read_per_wakeup(make):
    (make_poller, pair) = make
    poller, buf = make_poller()
    readers = []
    for _ in range(pure_poller.MAX_EVENTS + 10):
        ours, peer = pair()
        reader = Reader(buf)
        poller.add(ours.fileno(), reader)
        peer.send(b"!")
        readers.append(reader)
    poller._ready()
    assert sum(len(r.got) for r in readers) == pure_poller.MAX_EVENTS
    poller._ready()  # the rest stayed ready
    assert all(r.got == [b"!"] for r in readers)


def test_close_leaves_the_loop(make):
    (make_poller, _) = make
    loop = Loop()
    poller, _ = make_poller(loop=loop)
    assert len(loop.readers) == 1
    poller.close()
    assert loop.readers == {}


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_the_loop_wakes_the_poller_when_a_socket_is_readable(loop_name, both_twins):
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.SelectorEventLoop

    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        buf = bytearray(4096)
        poller = both_twins.poller(loop, buf)
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        got = loop.create_future()
        reader = Reader(buf)
        reader.on_read = lambda: got.done() or got.set_result(reader.got[-1])
        try:
            poller.add(ours.fileno(), reader)
            peer.send(b"wake up")
            return await asyncio.wait_for(got, 10)
        finally:
            poller.close()
            ours.close()
            peer.close()

    with asyncio.Runner(loop_factory=factory) as runner:
        assert runner.run(scenario()) == b"wake up"
