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
    """A package ``twinpkg`` with a source module ``core.py`` (and ``core.pxd``) on sys.path."""
    monkeypatch.delenv("BLYNK_NO_EXTENSIONS", raising=False)
    pkg = tmp_path / "twinpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "core.py").write_text("WHICH = 'source'\n")
    (pkg / "core.pxd").write_text("cdef class Core:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for name in ("twinpkg.core", "twinpkg"):
        sys.modules.pop(name, None)


def _built(pkg) -> dict:
    """The manifest of a build made from the sources as they are now."""
    return {"twinpkg.core": {n: _digest((pkg / n).read_bytes()) for n in ("core.py", "core.pxd")}}


def test_fresh_build_is_used(package):
    manifest = _built(package)
    assert twins.stale_sources("twinpkg.core", package, manifest) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert twins.use_compiled("twinpkg.core", package, manifest)
        # The finder leaves the import to the usual machinery (which finds the extension first).
        assert twins.SourcesWhenNeeded(("twinpkg.core",), manifest).find_spec("twinpkg.core", [str(package)]) is None


@pytest.mark.parametrize("edited", ["core.py", "core.pxd"])
def test_stale_build_warns_and_runs_the_source(package, edited):
    manifest = _built(package)
    (package / edited).write_text((package / edited).read_text() + "# edited after the build\n")
    assert twins.stale_sources("twinpkg.core", package, manifest) == [edited]
    finder = twins.SourcesWhenNeeded(("twinpkg.core",), manifest)
    with pytest.warns(twins.StaleExtension, match=f"twinpkg.core: the compiled module is older than {edited}"):
        spec = finder.find_spec("twinpkg.core", [str(package)])
    assert spec is not None and spec.origin == str(package / "core.py")


def test_stale_module_imports_its_source(package, monkeypatch):
    """Through the import system: the finder in front of sys.meta_path hands out the source."""
    manifest = {"twinpkg.core": {"core.py": _digest(b"an older source")}}
    monkeypatch.setattr(sys, "meta_path", [twins.SourcesWhenNeeded(("twinpkg.core",), manifest), *sys.meta_path])
    with pytest.warns(twins.StaleExtension):
        import twinpkg.core
    assert twinpkg.core.WHICH == "source" and twinpkg.core.__file__ == str(package / "core.py")


def test_extensions_off_selects_the_source_without_warning(package, monkeypatch):
    monkeypatch.setenv("BLYNK_NO_EXTENSIONS", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not twins.use_compiled("twinpkg.core", package, _built(package))
        spec = twins.SourcesWhenNeeded(("twinpkg.core",), _built(package)).find_spec("twinpkg.core", [str(package)])
    assert spec is not None and spec.origin == str(package / "core.py")
    monkeypatch.setenv("BLYNK_NO_EXTENSIONS", "0")
    assert twins.use_compiled("twinpkg.core", package, _built(package))


def test_unchecked_cases_use_the_build(package, tmp_path):
    """No record of the module, or its sources not installed: nothing to compare, the build runs."""
    assert twins.use_compiled("twinpkg.core", package, {})
    manifest = {"twinpkg.core": {"core.pyx": _digest(b"not installed")}}
    assert twins.stale_sources("twinpkg.core", package, manifest) == []
    assert twins._manifest(tmp_path / "missing.json") == {}
    (tmp_path / "bad.json").write_text("{not json")
    assert twins._manifest(tmp_path / "bad.json") == {}
    (tmp_path / "ok.json").write_text(json.dumps(_built(package)))
    assert twins._manifest(tmp_path / "ok.json") == _built(package)


def test_other_modules_are_not_the_finders():
    finder = twins.SourcesWhenNeeded(blynk_server.COMPILED_MODULES)
    assert finder.find_spec("blynk_server.config", list(blynk_server.__path__)) is None


def test_the_imported_hot_path_matches_the_selection():
    """What runs is what the selection says: compiled only when extensions are on and not stale."""
    import protocol

    if twins.extensions_off():
        assert protocol.IMPLEMENTATION == "python"
        assert blynk_server.hot_path_implementation() == "python"
    for name in blynk_server.COMPILED_MODULES:
        module = sys.modules.get(name) or __import__(name, fromlist=["_"])
        if not module.__file__.endswith(".py"):  # a compiled one runs: it is not stale
            assert twins.stale_sources(name, module.__file__.rpartition("/")[0]) == []
