"""blynk-server: a self-hosted server for Blynk IoT devices.

The modules of the device hot path, ``hardware/connection.py`` (the sans-I/O core), ``hardware/session.py``
(its asyncio adapter) and ``domain.py``, are also compiled by Cython at install time (see setup.py): the
same source, without the interpreter's overhead per line. Python imports the compiled module when there is one; ``BLYNK_NO_EXTENSIONS=1`` (as for
``protocol``) makes it import the sources instead.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from importlib.machinery import ModuleSpec

__version__ = "0.1.0"

COMPILED_MODULES = ("blynk_server.hardware.connection", "blynk_server.hardware.session", "blynk_server.domain")


class _SourcesFirst:
    """A meta-path finder that resolves ``COMPILED_MODULES`` to their ``.py`` files."""

    @staticmethod
    def find_spec(name: str, path=None, target=None) -> ModuleSpec | None:
        if name not in COMPILED_MODULES:
            return None
        for entry in path or ():
            source = os.path.join(entry, name.rpartition(".")[2] + ".py")
            if os.path.exists(source):
                return importlib.util.spec_from_file_location(name, source)
        return None


if os.environ.get("BLYNK_NO_EXTENSIONS", "") not in ("", "0"):
    sys.meta_path.insert(0, _SourcesFirst())


def hot_path_implementation() -> str:
    """``"cython"`` when the compiled hot-path modules are the ones imported, else ``"python"``."""
    from blynk_server import domain
    from blynk_server.hardware import connection, session

    compiled = all(not (module.__file__ or "").endswith(".py") for module in (domain, connection, session))
    return "cython" if compiled else "python"
