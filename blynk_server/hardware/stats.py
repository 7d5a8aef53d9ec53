"""Server-wide plain counters for the hardware path, read by the metrics collector at scrape time.

Its compiled twin ``_stats_c`` (``_stats_c.pxd``) makes ``HardwareStats`` an extension type with C integer fields: the core
counts each message without a Python object. ``messages_in``/``messages_out`` then read as a new
list: index them (``stats.messages_in[cmd] += 1``), never add to a list taken from them.
"""

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
        "replaced",
        "pending_logins",
        "refused",
        "login_budget_ips",
        "write_pauses",
        "slow_reader_closes",
    )

    def __init__(self) -> None:
        self.connections = 0
        # Outcomes of connections before login: "not_logged_in" sent another command first,
        # "frame_too_large" a frame over max_frame.
        self.logins: dict[str, int] = {
            "ok": 0,
            "invalid_token": 0,
            "timeout": 0,
            "not_logged_in": 0,
            "frame_too_large": 0,
        }
        # Connections closed at accept, unanswered (see guard.LoginGuard), by reason.
        self.refused: dict[str, int] = {"budget_exhausted": 0, "pending_per_ip": 0, "pending_global": 0}
        self.pending_logins = 0  # connections accepted and not yet logged in, closed or handed to HTTP
        self.login_budget_ips = 0  # IPs whose failed-login budget is tracked
        self.write_pauses = 0  # times a device's unsent output passed write_buffer_high
        self.slow_reader_closes = 0  # devices closed for not reading their replies
        self.messages_in = [0] * 256  # by command code
        self.messages_out = [0] * 256
        self.bytes_in = 0
        self.bytes_out = 0
        self.flood_pauses = 0
        self.quota_sent = 0
        self.dropped_oversize = 0
        self.oversize_frames_in = 0
        self.idle_timeouts = 0
        self.replaced = 0
