"""The import rules of ARCHITECTURE.md, read from the source with ``ast`` (imports inside
functions count too, so a function-level import cannot hide a cycle)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dcls_core", "dcls_audio")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """Absolute names of the modules ``path`` imports (``from a import b`` counts ``a.b`` too,
    which is kept only where it names a module)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found |= {f"{prefix}.{alias.name}" for alias in node.names}
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target in _imports(path, name):
            if target.split(".")[0] in PACKAGES:
                while target and target not in modules:  # `from pkg.mod import func` -> pkg.mod
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges[name].add(target)
            else:
                edges[name].add(target)
    for name in modules:
        edges.setdefault(name, set())
    return dict(edges)


def _internal(graph: dict[str, set[str]], name: str) -> set[str]:
    return {t for t in graph[name] if t.split(".")[0] in PACKAGES}


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _violations(graph, sources: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{m} -> {t}" for m in graph if _in(m, *sources) for t in graph[m] if _in(t, *forbidden))


def test_dcls_core_knows_nothing_of_audio_or_lightning(graph):
    assert not _violations(graph, ("dcls_core",), ("dcls_audio", "lightning", "pytorch_lightning", "torchaudio"))


def test_no_torchaudio_at_run_time(graph):
    assert not _violations(graph, PACKAGES, ("torchaudio",))


def test_data_and_features_never_import_models_or_the_layers_above(graph):
    above = (
        "dcls_audio.models",
        "dcls_audio.training",
        "dcls_audio.evaluation",
        "dcls_audio.inference",
        "dcls_audio.export",
        "dcls_audio.cli",
    )
    assert not _violations(graph, ("dcls_audio.data", "dcls_audio.features"), above)


def test_models_never_import_the_layers_above(graph):
    above = (
        "dcls_audio.training",
        "dcls_audio.evaluation",
        "dcls_audio.inference",
        "dcls_audio.export",
        "dcls_audio.cli",
        "dcls_audio.data",
        "dcls_audio.features",
        "lightning",
    )
    assert not _violations(graph, ("dcls_audio.models",), above)


def test_nothing_imports_the_cli(graph):
    importers = sorted(
        m for m in graph if m not in ("dcls_audio.cli", "dcls_audio.__main__") and "dcls_audio.cli" in graph[m]
    )
    assert not importers


def test_no_import_cycles(graph):
    internal = {m: _internal(graph, m) for m in graph}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(internal[node]):
            if target.startswith(node + "."):
                continue  # a package's __init__ re-exporting its own modules is not a cycle
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(internal):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, " -> ".join(cycle)


def test_public_modules_declare_all_and_it_names_what_they_define():
    import importlib

    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.name.startswith("_") and path.name != "__init__.py":
                continue  # private modules (and __main__)
            tree = ast.parse(path.read_text(), str(path))
            declared = [
                n
                for n in tree.body
                if (isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets))
                or (isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.target.id == "__all__")
            ]
            assert declared, f"{path.relative_to(ROOT)} has no __all__"
            if "programs" in path.name or path.name == "__init__.py":
                continue  # Triton programs need a GPU-capable triton; lazy packages resolve on access
            module = importlib.import_module(_module_name(path))
            missing = [name for name in module.__all__ if not hasattr(module, name)]
            assert not missing, f"{path.relative_to(ROOT)}: __all__ names {missing} it does not define"
