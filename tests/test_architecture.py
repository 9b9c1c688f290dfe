"""The layers of docs/architecture.md, checked against the real imports.

Every module of the package is parsed with ``ast``; every import counts,
including those under ``TYPE_CHECKING`` and inside functions. The rules are
read from the table in docs/architecture.md, so the picture and this test
cannot drift apart.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "granite_storage"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


@cache
def layer_table() -> list[tuple[str, list[str], set[str]]]:
    """``(layer, module patterns, layers it may import)`` per table row, in order."""
    rows = []
    for line in ARCHITECTURE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].startswith("`"):
            continue
        layer, modules, allowed = cells
        patterns = re.findall(r"`([^`]+)`", modules)
        rows.append((layer, patterns, {name.strip() for name in allowed.split(",")}))
    return rows


def layer_of(module: str) -> str:
    for layer, patterns, _ in layer_table():
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns):
            return layer
    raise AssertionError(f"{module} matches no row of {ARCHITECTURE.name}")


def integration_of(module: str) -> str | None:
    """``sqlalchemy`` for ``granite_storage.integrations.sqlalchemy.x``,
    ``fastapi`` for ``granite_storage.integrations._fastapi_upload``."""
    prefix = "granite_storage.integrations."
    if not module.startswith(prefix):
        return None
    return module.removeprefix(prefix).split(".")[0].lstrip("_").split("_")[0]


def is_private(module: str) -> bool:
    return any(part.startswith("_") and part != "__main__" for part in module.split("."))


def resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = importer.split(".")
    is_package = MODULES[importer].name == "__init__.py"
    base = package[: len(package) - node.level + (1 if is_package else 0)]
    return ".".join([*base, node.module] if node.module else base)


def imported_modules(importer: str, source: str) -> set[str]:
    """The granite_storage modules ``source`` imports, anywhere in its body."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = resolve(importer, node)
            # ``from granite_storage import errors`` imports the module errors
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module
                for alias in node.names
            ]
        else:
            continue
        found.update(target for target in targets if target.split(".")[0] == "granite_storage")
    return found


@cache
def imports() -> dict[str, set[str]]:
    return {name: imported_modules(name, path.read_text()) for name, path in MODULES.items()}


def edges() -> list[tuple[str, str]]:
    return [(importer, target) for importer, targets in imports().items() for target in targets]


def test_the_table_is_read_and_names_every_layer_of_the_picture() -> None:
    layers = [layer for layer, _, _ in layer_table()]
    assert layers == [
        "facades",
        "cli",
        "sync",
        "testing",
        "backends",
        "gc",
        "integrations",
        "core",
    ]
    for _, _, allowed in layer_table():
        assert allowed <= set(layers)
    assert layer_of("granite_storage.manager") == "core"
    assert layer_of("granite_storage.integrations._fastapi_upload") == "integrations"
    assert integration_of("granite_storage.integrations._fastapi_upload") == "fastapi"
    assert integration_of("granite_storage.integrations.sqlalchemy._ledger_sweep") == "sqlalchemy"


def test_imports_under_type_checking_in_functions_and_relative_ones_count() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from granite_storage.gc import StorageGarbageCollector\n"
        "def f():\n"
        "    import granite_storage.backends.s3\n"
        "    from granite_storage import errors, StorageManager\n"
        "from .._util import batched\n"
    )
    assert imported_modules("granite_storage.backends.local", source) == {
        "granite_storage.gc",
        "granite_storage.backends.s3",
        "granite_storage.errors",
        "granite_storage",
        "granite_storage._util",
    }


@pytest.mark.parametrize("layer", [row[0] for row in layer_table()])
def test_each_layer_imports_only_what_the_picture_allows(layer: str) -> None:
    allowed = next(row[2] for row in layer_table() if row[0] == layer)
    wrong = sorted(
        f"{importer} ({layer}) imports {target} ({layer_of(target)})"
        for importer, target in edges()
        if layer_of(importer) == layer and layer_of(target) not in allowed
    )
    assert not wrong, "\n".join(wrong)


def test_integrations_never_import_each_others_private_modules() -> None:
    wrong = sorted(
        f"{importer} imports {target}"
        for importer, target in edges()
        if integration_of(importer)
        and integration_of(target) not in (None, integration_of(importer))
        and is_private(target)
    )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_between_layers_or_integrations() -> None:
    def node(module: str) -> str:
        return integration_of(module) or layer_of(module)

    graph: dict[str, set[str]] = defaultdict(set)
    for importer, target in edges():
        if node(importer) != node(target):
            graph[node(importer)].add(node(target))

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or reaches(nxt, goal, seen | {nxt}) for nxt in graph[start] - seen)

    cycles = sorted(name for name in list(graph) if reaches(name, name, set()))
    assert not cycles, f"import cycles through {cycles}: {dict(graph)}"
