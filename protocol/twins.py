"""Which twin of a module runs: its compiled extension or its Python source. Selected here, and only here.

Each compiled twin has a name of its own beside its source: the framer ``protocol._framing`` (from
``_framing.pyx``) beside ``protocol.framing``; the device hot path ``blynk_server.hardware._stats_c``,
``_budget_c``, ``_connection_c`` and ``_session_c``, compiled by Cython from the very sources
``stats.py``, ``budget.py``, ``connection.py`` and ``session.py`` (typed by ``_<name>_c.pxd``). A source
module is always itself; nothing shadows it, and both twins can be imported in one process (the tests
run the hot path's on each). ``select`` picks, for a group of modules:

- the sources, with ``BLYNK_NO_EXTENSIONS=1``, or when a compiled twin is missing (not built);
- the sources, with a ``StaleExtension`` warning, when a compiled twin is **stale**: its sources changed
  after it was built. The build (setup.py) records the SHA-256 of each extension's sources in
  ``_compiled.json`` beside this module; at import the sources on disk, where they are, are hashed and
  compared. A module built without that record, or installed without its sources, cannot be checked
  and is used;
- else the compiled twins, all of them.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

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


def select(pairs: Sequence[tuple[str, str]], manifest: dict | None = None) -> tuple[list[ModuleType], str]:
    """Import the compiled twin of every ``(compiled, source)`` pair of module names, or the source of
    every one, and say which (``"cython"`` or ``"python"``).

    The sources run when extensions are off, when a compiled twin is not there (not built) or is stale
    (``use_compiled`` warns), or when one fails to import: compiled twins that ``cimport`` each other
    run together or not at all."""
    manifest = _manifest() if manifest is None else manifest  # read once for the group
    if not extensions_off() and all(_compiled_usable(compiled, manifest) for compiled, _ in pairs):
        try:
            return [importlib.import_module(compiled) for compiled, _ in pairs], "cython"
        except ImportError:
            pass
    return [importlib.import_module(source) for _, source in pairs], "python"


def _compiled_usable(name: str, manifest: dict) -> bool:
    """``name`` is built, and not older than its sources (else a ``StaleExtension`` warning)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return False
    return use_compiled(name, os.path.dirname(spec.origin), manifest)
