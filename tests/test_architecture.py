"""The import rules of ARCHITECTURE.md for ``dcls_audio`` and the whole tree, read from the source
with ``ast`` through :mod:`import_graph` (imports inside functions count too, so a function-level
import cannot hide a cycle). ``dcls_core``'s own rules are in ``tests/dcls_core/test_layering.py``."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from import_graph import find_cycle, import_graph, imported_names, module_names

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dcls_core", "dcls_audio")
AUDIO = module_names(ROOT / "dcls_audio")
ABOVE_DATA = (
    "dcls_audio.training",
    "dcls_audio.evaluation",
    "dcls_audio.inference",
    "dcls_audio.export",
    "dcls_audio.cli",
)


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _violations(sources: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{name} -> {target}"
        for name, path in AUDIO.items()
        if _in(name, *sources)
        for target, _ in imported_names(name, path, AUDIO)
        if _in(target, *forbidden)
    )


def test_no_torchaudio_at_run_time():
    assert not _violations(("dcls_audio",), ("torchaudio",))


def test_data_and_features_never_import_models_or_the_layers_above():
    assert not _violations(("dcls_audio.data", "dcls_audio.features"), ("dcls_audio.models", *ABOVE_DATA))


def test_models_never_import_data_features_lightning_or_the_layers_above():
    forbidden = ("dcls_audio.data", "dcls_audio.features", "lightning", *ABOVE_DATA)
    assert not _violations(("dcls_audio.models",), forbidden)


def test_nothing_imports_the_cli():
    assert _violations(("dcls_audio.__main__",), ("dcls_audio.cli",)), "the check reads nothing"
    importers = [
        v for v in _violations(("dcls_audio",), ("dcls_audio.cli",)) if not v.startswith("dcls_audio.__main__")
    ]
    assert not importers


def test_no_import_cycles():
    graph = import_graph(ROOT / "dcls_audio")
    assert "dcls_audio.models.checkpoint" in graph["dcls_audio.models.factory"]  # the reader sees the edges
    assert find_cycle(graph) == [], " -> ".join(find_cycle(graph))


def test_public_modules_declare_all_and_it_names_what_they_define():
    for package in PACKAGES:
        for name, path in module_names(ROOT / package).items():
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
            module = importlib.import_module(name)
            missing = [name for name in module.__all__ if not hasattr(module, name)]
            assert not missing, f"{path.relative_to(ROOT)}: __all__ names {missing} it does not define"


def test_plots_is_a_leaf():
    """The pictures take plain arrays: no torch, Lightning or other layers of the package."""
    forbidden = ("dcls_audio.data", "dcls_audio.features", "dcls_audio.models", "torch", "lightning", *ABOVE_DATA)
    assert not _violations(("dcls_audio.plots",), forbidden)
