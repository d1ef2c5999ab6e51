"""No import circles: the modules of each package import each other along a graph without cycles.

Module-level imports only (those run when a module is loaded; ``if TYPE_CHECKING:`` blocks are not), read from
the source with ``ast``. ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else
``pkg`` (its ``__init__``). A package's ``__init__`` that re-exports lazily (PEP 562) imports nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Packages checked here.
PACKAGES = ("sync_format", "broker", "workers", "mountd", "syncctl")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level(tree: ast.Module) -> list[ast.stmt]:
    """Statements that run at import: the module body, descending into try/if but not ``if TYPE_CHECKING``."""
    out: list[ast.stmt] = []
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        out.append(node)
        if isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                stack.extend(node.body)
            stack.extend(node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend([*node.body, *node.orelse, *node.finalbody])
            for handler in node.handlers:
                stack.extend(handler.body)
    return out


def import_graph(package: str) -> dict[str, set[str]]:
    """Edges module -> modules of ``package`` it imports when loaded."""
    modules = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in _top_level(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                ]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the list of modules along it, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle(package: str) -> None:
    """The package's modules import each other without a circle."""
    assert find_cycle(import_graph(package)) is None


def test_the_check_sees_a_circle() -> None:
    """The detector reports a circle when there is one (so a pass above means something)."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def every_import(package: str) -> dict[str, set[str]]:
    """Edges module -> modules of ``package`` it imports anywhere (at load, in functions, for types)."""
    modules = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                ]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def test_mountd_has_no_circle_even_behind_type_checking() -> None:
    """mountd's layout (issue 13): the read path, the writable store and the rest never import each other
    back, not even for types or inside a function (the provider and the writable store once did, under
    ``TYPE_CHECKING``)."""
    assert find_cycle(every_import("mountd")) is None


def test_every_import_sees_type_checking_imports(tmp_path: Path) -> None:
    """The strict graph counts an import under ``TYPE_CHECKING`` that the load-time graph leaves out."""
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import os\n")
    assert not any(isinstance(n, ast.Import) for n in _top_level(tree))
    assert any(isinstance(n, ast.Import) for n in ast.walk(tree))
