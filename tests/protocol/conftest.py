"""Shared fixtures of the protocol tests.

Every framing test takes the ``framing`` fixture and so runs twice: against the pure-Python twin
``protocol.framing`` and against the Cython extension ``protocol._framing``. The Cython run is
skipped, with the reason, when ``BLYNK_NO_EXTENSIONS=1`` or when the extension is not built.
"""

from __future__ import annotations

import importlib
import os
import types

import pytest

NO_EXTENSIONS = os.environ.get("BLYNK_NO_EXTENSIONS", "") not in ("", "0")


def _load(name: str) -> types.ModuleType:
    if name == "python":
        return importlib.import_module("protocol.framing")
    if NO_EXTENSIONS:
        pytest.skip("BLYNK_NO_EXTENSIONS=1")
    try:
        return importlib.import_module("protocol._framing")
    except ImportError as exc:
        pytest.skip(f"the Cython extension protocol._framing is not importable (not built?): {exc}")


@pytest.fixture(scope="session", params=["python", "cython"])
def framing(request) -> types.ModuleType:
    """One framer implementation (module with Decoder, encode_frame, encode_response)."""
    return _load(request.param)


@pytest.fixture(scope="session")
def python_framing() -> types.ModuleType:
    return _load("python")


@pytest.fixture(scope="session")
def cython_framing() -> types.ModuleType:
    return _load("cython")


# A 14-byte HARDWARE vw frame (5-byte header + 9-byte body), the unit of the benchmarks.
VW_FRAME = b"\x14\x00\x01\x00\x09vw\x0012\x00123"


@pytest.fixture(scope="session")
def vw_frame() -> bytes:
    return VW_FRAME
