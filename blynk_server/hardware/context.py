"""What a device session uses of the listener that accepted it, and nothing more.

``HardwareServer`` builds one ``SessionContext`` and hands it to every session it creates (and the
WebSocket door hands the same one to its sessions). A test builds one around a fake loop: see
``tests/unit/fakes.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from blynk_server.config import Settings
from blynk_server.domain import Domain
from blynk_server.hardware.deadlines import Deadlines
from blynk_server.hardware.guard import LoginGuard
from blynk_server.hardware.hotpath import HardwareStats, TurnBudget
from blynk_server.hardware.turns import ReadTurns
from blynk_server.hub import DeviceLink, Hub
from blynk_server.model import now_ms
from protocol import Decoder

if TYPE_CHECKING:
    from blynk_server.mailer import Mailer

log = logging.getLogger(__name__)


class SessionContext:
    """Shared by the sessions of one listener.

    - ``loop``: only ``time()``, ``call_at``, ``call_later`` and ``call_soon`` are used (a fake clock fits);
    - ``deadlines``: every session's login and heartbeat deadline, on one timer;
    - ``guard``: admission of connections waiting for login, failed-login budgets;
    - ``decoder``: the frame decoder of every read that ends on a frame boundary (a session holding
      part of a frame takes it over, and a fresh one is put here);
    - ``turns``: the shared receive buffer, the round robin of busy sockets and the deferred reads;
    - ``direct``: the listener's epoll set that reads plain TCP device sockets (``direct.py``; None: none,
      each transport reads its own);
    - ``budget``: the frames of telemetry one loop turn handles (``turns`` refills it at the next turn
      once a quarter of it is spent);
    - ``sessions``: the live connections, logged in or not (closed at shutdown, counted by the metrics);
    - ``http_handoff``: set by the HTTP side, builds the protocol that takes over a sniffed HTTP
      connection (None: HTTP is not served on the device port);
    - ``login_hooks``: called with each session that logs in (a failing hook is logged, not raised);
    - ``mailer``: queues a device's EMAIL (None: e-mail is off, the device gets status 14);
    - ``pins``: the domain's pin writer (``Domain.pins``), called once per well-formed pin write;
    - ``wall_ms``: the wall clock in UTC milliseconds, for stored timestamps (a test may give its own).
    """

    __slots__ = (
        "settings",
        "stats",
        "domain",
        "pins",
        "hub",
        "loop",
        "deadlines",
        "guard",
        "decoder",
        "turns",
        "direct",
        "budget",
        "sessions",
        "http_handoff",
        "login_hooks",
        "mailer",
        "wall_ms",
    )

    def __init__(
        self,
        settings: Settings,
        domain: Domain,
        hub: Hub,
        loop: asyncio.AbstractEventLoop,
        stats: HardwareStats | None = None,
        budget: TurnBudget | None = None,
    ) -> None:
        """``stats`` and ``budget`` are new ones unless given (a test gives the pure twins' for the
        pure core: a compiled ``HardwareStats`` reads its message counts as copies to Python code)."""
        self.settings = settings
        self.domain = domain
        self.pins = domain.pins  # the domain's PinWriter: a device's pin write is one call to its ``write``
        self.hub = hub
        self.loop = loop
        self.stats = HardwareStats() if stats is None else stats
        self.deadlines = Deadlines(loop)
        self.guard = LoginGuard(settings, loop, self.stats)
        self.decoder = Decoder(settings.max_frame)
        self.budget = TurnBudget(settings.turn_budget) if budget is None else budget
        self.turns = ReadTurns(loop, settings.recv_buffer, self.budget)
        self.direct = None  # hotpath.DirectReads: the listener's epoll set of plain TCP device sockets
        self.sessions: set[DeviceLink] = set()
        self.http_handoff: Callable[[], asyncio.Protocol] | None = None
        self.login_hooks: list[Callable[[DeviceLink], None]] = []
        self.mailer: Mailer | None = None
        self.wall_ms: Callable[[], int] = now_ms

    def logged_in(self, link: DeviceLink, device_id: int) -> None:
        """Run the login hooks for a session that has just logged in."""
        for hook in self.login_hooks:
            try:
                hook(link)
            except Exception:
                log.exception("login hook failed device=%d", device_id)
