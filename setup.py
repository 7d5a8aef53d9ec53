"""Declares the optional Cython extensions; everything else is in pyproject.toml.

- ``protocol._framing``, the framer (its pure-Python twin is ``protocol.framing``);
- the device hot path, compiled from its Python sources (Cython's pure-Python mode) under names of
  its own, beside them: ``blynk_server/hardware/connection.py`` (the sans-I/O core) as
  ``_connection_c``, ``session.py`` (its asyncio adapter) as ``_session_c``, ``stats.py`` and
  ``budget.py`` as ``_stats_c`` and ``_budget_c``; each ``_<name>_c.pxd`` makes its classes extension
  types (C fields, C methods). ``blynk_server.hardware.hotpath`` picks the compiled four or the sources;
- a device's pin write, ``blynk_server/pinwrite.py``, as ``blynk_server._pinwrite_c`` (``Domain`` picks it
  or the source).

No compiler (or no Cython) means a warning and the pure-Python modules, never a failed install. The
build records the SHA-256 of each built extension's sources in ``protocol/_compiled.json``:
``protocol.twins`` runs the sources of a compiled module whose sources changed since (a stale build).
"""

import hashlib
import json
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_HOT = "blynk_server/hardware"
_TWINNED = ("stats", "budget", "connection", "session", "direct")  # each built as _<name>_c from <name>.py
_CORE = [
    *(
        f"{_HOT}/{name}"
        for name in ("connection.py", "_connection_c.pxd", "stats.py", "_stats_c.pxd", "budget.py", "_budget_c.pxd")
    ),
    "blynk_server/_pinwrite_c.pxd",  # the core calls the compiled PinWriter's write in C: built against its layout
]
# Each extension's sources, which protocol.twins compares with the files beside the installed module.
SOURCES = {
    "protocol._framing": ["protocol/_framing.pyx"],
    # The compiled core cimports HardwareStats and TurnBudget, and the core's source cannot count into a
    # compiled HardwareStats (its message counts read as copies): the three are stale together.
    "blynk_server.hardware._connection_c": _CORE,
    "blynk_server.hardware._stats_c": _CORE,
    "blynk_server.hardware._budget_c": _CORE,
    # The compiled adapter cimports the core (its layout and C methods): stale with it, and with its .pxd.
    "blynk_server.hardware._session_c": [*_CORE, f"{_HOT}/session.py", f"{_HOT}/_session_c.pxd"],
    # The compiled epoll set calls the compiled adapter's C methods: stale with it.
    "blynk_server.hardware._direct_c": [
        *_CORE,
        f"{_HOT}/session.py",
        f"{_HOT}/_session_c.pxd",
        f"{_HOT}/direct.py",
        f"{_HOT}/_direct_c.pxd",
    ],
    "blynk_server._pinwrite_c": ["blynk_server/pinwrite.py", "blynk_server/_pinwrite_c.pxd"],
}


# Compiled by older versions under their source's own name: left beside the source by an in-place build,
# such a file would be imported instead of it.
FORMER = [
    "blynk_server.domain",
    *(f"blynk_server.hardware.{name}" for name in _TWINNED),
]


class OptionalBuildExt(build_ext):
    """Turn a failed extension build into a warning: the pure-Python framer takes over."""

    def run(self):
        self._remove_former()
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure degrades, by design
            self._warn(exc)
        self._write_manifest()

    def _remove_former(self):
        for name in FORMER:
            path = self.get_ext_fullpath(name)
            if os.path.exists(path):
                os.remove(path)
                print(f"removed {path}: an older build's module, which would shadow its source", file=sys.stderr)

    def _write_manifest(self):
        """``protocol/_compiled.json``: {module: {source file name: sha256}} of the extensions built."""
        built = {}
        for name, sources in SOURCES.items():
            if os.path.exists(self.get_ext_fullpath(name)):
                built[name] = {
                    os.path.basename(src): hashlib.sha256(Path(src).read_bytes()).hexdigest() for src in sources
                }
        target = os.path.join(os.path.dirname(self.get_ext_fullpath("protocol._framing")), "_compiled.json")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            json.dump(built, f, indent=1, sort_keys=True)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    @staticmethod
    def _warn(exc):
        print(f"WARNING: could not build an extension ({exc}); using the pure-Python module", file=sys.stderr)


def drop_outdated_c(root: str = ".") -> list[str]:
    """Remove the generated C file of each hot-path twin that is older than one of its ``SOURCES``, so
    ``cythonize`` writes it anew (and build_ext then rebuilds the module); returns the files removed.

    ``cythonize`` finds the ``.pxd`` of a pure-Python-mode module by the source's name (``session.pxd``),
    not by the module's (``_session_c.pxd``), and so missed every change to a twin's ``.pxd`` and to the
    ``.pxd`` it cimports. An in-place build then kept the old module while the manifest recorded the new
    sources: a compiled adapter built against an older core layout ran as up to date."""
    removed = []
    for name in _TWINNED:
        c_file = Path(root, _HOT, f"{name}.c")
        if not c_file.exists():
            continue
        built = c_file.stat().st_mtime
        if any(Path(root, src).stat().st_mtime > built for src in SOURCES[f"blynk_server.hardware._{name}_c"]):
            c_file.unlink()
            removed.append(str(c_file))
    return removed


def extensions():
    drop_outdated_c()
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("WARNING: Cython missing; using the pure-Python modules", file=sys.stderr)
        return []
    try:
        exts = cythonize(
            [Extension("protocol._framing", ["protocol/_framing.pyx"], extra_compile_args=["-O3"])],
            compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
            quiet=True,
        )
        # Python sources compiled under their twin's name (annotations stay hints: annotation_typing off);
        # types and C methods come from the _<name>_c.pxd beside them (pure-Python mode).
        exts += cythonize(
            [Extension(f"blynk_server.hardware._{name}_c", [f"{_HOT}/{name}.py"]) for name in _TWINNED]
            + [Extension("blynk_server._pinwrite_c", ["blynk_server/pinwrite.py"])],
            compiler_directives={"language_level": "3", "annotation_typing": False},
            quiet=True,
        )
    except Exception as exc:  # noqa: BLE001 - a failed cythonize degrades to the pure-Python modules
        print(f"WARNING: cythonize failed ({exc}); using the pure-Python modules", file=sys.stderr)
        return []
    for ext in exts:  # cythonize() drops optional=True; set it again
        ext.optional = True
    return exts


if __name__ == "__main__":  # run by setuptools (pip, build_ext); a test imports it for drop_outdated_c
    setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
