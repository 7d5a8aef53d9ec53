"""One device connection on asyncio: a thin ``BufferedProtocol`` adapter around ``DeviceConnection``.

The protocol logic (login, info, held pushes, pacing, flood bucket, heartbeat, bridges, handlers) is
the sans-I/O core in ``connection.py``; the adapter subclasses it, so a session is one object (and the
hub's ``DeviceLink``). What the adapter adds is I/O only:

- reads: the loop reads at most ``recv_buffer`` bytes into the buffer the listener's sessions share
  (``turns.ReadTurns``) and ``buffer_updated`` hands them to the core with the loop's time; when a read
  fills the buffer, reading pauses and the session waits for a later loop turn, so busy sockets cannot
  starve the others. ``feed`` is the same for bytes that came another way (the WebSocket door). A
  plain TCP session is read instead by the listener's epoll set after its first bytes (``go_direct``,
  ``_direct_read``: ``direct.py``); its pauses then switch its events off there
  (``_pause_reads``/``_resume_reads``), and at the end of its socket the transport reads again;
- after every call into the core, ``_sync`` writes what the core produced (``out``) and, only when the
  core flagged something (``dirty``), closes, pauses or resumes reading, and moves timers: the
  login/heartbeat deadline ``hb_at`` on the listener's shared wheel (``deadlines.Deadlines``), the short
  timers (``timer_at()``: flood resume, held pushes, paced frames) on one loop timer; the turn budget
  (``budget.py``): refilled at the next turn once a quarter is spent, and a read the core deferred
  pauses the socket and queues the session until ``ReadTurns`` hands it a later turn (``_run_deferred``);
- the transport's write-buffer limits drive ``pause_writing``/``resume_writing``; a device whose unsent
  output passes ``write_buffer_max`` is closed, and a closed one gets ``CLOSE_GRACE`` to take the rest.

Which protocol a device port's connection speaks (binary or HTTP) is decided in front of the session,
by ``sniff.FirstBytes``.

Its compiled twin ``_session_c`` (``_session_c.pxd``) makes ``HardwareSession`` an extension type
deriving from the compiled core's (C fields, and ``_sync``/``_apply``/``_check_unsent``/``_wait_turn``/
``_resume_reading`` as C methods), so a read reaches ``out``, ``dirty``, ``closed`` and ``write_blocked``
and calls ``receive_into`` without a Python-level attribute access or call. ``asyncio.BufferedProtocol``
stays its second base (Cython allows a Python base without instance layout): asyncio's own loops and
``sslproto`` pick the buffered read path with ``isinstance``, uvloop by the presence of ``get_buffer``
(both are tested: tests/integration/test_event_loops.py). This file is the one source of behaviour and,
as it is, the pure-Python twin, on the pure core; ``__slots__`` is for that twin (compiled, the layout is
the ``.pxd``'s and ``__slots__`` only a class attribute). A method another module or a loop callback
calls (``feed``, ``_on_deadline``, ``_resume_turn``, ``_on_timer``…) stays a ``def``; a new field is
declared in the ``.pxd`` too.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from errno import EAGAIN
from typing import TYPE_CHECKING

from blynk_server.hardware.connection import (  # noqa: F401 - the limits, importable from here as before
    BUDGET,
    CLOSE,
    CLOSE_QUIETLY,
    DEADLINE,
    DEFER,
    MAX_BRIDGES,
    MAX_HELD,
    MAX_NOTIFY,
    MAX_PACED,
    PACE_GAP,
    READ,
    TIMER,
)
from blynk_server.hardware.direct import ENDED

try:
    import cython  # compiling: Cython's own; with Cython installed, its pure-Python stand-in
except ImportError:  # no Cython here: this is the pure-Python twin
    from blynk_server import nocython as cython

if cython.compiled:  # each twin derives from the core of its kind (the compiled one as _session_c.pxd says)
    from blynk_server.hardware._connection_c import DeviceConnection
else:
    from blynk_server.hardware.connection import DeviceConnection

if TYPE_CHECKING:
    from blynk_server.hardware.context import SessionContext
    from blynk_server.hardware.turns import ReadTurns

CLOSE_GRACE = 5.0  # seconds a closed connection may take to send what is left before it is aborted


def peer_address(transport) -> tuple[str, int]:
    """The peer's IP and port. The IP is one string per address (``sys.intern``: the connections from
    one IP share it; it goes with the last of them). Read from the socket itself where there is one:
    uvloop's ``get_extra_info("peername")`` keeps a tuple per connection for as long as it lives, ~140
    bytes of an idle session's ~2 KB."""
    sock = transport.get_extra_info("socket")
    try:
        if sock is not None:
            own = socket.socket(sock.family, sock.type, sock.proto, sock.fileno())
            try:
                peer = own.getpeername()
            finally:
                own.detach()  # the transport's descriptor: never closed here
        else:
            peer = transport.get_extra_info("peername")  # a carrier without a socket (the WebSocket door)
    except OSError:  # gone already
        peer = None
    if not peer:
        return "?", 0
    return sys.intern(str(peer[0])), int(peer[1])


