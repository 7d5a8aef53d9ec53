"""Sans-I/O codec for the Blynk hardware protocol: bytes in, frames out; frames in, bytes out.

The framer exists twice with one API: the Cython extension ``protocol._framing`` and its pure-Python
twin ``protocol.framing``. ``IMPLEMENTATION`` names the active one; ``BLYNK_NO_EXTENSIONS=1`` forces
the pure-Python twin.
"""

from __future__ import annotations

import os

from protocol.constants import HEADER_SIZE, MAX_WIRE_BODY, Command, Status
from protocol.errors import FrameTooLarge, ProtocolError

IMPLEMENTATION: str

if os.environ.get("BLYNK_NO_EXTENSIONS", "") not in ("", "0"):
    from protocol.framing import Decoder, encode_frame, encode_response

    IMPLEMENTATION = "python"
else:
    try:
        from protocol._framing import Decoder, encode_frame, encode_response

        IMPLEMENTATION = "cython"
    except ImportError:
        from protocol.framing import Decoder, encode_frame, encode_response

        IMPLEMENTATION = "python"

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
