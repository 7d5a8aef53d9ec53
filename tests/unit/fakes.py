"""In-process doubles for the unit tests: a fake loop (a clock the test moves), a fake transport, and
one fixture that builds a real Domain on a real SqliteStore around them.

Nothing here opens a socket or sleeps. Time moves only in ``FakeLoop.advance``; a "loop turn" is one
``FakeLoop.run_ready`` pass over the callbacks scheduled with ``call_soon``.

Use from a test module::

    from tests.unit import fakes

    world, world_factory = fakes.world, fakes.world_factory  # the fixtures

    def test_something(world):
        dev = world.login()
        assert dev.request(Command.PING) == [fakes.response(2, Status.SUCCESS)]
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from blynk_server.config import Settings
from blynk_server.domain import Domain
from blynk_server.hardware import budget, hotpath, sniff, stats
from blynk_server.hardware.context import SessionContext
from blynk_server.hardware.session import HardwareSession
from blynk_server.hardware.sniff import FirstBytes
from blynk_server.hub import Hub
from blynk_server.model import Datastream
from blynk_server.store import SqliteStore
from protocol import Command, Decoder, Status, encode_frame

MAX_CALLBACKS = 100_000  # per advance()/run_until_idle(): a callback that reschedules itself forever fails the test


class FakeHandle:
    """What ``call_at``/``call_later``/``call_soon`` return: ``cancel()``, ``cancelled()``, ``when()``."""

    __slots__ = ("_when", "_callback", "_args", "_cancelled")

    def __init__(self, when: float | None, callback: Callable, args: tuple) -> None:
        self._when = when
        self._callback = callback
        self._args = args
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled

    def when(self) -> float | None:
        return self._when

    def _run(self) -> None:
        if not self._cancelled:
            self._callback(*self._args)


class FakeLoop:
    """The part of an asyncio loop the session, ``Deadlines``, ``LoginGuard`` and ``ReadTurns`` use.

    ``time()`` stands still until the test calls ``advance``; timers fire in time order, each at
    exactly its time (``time()`` equals the handle's ``when()`` while it runs), and the ``call_soon``
    callbacks they schedule run before the next timer, as on a real loop.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = float(start)
        self._timers: list[tuple[float, int, FakeHandle]] = []
        self._ready: collections.deque[FakeHandle] = collections.deque()
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_soon(self, callback: Callable, *args: Any, context: Any = None) -> FakeHandle:
        handle = FakeHandle(None, callback, args)
        self._ready.append(handle)
        return handle

    def call_at(self, when: float, callback: Callable, *args: Any, context: Any = None) -> FakeHandle:
        handle = FakeHandle(float(when), callback, args)
        heapq.heappush(self._timers, (handle._when, next(self._seq), handle))
        return handle

    def call_later(self, delay: float, callback: Callable, *args: Any, context: Any = None) -> FakeHandle:
        return self.call_at(self.now + delay, callback, *args)

    # --- driving ----------------------------------------------------------------------------------

    def run_ready(self) -> int:
        """One loop turn: run the callbacks that were ready when it started (those they schedule with
        ``call_soon`` wait for the next turn). Returns how many ran."""
        n = len(self._ready)
        for _ in range(n):
            self._ready.popleft()._run()
        return n

    def run_until_idle(self) -> None:
        """Loop turns until nothing is ready (timers in the future stay)."""
        ran = 0
        while self._ready:
            ran += self.run_ready()
            if ran > MAX_CALLBACKS:
                raise RuntimeError("callbacks keep scheduling callbacks: the loop never goes idle")

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward, firing every timer due on the way at its own time."""
        assert seconds >= 0
        target = self.now + seconds
        self.run_until_idle()
        fired = 0
        while self._timers and self._timers[0][0] <= target:
            when, _, handle = heapq.heappop(self._timers)
            if handle._cancelled:
                continue
            self.now = max(self.now, when)
            handle._run()
            self.run_until_idle()
            fired += 1
            if fired > MAX_CALLBACKS:
                raise RuntimeError(f"timers keep firing at t={self.now}: a timer that re-arms itself at once?")
        self.now = target

    def advance_to(self, when: float) -> None:
        self.advance(max(0.0, when - self.now))

    def timers(self) -> list[float]:
        """The times of the live (not cancelled) timers, soonest first."""
        return sorted(when for when, _, h in self._timers if not h._cancelled)


class FakeTransport:
    """A socket transport as the session sees it.

    What the session writes is kept in ``out`` (all of it) and decoded by ``frames()``. Bytes "on the
    wire" to the session wait in ``inbound`` and are delivered through the ``BufferedProtocol`` API
    (``get_buffer``/``buffer_updated``) while reading is not paused; ``resume_reading`` delivers the
    rest on the next loop turn, as a real loop reads a socket on its next turn.

    The send side: normally everything written is sent at once (``get_write_buffer_size()`` is 0).
    ``stall()`` makes writes pile up as unsent bytes, calling the protocol's ``pause_writing`` above
    the high mark like a real transport; ``drain()`` sends them and calls ``resume_writing``.
    ``close``/``abort`` call the protocol's ``connection_lost`` on the next turn, as asyncio does.
    """

    def __init__(
        self, loop: FakeLoop, peer: tuple[str, int] = ("203.0.113.7", 40001), sock=("192.0.2.1", 8080)
    ) -> None:
        self.loop = loop
        self.extra = {"peername": peer, "sockname": sock}
        self.protocol: Any = None
        self.out = bytearray()
        self._read_at = 0  # how much of ``out`` frames() has decoded
        self._decoder = Decoder()
        self.inbound = bytearray()
        self.reading = True
        self.reads: list[int] = []  # size of each delivered read
        self.high: int | None = None
        self.low: int | None = None
        self.stalled = False
        self.unsent = 0
        self.writing_paused = False
        self.closing = False
        self.aborted = False
        self.lost = False

    # --- the asyncio.Transport API the session uses ------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high, self.low = high, low

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def write(self, data: bytes) -> None:
        assert not self.closing, "write after close"
        self.out += data
        if self.stalled:
            self.unsent += len(data)
            if self.high is not None and self.unsent > self.high and not self.writing_paused:
                self.writing_paused = True
                self.protocol.pause_writing()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        if not self.reading:
            self.reading = True
            self.loop.call_soon(self.deliver)

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self._lose()

    def abort(self) -> None:
        self.aborted = True
        self.unsent = 0
        self._lose()

    def _lose(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self._connection_lost)

    def _connection_lost(self) -> None:
        if not self.lost and self.protocol is not None:
            self.lost = True
            self.protocol.connection_lost(None)

    # --- driving ----------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes arrive from the device; delivered now unless reading is paused."""
        self.inbound += data
        self.deliver()

    def deliver(self) -> None:
        """Read what is waiting, one ``get_buffer``/``buffer_updated`` per read, while reading."""
        while self.inbound and self.reading and not self.closing:
            buf = self.protocol.get_buffer(len(self.inbound))
            n = min(len(buf), len(self.inbound))
            buf[:n] = self.inbound[:n]
            del self.inbound[:n]
            self.reads.append(n)
            self.protocol.buffer_updated(n)

    def stall(self) -> None:
        self.stalled = True

    def drain(self) -> None:
        """The device reads everything that was unsent."""
        self.stalled = False
        self.unsent = 0
        if self.writing_paused:
            self.writing_paused = False
            self.protocol.resume_writing()

    def frames(self) -> list[tuple]:
        """The frames written since the last call, decoded: ``(command, msg_id, body_or_status)``."""
        new = bytes(self.out[self._read_at :])
        self._read_at = len(self.out)
        return self._decoder.feed(new)


class Device:
    """A device on a fake connection to a real session."""

    def __init__(self, world: World, transport: FakeTransport, session: HardwareSession) -> None:
        self.world = world
        self.transport = transport
        self.session = session
        self._ids = itertools.count(1)

    def send(self, command: int, body: bytes | str = b"", msg_id: int | None = None) -> int:
        """Send one frame; returns its message id."""
        if isinstance(body, str):
            body = body.encode()
        if msg_id is None:
            msg_id = next(self._ids)
        self.transport.feed(encode_frame(command, msg_id, body))
        return msg_id

    def request(self, command: int, body: bytes | str = b"") -> list[tuple]:
        """Send one frame and return the frames written in answer (by the end of the loop turn)."""
        self.send(command, body)
        self.world.loop.run_until_idle()
        return self.transport.frames()

    def frames(self) -> list[tuple]:
        return self.transport.frames()

    @property
    def closed(self) -> bool:
        return self.transport.closing


def response(msg_id: int, status: int) -> tuple:
    return (Command.RESPONSE, msg_id, status)


@dataclasses.dataclass
class World:
    """A real Domain on a real SqliteStore (nothing flushed: no writer thread is started), a Hub, and a
    SessionContext around a FakeLoop; ``token`` belongs to a device of template ``TMPLunit``."""

    settings: Settings
    store: SqliteStore
    hub: Hub
    domain: Domain
    loop: FakeLoop
    ctx: SessionContext
    token: str
    device_id: int

    def connect(self, peer: tuple[str, int] = ("203.0.113.7", 40001)) -> Device:
        transport = FakeTransport(self.loop, peer=peer)
        first = FirstBytes(self.ctx)  # what the listener accepts with: it hands over to the session
        transport.set_protocol(first)
        first.connection_made(transport)
        return Device(self, transport, first.session)

    def login(self, token: str | None = None, command: int = Command.HW_LOGIN, **connect) -> Device:
        """Connect and log in; asserts the login was accepted."""
        dev = self.connect(**connect)
        assert dev.request(command, token or self.token) == [response(1, Status.SUCCESS)]
        dev._ids = itertools.count(2)
        return dev

    def add_device(self, name: str = "other", token: str | None = None):
        """Another device of the same template (its record), known to the domain."""
        record = off_thread(self.store.create_device, "TMPLunit", name, token)
        if hasattr(self.domain, "add_device"):  # issue 11's domain: provisioning adds it to memory
            self.domain.add_device(record)
        return record

    def pending_value(self, device_id: int, pin: str) -> tuple[bytes, int] | None:
        """The value of a pin waiting in the store's write-behind batch (nothing is flushed in these tests)."""
        return self.store._pending.values.get((device_id, pin))

    def close(self) -> None:
        off_thread(self.store.close)


DATASTREAMS = [
    Datastream("v1", "Temperature", "double", history=True),
    Datastream("v2", "Label", "string"),
    Datastream("v3", "Count", "int"),
]


def off_thread(fn: Callable, *args: Any) -> Any:
    """Run ``fn`` on another thread and return its result: SQLite work of the test's setup, kept off
    the thread that plays the event loop (the store may forbid SQLite there)."""
    out: list = []

    def run() -> None:
        try:
            out.append((True, fn(*args)))
        except BaseException as exc:  # re-raised on the test's thread
            out.append((False, exc))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value


@dataclasses.dataclass(frozen=True)
class Twin:
    """The classes of one twin of the device hot path: the session (on its core) and what it counts into."""

    session: type
    stats: type
    budget: type


IMPORTED = Twin(hotpath.HardwareSession, hotpath.HardwareStats, hotpath.TurnBudget)  # compiled where built
SOURCE = Twin(HardwareSession, stats.HardwareStats, budget.TurnBudget)  # the sources, always importable
_twin = IMPORTED  # what make_world builds with: see use_twin


def compiled_here() -> bool:
    return hotpath.IMPLEMENTATION == "cython"


def use_twin(name: str, monkeypatch) -> Twin:
    """Worlds and connections of this test use twin ``name`` ("compiled" skips where nothing is)."""
    if name == "compiled":
        if not compiled_here():
            pytest.skip("the hot path is not compiled here (no build, or BLYNK_NO_EXTENSIONS=1)")
        twin = IMPORTED
    else:
        twin = SOURCE
    monkeypatch.setattr(sys.modules[__name__], "_twin", twin)
    monkeypatch.setattr(sniff, "HardwareSession", twin.session)  # what FirstBytes creates
    return twin


@pytest.fixture(params=["compiled", "python"])
def both_twins(request, monkeypatch) -> Twin:
    """A module that takes this fixture (``pytestmark = pytest.mark.usefixtures("both_twins")``) runs
    each test on both twins of the hot path, in one process."""
    return use_twin(request.param, monkeypatch)


def make_world(tmp_path: Path, **settings: Any) -> World:
    """The setup every session test shares; ``settings`` override ``Settings()`` fields."""
    s = dataclasses.replace(Settings(data_dir=tmp_path / "data"), **settings)
    store = SqliteStore(s.data_dir)
    store.create_template("TMPLunit", "Unit", DATASTREAMS)
    record = store.create_device("TMPLunit", "dev")
    hub = Hub()
    domain = Domain(store, hub, s)
    if hasattr(domain, "load_snapshot"):  # issue 11's domain: loaded once at start, then pure memory
        domain.load_snapshot(store.load_all())
    if hasattr(store, "forbid_thread"):  # ... and no SQLite on the loop thread: the test's thread here
        store.forbid_thread(threading.get_ident())
    loop = FakeLoop()
    twin = _twin
    ctx = SessionContext(s, domain, hub, loop, twin.stats(), twin.budget(s.turn_budget))  # type: ignore[arg-type]
    return World(s, store, hub, domain, loop, ctx, record.token, record.id)


@pytest.fixture
def world_factory(tmp_path: Path):
    """``make(**settings)``: a World with those ``Settings`` overrides (closed at teardown)."""
    worlds: list[World] = []

    def make(**settings: Any) -> World:
        w = make_world(tmp_path / f"world{len(worlds)}", **settings)
        worlds.append(w)
        return w

    yield make
    for w in worlds:
        w.close()


@pytest.fixture
def world(world_factory) -> World:
    """A World with the default settings."""
    return world_factory()
