"""Declares the optional Cython extensions; everything else is in pyproject.toml.

- ``protocol._framing``, the framer (its pure-Python twin is ``protocol.framing``);
- the device hot path, ``blynk_server/hardware/connection.py`` (the sans-I/O core), ``session.py`` (its
  asyncio adapter) and ``blynk_server/domain.py``, compiled
  from the same Python sources (Cython's pure-Python mode): the same code, run without the bytecode
  interpreter's overhead per line.

No compiler (or no Cython) means a warning and the pure-Python modules, never a failed install.
"""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Turn a failed extension build into a warning: the pure-Python framer takes over."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure degrades, by design
            self._warn(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    @staticmethod
    def _warn(exc):
        print(f"WARNING: could not build an extension ({exc}); using the pure-Python module", file=sys.stderr)


def extensions():
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
        # Plain Python compiled as is: annotations stay hints (annotation_typing off), semantics unchanged.
        exts += cythonize(
            [
                Extension("blynk_server.hardware.connection", ["blynk_server/hardware/connection.py"]),
                Extension("blynk_server.hardware.session", ["blynk_server/hardware/session.py"]),
                Extension("blynk_server.domain", ["blynk_server/domain.py"]),
            ],
            compiler_directives={"language_level": "3", "annotation_typing": False},
            quiet=True,
        )
    except Exception as exc:  # noqa: BLE001 - a failed cythonize degrades to the pure-Python modules
        print(f"WARNING: cythonize failed ({exc}); using the pure-Python modules", file=sys.stderr)
        return []
    for ext in exts:  # cythonize() drops optional=True; set it again
        ext.optional = True
    return exts


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
