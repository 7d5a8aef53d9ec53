"""Sans-I/O codec for the Blynk hardware protocol: bytes in, frames out; frames in, bytes out.

The framer exists twice with one API: the Cython extension ``protocol._framing`` and its pure-Python
twin ``protocol.framing``. ``IMPLEMENTATION`` names the active one; ``protocol.twins`` selects it
(``BLYNK_NO_EXTENSIONS=1``, or an extension older than its ``.pyx``, selects the pure-Python twin).
"""

from __future__ import annotations

from protocol.constants import HEADER_SIZE, MAX_WIRE_BODY, Command, Status
from protocol.errors import FrameTooLarge, ProtocolError
from protocol.twins import select

(_framer,), IMPLEMENTATION = select([("protocol._framing", "protocol.framing")])
Decoder, encode_frame, encode_response = _framer.Decoder, _framer.encode_frame, _framer.encode_response

__all__ = [
    "HEADER_SIZE",
    "IMPLEMENTATION",
    "MAX_WIRE_BODY",
    "Command",
    "Decoder",
    "FrameTooLarge",
    "ProtocolError",
    "Status",
    "encode_frame",
    "encode_response",
]
