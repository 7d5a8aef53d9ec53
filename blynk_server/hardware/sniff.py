"""The first protocol of a device-port connection: binary Blynk or HTTP, told by the first bytes.

As hypercorn does it, a small protocol in front reads the first bytes and hands the transport to the
protocol that speaks them: the device ``HardwareSession`` (made at accept, so the login deadline and
the pending-login caps cover a silent connection too) or the HTTP application the listener's context
names (``http_handoff``; None: the port speaks the binary protocol only, and the session takes the
transport at once). A slow client may send ``G``, ``E``, ``T`` one read at a time: a partial HTTP method
is held back until it is known. Binary logins never wait: no HTTP method starts with their first byte.
"""

from __future__ import annotations

import asyncio

from blynk_server.hardware.context import SessionContext
from blynk_server.hardware.hotpath import HardwareSession

HTTP_PREFIXES = (b"GET ", b"POST", b"PUT ", b"HEAD", b"OPTI", b"PATC", b"DELE", b"TRAC", b"CONN")


class FirstBytes(asyncio.BufferedProtocol):
    """Until the first bytes decide: the session's buffer, its write-flow and loss callbacks."""

    __slots__ = ("ctx", "session", "transport", "_held")

    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self.session = HardwareSession(ctx)
        self.transport: asyncio.BaseTransport | None = None
        self._held = b""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        session = self.session
        session.connection_made(transport)
        if self.ctx.http_handoff is None and not session.closed:
            transport.set_protocol(session)  # nothing to tell apart
            session.go_direct()

    def get_buffer(self, sizehint: int):  # type: ignore[override]
        return self.session.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        session = self.session
        if session.closed:
            return
        head = self._held + bytes(session._view[:nbytes])
        if len(head) < 4 and any(p.startswith(head) for p in HTTP_PREFIXES):
            session.stats.bytes_in += nbytes
            self._held = head
            return
        transport = self.transport
        handoff = self.ctx.http_handoff
        if head[:4] in HTTP_PREFIXES and handoff is not None:
            session.stats.bytes_in += nbytes
            session.handed_off()
            protocol = handoff()
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            protocol.data_received(head)
            return
        transport.set_protocol(session)
        if self._held:
            session.receive_held(self._held)  # fewer than 5 bytes: no frame yet, just buffered
            self._held = b""
        session.buffer_updated(nbytes)
        session.go_direct()  # the binary protocol: from the next read on, the listener's epoll set reads it

    def pause_writing(self) -> None:
        self.session.pause_writing()

    def resume_writing(self) -> None:
        self.session.resume_writing()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc) -> None:
        self.session.connection_lost(exc)
