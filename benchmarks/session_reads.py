"""Per-read Python cost of the device session, in process: ``python -m benchmarks.session_reads KIND
[SESSIONS] [ROUNDS] [PER_TURN]``.

SESSIONS logged-in sessions (default 200) on the unit tests' fake transports and fake clock (no
socket, no syscall: only the session's own Python work, the decoder and the domain), each read handed
over through the ``BufferedProtocol`` API (``get_buffer`` + ``buffer_updated``) as a loop would.
KIND: ``ping`` (one PING per read: the lone-ping path), ``vw`` (one 14-byte ``vw`` write per read), or
``batch`` (ten ``vw`` writes per read). A round is one read per session; a loop turn ends after every
PER_TURN reads (default SESSIONS: a round is a turn). Past ``turn_budget`` frames in one turn (256:
``batch`` with more than 25 sessions) the rest is deferred to the next turn, as on a server. Below one
core a turn of the server often holds one read: ``PER_TURN`` 1 counts what each turn costs besides the
reads. Prints ``KIND IMPLEMENTATION ns_per_read``, the best of five
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


def main(kind: str, sessions: int = 200, rounds: int = 200, per_turn: int = 0) -> None:
    frame = frame_for(kind)
    w = fakes.make_world(Path(tempfile.mkdtemp()), message_rate=1e9, message_burst=1e9)
    devs = [w.login(token=w.add_device(f"d{i}").token, peer=("10.0.0.1", i)) for i in range(sessions)]
    w.loop.advance(w.settings.info_grace + 1)  # held-push timers done: only reads from here on
    n = len(frame)
    pairs = [(d.transport.protocol, d.transport) for d in devs]
    loop = w.loop
    per_turn = per_turn or sessions
    turn_ends = [i % per_turn == per_turn - 1 or i == sessions - 1 for i in range(sessions)]
    gc.collect()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(rounds):
            for (proto, _transport), turn_ends_here in zip(pairs, turn_ends, strict=True):
                proto.get_buffer(n)[:n] = frame
                proto.buffer_updated(n)
                if turn_ends_here:
                    loop.run_ready()  # the turn ends: what the reads scheduled runs
        best = min(best, time.perf_counter() - t0)
        for _, transport in pairs:  # what the fake transport kept of the answers
            del transport.out[:]
            transport._read_at = 0
    print(kind, blynk_server.hot_path_implementation(), f"{best / (rounds * sessions) * 1e9:.0f}")
    w.close()


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:5]))
