"""The device listeners (TCP and TLS) and the set of live sessions."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from blynk_server.config import Settings
from blynk_server.domain import Domain
from blynk_server.hardware import direct
from blynk_server.hardware.context import SessionContext
from blynk_server.hardware.hotpath import DirectReads, HardwareSession
from blynk_server.hardware.sniff import FirstBytes
from blynk_server.hub import Hub

log = logging.getLogger(__name__)


class HardwareServer:
    """The listeners; what their sessions share is the ``context`` built here."""

    def __init__(self, settings: Settings, domain: Domain, hub: Hub, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.loop = loop
        self.context = SessionContext(settings, domain, hub, loop)
        self.stats = self.context.stats  # read by the metrics
        self.turns = self.context.turns  # the turn budget, deferred reads and turn lengths: read by the metrics
        self.sessions = self.context.sessions  # live connections, logged in or not
        self.login_hooks = self.context.login_hooks  # called with each session that logs in
        self._servers: list[asyncio.AbstractServer] = []
        self.address: tuple[str, int] | None = None
        self.tls_address: tuple[str, int] | None = None

    @property
    def http_handoff(self) -> Callable[[], asyncio.Protocol] | None:
        """Set by the HTTP part: builds an asyncio protocol that takes over a sniffed HTTP connection."""
        return self.context.http_handoff

    @http_handoff.setter
    def http_handoff(self, factory: Callable[[], asyncio.Protocol] | None) -> None:
        self.context.http_handoff = factory

    def new_session(self) -> HardwareSession:
        """A session of this listener's context (the WebSocket door's sessions)."""
        return HardwareSession(self.context)

    def new_connection(self) -> FirstBytes:
        """The listeners' protocol factory: the sniffer in front of a new session."""
        return FirstBytes(self.context)

    async def start(self) -> None:
        s = self.settings
        if s.direct_reads and direct.available():
            self.context.direct = DirectReads(self.loop, s.read_coalesce_ms / 1000)
        server = await self.loop.create_server(self.new_connection, s.host, s.port, backlog=4096, reuse_address=True)
        self._servers.append(server)
        self.address = server.sockets[0].getsockname()[:2]
        if s.tls_port is not None:
            if not (s.cert and s.key):
                raise ValueError("--tls-port needs --cert and --key")
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(s.cert), str(s.key))
            # A silent TCP connection on the TLS port gets as long for its handshake as for its login.
            tls = await self.loop.create_server(
                self.new_connection,
                s.host,
                s.tls_port,
                ssl=ctx,
                ssl_handshake_timeout=s.login_timeout,
                backlog=4096,
                reuse_address=True,
            )
            self._servers.append(tls)
            self.tls_address = tls.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        """Stop accepting, then close every session."""
        for server in self._servers:
            server.close()
        for session in list(self.sessions):
            session.close("server shutting down")
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 5)
            except TimeoutError:
                log.warning("listener did not close within 5 s")
        self._servers.clear()
        if self.context.direct is not None:
            self.context.direct.close()
            self.context.direct = None
