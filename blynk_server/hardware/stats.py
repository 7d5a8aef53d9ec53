"""Server-wide plain counters for the hardware path, read by the metrics collector at scrape time."""

from __future__ import annotations


class HardwareStats:
    __slots__ = (
        "connections",
        "logins",
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
        "flood_pauses",
        "quota_sent",
        "dropped_oversize",
        "oversize_frames_in",
        "idle_timeouts",
        "login_timeouts",
        "replaced",
    )

    def __init__(self) -> None:
        self.connections = 0
        self.logins: dict[str, int] = {"ok": 0, "invalid_token": 0, "timeout": 0, "not_logged_in": 0}
        self.messages_in = [0] * 256  # by command code
        self.messages_out = [0] * 256
        self.bytes_in = 0
        self.bytes_out = 0
        self.flood_pauses = 0
        self.quota_sent = 0
        self.dropped_oversize = 0
        self.oversize_frames_in = 0
        self.idle_timeouts = 0
        self.login_timeouts = 0
        self.replaced = 0
