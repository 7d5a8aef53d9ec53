"""Admission of unauthenticated device connections: per-IP and global caps, a failed-login budget.

A connection is *pending* from accept until it logs in, closes or is handed to HTTP. Pending
connections are capped per IP and server-wide, and each IP has a token bucket of failed logins
(``failed_logins_per_ip`` per second, ``failed_login_burst`` at once); while an IP's bucket is empty
its new connections are closed at once, unanswered. Refusals and failures are counted for the
metrics and logged as one summary line per ``auth_log_interval``, never a line each: a token
scanner makes tens of thousands per second.
"""

from __future__ import annotations

import asyncio
import logging

from blynk_server.config import Settings
from blynk_server.hardware.stats import HardwareStats

log = logging.getLogger(__name__)

MAX_TRACKED_IPS = 65536  # failed-login buckets kept; full (refilled) ones are pruned first
MAX_SUMMARY_IPS = 1024  # distinct IPs counted per reason in one summary interval


class LoginGuard:
    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop, stats: HardwareStats) -> None:
        self.settings = settings
        self.loop = loop
        self.stats = stats  # pending_logins, refused[reason], login_budget_ips: read by the metrics
        self.pending_by_ip: dict[str, int] = {}
        # ip -> [tokens, time of the last update]; insertion order is the order of last failure.
        self._buckets: dict[str, list[float]] = {}
        self._summary: dict[str, tuple[int, set[str]]] = {}
        self._summary_due = False

    # --- pending connections ------------------------------------------------------------------

    def admit(self, ip: str) -> str | None:
        """Count a new connection as pending, or return why it must be closed at once."""
        s = self.settings
        if self._tokens(ip, self.loop.time()) < 1.0:
            reason = "budget_exhausted"
        elif self.pending_by_ip.get(ip, 0) >= s.pending_logins_per_ip:
            reason = "pending_per_ip"
        elif self.stats.pending_logins >= s.max_pending_logins:
            reason = "pending_global"
        else:
            self.stats.pending_logins += 1
            self.pending_by_ip[ip] = self.pending_by_ip.get(ip, 0) + 1
            return None
        self.stats.refused[reason] += 1
        self.note(reason, ip)
        return reason

    def release(self, ip: str) -> None:
        """The connection is no longer pending: logged in, closed or handed to HTTP."""
        self.stats.pending_logins -= 1
        n = self.pending_by_ip.get(ip, 0) - 1
        if n > 0:
            self.pending_by_ip[ip] = n
        else:
            self.pending_by_ip.pop(ip, None)

    # --- failed logins --------------------------------------------------------------------------

    def _tokens(self, ip: str, now: float) -> float:
        entry = self._buckets.get(ip)
        if entry is None:
            return float(self.settings.failed_login_burst)
        return min(
            float(self.settings.failed_login_burst), entry[0] + (now - entry[1]) * self.settings.failed_logins_per_ip
        )

    def failed(self, ip: str) -> None:
        """Charge one failed login to ``ip``'s budget."""
        now = self.loop.time()
        tokens = self._tokens(ip, now) - 1.0
        self._buckets.pop(ip, None)  # re-inserted last: the dict's order is the order of last failure
        self._buckets[ip] = [tokens, now]
        if len(self._buckets) > MAX_TRACKED_IPS:
            self._prune(now)
        self.stats.login_budget_ips = len(self._buckets)

    def _prune(self, now: float) -> None:
        """Forget full buckets (they say nothing a missing entry does not); if every IP is still
        refilling, forget the oldest half: memory stays bounded whatever the number of IPs."""
        burst = float(self.settings.failed_login_burst)
        for ip in [ip for ip in self._buckets if self._tokens(ip, now) >= burst]:
            del self._buckets[ip]
        if len(self._buckets) > MAX_TRACKED_IPS // 2:
            for ip in list(self._buckets)[: len(self._buckets) - MAX_TRACKED_IPS // 2]:
                del self._buckets[ip]

    # --- the summary log line -------------------------------------------------------------------

    def note(self, reason: str, ip: str) -> None:
        """Count one refused or failed login for the next summary line."""
        count, ips = self._summary.get(reason, (0, set()))
        if len(ips) < MAX_SUMMARY_IPS:
            ips.add(ip)
        self._summary[reason] = (count + 1, ips)
        if not self._summary_due:
            self._summary_due = True
            self.loop.call_later(self.settings.auth_log_interval, self._log_summary)

    def _log_summary(self) -> None:
        self._summary_due = False
        parts = [
            f"{reason}={count} from {len(ips)}{'+' if len(ips) >= MAX_SUMMARY_IPS else ''} IPs"
            for reason, (count, ips) in sorted(self._summary.items())
        ]
        self._summary.clear()
        if parts:
            log.warning("refused logins in the last %gs: %s", self.settings.auth_log_interval, "; ".join(parts))
