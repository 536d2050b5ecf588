"""Module import graphs read from source with ``ast`` (module-level and function-level imports alike,
so a lazy import cannot hide a cycle); shared by the layering tests of ``dcls_core`` and the
architecture test of the whole tree."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

__all__ = ["find_cycle", "import_graph", "imported_names", "module_names"]


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> source file of every module of the package rooted at ``package_dir``."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imported_names(name: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, bool]]:
    """``(absolute dotted name, written relative)`` of every import of module ``name``, anywhere in
    its source; ``from P import x`` names ``P.x`` where that is a module, else ``P``."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, False) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                yield (candidate if candidate in modules else source), node.level > 0


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Edges between the package's modules, with the package ``__init__`` modules an import runs."""
    modules = module_names(package_dir)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        if path.name == "__init__.py":
            own_packages.add(name)
        for target, _ in imported_names(name, path, modules):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                step = ".".join(parts[:i])
                if step in modules and step not in own_packages and step != name:
                    graph[name].add(step)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as ``[a, b, ..., a]``, or ``[]``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []
