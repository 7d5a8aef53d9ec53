"""The session and the listener's poller (``HardwareSession.poll_reads``): once a plain-TCP connection
speaks the binary protocol, the poller reads it and the transport never again; pausing and resuming
reads go to the poller; closing lets go of the socket before the transport closes it; the end of the
stream closes, an error aborts. On the fake loop, with a poller that records what it is asked and
delivers like the real ones (which are tested on real sockets in ``test_poller.py``)."""

from __future__ import annotations

import errno
import socket

import pytest

from protocol import Command, Status
from tests.unit import fakes
from tests.unit.fakes import response

world, world_factory, both_twins = fakes.world, fakes.world_factory, fakes.both_twins
pytestmark = pytest.mark.usefixtures("both_twins")  # each test on the compiled and the pure twin


@pytest.fixture
def sockets():
    """Real sockets for the fake transports (the session asks a transport's socket for the peer)."""
    made: list[socket.socket] = []

    def make() -> socket.socket:
        ours, theirs = socket.socketpair()
        made.extend((ours, theirs))
        return ours

    yield make
    for s in made:
        s.close()


class RecordingPoller:
    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.sessions: dict = {}
        self.calls: list[tuple[str, int]] = []
        self.closing_at_discard: list[bool] = []

    def add(self, fd: int, session) -> None:
        if self.refuse:
            raise OSError(errno.EPERM, "not for epoll")
        self.sessions[fd] = session
        self.calls.append(("add", fd))

    def pause(self, fd: int) -> None:
        self.calls.append(("pause", fd))

    def resume(self, fd: int) -> None:
        self.calls.append(("resume", fd))

    def discard(self, fd: int, session) -> None:
        if self.sessions.get(fd) is session:
            del self.sessions[fd]
            self.closing_at_discard.append(session.transport.is_closing())
        self.calls.append(("discard", fd))

    def deliver(self, dev) -> None:
        """One wakeup for ``dev``: what its session offers of the bytes waiting, as the real pollers."""
        session = self.sessions[dev.session._fd]
        data = dev.transport.inbound
        n = min(session.read_offer(), len(data))
        session.ctx.turns.buf[:n] = data[:n]
        del data[:n]
        session.buffer_updated(n)


def polled_login(w, poller: RecordingPoller, sock: socket.socket, **extra):
    """Connect and log in. This port speaks only the binary protocol (the fake world has no HTTP), so
    the poller takes a plain-TCP connection at once, its login included."""
    w.ctx.poller = poller
    dev = w.connect(extra={"socket": sock, **extra})
    dev.send(Command.HW_LOGIN, w.token)
    if dev.session._fd >= 0:
        poller.deliver(dev)
    w.loop.run_until_idle()
    assert dev.frames() == [response(1, Status.SUCCESS)]
    return dev


def test_the_poller_reads_a_binary_connection_from_its_first_bytes_on(world, sockets):
    poller = RecordingPoller()
    sock = sockets()
    dev = polled_login(world, poller, sock)
    assert poller.sessions == {sock.fileno(): dev.session} and dev.session._fd == sock.fileno()
    assert not dev.transport.reading  # the transport's own reading is paused for good
    dev.send(Command.HARDWARE, "vw\x003\x0042", msg_id=2)
    dev.send(Command.PING, msg_id=3)
    assert dev.frames() == []  # nothing read until the poller reads
    poller.deliver(dev)
    world.loop.run_until_idle()
    assert dev.frames() == [response(3, Status.SUCCESS)]
    assert world.pending_value(dev.session.device.id, "v3")[0] == b"42"


def test_pausing_and_resuming_reads_go_to_the_poller(world_factory, sockets):
    w = world_factory(message_rate=2.0, message_burst=2.0)
    poller = RecordingPoller()
    sock = sockets()
    dev = polled_login(w, poller, sock)
    for i in range(2, 8):
        dev.send(Command.PING, msg_id=i)
    poller.deliver(dev)  # over the bucket: flood control pauses reading
    assert poller.calls[-1] == ("pause", sock.fileno())
    w.loop.advance(10)
    assert poller.calls[-1] == ("resume", sock.fileno())
    assert not dev.transport.reading


def test_closing_lets_go_of_the_socket_before_the_transport_closes_it(world, sockets):
    poller = RecordingPoller()
    sock = sockets()
    dev = polled_login(world, poller, sock)
    dev.session.close("test")
    world.loop.run_until_idle()
    assert ("discard", sock.fileno()) in poller.calls and poller.sessions == {}
    assert poller.closing_at_discard == [False]
    assert dev.transport.lost and dev.session._fd == -1


def test_the_end_of_the_stream_closes_and_an_error_aborts(world, sockets):
    poller = RecordingPoller()
    dev = polled_login(world, poller, sockets())
    poller.sessions.clear()  # the poller lets go of it before it says so
    dev.session.read_ended(None)
    world.loop.run_until_idle()
    assert dev.transport.lost and not dev.transport.aborted
    other = polled_login(world, poller, sockets())
    poller.sessions.clear()
    other.session.read_ended(ConnectionResetError(errno.ECONNRESET, "reset"))
    world.loop.run_until_idle()
    assert other.transport.aborted and other.transport.lost


def test_a_descriptor_the_poller_refuses_is_read_by_the_transport(world, sockets):
    dev = polled_login(world, RecordingPoller(refuse=True), sockets())
    assert dev.session._fd == -1 and dev.transport.reading
    assert dev.request(Command.PING) == [response(2, Status.SUCCESS)]


def test_a_tls_connection_is_read_by_its_transport(world, sockets):
    poller = RecordingPoller()
    dev = polled_login(world, poller, sockets(), sslcontext=object())
    assert poller.calls == [] and dev.session._fd == -1 and dev.transport.reading
    assert dev.request(Command.PING) == [response(2, Status.SUCCESS)]


def test_no_poller_no_change(world):
    dev = world.login()
    assert world.ctx.poller is None and dev.session._fd == -1 and dev.transport.reading
