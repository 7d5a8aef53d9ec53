"""The Blynk hardware protocol written down declaratively in ``construct``: the oracle.

Nothing here is on the hot path. The fast framers (``protocol._framing`` and ``protocol.framing``)
are tested against these definitions, and slow paths (tools, tests, operators' scripts) may use
them directly. Read it as the spec (reference protocol.md §1, §4.3, §6, §7):

- a frame is a 5-byte header (command u8, msg_id u16 BE, length u16 BE) and ``length`` bytes of
  body, except RESPONSE (command 0), whose length field is a status and which has no body;
- a stream is frames back to back; whatever does not form a complete frame at the end waits for
  more bytes;
- bodies are NUL-separated fields; a HARDWARE body is ``op\\0pin[\\0value...]`` where the value is
  the whole tail (NULs included); the info message is key/value pairs, perhaps with a trailing NUL.
"""

from __future__ import annotations

from construct import (
    Bytes,
    Check,
    ExprAdapter,
    GreedyBytes,
    GreedyRange,
    If,
    Int8ub,
    Int16ub,
    NullTerminated,
    Rebuild,
    Struct,
    Switch,
    this,
)

from protocol.constants import HEADER_SIZE, MAX_WIRE_BODY, Command
from protocol.errors import FrameTooLarge

__all__ = [
    "Fields",
    "Frame",
    "Hardware",
    "Header",
    "Info",
    "Internal",
    "Stream",
    "build_frame",
    "parse_body",
    "parse_hardware",
    "parse_info",
    "parse_stream",
]


def _max_body(ctx) -> int:
    """The decoder's body limit, passed as ``parse(..., max_body=N)``; the wire maximum if absent."""
    return ctx._params.get("max_body", MAX_WIRE_BODY)


# --- framing ------------------------------------------------------------------------------

Header = Struct(
    "command" / Int8ub,
    "msg_id" / Int16ub,
    "length" / Int16ub,  # the status, for RESPONSE
)

Frame = Struct(
    "command" / Int8ub,
    "msg_id" / Int16ub,
    "length" / Rebuild(Int16ub, lambda ctx: ctx.length if ctx.command == 0 else len(ctx.body)),
    # A body over the limit is a protocol error: parsing stops here (see parse_stream).
    Check(lambda ctx: ctx.command == 0 or ctx.length <= _max_body(ctx)),
    "body" / If(this.command != 0, Bytes(this.length)),
)

# Complete frames back to back; GreedyRange stops at the first one that is incomplete (or too large).
Stream = GreedyRange(Frame)


def parse_stream(data: bytes, max_body: int = MAX_WIRE_BODY) -> tuple[list[tuple], int]:
    """Parse ``data`` as a stream: ``(frames, leftover)``.

    ``frames`` are ``(command, msg_id, payload)`` tuples exactly as the framers return them
    (payload = body bytes, or the status int for RESPONSE); ``leftover`` is how many bytes at the
    end do not yet form a complete frame. A complete header declaring a body over ``max_body``
    raises ``FrameTooLarge`` carrying the frames before it, as the framers do.
    """
    data = bytes(data)
    frames = [
        (f.command, f.msg_id, f.length if f.command == 0 else bytes(f.body))
        for f in Stream.parse(data, max_body=max_body)
    ]
    consumed = sum(HEADER_SIZE if cmd == 0 else HEADER_SIZE + len(payload) for cmd, _, payload in frames)
    rest = data[consumed:]
    if len(rest) >= HEADER_SIZE:
        h = Header.parse(rest)
        if h.command != 0 and h.length > max_body:
            raise FrameTooLarge(h.command, h.msg_id, h.length, max_body, frames)
    return frames, len(rest)


def build_frame(command: int, msg_id: int, payload: bytes | int = b"") -> bytes:
    """Build one frame; for RESPONSE (command 0) ``payload`` is the status."""
    if command == 0:
        return Frame.build({"command": 0, "msg_id": msg_id, "length": payload, "body": None})
    return Frame.build({"command": command, "msg_id": msg_id, "body": bytes(payload)})


# --- bodies -------------------------------------------------------------------------------

# All fields of a body, split on NUL (an empty body has none). Kept as bytes: values may be binary.
Fields = ExprAdapter(
    GreedyBytes,
    decoder=lambda obj, ctx: obj.split(b"\0") if obj else [],
    encoder=lambda obj, ctx: b"\0".join(obj),
)

# HARDWARE (20) and a forwarded BRIDGE body: op\0pin[\0value]. The value is the whole tail after
# the pin, embedded NULs included (multi-value writes are one value on the server). For ``pm`` the
# tail holds pin/mode pairs.
_PinModes = ExprAdapter(
    GreedyBytes,
    decoder=lambda obj, ctx: _pairs(obj.split(b"\0")) if obj else [],
    encoder=lambda obj, ctx: b"\0".join(b"\0".join(pair) for pair in obj),
)

Hardware = Struct(
    "op" / NullTerminated(GreedyBytes),  # vw vr dw dr aw ar pm
    "pin" / NullTerminated(GreedyBytes, require=False),
    "value" / GreedyBytes,
)


def _pairs(fields: list[bytes]) -> list[tuple[bytes, bytes]]:
    if fields and fields[-1] == b"":  # a trailing NUL
        fields = fields[:-1]
    if len(fields) % 2:
        fields = [*fields, b""]
    return [(fields[i], fields[i + 1]) for i in range(0, len(fields), 2)]


# The INTERNAL info message: key\0value pairs in any order, maybe with a trailing NUL.
Info = ExprAdapter(
    GreedyBytes,
    decoder=lambda obj, ctx: _pairs(obj.split(b"\0")) if obj else [],
    encoder=lambda obj, ctx: b"\0".join(b"\0".join(pair) for pair in obj),
)

# Other INTERNAL messages: a sub-command (rtc, utc, meta, ota, dbg, ...) and its arguments.
Internal = Struct(
    "sub" / NullTerminated(GreedyBytes, require=False),
    "args" / Fields,
)

_BODIES = {
    Command.HARDWARE: Hardware,
    Command.INTERNAL: Internal,
}


def parse_hardware(body: bytes):
    """``Container(op, pin, value)`` of a HARDWARE body (grammar only, no validation of pins)."""
    parsed = Hardware.parse(body)
    if parsed.op == b"pm":
        # pm's tail is pin/mode pairs: pin is the first pin, value the rest
        parsed.modes = _PinModes.parse(parsed.pin + (b"\0" + parsed.value if parsed.value else b""))
    return parsed


def parse_info(body: bytes) -> list[tuple[bytes, bytes]]:
    """The info message's key/value pairs, in order."""
    return Info.parse(body)


def parse_body(command: int, body: bytes):
    """Parse a body by its command's grammar; plain NUL-separated fields when it has none."""
    return Switch(lambda ctx: command, _BODIES, default=Fields).parse(body)
