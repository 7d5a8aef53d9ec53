"""The decoder's own error types: the only exceptions it may raise on any input."""


class ProtocolError(Exception):
    """Base class for every framing error."""


class FrameTooLarge(ProtocolError):
    """A header declared a body longer than the decoder's maximum.

    Carries what the server needs to answer before closing: the command and msg id of the
    offending frame, its declared length, and the complete frames that preceded it in the
    same chunk (so none of them is lost).
    """

    def __init__(self, command: int, msg_id: int, length: int, limit: int, frames: list | None = None):
        super().__init__(f"frame too large: command={command} msg_id={msg_id} length={length} limit={limit}")
        self.command = command
        self.msg_id = msg_id
        self.length = length
        self.limit = limit
        self.frames = frames if frames is not None else []
