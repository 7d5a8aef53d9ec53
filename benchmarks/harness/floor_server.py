"""The floor: the least a uvloop server in Python can do per Blynk connection, for comparison.

Any login is accepted; logins, the info message and pings get ``200``, other frames nothing; no body is
parsed, nothing is stored, there are no timers and no flood control. What blynk-server costs above
this (CPU per ping or per telemetry message, RSS per idle session) is the price of its own work; what
this costs above mosquitto is the price of uvloop and one Python callback per read.

    python -m benchmarks.harness.floor_server PORT [COUNT_FILE]

With COUNT_FILE, the HARDWARE frames received so far are written there (replaced whole) four times a
second: the harness's processed count for the telemetry scenario.
"""

from __future__ import annotations

import asyncio
import os
import sys

import uvloop

BUFFER = memoryview(bytearray(4096))  # one receive buffer for all connections, as blynk-server does
ANSWERED = frozenset((2, 6, 17, 29))  # LOGIN, PING, INTERNAL (the info message), HW_LOGIN
HARDWARE = 20
COUNT_EVERY = 0.25  # seconds between writes of the count file
hardware_frames = 0


class FloorProtocol(asyncio.BufferedProtocol):
    __slots__ = ("transport",)

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        global hardware_frames
        data = BUFFER[:nbytes]
        out = []
        pos = 0
        while pos + 5 <= nbytes:  # whole frames only: the harness never splits one
            command = data[pos]
            if command == 0:  # a response from the device carries no body
                pos += 5
                continue
            if command == HARDWARE:
                hardware_frames += 1
            elif command in ANSWERED:
                out.append(bytes((0, data[pos + 1], data[pos + 2], 0, 200)))
            pos += 5 + ((data[pos + 3] << 8) | data[pos + 4])
        if out:
            self.transport.write(b"".join(out))


def write_count(loop: asyncio.AbstractEventLoop, path: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(str(hardware_frames))
    os.replace(tmp, path)  # a reader sees the old count or the new one, never half of one
    loop.call_later(COUNT_EVERY, write_count, loop, path)


async def main(port: int, count_file: str | None) -> None:
    loop = asyncio.get_running_loop()
    if count_file:
        write_count(loop, count_file)
    server = await loop.create_server(FloorProtocol, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
