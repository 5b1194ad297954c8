"""The package's modules import each other without a cycle, type-checking imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import asgi_host

PACKAGE = Path(asgi_host.__file__).parent


def import_graph() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports, anywhere in its source."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name in modules:
        imported: set[str] = set()
        for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    first = node.module.split(".")[0] if node.module else None
                    imported.update([first] if first else (alias.name for alias in node.names))
                elif node.module and node.module.split(".")[0] == "asgi_host":
                    parts = node.module.split(".")
                    imported.update(parts[1:2] if len(parts) > 1 else (alias.name for alias in node.names))
            elif isinstance(node, ast.Import):
                imported.update(
                    alias.name.split(".")[1] for alias in node.names if alias.name.startswith("asgi_host.")
                )
        graph[name] = {module for module in imported if module in modules and module != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path that returns to its start, or None (depth-first, three colours)."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        path.append(module)
        for imported in sorted(graph[module]):
            cycle = visit(imported)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def test_the_package_imports_without_a_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    assert "_errors" in graph["_host"]  # the parser sees relative imports
    assert graph["__init__"] >= {"_host", "_routing"}
