"""A small asyncio Blynk device client on ``protocol``: for tests, the load harness and scripts.

It speaks the wire exactly as the C++ library does (HW_LOGIN, then the info message), and keeps
every frame the server sends in a queue so a caller can assert on it.
"""

from __future__ import annotations

import asyncio

from protocol import Command, Decoder, Status, encode_frame, encode_response
from protocol.body import join_fields

DEFAULT_INFO = {
    "mcu": "1.0.0",
    "fw-type": "TMPL",
    "build": "Nov 22 2026 10:00:00",
    "blynk": "1.4.0",
    "h-beat": "40",
    "buff-in": "1024",
    "dev": "sim",
    "tmpl": "TMPL",
}


class LoginFailed(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"login failed with status {status}")
        self.status = status


class DeviceClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = Decoder()
        self.frames: asyncio.Queue = asyncio.Queue()
        self._msg_id = 0
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())
        self.closed = asyncio.Event()

    @classmethod
    async def open(cls, host: str, port: int, ssl=None) -> DeviceClient:
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl)
        return cls(reader, writer)

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        token: str,
        info: dict | None = DEFAULT_INFO,
        login: int = Command.HW_LOGIN,
        timeout: float = 5.0,
        ssl=None,
    ) -> DeviceClient:
        """Open, log in (raising LoginFailed on a non-200), and send the info message if given."""
        client = await cls.open(host, port, ssl=ssl)
        try:
            status = await client.login(token, login, timeout)
            if status != Status.SUCCESS:
                raise LoginFailed(status)
            if info is not None:
                reply = await client.request(Command.INTERNAL, join_fields(*[x for kv in info.items() for x in kv]))
                if reply[2] != Status.SUCCESS:
                    raise LoginFailed(reply[2])
        except BaseException:
            await client.close()
            raise
        return client

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for frame in self.decoder.feed(data):
                    self.frames.put_nowait(frame)
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()

    def next_id(self) -> int:
        self._msg_id = self._msg_id % 0xFFFF + 1
        return self._msg_id

    def send(self, command: int, body: bytes = b"", msg_id: int | None = None) -> int:
        msg_id = msg_id or self.next_id()
        self.writer.write(encode_frame(command, msg_id, body))
        return msg_id

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def respond(self, msg_id: int, status: int = Status.SUCCESS) -> None:
        self.writer.write(encode_response(msg_id, status))

    async def recv(self, timeout: float = 5.0) -> tuple:
        return await asyncio.wait_for(self.frames.get(), timeout)

    async def expect(self, predicate, timeout: float = 5.0) -> tuple:
        """The first frame matching ``predicate``; earlier ones are discarded."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.0, deadline - loop.time()))
            if predicate(frame):
                return frame

    async def request(self, command: int, body: bytes = b"", timeout: float = 5.0) -> tuple:
        """Send and wait for the first frame carrying the same msg id."""
        msg_id = self.send(command, body)
        return await self.expect(lambda f: f[1] == msg_id, timeout)

    async def login(self, token: str, command: int = Command.HW_LOGIN, timeout: float = 5.0) -> int:
        reply = await self.request(command, token.encode(), timeout)
        return reply[2]

    def virtual_write(self, pin: int, *values: object) -> int:
        return self.send(Command.HARDWARE, join_fields("vw", pin, *values))

    async def ping(self, timeout: float = 5.0) -> int:
        return (await self.request(Command.PING, b"", timeout))[2]

    async def silence(self, duration: float) -> list[tuple]:
        """Collect whatever arrives within ``duration`` seconds."""
        out = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration
        while (left := deadline - loop.time()) > 0:
            try:
                out.append(await self.recv(left))
            except TimeoutError:
                break
        return out

    async def close(self) -> None:
        self._reader_task.cancel()
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
