"""blynk-server: a self-hosted server for Blynk IoT devices.

The device hot path (``hardware/connection.py``, the sans-I/O core; ``hardware/session.py``, its asyncio
adapter; their counters and turn budget) also exists compiled by Cython at install time (see setup.py),
as extensions of their own names built from the same sources: ``hardware.hotpath`` picks one twin or
the other (``protocol.twins``).
"""

from __future__ import annotations

__version__ = "0.1.0"


def hot_path_implementation() -> str:
    """``"cython"`` when the compiled twins of the hot path are the ones in use, else ``"python"``."""
    from blynk_server.hardware import hotpath

    return hotpath.IMPLEMENTATION
