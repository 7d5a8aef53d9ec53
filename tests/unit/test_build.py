"""setup.py's in-place builds: a hot-path twin whose sources (its ``.py``, its ``.pxd``, the ``.pxd`` it
cimports) changed after its C file was written is generated anew, so it is rebuilt."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

pytest.importorskip("setuptools")  # setup.py's own import
ROOT = Path(__file__).resolve().parents[2]


def load_setup():
    spec = importlib.util.spec_from_file_location("blynk_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: setup() does not run
    return module


def tree(root: Path, setup) -> None:
    """Every source of every twin, then every twin's C file, one second later."""
    sources = {src for srcs in setup.SOURCES.values() for src in srcs}
    for src in sources:
        path = root / src
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        os.utime(path, (1000, 1000))
    for name in setup._TWINNED:
        c_file = root / setup._HOT / f"{name}.c"
        c_file.write_text("")
        os.utime(c_file, (1001, 1001))


def test_a_c_file_newer_than_its_sources_stays(tmp_path):
    setup = load_setup()
    tree(tmp_path, setup)
    assert setup.drop_outdated_c(str(tmp_path)) == []


def test_a_changed_pxd_makes_its_module_and_those_that_cimport_it_generated_anew(tmp_path):
    setup = load_setup()
    tree(tmp_path, setup)
    os.utime(tmp_path / setup._HOT / "_session_c.pxd", (1002, 1002))
    removed = setup.drop_outdated_c(str(tmp_path))  # the adapter's, and the epoll set that cimports it
    assert sorted(Path(p).name for p in removed) == ["direct.c", "session.c"]
    os.utime(tmp_path / setup._HOT / "_connection_c.pxd", (1003, 1003))  # the core's: all of them
    removed = setup.drop_outdated_c(str(tmp_path))
    assert sorted(Path(p).name for p in removed) == ["budget.c", "connection.c", "stats.c"]
    assert not any((tmp_path / setup._HOT / f"{name}.c").exists() for name in setup._TWINNED)
