"""``protocol.twins``: the compiled twin of a module runs unless extensions are off or it is stale (its
sources changed after the build), and then the Python source runs, with a warning for a stale one."""

from __future__ import annotations

import hashlib
import json
import sys
import warnings

import pytest

import blynk_server
from protocol import twins


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package ``twinpkg``: a source ``core.py``, its "compiled twin" ``_core_c.py`` (a stand-in for the
    extension: what matters here is which module is imported) and ``_core_c.pxd``, on sys.path."""
    monkeypatch.delenv("BLYNK_NO_EXTENSIONS", raising=False)
    pkg = tmp_path / "twinpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "core.py").write_text("WHICH = 'source'\n")
    (pkg / "_core_c.py").write_text("WHICH = 'compiled'\n")
    (pkg / "_core_c.pxd").write_text("cdef class Core:\n    pass\n")
    (pkg / "other.py").write_text("WHICH = 'source'\n")
    (pkg / "_other_c.py").write_text("WHICH = 'compiled'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for name in [n for n in sys.modules if n.startswith("twinpkg")]:
        sys.modules.pop(name)


PAIRS = [("twinpkg._core_c", "twinpkg.core"), ("twinpkg._other_c", "twinpkg.other")]


def _built(pkg) -> dict:
    """The manifest of a build made from the sources as they are now."""
    return {"twinpkg._core_c": {n: _digest((pkg / n).read_bytes()) for n in ("core.py", "_core_c.pxd")}}


def _which(modules) -> list[str]:
    return [m.WHICH for m in modules]


def test_fresh_build_is_used(package):
    manifest = _built(package)
    assert twins.stale_sources("twinpkg._core_c", package, manifest) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert twins.use_compiled("twinpkg._core_c", package, manifest)
        modules, implementation = twins.select(PAIRS, manifest)
    assert implementation == "cython" and _which(modules) == ["compiled", "compiled"]


@pytest.mark.parametrize("edited", ["core.py", "_core_c.pxd"])
def test_stale_build_warns_and_runs_every_source(package, edited):
    """One stale twin: the sources of the whole group run (compiled twins cimport each other)."""
    manifest = _built(package)
    (package / edited).write_text((package / edited).read_text() + "# edited after the build\n")
    assert twins.stale_sources("twinpkg._core_c", package, manifest) == [edited]
    with pytest.warns(twins.StaleExtension, match=f"twinpkg._core_c: the compiled module is older than {edited}"):
        modules, implementation = twins.select(PAIRS, manifest)
    assert implementation == "python" and _which(modules) == ["source", "source"]
    assert modules[0].__file__ == str(package / "core.py")


def test_a_missing_twin_selects_every_source(package):
    (package / "_other_c.py").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        modules, implementation = twins.select(PAIRS, _built(package))
    assert implementation == "python" and _which(modules) == ["source", "source"]


def test_extensions_off_selects_the_source_without_warning(package, monkeypatch):
    monkeypatch.setenv("BLYNK_NO_EXTENSIONS", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not twins.use_compiled("twinpkg._core_c", package, _built(package))
        modules, implementation = twins.select(PAIRS, _built(package))
    assert implementation == "python" and _which(modules) == ["source", "source"]
    monkeypatch.setenv("BLYNK_NO_EXTENSIONS", "0")
    assert twins.use_compiled("twinpkg._core_c", package, _built(package))


def test_unchecked_cases_use_the_build(package, tmp_path):
    """No record of the module, or its sources not installed: nothing to compare, the build runs."""
    assert twins.use_compiled("twinpkg._core_c", package, {})
    manifest = {"twinpkg._core_c": {"core.pyx": _digest(b"not installed")}}
    assert twins.stale_sources("twinpkg._core_c", package, manifest) == []
    assert twins._manifest(tmp_path / "missing.json") == {}
    (tmp_path / "bad.json").write_text("{not json")
    assert twins._manifest(tmp_path / "bad.json") == {}
    (tmp_path / "ok.json").write_text(json.dumps(_built(package)))
    assert twins._manifest(tmp_path / "ok.json") == _built(package)


def test_the_imported_hot_path_matches_the_selection():
    """What runs is what the selection says: compiled only when extensions are on and not stale; the
    sources are always importable under their own names, and nothing shadows them."""
    import protocol
    from blynk_server.hardware import connection, hotpath, session

    assert connection.__file__.endswith("connection.py") and session.__file__.endswith("session.py")
    if twins.extensions_off():
        assert protocol.IMPLEMENTATION == "python"
        assert blynk_server.hot_path_implementation() == "python"
    if hotpath.IMPLEMENTATION == "cython":
        for compiled, _ in hotpath._TWINS:
            module = sys.modules[compiled]
            assert not module.__file__.endswith(".py")
            assert twins.stale_sources(compiled, module.__file__.rpartition("/")[0]) == []
        assert hotpath.HardwareSession.__mro__[1] is hotpath.DeviceConnection
    else:
        assert hotpath.HardwareSession is session.HardwareSession
    from blynk_server import domain

    if twins.extensions_off():
        assert domain.PINWRITE_IMPLEMENTATION == "python"
    compiled = domain.PinWriter.__module__ == "blynk_server._pinwrite_c"
    assert compiled == (domain.PINWRITE_IMPLEMENTATION == "cython")
