"""The package's import structure: no circles, and only the command line knows the composition root."""

from __future__ import annotations

import ast
from pathlib import Path

import blynk_server

PACKAGE = Path(blynk_server.__file__).parent
ROOT_USERS = {"blynk_server.cli", "blynk_server.__main__"}  # may import blynk_server.app


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every blynk_server module ``path`` imports, at any level (functions, TYPE_CHECKING blocks).
    ``from package import submodule`` counts as importing the submodule only."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
            ]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != "blynk_server":
                out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {mod: _imports(path, known) - {mod} for mod, path in files.items()}


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}
    circles = []

    def visit(mod: str, stack: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(graph.get(mod, ())):
            if state.get(dep) == 1:
                circles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    assert circles == [], "\n".join(" -> ".join(c) for c in circles)


def test_only_the_command_line_imports_the_composition_root():
    users = {mod for mod, deps in _graph().items() if "blynk_server.app" in deps}
    assert users <= ROOT_USERS, sorted(users - ROOT_USERS)
