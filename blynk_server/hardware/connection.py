"""The device connection as a sans-I/O state machine: bytes and a time in, frames out.

``DeviceConnection`` knows the Blynk binary protocol of one device connection and nothing of sockets,
asyncio or clocks, in the manner of h11 and aioquic:

- ``receive_data(data, now)`` takes bytes as they came (any split) and the time of their arrival;
  the frames to send in answer are appended to ``out`` (a list of ready ``bytes``, oldest first) for
  the adapter to write in one call and clear;
- ``next_deadline()`` is the earliest time something must happen with no byte arriving, and
  ``handle_timer(now)`` does it: the login and heartbeat deadline (``hb_at``), the info grace, held
  pushes released after the info answer, paced frames and the end of a flood pause (``timer_at``);
- ``push`` (a server message, for the hub), ``close``, ``writing_paused``/``writing_resumed`` (the
  transport's output backed up, or drained) and ``connection_lost`` are the other inputs.

What the adapter must act on besides ``out`` is flagged with ``dirty``: a close to carry out
(``closing``), reading to stop or resume (``read_blocked``), a deadline moved (``hb_at``, ``timer_at``).
A read that changes none of them (a ping, a ``vw``) costs the adapter two checks.

It owns the login state machine, pushes held until the info answer, pacing for blynklib (one frame per
``recv()``), the per-connection flood bucket, the heartbeat deadline and bridges, and calls the
in-memory ``Domain`` and ``Hub`` directly (neither does I/O). Wall-clock milliseconds for stored
timestamps come from the context's ``wall_ms`` (``model.now_ms`` unless a test gives its own), read only
when a frame needs one. ``hardware/session.py`` is the asyncio adapter; ``http/websocket.py`` feeds the same adapter.

Cython builds the compiled twin ``_connection_c`` from this file, where ``_connection_c.pxd`` makes the
class an extension type (C fields, C methods for the per-message path); this file is the one source of
behaviour and, as it is, the pure-Python twin (``hotpath`` picks one). A new field or method is
declared there too; a method the adapter overrides or ``HANDLERS`` names stays a ``def``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

try:
    import cython  # compiling: Cython's own; with Cython installed, its pure-Python stand-in
except ImportError:  # no Cython here: this is the pure-Python twin
    from blynk_server import nocython as cython

from blynk_server.config import read_timeout
from blynk_server.domain import DeviceState, InvalidValue, device_timezone
from blynk_server.mailer import MailInvalid, MailNoRecipient, MailOff, MailRefused, MailTooSoon
from blynk_server.model import MAX_TS_MS, now_ms
from blynk_server.timeutil import UTC_REQUESTS, rtc_seconds, utc_answer
from protocol import Command, Decoder, FrameTooLarge, Status, encode_frame, encode_response
from protocol.body import (
    BodyError,
    BridgeInit,
    internal_body,
    is_info,
    parse_bridge,
    parse_event_clear,
    parse_event_log,
    parse_group,
    parse_hardware,
    parse_info,
    parse_internal,
    parse_property,
    parse_sync,
)

if TYPE_CHECKING:
    from blynk_server.hardware.context import SessionContext

# The session's logger name, as before the core was split out of it: log configurations keep working.
log = logging.getLogger("blynk_server.hardware.session")

LOGINS = (Command.LOGIN, Command.HW_LOGIN)
NOTIFICATIONS = (Command.TWEET, Command.EMAIL, Command.NOTIFY, Command.SMS)
MAX_HELD = 64  # pushes held while waiting for the info message
MAX_BRIDGES = 100  # per connection, as the legacy server
PACE_GAP = 0.05  # seconds between frames to a client that parses one frame per recv() (blynklib)
MAX_PACED = 1024  # frames queued for such a client before further ones are dropped
HELD_GAP = 0.05  # seconds between the info's answer and the held pushes (not in the same segment)
# A PING's answer status as a plain int: reading an IntEnum member goes through the enum's metaclass
# (~1.5 % of the server's CPU in ping-pong at 1,000 connections, when read per PING).
SUCCESS = int(Status.SUCCESS)
VW_KEYS = tuple(f"v{n}" for n in range(256))  # a lone write's pin key by number: no slice, no lookup

_WRITE_KEYS: dict[bytes, str] = {}  # b"vw\0" b"1" -> "v1": few distinct pins, so parse each once


def _write_key(prefix: bytes) -> str | None:
    """The pin key of a write's ``<op>\0<pin>`` prefix (op ``vw``/``dw``/``aw`` in any case, pin 0..255
    in decimal), or None when it is not a valid write."""
    key = _WRITE_KEYS.get(prefix)
    if key is None:
        # At most 3 digits: int() of a pin of any length must never run (Python refuses > 4,300 digits).
        if not 4 <= len(prefix) <= 6 or prefix[2] != 0 or prefix[1] != 0x77 or not prefix[3:].isdigit():
            return None
        kind = prefix[0] | 0x20
        number = int(prefix[3:])
        if number > 255 or kind not in (0x76, 0x64, 0x61):  # v d a
            return None
        key = f"{chr(kind)}{number}"
        if len(_WRITE_KEYS) < 4096:
            _WRITE_KEYS[prefix] = key
    return key


# ``dirty``: what the adapter must act on besides ``out`` (bits; see ``DeviceConnection``).
CLOSE = 1  # close after sending what is left (the adapter aborts when too much is left)
CLOSE_QUIETLY = 2  # close as is: a connection that never logged in
READ = 4  # the flood pause began or ended: pause or resume reading
DEADLINE = 8  # ``hb_at`` moved
TIMER = 16  # a timer of ``timer_at()`` changed
DEFER = 32  # this turn's budget is spent: the read was kept (``deferred``); stop reading, queue the session
BUDGET = 64  # a quarter of the turn budget is spent: it is to be refilled at the next turn


class DeviceConnection:
    """One device connection's protocol state; see the module docstring for the API.

    Also the hub's ``DeviceLink`` (``device``, ``info_acked``, ``buff_in``, ``push``, ``close``): the
    adapter subclasses it (as asyncpg's protocol subclasses its core), so a session is one object.
    """

    # No per-instance __dict__: with 15,000 idle sessions the dict was a fifth of the server's memory.
    __slots__ = (
        "ctx",
        "stats",
        "decoder",
        "_buf",
        "_view",
        "ip",
        "port",
        "out",
        "dirty",
        "now",
        "hb_at",
        "_pending",
        "write_blocked",
        "_write_blocked_at",
        "_reply_cost",
        "_noise",
        "device",
        "closed",
        "last_read",
        "timeout",
        "buff_in",
        "info_acked",
        "_held",
        "_release_at",
        "login_command",
        "_paced",
        "_paced_next",
        "_msg_id",
        "_batch_ms",
        "_rate",
        "_burst",
        "_tokens",
        "_tokens_at",
        "_flood_paused",
        "_last_quota",
        "_group_ts",
        "_bridges",
        "budget",
        "deferred",
        "_arrived_ms",
        "_max_body",
    )

    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self.stats = ctx.stats
        self.decoder: Decoder | None = None  # its own only while a partial frame waits (see _decode)
        self._buf: bytearray | None = None  # the adapter's receive buffer, for receive_into
        self._view: memoryview | None = None
        self.ip = "?"
        self.port = 0
        # Frames to send, oldest first: None, one ``bytes`` (a read's usual single answer: no list), or
        # a list of them. ``data_to_send()`` takes them as one ``bytes``.
        self.out: bytes | list[bytes] | None = None
        self.dirty = 0
        self.now = 0.0  # the time of the input being handled
        self.hb_at = 0.0  # the login or heartbeat deadline (0: none)
        self._pending = False  # counted by the listener's LoginGuard as waiting for login
        self.write_blocked = False  # more than write_buffer_high bytes wait to be sent: not read meanwhile
        self._write_blocked_at = 0.0
        self._reply_cost = 0  # frames sent in answer to this read's requests, charged with its frames
        self._noise = 0  # repeatable events noted for the log (see _should_log)
        self.device: DeviceState | None = None
        self.closed = False
        self.last_read = 0.0
        self.timeout = float(self.ctx.settings.login_timeout)
        self.buff_in = self.ctx.settings.default_buff_in
        self.info_acked = False
        self._held: list[tuple[int, bytes, int | None]] | None = None  # pushes waiting for the info answer
        self._release_at = 0.0  # held pushes go out then: the info grace, or HELD_GAP after the info
        self.login_command = 0
        self._paced: list[bytes] | None = None  # a queue once the client is known to need pacing
        self._paced_next = 0.0  # the next paced frame may go then (and a queued one does)
        self._msg_id = 0
        self._batch_ms = 0
        self._rate = self.ctx.settings.message_rate
        self._burst = self.ctx.settings.message_burst or self._rate
        self._tokens = self._burst
        self._tokens_at = 0.0
        self._flood_paused = False  # over the message rate: not read until the bucket is back at 0
        self._last_quota = -1e9
        self._group_ts: int | None = None
        self._bridges: dict[int, int] | None = None  # created by the first bridge
        self.budget = ctx.budget  # the listener's frames per loop turn (budget.TurnBudget)
        self.deferred: bytes | None = None  # a read kept for a later turn: the budget was spent
        self._arrived_ms = 0  # the wall time a deferred read arrived (its values' timestamp); 0: now
        self._max_body = ctx.decoder.max_body  # the decoder's body limit (max_frame), read once, not per read

    # --- inputs -----------------------------------------------------------------------------------

    def start(self, ip: str, port: int, now: float) -> bool:
        """A connection from ``ip`` and ``port`` (for the log) was accepted at ``now``. False
        when the guard refuses it (over a pending-login cap or the IP's failed-login budget): then it
        is to be closed at once, unanswered."""
        self.ip = ip
        self.port = port
        self.stats.connections += 1
        if self.ctx.guard.admit(ip) is not None:
            self.closed = True
            self.dirty |= CLOSE_QUIETLY
            return False
        self._pending = True
        self.last_read = now
        self._arm(now, self.timeout)
        return True

    def receive_data(self, data, now: float) -> None:
        """Bytes from the device (any bytes-like object, any split), arrived at ``now``."""
        self.stats.bytes_in += len(data)
        self.last_read = self.now = now
        # A lone PING, an idle device's only traffic: answered without the decoder or the frame loop.
        if len(data) == 5 and data[0] == 6 and not (data[3] or data[4] or self._queued_behind()):
            self._lone_ping((data[1] << 8) | data[2])
            return
        if self._defers():
            self._defer(bytes(data))
            return
        self._feed(data)

    def receive_into(self, nbytes: int, now: float) -> None:
        """``receive_data`` for the first ``nbytes`` of the receive buffer the adapter bound to ``_buf``
        (``_view`` is its memoryview): no slice for a lone ping, no call for the decoder."""
        self.stats.bytes_in += nbytes
        self.last_read = self.now = now
        buf = self._buf
        if nbytes == 5 and buf[0] == 6 and not (buf[3] or buf[4] or self._queued_behind()):
            self._lone_ping((buf[1] << 8) | buf[2])
            return
        if self._defers():
            self._defer(bytes(self._view[:nbytes]))
            return
        if self._lone_write(nbytes):
            return
        try:
            frames = self._decode(self._view[:nbytes])
        except FrameTooLarge as exc:
            self._too_large(exc)
            return
        if frames:
            self._handle_frames(frames)

    def receive_held(self, data: bytes) -> None:
        """Bytes read earlier (and counted then) by whatever sniffed the connection: fewer than a frame."""
        self._decode(data)

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must run if no byte arrives first (None: nothing pending)."""
        if self.closed:
            return None
        t = self.timer_at()
        hb = self.hb_at
        if hb and (not t or hb < t):
            t = hb
        return t or None

    def timer_at(self) -> float:
        """The earliest of the short timers (flood resume, held pushes, paced frames); 0: none. The
        adapter runs these on a precise timer and ``hb_at`` on the coarse shared wheel."""
        t = 0.0
        if self._flood_paused:
            t = self._tokens_at - self._tokens / self._rate
        r = self._release_at
        if r and (not t or r < t):
            t = r
        if self._paced:
            p = self._paced_next
            if not t or p < t:
                t = p
        return t

    def handle_timer(self, now: float) -> None:
        """Do what is due at ``now``: a login or heartbeat deadline, the end of a flood pause, held
        pushes, the next paced frame."""
        if self.closed:
            return
        self.now = now
        self.dirty |= TIMER  # the adapter re-arms at timer_at(), whatever moved
        hb = self.hb_at
        if hb and now >= hb:
            self.hb_at = 0.0
            self.dirty |= DEADLINE
            self._deadline(now)
            if self.closed:
                return
        if self._flood_paused and now >= self._tokens_at - self._tokens / self._rate:
            self._flood_paused = False
            self.dirty |= READ
        r = self._release_at
        if r and now >= r:
            self._release_at = 0.0
            self.info_acked = True
            self._release_held()
        queue = self._paced
        if queue and now >= self._paced_next:
            self._paced_next = now + PACE_GAP
            self._out(queue.pop(0))

    def push(self, command: int, body: bytes, msg_id: int | None = None, now: float | None = None) -> bool:
        """A server-initiated message (HTTP write, bridge, OTA). Held until the info message is
        answered, because blynklib reads the next frame after its info as the info's reply."""
        if self.closed:
            return False
        if now is not None:
            self.now = now
        if not self.info_acked:
            held = self._held
            if held is None:
                held = self._held = []
            if len(body) + 5 > self.buff_in and len(held) >= MAX_HELD:
                return False
            if len(held) >= MAX_HELD:
                held.pop(0)
            held.append((command, body, msg_id))
            return True
        return self._send(command, body, msg_id or 0)

    def close(self, reason: str) -> None:
        """Close the connection (logged); what was already sent or queued goes first."""
        self._close(reason)

    def close_slow(self, reason: str) -> None:
        """The device does not read what it is sent."""
        self.stats.slow_reader_closes += 1
        self._close(f"slow reader: {reason}")

    def writing_paused(self, now: float) -> None:
        """Over ``write_buffer_high`` bytes wait to go out: read nothing more from this device (its
        requests would only add replies) until they drain to the low mark."""
        self.write_blocked = True
        self._write_blocked_at = now
        self.stats.write_pauses += 1

    def writing_resumed(self, now: float) -> None:
        self.write_blocked = False
        self.last_read = now  # it was not read by our choice: its idle clock starts again

    def read_blocked(self) -> bool:
        """Reading waits: a flood pause or unsent output (read turns are the adapter's)."""
        return self._flood_paused or self.write_blocked or self.closed or self.deferred is not None

    def run_deferred(self, now: float) -> None:
        """The listener's queue reached this session in a later turn: handle the read kept then (its
        frames draw from the new turn's budget), stamped with the time it arrived; reading resumes."""
        data = self.deferred
        if data is None or self.closed:
            return
        self.deferred = None
        self.now = now
        self.dirty |= READ
        if not self._lone_write_copied(data):
            self._feed(data)  # stamped with _arrived_ms, set by _defer
        self._arrived_ms = 0

    def connection_lost(self, exc) -> None:
        self.run_deferred(self.now)  # a read received before the connection went: stored, not dropped
        self.closed = True
        self._release_pending()
        dev = self.device
        if dev is not None and self.ctx.hub.detach(dev.id, self):
            self.ctx.domain.set_offline(dev)
            log.info("device offline device=%d peer=%s reason=%s", dev.id, self._peer_text(), exc or "closed")

    def handed_off(self) -> None:
        """The connection went to another protocol (HTTP): it is no longer this one's, nor pending."""
        self._release_pending()
        self.closed = True
        self.hb_at = 0.0

    def data_to_send(self) -> bytes:
        """What ``out`` holds, as one ``bytes``, and ``out`` emptied (tests, other carriers)."""
        out, self.out = self.out, None
        if out is None:
            return b""
        return b"".join(out) if type(out) is list else out

    # --- reading ----------------------------------------------------------------------------------

    def _queued_behind(self) -> bool:
        """Is a lone PING not to be answered at once: before login, or behind bytes not yet handled
        (a partial frame in the decoder, a deferred read)?"""
        return self.device is None or self.deferred is not None or self.decoder is not None

    def _defers(self) -> bool:
        """Is this read to wait for a later turn: a logged-in device's, with the turn's budget spent or
        a read of its own already waiting (its bytes stay in order)?"""
        return self.device is not None and (self.deferred is not None or self.budget.spent())

    def _defer(self, data: bytes) -> None:
        """This turn's budget is spent: keep the read's bytes for a later turn (``run_deferred``)."""
        if self.deferred is None:
            self.deferred = data
            self._arrived_ms = self._wall_ms()
            self.budget.deferred_reads += 1
            self.dirty |= DEFER
        else:  # more bytes from another carrier before the turn came (not from a paused socket)
            self.deferred += data

    def _feed(self, data) -> None:
        try:
            frames = self._decode(data)
        except FrameTooLarge as exc:
            self._too_large(exc)
            return
        if frames:
            self._handle_frames(frames)

    def _decode(self, data) -> list:
        """The frames ``data`` completes. A session has a decoder of its own only while it holds part
        of a frame; reads that end on a frame boundary, nearly all, go through the one its listener
        shares (``ctx.decoder``). A decoder per session cost ~56 bytes each, and kept the buffer of the
        largest partial frame it ever held."""
        decoder = self.decoder
        if decoder is None:
            decoder = self.ctx.decoder
            frames = decoder.feed(data)  # FrameTooLarge leaves it empty: still the listener's to share
            if decoder.buffered:  # this session keeps the decoder holding its partial frame
                self.decoder = decoder
                self.ctx.decoder = Decoder(self.ctx.settings.max_frame)
            return frames
        frames = decoder.feed(data)
        if not decoder.buffered:
            self.decoder = None
        return frames

    def _too_large(self, exc: FrameTooLarge) -> None:
        """A frame over max_frame: the frames before it are handled, then the connection closes."""
        if exc.frames:
            self._handle_frames(exc.frames)
        self.stats.oversize_frames_in += 1
        if exc.msg_id and not self.closed:
            self._write(encode_response(exc.msg_id, Status.ILLEGAL_COMMAND), 0)
        if self.device is None:  # not logged in: no line of its own, and it counts as a failed login
            if not self.closed:
                self.stats.logins["frame_too_large"] += 1
                self._close_quietly("frame_too_large", True)
            return
        log.warning(
            "frame too large device=%s peer=%s command=%d length=%d limit=%d",
            self._who(),
            self._peer_text(),
            exc.command,
            exc.length,
            exc.limit,
        )
        self._close("frame too large")

    def _lone_write(self, nbytes: int) -> bool:
        """What ``_handle_frames`` does for a read holding one whole ``vw`` frame of a logged-in device
        ("vw\0<pin>\0<value>", a pin of 1-3 digits up to 255, a value of a byte or more), read from
        the buffer: no frame list, frame tuple, body or pin slice. False, nothing done, for any other
        read (the decoder takes it)."""
        buf = self._buf
        if nbytes < 9 or buf[0] != 20 or nbytes != 5 + ((buf[3] << 8) | buf[4]):
            return False
        if self.device is None or self.decoder is not None or (buf[5] | 0x20) != 0x76 or buf[6] != 0x77 or buf[7]:
            return False
        if nbytes - 5 > self._max_body:  # the decoder's answer: too large, closed
            return False
        pin = 0
        pos = 8
        while pos < 11 and pos < nbytes and 0x30 <= buf[pos] <= 0x39:
            pin = pin * 10 + buf[pos] - 0x30
            pos += 1
        if pos == 8 or pin > 255 or pos + 1 >= nbytes or buf[pos]:
            return False
        if self.closed:
            return True
        msg_id = (buf[1] << 8) | buf[2]
        self.stats.messages_in[20] += 1
        self._begin_read(1)
        # Compiled, one copy and no view (blynk_bytes_of: C, declared in _connection_c.pxd).
        raw = blynk_bytes_of(buf, pos + 1, nbytes) if cython.compiled else bytes(self._view[pos + 1 : nbytes])  # noqa: F821
        self._write_value(VW_KEYS[pin], raw, msg_id)
        self._charge_read(1, msg_id)
        return True

    def _lone_write_copied(self, data: bytes) -> bool:
        """``_lone_write`` for bytes kept from an earlier read (a deferred one), put back into the
        receive buffer first: free outside a read, and a lone ``vw`` then ends the same either way."""
        n = len(data)
        buf = self._buf
        if buf is None or not 0 < n <= len(buf) or data[0] != 20:  # surely not one: no copy
            return False
        buf[:n] = data
        return self._lone_write(n)

    def _lone_ping(self, msg_id: int) -> None:
        """What ``_handle_frames`` does for a read holding one PING frame and nothing else."""
        self.stats.messages_in[6] += 1
        if msg_id:
            self._write(encode_response(msg_id, SUCCESS), 0)
        self._charge(1, msg_id)

    def _handle_frames(self, frames: list) -> None:
        stats = self.stats  # typed when compiled: messages_in is then a C array (index it, never copy it)
        if self.device is None:
            for frame in frames:
                if self.closed:
                    return
                stats.messages_in[frame[0]] += 1
                if self.device is None:
                    self._before_login(frame)
                else:
                    self._dispatch(frame)
            if not self.closed:  # logged in: what came after the login in this read is charged too
                self._charge_read(len(frames), frames[-1][1])
            return
        if self.closed:
            return
        handlers = HANDLERS
        self._begin_read(len(frames))
        keys = _WRITE_KEYS
        for frame in frames:
            cmd = frame[0]
            stats.messages_in[cmd] += 1
            if cmd == 20:  # HARDWARE: the hot path, "vw\0<pin>\0<value…>"
                body = frame[2]
                if len(body) >= 4 and body[1] == 0x77:
                    sep = body.find(b"\0", 3)
                    if sep > 0:
                        key = keys.get(body[:sep]) or _write_key(body[:sep])
                        if key is not None and sep + 1 < len(body):
                            self._write_value(key, body[sep + 1 :], frame[1])
                            continue
            handler = handlers.get(cmd)
            if handler is None:
                self._reply(frame[1], Status.ILLEGAL_COMMAND)
            else:
                handler(self, frame[1], frame[2])
            if self.closed:  # only a handler closes the session
                return
        self._charge_read(len(frames), frames[-1][1])

    def _begin_read(self, frames: int) -> None:
        """A logged-in read's frames are this turn's work, drawn from its budget, and share one
        timestamp: when the read arrived (a deferred read is handled later)."""
        budget = self.budget
        if budget.limit:
            left = budget.left
            budget.left = left - frames
            if left > budget.mark >= left - frames:  # this read spent the quarter: refill next turn
                self.dirty |= BUDGET
        self._batch_ms = self._arrived_ms or self._wall_ms()

    def _wall_ms(self) -> int:
        """The context's wall clock; compiled, the default one (``model.now_ms``) is read in C: it was
        a Python call per read."""
        wall = self.ctx.wall_ms
        if cython.compiled and wall is now_ms:
            return blynk_wall_ms()  # noqa: F821 - C, declared in _connection_c.pxd
        return wall()

    def _charge_read(self, frames: int, msg_id: int) -> None:
        """Charge a read's frames and the frames sent in answer to them (a sync naming many pins
        costs what it makes the server send)."""
        cost, self._reply_cost = frames + self._reply_cost, 0
        self._charge(cost, msg_id)

    def _write_value(self, key: str, raw: bytes, msg_id: int) -> None:
        """A well-formed pin write of this read, stored by the domain at the read's time (or its
        group's); a refused value is answered ILLEGAL_COMMAND (the log rate-limited)."""
        if self._group_ts:
            ts = self._group_ts
        elif cython.compiled:
            ts = blynk_ms_object(self._batch_ms)  # noqa: F821 - C (_connection_c.pxd): one int per millisecond
        else:
            ts = self._batch_ms
        pins = self.ctx.pins
        if cython.compiled and type(pins) is CPinWriter:  # noqa: F821 - _connection_c.pxd: a C call, not a method's
            done = cython.cast(CPinWriter, pins).write(self.device, key, raw, ts)  # noqa: F821
        else:
            done = pins.write(self.device, key, raw, ts)
        if type(done) is not bytes and isinstance(done, InvalidValue):  # a stored value is bytes: no isinstance
            self._refused_write(msg_id, key, done)

    def _refused_write(self, msg_id: int, key: str, exc: InvalidValue) -> None:
        if self._should_log():
            log.info("invalid value device=%d pin=%s: %s (%d noted)", self.device.id, key, exc, self._noise)
        self._reply(msg_id, Status.ILLEGAL_COMMAND)

    def _dispatch(self, frame) -> None:
        handler = HANDLERS.get(frame[0])
        if handler is None:
            self._reply(frame[1], Status.ILLEGAL_COMMAND)
        else:
            handler(self, frame[1], frame[2])

    def _charge(self, count: int, msg_id: int) -> None:
        """Token bucket per connection: over the rate, stop reading for as long as the excess takes."""
        now = self.last_read  # the time of this read
        tokens = min(self._burst, self._tokens + (now - self._tokens_at) * self._rate) - count
        self._tokens_at = now
        self._tokens = tokens
        if tokens >= 0 or self._flood_paused or self.closed:
            return
        self._flood_paused = True  # until timer_at(): _tokens_at - _tokens / _rate
        self.dirty |= READ | TIMER
        self.stats.flood_pauses += 1
        if now - self._last_quota >= self.ctx.settings.quota_warning_period:
            self._last_quota = now
            self.stats.quota_sent += 1
            log.warning("flood control device=%s peer=%s rate>%g msg/s", self._who(), self._peer_text(), self._rate)
            self._reply(msg_id, Status.QUOTA_LIMIT)

    # --- sending ----------------------------------------------------------------------------------

    def _write(self, data: bytes, command: int, frames: int = 1) -> None:
        if self.closed:
            return
        self.stats.messages_out[command] += frames
        self.stats.bytes_out += len(data)
        if self._paced is not None:
            self._paced_write(data)
            return
        self._out(data)  # an inline C function when compiled (_connection_c.pxd)

    def _out(self, data: bytes) -> None:
        out = self.out
        if out is None:
            self.out = data
        elif type(out) is list:
            out.append(data)
        else:
            self.out = [out, data]

    def _paced_write(self, data: bytes) -> None:
        """blynklib parses only the first frame of each recv() and loses the rest, so frames that
        would share a segment (a multi-pin sync reply, pushes in a row) go out PACE_GAP apart."""
        queue = self._paced
        now = self.now
        if not queue and now >= self._paced_next:
            self._out(data)
            self._paced_next = now + PACE_GAP
            return
        if len(queue) >= MAX_PACED:
            self.stats.dropped_oversize += 1
            if self._should_log():
                log.warning("dropped frame: paced output queue full device=%s (%d noted)", self._who(), self._noise)
            return
        queue.append(data)
        if len(queue) == 1:
            self.dirty |= TIMER  # sent at _paced_next

    def _reply(self, msg_id: int, status: int) -> None:
        if msg_id:
            self._write(encode_response(msg_id, status), 0)

    def _next_msg_id(self) -> int:
        self._msg_id = self._msg_id % 0xFFFF + 1
        return self._msg_id

    def _send(self, command: int, body: bytes, msg_id: int) -> bool:
        """Send a frame, unless it exceeds the device's buff-in: then drop it, count it, log it."""
        if not self._fits(command, body):
            return False
        if msg_id == 0:
            msg_id = self._next_msg_id()
        self._write(encode_frame(command, msg_id, body), command)
        return True

    def _send_all(self, command: int, bodies: list[bytes], msg_id: int) -> None:
        """The frames answering one request: one write (blynklib's go through the paced queue one by
        one), and charged to the device's message budget like its own frames."""
        frames = [encode_frame(command, msg_id or self._next_msg_id(), b) for b in bodies if self._fits(command, b)]
        self._reply_cost += len(bodies)  # frames dropped for buff-in cost work and a count too
        if self._paced is not None:
            for frame in frames:
                self._write(frame, command)
        elif frames:
            self._write(b"".join(frames), command, len(frames))

    def _fits(self, command: int, body: bytes) -> bool:
        """Does the frame fit the device's buff-in? When not, it is counted and logged here."""
        if len(body) + 5 > self.buff_in:
            self.stats.dropped_oversize += 1
            if self._should_log():
                log.warning(
                    "dropped frame larger than buff-in device=%s command=%d size=%d buff_in=%d (%d noted)",
                    self._who(),
                    command,
                    len(body) + 5,
                    self.buff_in,
                    self._noise,
                )
            return False
        return True

    def _should_log(self) -> bool:
        """A log budget for what a device can repeat at will (invalid values, dropped frames): the
        1st, 2nd, 4th, 8th... such line of a connection is written, so a device repeating an error
        100 times a second writes about twenty lines in an hour, not 100 a second."""
        self._noise += 1
        return self._noise & (self._noise - 1) == 0

    def _release_held(self) -> None:
        held, self._held = self._held, None
        if held:
            for command, body, msg_id in held:
                self._send(command, body, msg_id or 0)

    # --- closing and deadlines ----------------------------------------------------------------------

    def _close(self, reason: str) -> None:
        if self.closed:
            return
        self.run_deferred(self.now)  # a read that came before the close is handled first, as without a budget
        if self.closed:  # its frames closed it themselves
            return
        self.closed = True
        self.dirty |= CLOSE
        log.info("closing device=%s peer=%s reason=%s", self._who(), self._peer_text(), reason)

    def _close_quietly(self, outcome: str, failed: bool) -> None:
        """Close a connection that never logged in. No log line of its own: the guard summarises them
        (a token scanner makes tens of thousands a second); a failed login is charged to the IP."""
        if failed:
            self.ctx.guard.failed(self.ip)
        self.ctx.guard.note(outcome, self.ip)
        self.closed = True
        self.dirty |= CLOSE_QUIETLY

    def _release_pending(self) -> None:
        if self._pending:
            self._pending = False
            self.ctx.guard.release(self.ip)

    def _peer_text(self) -> str:
        """``ip:port`` of the peer, for a log line."""
        return f"{self.ip}:{self.port}"

    def _who(self) -> str:
        return str(self.device.id) if self.device is not None else "-"

    def _arm(self, now: float, delay: float) -> None:
        self.hb_at = now + delay
        self.dirty |= DEADLINE

    def _deadline(self, now: float) -> None:
        """The login deadline, or the heartbeat's: idle (or unable to send) for the timeout closes."""
        if self.device is None:
            self.stats.logins["timeout"] += 1
            self._close_quietly("timeout", False)
            return
        if self.write_blocked:
            blocked = now - self._write_blocked_at
            if blocked >= self.timeout:
                self.close_slow(f"output blocked for {blocked:.0f}s (timeout {self.timeout:.0f}s)")
            else:
                self._arm(now, self.timeout - blocked)
            return
        idle = now - self.last_read
        if idle >= self.timeout:
            self.stats.idle_timeouts += 1
            self._close(f"read idle for {idle:.0f}s (timeout {self.timeout:.0f}s)")
        else:
            self._arm(now, self.timeout - idle)

    # --- login ----------------------------------------------------------------------------------

    def _before_login(self, frame) -> None:
        cmd, msg_id, body = frame
        if cmd not in LOGINS:
            self.stats.logins["not_logged_in"] += 1
            self._close_quietly("not_logged_in", True)
            return
        token = body.decode("utf-8", "replace").strip()
        dev = self.ctx.domain.authenticate(token) if token else None
        if dev is None:
            self.stats.logins["invalid_token"] += 1
            self._reply(msg_id, Status.INVALID_TOKEN)
            self._close_quietly("invalid_token", True)  # after the answer: one token per connection
            return
        self._release_pending()
        self.device = dev
        self.login_command = cmd
        self.stats.logins["ok"] += 1
        old = self.ctx.hub.attach(dev.id, self)
        if old is not None:
            self.stats.replaced += 1
            old.close("replaced by a newer connection with the same token")
        self.ctx.domain.set_online(dev)
        self.timeout = float(self.ctx.settings.heartbeat_timeout_default)
        now = self.now
        self._arm(now, self.timeout)
        self._reply(msg_id, Status.SUCCESS)
        self._release_at = now + self.ctx.settings.info_grace  # held pushes go out by then, info or not
        self.dirty |= TIMER
        log.info("device online device=%d peer=%s", dev.id, self._peer_text())
        self.ctx.logged_in(self, dev.id)

    def _on_login_again(self, msg_id: int, body: bytes) -> None:
        self._reply(msg_id, Status.ALREADY_REGISTERED)

    # --- handlers -------------------------------------------------------------------------------

    def _on_response(self, msg_id: int, status: int) -> None:
        pass  # answers to our pushes; nothing waits on them

    def _on_ping(self, msg_id: int, body: bytes) -> None:
        self._reply(msg_id, SUCCESS)

    def _on_hardware(self, msg_id: int, body: bytes) -> None:
        # Fast path for writes: "vw\0<pin>\0<value…>" (the value keeps its NULs).
        if len(body) >= 4 and body[1] == 0x77:  # 'w'
            sep = body.find(b"\0", 3)
            key = _write_key(body[:sep]) if sep > 0 else None
            if key is not None and sep + 1 < len(body):
                try:
                    self.ctx.domain.write_key(self.device, key, body[sep + 1 :], self._group_ts or self._batch_ms)
                except InvalidValue as exc:
                    self._refused_write(msg_id, key, exc)
                return
            self._reply(msg_id, Status.ILLEGAL_COMMAND)
            return
        try:
            op = parse_hardware(body)
        except BodyError:
            self._reply(msg_id, Status.ILLEGAL_COMMAND)
            return
        if op.op == "pm":
            self._reply(msg_id, Status.ILLEGAL_COMMAND)  # pin modes go server→device only
        # A device sending vr/dr/ar asks nothing of the server: ignored, as the legacy server does.

    def _on_sync(self, msg_id: int, body: bytes) -> None:
        try:
            pins = parse_sync(body)
        except BodyError:
            self._reply(msg_id, Status.ILLEGAL_COMMAND)
            return
        values = self.ctx.domain.sync_values(self.device, pins)  # parse_sync named each pin once
        self._send_all(Command.HARDWARE, [f"{p.kind}w\0{p.number}\0".encode() + v for p, v in values], msg_id)

    def _on_internal(self, msg_id: int, body: bytes) -> None:
        if not body:
            self._reply(msg_id, Status.ILLEGAL_COMMAND)
            return
        if is_info(body):
            self._on_info(msg_id, body)
            return
        sub, args = parse_internal(body)
        tz = device_timezone(self.device)
        if sub == "rtc":
            self._send(Command.INTERNAL, internal_body("rtc", rtc_seconds(tz)), msg_id)
        elif sub == "utc":
            # Each known request answered once, in the order first asked; all unknown ones get one
            # ILLEGAL_COMMAND: a frame of 16,000 fields costs at most six answers.
            asked = dict.fromkeys(args or [b"time"])
            answers = [internal_body("utc", *utc_answer(w.decode(), tz)) for w in asked if w in UTC_REQUESTS]
            self._send_all(Command.INTERNAL, answers, msg_id)
            if len(answers) < len(asked):
                self._reply(msg_id, Status.ILLEGAL_COMMAND)
        elif sub == "meta":
            self._on_meta(msg_id, args)
        elif sub in ("dbg", "acon", "adis", "ota", "vfs"):
            log.debug("internal %s from device=%d ignored", sub, self.device.id)
        else:
            self._reply(msg_id, Status.ILLEGAL_COMMAND)

    def _on_info(self, msg_id: int, body: bytes) -> None:
        if len(body) > self.ctx.settings.max_info_size:
            # Not stored, nothing of it applied; the device stays connected (its next info may fit).
            log.debug("info message of %d bytes refused device=%d", len(body), self.device.id)
            self._reply(msg_id, Status.ILLEGAL_COMMAND_BODY)
            return
        info = parse_info(body)
        if info.buff_in:
            self.buff_in = info.buff_in
        if info.heartbeat:
            self.timeout = float(read_timeout(info.heartbeat))
            self._arm(self.now, max(0.0, self.timeout - (self.now - self.last_read)))
        if info.device == "python" and self.login_command == Command.LOGIN and self._paced is None:
            self._paced = []  # blynklib (PyPI 0.2.x): LOGIN (2) and "dev python"; see _paced_write
        if not self.ctx.domain.activate(self.device, info.template_id):
            # A provisioned device of another template: refused as its token (Edgent goes back to
            # its config mode with "invalid token" as its last error).
            self._reply(msg_id, Status.INVALID_TOKEN)
            self._close("provision refused: the info's tmpl is not the device's template")
            return
        self._reply(msg_id, Status.SUCCESS)
        first = not self.info_acked
        self.info_acked = True
        self.ctx.domain.set_info(self.device, info)
        if first:
            # Not in the same segment as the info's reply: blynklib reads one frame per recv().
            self._release_at = self.now + HELD_GAP if self._held else 0.0
            self.dirty |= TIMER

    def _on_meta(self, msg_id: int, args: list[bytes]) -> None:
        if len(args) >= 2 and args[0] == b"get":
            name = args[1].decode("utf-8", "replace")
            found = self.ctx.domain.meta_read(self.device, name)
            if found is None:
                self._reply(msg_id, Status.NO_DATA)
            else:
                self._send(Command.INTERNAL, internal_body("meta", name, found[1]), msg_id)
        elif len(args) >= 3 and args[0] == b"set":
            try:
                name, value = args[1].decode("utf-8", "replace"), args[2].decode("utf-8", "replace")
                self.ctx.domain.meta_write(self.device, name, value, create=True)
            except InvalidValue as exc:  # unknown field, refused value, over a limit (logged, rate-limited)
                self._reply(msg_id, exc.status)
                return
            self._reply(msg_id, Status.SUCCESS)
        else:
            self._reply(msg_id, Status.ILLEGAL_COMMAND)

    def _on_property(self, msg_id: int, body: bytes) -> None:
        try:
            update = parse_property(body)
        except BodyError as exc:
            fields = body.split(b"\0", 1)
            bad_pin = not fields[0].strip().lstrip(b"vVdDaA").isdigit()
            log.debug("bad property device=%d: %s", self.device.id, exc)
            self._reply(msg_id, Status.ILLEGAL_COMMAND if bad_pin else Status.ILLEGAL_COMMAND_BODY)
            return
        try:
            self.ctx.domain.set_property(self.device, update.pins, update.name, list(update.values))
        except InvalidValue as exc:  # over a property limit; the domain logs it, rate-limited
            self._reply(msg_id, exc.status)
            return
        self._reply(msg_id, Status.SUCCESS)

    def _on_event_log(self, msg_id: int, body: bytes) -> None:
        try:
            code, description = parse_event_log(body)
            self.ctx.domain.log_event(self.device, code, description)
        except BodyError:
            self._reply(msg_id, Status.ILLEGAL_COMMAND)
        except InvalidValue as exc:  # EventRejected: 11, or 1 for a rate; the domain logs it, rate-limited
            self._reply(msg_id, exc.status)
        else:
            self._reply(msg_id, Status.SUCCESS)

    def _on_event_clear(self, msg_id: int, body: bytes) -> None:
        try:
            code, resolve_all = parse_event_clear(body)
        except BodyError:
            self._reply(msg_id, Status.ILLEGAL_COMMAND)
            return
        try:
            self.ctx.domain.clear_event(self.device, code, resolve_all)
        except InvalidValue as exc:
            self._reply(msg_id, exc.status)
            return
        self._reply(msg_id, Status.SUCCESS)

    def _on_group(self, msg_id: int, body: bytes) -> None:
        try:
            what, ts = parse_group(body, MAX_TS_MS)  # 0 < ts <= year 9999: what the store and domain accept
        except BodyError:
            self._reply(msg_id, Status.ILLEGAL_COMMAND)
            return
        if what == "begin":
            self._group_ts = ts or self._wall_ms()
        else:
            self._group_ts = None

    def _on_bridge(self, msg_id: int, body: bytes) -> None:
        try:
            msg = parse_bridge(body)
        except BodyError:
            self._reply(msg_id, Status.ILLEGAL_COMMAND)
            return
        if isinstance(msg, BridgeInit):
            target = self.ctx.domain.device_by_token(msg.token) if len(msg.token) == 32 else None
            bridges = self._bridges if self._bridges is not None else {}
            if target is None or (len(bridges) >= MAX_BRIDGES and msg.bridge_pin not in bridges):
                self._reply(msg_id, Status.NOT_ALLOWED)
                return
            bridges[msg.bridge_pin] = target.id
            self._bridges = bridges
            self._reply(msg_id, Status.SUCCESS)
            return
        target_id = self._bridges.get(msg.bridge_pin) if self._bridges is not None else None
        target = self.ctx.domain.device(target_id) if target_id is not None else None
        if target is None:
            self._reply(msg_id, Status.NOT_ALLOWED)
            return
        try:
            op = parse_hardware(msg.hardware)
            if op.is_write:
                self.ctx.domain.write_pin(target, op.pin, op.value, needs_datastream=False)
        except (BodyError, InvalidValue):
            self._reply(msg_id, Status.ILLEGAL_COMMAND)
            return
        if not self.ctx.hub.send(target.id, Command.BRIDGE, msg.hardware, msg_id):
            self._reply(msg_id, Status.DEVICE_NOT_IN_NETWORK)

    def _on_notification(self, command: int, msg_id: int, body: bytes) -> None:
        """The legacy notification commands. EMAIL is queued for SMTP (never awaited: the outbox writes
        it on the store's thread); NOTIFY is logged as the event ``notify`` (what that event notifies
        follows from it). Tweets, pushes and SMS are not delivered: status 14, and a log line."""
        dev = self.device
        if command == Command.NOTIFY:
            text = body.decode("utf-8", "replace")
            if not text or len(text) > MAX_NOTIFY:
                self._reply(msg_id, Status.NTF_INVALID_BODY)
                return
            try:
                self.ctx.domain.log_event(dev, "notify", text)
            except InvalidValue as exc:  # a limit of events (rate, per day); the domain logs it, rate-limited
                self._reply(msg_id, exc.status)
                return
            self._reply(msg_id, Status.SUCCESS)
            return
        if command == Command.EMAIL and self.ctx.mailer is not None:
            # ``Blynk.email(subject, body)`` names no address: the recipients of the template's ``email``
            # event, when it declares one.
            defaults = self.ctx.domain.event_defs.get(dev.template.id, "email")
            try:
                self.ctx.mailer.send_from_device(dev.id, body, defaults.emails if defaults is not None else ())
            except MailOff:
                pass  # answered below, as when no mailer is configured
            except MailRefused as exc:
                if self._should_log():
                    log.info("e-mail from device=%d refused: %s (%d noted)", dev.id, exc, self._noise)
                self._reply(msg_id, _MAIL_STATUS.get(type(exc), Status.NTF_INVALID_BODY))
                return
            else:
                self._reply(msg_id, Status.SUCCESS)
                return
        if self._should_log():
            what = "e-mail is off (no smtp_host)" if command == Command.EMAIL else "not supported"
            log.info("notification command=%d from device=%d: %s (%d noted)", command, dev.id, what, self._noise)
        self._reply(msg_id, Status.NTF_NOT_AUTHORIZED)


MAX_NOTIFY = 255  # characters of a NOTIFY message (the legacy server's push limit); more: status 13
_MAIL_STATUS = {  # a refused device e-mail's answer, as the legacy server gave it
    MailTooSoon: Status.QUOTA_LIMIT,
    MailNoRecipient: Status.NOT_ALLOWED,
    MailInvalid: Status.NTF_INVALID_BODY,
}


# One handler table for all sessions (a dict of bound methods per session cost ~1.5 KB each).
HANDLERS = {
    Command.RESPONSE: DeviceConnection._on_response,
    Command.PING: DeviceConnection._on_ping,
    Command.HARDWARE: DeviceConnection._on_hardware,
    Command.HARDWARE_SYNC: DeviceConnection._on_sync,
    Command.INTERNAL: DeviceConnection._on_internal,
    Command.PROPERTY: DeviceConnection._on_property,
    Command.EVENT_LOG: DeviceConnection._on_event_log,
    Command.EVENT_CLEAR: DeviceConnection._on_event_clear,
    Command.GROUP: DeviceConnection._on_group,
    Command.BRIDGE: DeviceConnection._on_bridge,
    Command.LOGIN: DeviceConnection._on_login_again,
    Command.HW_LOGIN: DeviceConnection._on_login_again,
}
for _cmd in NOTIFICATIONS:
    HANDLERS[_cmd] = lambda self, msg_id, body, cmd=_cmd: self._on_notification(cmd, msg_id, body)
