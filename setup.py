"""Declares the optional Cython extension ``protocol._framing``; everything else is in pyproject.toml.

No compiler (or no Cython) means a warning and the pure-Python twin ``protocol.framing``, never a
failed install.
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
        print(f"WARNING: could not build protocol._framing ({exc}); using the pure-Python framer", file=sys.stderr)


def extensions():
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("WARNING: Cython missing; using the pure-Python framer", file=sys.stderr)
        return []
    try:
        exts = cythonize(
            [Extension("protocol._framing", ["protocol/_framing.pyx"], extra_compile_args=["-O3"])],
            compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
            quiet=True,
        )
    except Exception as exc:  # noqa: BLE001 - a failed cythonize degrades to the pure-Python framer
        print(f"WARNING: cythonize failed ({exc}); using the pure-Python framer", file=sys.stderr)
        return []
    for ext in exts:  # cythonize() drops optional=True; set it again
        ext.optional = True
    return exts


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
