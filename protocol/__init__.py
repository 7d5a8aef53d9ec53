"""Sans-I/O codec for the Blynk hardware protocol: bytes in, frames out; frames in, bytes out.

The framer exists twice with one API: the Cython extension ``protocol._framing`` and its pure-Python
twin ``protocol.framing``. ``IMPLEMENTATION`` names the active one; ``protocol.twins`` selects it
(``BLYNK_NO_EXTENSIONS=1``, or an extension older than its ``.pyx``, selects the pure-Python twin).
"""

from __future__ import annotations

from pathlib import Path

from protocol.constants import HEADER_SIZE, MAX_WIRE_BODY, Command, Status
from protocol.errors import FrameTooLarge, ProtocolError
from protocol.twins import use_compiled

IMPLEMENTATION: str

try:
    if not use_compiled("protocol._framing", Path(__file__).parent):
        raise ImportError("the pure-Python framer is selected")
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
