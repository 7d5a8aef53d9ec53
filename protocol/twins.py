"""Which twin of a module runs: its compiled extension or its Python source.

The modules that exist twice (the framer ``protocol._framing``/``protocol.framing``; the device core
``blynk_server.hardware.connection``, compiled from its own ``.py`` with a ``.pxd``, and the other
modules of ``blynk_server.COMPILED_MODULES``) are selected here, and only here:

- ``BLYNK_NO_EXTENSIONS=1`` selects the Python source of every one;
- a compiled module whose sources changed after it was built is **stale**: a warning, and the source
  runs. The build (setup.py) records the SHA-256 of each extension's sources in ``_compiled.json``
  beside this module; at import the sources on disk, where they are, are hashed and compared. A module
  built without that record, or installed without its sources, cannot be checked and is used.

Modules compiled under their own name (``connection.py`` → ``connection.*.so``) are redirected to the
source by a meta-path finder (``install``); the framer, compiled under another name, asks
``use_compiled`` before importing it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import warnings
from importlib.machinery import ModuleSpec
from pathlib import Path

MANIFEST = Path(__file__).with_name("_compiled.json")  # written by setup.py's build_ext


class StaleExtension(UserWarning):
    """A compiled module is older than its sources: the sources run instead."""


def extensions_off() -> bool:
    """``BLYNK_NO_EXTENSIONS`` is set (to anything but ``0``)."""
    return os.environ.get("BLYNK_NO_EXTENSIONS", "") not in ("", "0")


def _manifest(path: Path = MANIFEST) -> dict[str, dict[str, str]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def stale_sources(module: str, directory: str | os.PathLike, manifest: dict | None = None) -> list[str]:
    """The sources of ``module`` (in ``directory``) that differ from those it was compiled from."""
    built = (_manifest() if manifest is None else manifest).get(module, {})
    changed = []
    for name, digest in built.items():
        source = Path(directory, name)
        try:
            now = hashlib.sha256(source.read_bytes()).hexdigest()
        except OSError:
            continue  # not installed with its sources: nothing to compare
        if now != digest:
            changed.append(name)
    return changed


def use_compiled(module: str, directory: str | os.PathLike, manifest: dict | None = None) -> bool:
    """Should ``module``'s compiled extension be imported? No when extensions are off, or (with a
    ``StaleExtension`` warning) when its sources changed after the build."""
    if extensions_off():
        return False
    changed = stale_sources(module, directory, manifest)
    if changed:
        warnings.warn(
            f"{module}: the compiled module is older than {', '.join(changed)}; running the Python source "
            "(rebuild: pip install .)",
            StaleExtension,
            stacklevel=2,
        )
        return False
    return True


class SourcesWhenNeeded:
    """A meta-path finder for modules compiled under their own name: their ``.py`` when the compiled
    twin must not run (``use_compiled`` says no); else nothing, and the usual import finds the
    extension first."""

    def __init__(self, modules: tuple[str, ...], manifest: dict | None = None) -> None:
        self.modules = frozenset(modules)
        self.manifest = manifest

    def find_spec(self, name: str, path=None, target=None) -> ModuleSpec | None:
        if name not in self.modules:
            return None
        leaf = name.rpartition(".")[2]
        for entry in path or ():
            source = os.path.join(entry, leaf + ".py")
            if os.path.exists(source):
                if use_compiled(name, entry, self.manifest):
                    return None
                return importlib.util.spec_from_file_location(name, source)
        return None


def install(modules: tuple[str, ...]) -> None:
    """Select the twin of each of ``modules`` (compiled under their own name) at their import."""
    import sys

    if not any(isinstance(f, SourcesWhenNeeded) and f.modules == frozenset(modules) for f in sys.meta_path):
        sys.meta_path.insert(0, SourcesWhenNeeded(modules))


def load_source(name: str, alias: str) -> object:
    """The Python source of the compiled-under-its-own-name module ``name``, executed as a separate
    module ``alias`` (not registered in ``sys.modules`` as ``name``): both twins in one process, for
    tests."""
    import sys

    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, name
    source = os.path.join(os.path.dirname(spec.origin), name.rpartition(".")[2] + ".py")
    twin = importlib.util.spec_from_file_location(alias, source)
    module = importlib.util.module_from_spec(twin)
    sys.modules[alias] = module
    twin.loader.exec_module(module)
    return module
