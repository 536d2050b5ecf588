"""Import rules of ``dcls_core``, read from its source with ``ast`` (module-level and function-level
imports alike, so a lazy import cannot hide a cycle):

* it never imports ``dcls_audio``, Lightning or torchaudio, nor itself by absolute name;
* only its ``programs.py`` modules (and the availability check ``_triton.py``) import Triton;
* its modules import one another without cycles (importing ``a.b.c`` also runs the ``__init__`` of
  every package on the way that the importer is not inside of);
* at most six modules sit loose in ``dcls_core/``, and every module states ``__all__``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dcls_core"
FORBIDDEN = ("dcls_audio", "cli", "lightning", "pytorch_lightning", "lightning_fabric", "torchaudio")
TRITON_MODULES = ("programs", "_triton")


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


MODULES = module_names(PACKAGE)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_forbidden_or_absolute_self_imports(name):
    for target, relative in imported_names(name, MODULES[name], MODULES):
        root = target.split(".")[0]
        assert root not in FORBIDDEN, f"{name} imports {target}"
        assert relative or root != "dcls_core", f"{name} imports {target} by absolute name (use a relative import)"


def test_only_programs_import_triton():
    importers = {
        name
        for name, path in MODULES.items()
        if any(t.split(".")[0] == "triton" for t, _ in imported_names(name, path, MODULES))
    }
    assert importers, "no module imports triton: the check reads nothing"
    assert all(name.split(".")[-1] in TRITON_MODULES for name in importers), sorted(importers)


def test_no_import_cycles():
    graph = import_graph(PACKAGE)
    # the reader sees top-level, lazy (function-level) and package-__init__ edges
    assert "dcls_core.dispatch" in graph["dcls_core.functional"]
    assert "dcls_core.conv.fft.programs" in graph["dcls_core.conv.fft.passes"]  # lazy import
    assert "dcls_core.construction" in graph["dcls_core.conv.fft.fused_layer"]  # package __init__ runs
    assert find_cycle(graph) == [], " -> ".join(find_cycle(graph))


def test_cycle_finder_sees_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n    return a\n")
    assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.sub.b", "pkg.a"]


def test_few_loose_modules_and_every_module_states_all():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= 6, loose
    missing = [name for name, path in MODULES.items() if "__all__" not in path.read_text()]
    assert not missing, missing
