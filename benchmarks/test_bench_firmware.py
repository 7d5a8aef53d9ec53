"""How long ``protocol.firmware.find_tag`` takes over a 4 MB image with the tag near its end (the
worst case: one pass over every byte). Moved here from tests/protocol/test_firmware.py, which asserted
"< 50 ms"; tests do not time things.

Run (pyproject's addopts skip benchmarks by default)::

    pytest benchmarks/test_bench_firmware.py --benchmark-only
"""

from __future__ import annotations

import random

from protocol.firmware import find_tag

TAG = b"\0".join(
    [b"blnkinf", b"mcu", b"1.0.2", b"fw-type", b"TMPLabc123", b"build", b"Apr 25 2026 10:00:00", b"", b"", b""]
)
SIZE = 4 * 1024 * 1024


def _image() -> bytes:
    rnd = random.Random(9)
    blob = bytearray(rnd.randbytes(SIZE))
    at = SIZE - len(TAG) - 3
    blob[at : at + len(TAG)] = TAG
    return bytes(blob)


def test_find_tag_4mb_tag_at_the_end(benchmark):
    image = _image()
    tag = benchmark(find_tag, image)
    assert tag is not None and tag.version == "1.0.2"
