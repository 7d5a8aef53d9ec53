"""Hardware sessions over WebSocket (``/websocket``, ``/websockets``), as the legacy server offered.

The same ``HardwareSession`` runs unchanged: a small transport object stands in for the socket.
Binary WS messages carry 5-byte frames (any split across messages is fine: the session's decoder is
incremental); each ``write()`` of the session goes out as one binary WS message, in order.
Flow control is real: ``pause_reading`` stops taking messages off the WebSocket.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from blynk_server.hardware.session import HardwareSession

if TYPE_CHECKING:
    from blynk_server.app import BlynkServer

log = logging.getLogger(__name__)
WS_PATHS = ("/websocket", "/websockets")


class WebSocketTransport(asyncio.Transport):
    """Enough of ``asyncio.Transport`` for ``HardwareSession``: write, close, pause/resume, extra info."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        super().__init__()
        self.ws = ws
        self._extra = {
            "peername": request.transport.get_extra_info("peername") if request.transport else None,
            "sockname": request.transport.get_extra_info("sockname") if request.transport else None,
        }
        self._out: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.readable = asyncio.Event()
        self.readable.set()
        self._closing = False
        self.sender = asyncio.get_running_loop().create_task(self._send_loop())

    def get_extra_info(self, name: str, default=None):
        return self._extra.get(name, default)

    def write(self, data: bytes) -> None:
        if not self._closing:
            self._out.put_nowait(bytes(data))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Send what is queued, then close the WebSocket."""
        if not self._closing:
            self._closing = True
            self._out.put_nowait(None)
            self.readable.set()

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self.readable.clear()

    def resume_reading(self) -> None:
        self.readable.set()

    def is_reading(self) -> bool:
        return self.readable.is_set()

    def get_write_buffer_size(self) -> int:
        return self._out.qsize()

    async def _send_loop(self) -> None:
        try:
            while (data := await self._out.get()) is not None:
                await self.ws.send_bytes(data)
        except (ConnectionError, RuntimeError) as exc:
            log.info("websocket send failed peer=%s: %s", self._extra["peername"], exc)
        finally:
            self._closing = True
            await self.ws.close()


def add_routes(app: web.Application, server: BlynkServer) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        hardware = server.hardware
        assert hardware is not None
        ws = web.WebSocketResponse(max_msg_size=hardware.settings.max_frame + 5, autoping=True)
        await ws.prepare(request)
        transport = WebSocketTransport(ws, request)
        session = HardwareSession(hardware)
        session.sniffed = True  # already known to be the binary protocol
        session.connection_made(transport)
        size = len(session._buf)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    data = memoryview(msg.data)
                    while data and not session.closed:
                        await transport.readable.wait()
                        n = min(size, len(data))
                        session._buf[:n] = data[:n]
                        session.buffer_updated(n)
                        data = data[n:]
                    if session.closed:
                        break
                elif msg.type == WSMsgType.TEXT:
                    session.close("text message on a hardware websocket")
                    break
                else:
                    break
        finally:
            session.connection_lost(None)
            transport.close()
            await transport.sender
        return ws

    for path in WS_PATHS:
        app.router.add_get(path, handle)