class HardwareSession(DeviceConnection, asyncio.BufferedProtocol):
    """The server side of one device TCP/TLS (or WebSocket) connection."""

    __slots__ = (
        "transport",
        "_deadline_key",
        "_timer",
        "_offered",
        "_granted",
        "_turn_paused",
        "_direct_fd",
        "_direct_paused",
    )

    def __init__(self, ctx: SessionContext) -> None:
        DeviceConnection.__init__(self, ctx)  # the loop and the read turns are the context's (ctx.loop, ctx.turns)
        self.transport: asyncio.Transport | None = None
        turns: ReadTurns = ctx.turns
        self._deadline_key = 0  # the bucket of hb_at on the shared wheel (0: none)
        self._timer: asyncio.TimerHandle | None = None  # at timer_at()
        # One receive buffer for all sessions: the loop reads into it and calls buffer_updated at once,
        # which consumes or copies every byte (the decoder keeps partial frames in its own buffer). A
        # 4 KiB buffer per session was a third of an idle session's memory.
        self._buf = turns.buf
        self._view = turns.view
        self._offered = len(self._buf)
        self._granted = False  # this read was granted by ReadTurns: the full buffer even when busy
        self._turn_paused = False
        self._direct_fd = -1  # the socket, while ctx.direct reads it (direct.py); -1: the transport reads
        self._direct_paused = False  # its read events are off there

    # --- transport callbacks ------------------------------------------------------------------

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        ip, port = peer_address(transport)
        if self.start(ip, port, self.ctx.loop.time()):
            high = self.ctx.settings.write_buffer_high
            transport.set_write_buffer_limits(high=high, low=high // 4)  # drives pause/resume_writing
            self.ctx.sessions.add(self)
        self._sync()

    def get_buffer(self, sizehint: int):  # type: ignore[override]
        return self._offer()

    def _offer(self):
        """The buffer this read may fill (the transport's or ``_direct_read``'s), its length ``_offered``.
        While busy sockets wait their turn, a socket not granted one reads a little only: a pile of
        sockets turning busy at once (a flood starting) cannot make one loop turn long."""
        if self._granted or not self.budget.turns_waiting:  # the listener's ReadTurns.waiting, as a C field
            self._offered = len(self._buf)  # the whole shared buffer: _view is all of _buf
            return self._view
        view = self.ctx.turns.small
        self._offered = len(view)
        return view

    def buffer_updated(self, nbytes: int) -> None:
        self._on_read(nbytes, self.ctx.loop.time())

    def _on_read(self, nbytes: int, now: float) -> None:
        """``nbytes`` read at ``now`` into the buffer ``get_buffer`` offered (by the transport, or
        ``_direct_read``)."""
        self.receive_into(nbytes, now)
        out = self.out
        if out is not None and not self.dirty and type(out) is bytes:
            self.out = None  # a read's usual single answer (a PING's, a vw's): _sync, inlined
            self.transport.write(out)
            if self.write_blocked:
                self._check_unsent()
                if self.dirty:
                    self._apply()
        elif out is not None or self.dirty:
            self._sync()
        if self.closed:
            return
        self._granted = False
        if nbytes == self._offered and not self._turn_paused:
            self._wait_turn()

    def feed(self, data) -> None:
        """Bytes that came by another carrier than this transport's reads (the WebSocket door's
        messages), at most ``read_size`` at a time; a full one waits for a read turn like a full read."""
        self.receive_data(data, self.ctx.loop.time())
        self._sync()
        if self.closed:
            return
        if len(data) >= len(self._buf) and not self._turn_paused:
            self._wait_turn()

    @property
    def read_size(self) -> int:
        """The most bytes one read hands to the core."""
        return len(self._buf)

    def connection_lost(self, exc) -> None:
        if self._direct_fd >= 0:
            self._leave_direct()
        DeviceConnection.connection_lost(self, exc)
        self.ctx.sessions.discard(self)
        self.ctx.deadlines.cancel(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self.writing_paused(self.ctx.loop.time())
        if not self.closed:
            self._pause_reads()

    def resume_writing(self) -> None:
        self.writing_resumed(self.ctx.loop.time())
        self._resume_reading()

    # --- what others call (the hub's DeviceLink, the listener, the sniffer) ---------------------------

    def push(self, command: int, body: bytes, msg_id: int | None = None, now: float | None = None) -> bool:
        ok = DeviceConnection.push(self, command, body, msg_id, self.ctx.loop.time() if now is None else now)
        self._sync()
        return ok

    def close(self, reason: str) -> None:
        DeviceConnection.close(self, reason)
        self._sync()

    def local_host(self) -> str | None:
        """The local address the device reached us on (the socket's ``sockname``), None when unknown."""
        sock = self.transport.get_extra_info("sockname") if self.transport is not None else None
        return str(sock[0]) if sock else None

    def handed_off(self) -> None:
        """The sniffer gave the connection to HTTP: no deadline, not pending, not a session."""
        DeviceConnection.handed_off(self)
        self.ctx.deadlines.cancel(self)
        self.ctx.sessions.discard(self)

    # --- carrying out what the core asks ------------------------------------------------------------

    def _sync(self) -> None:
        """Write what the core produced, then act on what it flagged."""
        out = self.out
        if out is not None:
            self.out = None
            transport = self.transport
            if type(out) is list:
                for data in out:
                    transport.write(data)
            else:
                transport.write(out)
            if self.write_blocked:
                self._check_unsent()
        if self.dirty:
            self._apply()

    def _check_unsent(self) -> None:
        """After a write while pause_writing holds (more than write_buffer_high unsent): over
        write_buffer_max, the device is not reading its replies."""
        unsent = self.transport.get_write_buffer_size()
        if unsent > self.ctx.settings.write_buffer_max:
            self.close_slow(f"{unsent} bytes unsent (write_buffer_max {self.ctx.settings.write_buffer_max})")

    def _apply(self) -> None:
        dirty, self.dirty = self.dirty, 0
        if dirty & BUDGET:
            self.ctx.turns.drawn()
        if dirty & DEFER and not self.closed:
            self._pause_reads()
            self.ctx.turns.defer_read(self)
        if dirty & DEADLINE:
            if self.hb_at and not self.closed:
                self.ctx.deadlines.set_at(self, self.hb_at)
            else:
                self.ctx.deadlines.cancel(self)
        if dirty & TIMER:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            when = self.timer_at()
            if when and not self.closed:
                self._timer = self.ctx.loop.call_at(when, self._on_timer, when)
        if dirty & READ:
            if self.read_blocked():
                self._pause_reads()
            else:
                self._resume_reading()
        if dirty & (CLOSE | CLOSE_QUIETLY) and self._direct_fd >= 0:
            self._leave_direct()  # before the transport closes the descriptor
        if dirty & CLOSE:
            transport = self.transport
            unsent = transport.get_write_buffer_size()
            if unsent > self.ctx.settings.write_buffer_high:
                transport.abort()  # a device that does not read would keep its unsent output alive
            else:
                transport.close()  # sends what is left, then closes
                if unsent:  # ... unless the device never reads it: then it goes after CLOSE_GRACE
                    self.ctx.loop.call_later(CLOSE_GRACE, self._abort_unsent)
        elif dirty & CLOSE_QUIETLY:
            self.transport.close()

    def _on_deadline(self) -> None:
        """The shared wheel reached ``hb_at`` (never early; up to its resolution late)."""
        now = self.ctx.loop.time()
        self.handle_timer(now if now > self.hb_at else self.hb_at)
        self._sync()

    def _on_timer(self, when: float) -> None:
        self._timer = None
        now = self.ctx.loop.time()
        self.handle_timer(now if now > when else when)  # a loop may run a timer a hair early
        self._sync()

    def _run_deferred(self) -> None:
        """A later turn for the read the core deferred (``ReadTurns``)."""
        self.run_deferred(self.ctx.loop.time())
        self._sync()

    def _abort_unsent(self) -> None:
        transport = self.transport
        if transport is not None and transport.get_write_buffer_size():
            transport.abort()

    def _wait_turn(self) -> None:
        """A full buffer: every other socket has its turn before this one is read again."""
        self._turn_paused = True
        self._pause_reads()
        self.ctx.turns.defer(self)

    def _resume_turn(self) -> None:
        self._turn_paused = False
        self._granted = True
        self._resume_reading()

    def _resume_reading(self) -> None:
        """Read again, unless another reason to pause remains (flood, read turn, unsent output)."""
        if not (self._turn_paused or self.read_blocked()):
            self._resume_reads()

    def _pause_reads(self) -> None:
        if self._direct_fd < 0:
            self.transport.pause_reading()
        elif not self._direct_paused:
            self._direct_paused = True
            self.ctx.direct.reading(self, self._direct_fd, False)

    def _resume_reads(self) -> None:
        if self._direct_fd < 0:
            self.transport.resume_reading()
        elif self._direct_paused:
            self._direct_paused = False
            self.ctx.direct.reading(self, self._direct_fd, True)

    # --- reads from the listener's epoll set (direct.py) ---------------------------------------------

    def go_direct(self) -> None:
        """From now on ``ctx.direct`` reads this socket, if there is one and it is plain TCP; the
        transport's reading pauses (it still writes and closes)."""
        direct = self.ctx.direct
        transport = self.transport
        if direct is None or self.closed or self._direct_fd >= 0:
            return
        if transport.get_extra_info("sslcontext") is not None:
            return  # TLS: the bytes on the socket are not the protocol's
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        fd = sock.fileno()
        transport.pause_reading()
        self._direct_fd = fd
        self._direct_paused = self._turn_paused or self.read_blocked()
        direct.add(self, fd, not self._direct_paused)

    def _direct_read(self, events: int, now: float) -> None:
        """The set found this socket ready (``events``) at ``now`` (the loop's time, read once per
        wakeup): one read, as the transport's would be. At the end of the socket (nothing read, an
        error, a hang-up) the transport takes the reading back."""
        fd = self._direct_fd
        if fd < 0 or self.closed:
            return
        if not events & ENDED:
            if self._direct_paused:
                return  # paused by a read before it in this wakeup
            view = self._offer()
            if cython.compiled:
                n = blynk_recv(fd, self._buf, self._offered)  # noqa: F821 - C, declared in _session_c.pxd
                if n == -EAGAIN:
                    return
            else:
                try:
                    n = os.readv(fd, [view])
                except BlockingIOError:
                    return
                except OSError:
                    n = -1
            if n > 0:
                self._on_read(n, now)
                return
        paused = self._direct_paused
        self._leave_direct()
        if not paused:
            self.transport.resume_reading()

    def _leave_direct(self) -> None:
        self.ctx.direct.remove(self, self._direct_fd)
        self._direct_fd = -1
        self._direct_paused = False
