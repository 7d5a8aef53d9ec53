"""The floor: the least a uvloop server in Python can do per Blynk connection, for comparison.

Any login is accepted; logins, the info message and pings get ``200``, other frames nothing; no body is
parsed, nothing is stored, there are no timers and no flood control. What blynk-server costs above
this (CPU per ping, RSS per idle session) is the price of its own work; what this costs above
mosquitto is the price of uvloop and one Python callback per read.

    python -m benchmarks.harness.floor_server PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

BUFFER = memoryview(bytearray(4096))  # one receive buffer for all connections, as blynk-server does
ANSWERED = frozenset((2, 6, 17, 29))  # LOGIN, PING, INTERNAL (the info message), HW_LOGIN


class FloorProtocol(asyncio.BufferedProtocol):
    __slots__ = ("transport",)

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        data = BUFFER[:nbytes]
        out = []
        pos = 0
        while pos + 5 <= nbytes:  # whole frames only: the harness never splits one
            command = data[pos]
            if command == 0:  # a response from the device carries no body
                pos += 5
                continue
            if command in ANSWERED:
                out.append(bytes((0, data[pos + 1], data[pos + 2], 0, 200)))
            pos += 5 + ((data[pos + 3] << 8) | data[pos + 4])
        if out:
            self.transport.write(b"".join(out))


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FloorProtocol, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
