"""Import rules of ``dcls_core``, read from its source with ``ast`` (module-level and function-level
imports alike, so a lazy import cannot hide a cycle):

* it never imports ``dcls_audio``, Lightning or torchaudio, nor itself by absolute name;
* only its ``programs.py`` modules (and the availability check ``_triton.py``) import Triton;
* its modules import one another without cycles (importing ``a.b.c`` also runs the ``__init__`` of
  every package on the way that the importer is not inside of);
* at most six modules sit loose in ``dcls_core/``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from import_graph import find_cycle, import_graph, imported_names, module_names

PACKAGE = Path(__file__).resolve().parents[2] / "dcls_core"
FORBIDDEN = ("dcls_audio", "cli", "lightning", "pytorch_lightning", "lightning_fabric", "torchaudio")
TRITON_MODULES = ("programs", "_triton")


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


def test_few_loose_modules():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= 6, loose  # every module's __all__: tests/test_architecture.py
