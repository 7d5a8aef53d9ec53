"""Framing micro-benchmarks: the Cython framer, its pure-Python twin and the construct oracle.

Run (pyproject's addopts skip benchmarks by default)::

    pytest benchmarks/test_bench_framing.py --benchmark-only

The unit is a 14-byte HARDWARE ``vw`` frame (5-byte header + ``vw\\0<pin>\\0<value>``, 9 bytes),
what a sensor sends. Frames per second = frames per call / time per call; each test stores its
frames per call in ``extra_info["frames"]``.
"""

from __future__ import annotations

import importlib
import os

import pytest

from protocol import framing as py_framing
from protocol import wire

BODY = b"vw\x0012\x00123"  # 9 bytes
FRAME = b"\x14\x00\x01\x00\x09" + BODY
CHUNK_64 = b"".join(b"\x14" + i.to_bytes(2, "big") + b"\x00\x09" + BODY for i in range(1, 65))
assert len(FRAME) == 14 and len(CHUNK_64) == 64 * 14


def _cython():
    if os.environ.get("BLYNK_NO_EXTENSIONS", "") not in ("", "0"):
        pytest.skip("BLYNK_NO_EXTENSIONS=1")
    try:
        return importlib.import_module("protocol._framing")
    except ImportError as exc:
        pytest.skip(f"the Cython extension protocol._framing is not importable (not built?): {exc}")


class _Construct:
    """The oracle dressed as a framer (stateless: the benchmark chunks hold whole frames)."""

    class Decoder:
        def feed(self, data):
            return wire.parse_stream(data)[0]

    @staticmethod
    def encode_frame(command, msg_id, body=b""):
        return wire.build_frame(command, msg_id, body)


@pytest.fixture(params=["cython", "python", "construct"])
def impl(request):
    if request.param == "cython":
        return _cython()
    if request.param == "python":
        return py_framing
    return _Construct


@pytest.mark.benchmark(group="decode: 1 frame per chunk")
def test_decode_1_frame_per_chunk(benchmark, impl):
    feed = impl.Decoder().feed
    assert feed(FRAME) == [(20, 1, BODY)]
    benchmark.extra_info["frames"] = 1
    benchmark(feed, FRAME)


@pytest.mark.benchmark(group="decode: 64 frames per chunk")
def test_decode_64_frames_per_chunk(benchmark, impl):
    feed = impl.Decoder().feed
    frames = feed(CHUNK_64)
    assert len(frames) == 64 and frames[63] == (20, 64, BODY)
    benchmark.extra_info["frames"] = 64
    benchmark(feed, CHUNK_64)


@pytest.mark.benchmark(group="encode: 1 vw frame")
def test_encode_vw_frame(benchmark, impl):
    encode = impl.encode_frame
    assert encode(20, 1, BODY) == FRAME
    benchmark.extra_info["frames"] = 1
    benchmark(encode, 20, 1, BODY)
