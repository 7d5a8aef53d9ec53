"""blynk-server: a self-hosted server for Blynk IoT devices.

The modules of the device hot path, ``hardware/connection.py`` (the sans-I/O core), ``hardware/session.py``
(its asyncio adapter) and ``domain.py``, are also compiled by Cython at install time (see setup.py): the
same source (``connection.pxd`` and ``session.pxd`` type the core and its adapter: extension types with
C fields and C methods).
``protocol.twins`` selects, at import, the compiled module or the source: the source with
``BLYNK_NO_EXTENSIONS=1`` (as for ``protocol``), or when the compiled module is older than its sources.
"""

from __future__ import annotations

from protocol import twins

__version__ = "0.1.0"

# Compiled under their own name; ``protocol.twins`` picks the extension or the source at their import.
COMPILED_MODULES = (
    "blynk_server.hardware.stats",
    "blynk_server.hardware.budget",
    "blynk_server.hardware.connection",
    "blynk_server.hardware.session",
    "blynk_server.domain",
)
twins.install(COMPILED_MODULES)


def hot_path_implementation() -> str:
    """``"cython"`` when the compiled hot-path modules are the ones imported, else ``"python"``."""
    from blynk_server import domain
    from blynk_server.hardware import budget, connection, session, stats

    modules = (domain, connection, session, stats, budget)
    compiled = all(not (module.__file__ or "").endswith(".py") for module in modules)
    return "cython" if compiled else "python"
