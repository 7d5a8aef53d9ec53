"""Per-read Python cost of the device session, in process: ``python -m benchmarks.session_reads KIND
[SESSIONS] [ROUNDS]``.

SESSIONS logged-in sessions (default 200) on the unit tests' fake transports and fake clock (no
socket, no syscall: only the session's own Python work, the decoder and the domain), each read handed
over through the ``BufferedProtocol`` API (``get_buffer`` + ``buffer_updated``) as a loop would.
KIND: ``ping`` (one PING per read: the lone-ping path), ``vw`` (one 14-byte ``vw`` write per read), or
``batch`` (ten ``vw`` writes per read). A round (one read per session) is one loop turn: past
``turn_budget`` frames in it (256: ``batch`` with more than 25 sessions) the rest is deferred to the next
turn, as on a server. Prints ``KIND IMPLEMENTATION ns_per_read``, the best of five
passes of ROUNDS reads per session (default 200). Which tree and which twin it measures is whatever
``blynk_server`` imports: compare two trees with ``PYTHONPATH``, and the sources with
``BLYNK_NO_EXTENSIONS=1``. The machine is shared: compare interleaved runs (``farm-bench --vs``), never
absolute figures from different times.
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from pathlib import Path

import blynk_server
from protocol import Command, encode_frame
from protocol.body import join_fields
from tests.unit import fakes


def frame_for(kind: str) -> bytes:
    if kind == "ping":
        return encode_frame(Command.PING, 7)
    if kind == "vw":
        return encode_frame(Command.HARDWARE, 7, join_fields("vw", 3, 42))
    if kind == "batch":
        return b"".join(encode_frame(Command.HARDWARE, 7 + i, join_fields("vw", 3, i)) for i in range(10))
    raise SystemExit(f"unknown kind {kind!r}: ping, vw or batch")


def main(kind: str, sessions: int = 200, rounds: int = 200) -> None:
    frame = frame_for(kind)
    w = fakes.make_world(Path(tempfile.mkdtemp()), message_rate=1e9, message_burst=1e9)
    devs = [w.login(token=w.add_device(f"d{i}").token, peer=("10.0.0.1", i)) for i in range(sessions)]
    w.loop.advance(w.settings.info_grace + 1)  # held-push timers done: only reads from here on
    n = len(frame)
    pairs = [(d.transport.protocol, d.transport) for d in devs]
    loop = w.loop
    gc.collect()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(rounds):
            for proto, _transport in pairs:
                proto.get_buffer(n)[:n] = frame
                proto.buffer_updated(n)
            loop.run_ready()  # a round is a loop turn: one read per session, then what turns schedule
        best = min(best, time.perf_counter() - t0)
        for _, transport in pairs:  # what the fake transport kept of the answers
            del transport.out[:]
            transport._read_at = 0
    print(kind, blynk_server.hot_path_implementation(), f"{best / (rounds * sessions) * 1e9:.0f}")
    w.close()


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:4]))
