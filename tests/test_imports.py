"""The package's modules import each other without a cycle, type-checking imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import asgi_host

PACKAGE = Path(asgi_host.__file__).parent


def import_graph() -> dict[str, set[str]]:
    """Each module of the package (dotted, under `asgi_host`: `_host`, `kserve._model`) and the
    package modules it imports, anywhere in its source; importing a submodule imports its package."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        names[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
        if name == "__init__":
            package = []
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    targets = (
                        [[*base, *node.module.split(".")]]
                        if node.module
                        else [[*base, a.name] for a in node.names]
                    )
                elif node.module and node.module.split(".")[0] == "asgi_host":
                    parts = node.module.split(".")[1:]
                    targets = [parts] if parts else [[a.name] for a in node.names]
                else:
                    continue
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".")[1:] for a in node.names if a.name.startswith("asgi_host.")]
            else:
                continue
            for target in targets:
                # `asgi_host.kserve._model` imports `kserve` (its __init__) first, then `kserve._model`;
                # a module's own package is already being imported when it runs.
                ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
                imported.update(
                    module
                    for module in (".".join(target[:i]) for i in range(1, len(target) + 1))
                    if module not in ancestors
                )
        graph[name] = {module for module in imported if module in names and module != name}
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
    assert graph["kserve._model"] >= {"_errors", "kserve._tensors"}  # a subpackage's, both levels
    assert graph["kserve"] >= {"kserve._model", "kserve._routes"}
