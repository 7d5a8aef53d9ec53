"""Hardware sessions over WebSocket (``/websocket``, ``/websockets``), as the legacy server offered.

The same ``HardwareSession`` (and so the same sans-I/O core) runs: a small transport object stands in
for the socket, and each binary WS message is handed to ``session.feed`` (5-byte-header frames; any
split across messages is fine: the core's decoder is incremental); each ``write()`` of the session goes
out as one binary WS message, in order.
Flow control is real, both ways: ``pause_reading`` stops taking messages off the WebSocket (aiohttp
then stops reading the socket once 64 KiB are queued), and the bytes waiting to be sent drive the
session's ``pause_writing``/``resume_writing`` through ``set_write_buffer_limits``, as a socket
transport's would; ``abort`` drops them and closes the TCP connection at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from blynk_server.hardware.hotpath import HardwareSession

log = logging.getLogger(__name__)
WS_PATHS = ("/websocket", "/websockets")


class WebSocketTransport(asyncio.Transport):
    """Enough of ``asyncio.Transport`` for ``HardwareSession``: write, close, abort, pause/resume of
    reading, write-buffer limits that call the protocol's ``pause_writing``/``resume_writing``."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        super().__init__()
        self.ws = ws
        self._tcp = request.transport
        self._extra = {
            "peername": self._tcp.get_extra_info("peername") if self._tcp else None,
            "sockname": self._tcp.get_extra_info("sockname") if self._tcp else None,
        }
        self._out: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._queued = 0  # bytes in _out
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._writing_paused = False
        self._protocol: asyncio.BaseProtocol | None = None
        self.readable = asyncio.Event()
        self.readable.set()
        self._closing = False
        self._aborted = False
        self.sender = asyncio.get_running_loop().create_task(self._send_loop())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 64 * 1024 if high is None else high
        self._low = self._high // 4 if low is None else low

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def write(self, data: bytes) -> None:
        if not self._closing:
            self._out.put_nowait(bytes(data))
            self._queued += len(data)
            if not self._writing_paused and self._queued > self._high and self._protocol is not None:
                self._writing_paused = True
                self._protocol.pause_writing()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Send what is queued, then close the WebSocket."""
        if not self._closing:
            self._closing = True
            self._out.put_nowait(None)
            self.readable.set()

    def abort(self) -> None:
        """Drop what is queued and close the TCP connection now (a peer that does not read)."""
        self._closing = self._aborted = True
        self._queued = 0
        self.sender.cancel()
        self.readable.set()
        if self._tcp is not None:
            self._tcp.abort()

    def pause_reading(self) -> None:
        self.readable.clear()

    def resume_reading(self) -> None:
        self.readable.set()

    def is_reading(self) -> bool:
        return self.readable.is_set()

    def get_write_buffer_size(self) -> int:
        return self._queued

    async def _send_loop(self) -> None:
        try:
            while (data := await self._out.get()) is not None:
                await self.ws.send_bytes(data)
                self._queued -= len(data)
                if self._writing_paused and self._queued <= self._low and self._protocol is not None:
                    self._writing_paused = False
                    self._protocol.resume_writing()
        except (ConnectionError, RuntimeError) as exc:
            log.info("websocket send failed peer=%s: %s", self._extra["peername"], exc)
        finally:
            self._closing = True
            if not self._aborted:
                await self.ws.close()


def add_routes(app: web.Application, new_session: Callable[[], HardwareSession], max_frame: int) -> None:
    """``new_session`` makes a session of the device listener (``HardwareServer.new_session``)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=max_frame + 5, autoping=True)
        await ws.prepare(request)
        transport = WebSocketTransport(ws, request)
        session = new_session()
        transport.set_protocol(session)
        session.connection_made(transport)
        size = session.read_size
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    data = memoryview(msg.data)
                    while data and not session.closed:
                        await transport.readable.wait()
                        session.feed(data[:size])  # a full one waits for a read turn, as a socket's
                        data = data[size:]
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
            await asyncio.wait([transport.sender])  # ends by itself, or was cancelled by abort()
        return ws

    for path in WS_PATHS:
        app.router.add_get(path, handle)
