"""The SQLAlchemy integration's modules import each other without a cycle,
counting every import: top level, under ``TYPE_CHECKING`` and inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import granite_storage.integrations.sqlalchemy as package

PACKAGE = package.__name__
ROOT = Path(package.__file__).parent


def module_name(path: Path) -> str:
    return PACKAGE if path.name == "__init__.py" else f"{PACKAGE}.{path.stem}"


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, wherever the import stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parts = PACKAGE.split(".")[: len(PACKAGE.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    found.discard(module_name(path))
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph[node]):
            if cycle := visit(target):
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if cycle := visit(node):
            return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.glob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules) for path in paths}


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert f"{PACKAGE}._tracking" in graph[PACKAGE]  # the graph sees the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_listeners_do_not_know_the_ledger() -> None:
    graph = import_graph()
    for module in ("_tracking", "_cleanup", "_plugin", "_content"):
        assert not {f"{PACKAGE}._ledger", PACKAGE} & graph[f"{PACKAGE}.{module}"], module
    for listener in ("_tracking", "_cleanup"):
        assert "ObjectLedger" not in (ROOT / f"{listener}.py").read_text(encoding="utf-8")


def test_the_cycle_finder_sees_type_checking_and_function_imports(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(
        f"from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from {PACKAGE}.b import B\n",
        encoding="utf-8",
    )
    (tmp_path / "b.py").write_text("def f():\n    from . import a\n", encoding="utf-8")
    modules = {f"{PACKAGE}.a", f"{PACKAGE}.b"}
    graph = {module_name(p): imports_of(p, modules) for p in sorted(tmp_path.glob("*.py"))}
    assert find_cycle(graph) == [f"{PACKAGE}.a", f"{PACKAGE}.b", f"{PACKAGE}.a"]
