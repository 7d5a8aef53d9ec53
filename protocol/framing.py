"""Pure-Python framer: the twin of ``_framing.pyx`` with the same API and behaviour.

A frame is a tuple ``(command, msg_id, payload)``. ``payload`` is the body as ``bytes`` for every
command except RESPONSE, where it is the status ``int`` (a RESPONSE header carries a status in
place of a length, and no body follows).
"""

from __future__ import annotations

from operator import index
from struct import Struct

from protocol.errors import FrameTooLarge

_HEADER = Struct("!BHH")
_unpack_from = _HEADER.unpack_from
_pack = _HEADER.pack

HEADER_SIZE = 5
MAX_WIRE_BODY = 0xFFFF

Frame = tuple  # (command: int, msg_id: int, payload: bytes | int)


class Decoder:
    """Incremental decoder: feed it any chunks, get back the frames they complete.

    Buffers at most one partial frame (header plus at most ``max_body`` bytes of body), so the
    memory a connection can hold is bounded by ``max_body + 5``.
    """

    __slots__ = ("_buf", "max_body")

    def __init__(self, max_body: int = MAX_WIRE_BODY) -> None:
        max_body = index(max_body)
        if not 0 <= max_body <= MAX_WIRE_BODY:
            raise ValueError(f"max_body must be within 0..{MAX_WIRE_BODY}")
        self.max_body = max_body
        self._buf = b""

    @property
    def buffered(self) -> int:
        """How many bytes of an incomplete frame are held."""
        return len(self._buf)

    def reset(self) -> None:
        """Drop any partial frame."""
        self._buf = b""

    def feed(self, data) -> list:
        """Consume ``data`` (any bytes-like object) and return the complete frames, in order.

        Raises ``FrameTooLarge`` when a header declares a body over ``max_body``; the frames that
        came before it are on the exception, and the decoder keeps nothing of the chunk.
        """
        if type(data) is not bytes:
            # memoryview() refuses what is not bytes-like (bytes(5) would be five NULs, bytes([1]) a list)
            data = bytes(memoryview(data))
        buf = self._buf + data if self._buf else data
        frames: list = []
        append = frames.append
        pos = 0
        end = len(buf)
        max_body = self.max_body
        while end - pos >= HEADER_SIZE:
            command, msg_id, length = _unpack_from(buf, pos)
            if command == 0:
                append((0, msg_id, length))
                pos += HEADER_SIZE
                continue
            if length > max_body:
                self._buf = b""
                raise FrameTooLarge(command, msg_id, length, max_body, frames)
            stop = pos + HEADER_SIZE + length
            if stop > end:
                break
            append((command, msg_id, buf[pos + HEADER_SIZE : stop]))
            pos = stop
        self._buf = buf[pos:] if pos < end else b""
        return frames


def _check_msg_id(msg_id: int) -> None:
    if not 0 < msg_id <= 0xFFFF:
        raise ValueError(f"msg_id must be within 1..65535 (every client drops the connection on 0), got {msg_id}")


def encode_frame(command: int, msg_id: int, body: bytes = b"") -> bytes:
    """Build one frame: header and body in a single bytes object."""
    _check_msg_id(msg_id)
    if command == 0:
        raise ValueError("use encode_response for RESPONSE frames")
    if not 0 <= command <= 0xFF:
        raise ValueError(f"command must be within 0..255, got {command}")
    if len(body) > MAX_WIRE_BODY:
        raise ValueError(f"body of {len(body)} bytes exceeds the wire maximum of {MAX_WIRE_BODY}")
    return _pack(command, msg_id, len(body)) + body


def encode_response(msg_id: int, status: int) -> bytes:
    """Build a RESPONSE frame: the status sits where the length would be, and no body follows."""
    _check_msg_id(msg_id)
    if not 0 <= status <= 0xFFFF:
        raise ValueError(f"status must be within 0..65535, got {status}")
    return _pack(0, msg_id, status)
