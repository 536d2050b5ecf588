"""The set-up installs from a complete, hash-pinned lock that agrees with pyproject.toml: uv.lock,
exported as requirements.lock for pip."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: the lock installs tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
UV_LOCK = ROOT / "uv.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock_entries() -> dict[str, list[str]]:
    """name -> the pinned versions (several where markers split by Python version)."""
    entries: dict[str, list[str]] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        if not line[0].isspace():
            match = _PIN.match(line)
            assert match, f"{LOCK.name}: not an exact pin: {line!r}"
            current = _norm(match.group(1))
            entries.setdefault(current, []).append(match.group(2))
        elif line.strip().startswith("--hash=sha256:"):
            assert current is not None
    return entries


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_norm(_NAME.match(r).group(1)) for r in requirements}


def test_every_lock_entry_is_pinned_and_hashed():
    text = LOCK.read_text()
    blocks = [b for b in re.split(r"\n(?=[A-Za-z0-9])", text) if b.strip() and not b.startswith("#")]
    assert len(blocks) > 50
    for block in blocks:
        assert _PIN.match(block), block.splitlines()[0]
        assert "--hash=sha256:" in block, f"{block.splitlines()[0]} has no hash"


def test_lock_covers_pyproject_and_pins_the_gpu_torch():
    lock = _lock_entries()
    project = _pyproject()["project"]
    wanted = _requirement_names(project["dependencies"])
    for reqs in project["optional-dependencies"].values():
        wanted |= _requirement_names([r for r in reqs if not r.startswith("dcls-audio")])
    missing = sorted(wanted - set(lock))
    assert not missing, f"in pyproject.toml but not in {LOCK.name}: {missing} (run `make lock`)"
    assert lock["torch"] == ["2.11.0"]
    assert lock["torchaudio"] == ["2.11.0"]
    assert _norm("setuptools") in lock  # --no-build-isolation builds with the locked setuptools


def test_the_venv_runs_the_locked_versions():
    """What `make` installed is what the lock says (a stale venv or a range install fails here)."""
    lock = _lock_entries()
    for name in ("torch", "lightning", "timm", "numpy", "av", "h5py", "torchaudio"):
        installed = importlib.metadata.version(name).split("+")[0]
        assert installed in lock[_norm(name)], f"{name} {installed} installed, lock has {lock[_norm(name)]}"


def test_makefile_installs_from_the_lock_with_hashes():
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r $(LOCK)" in makefile and "LOCK   := requirements.lock" in makefile
    assert "--no-deps --no-build-isolation -e ." in makefile
    assert "ruff check ." in makefile.split("test: $(STAMP)")[1].split("\n\n")[0]


def _runtime_imports() -> set[str]:
    names: set[str] = set()
    for package in ("dcls_core", "dcls_audio"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"dcls_core", "dcls_audio"}


def test_runtime_dependencies_are_what_the_runtime_imports():
    project = _pyproject()["project"]
    declared = _requirement_names(project["dependencies"])
    extras = project["optional-dependencies"]
    optional = _requirement_names([r for name, reqs in extras.items() if name != "test" for r in reqs])
    distributions = importlib.metadata.packages_distributions()
    imported = {}
    for module in _runtime_imports():
        dists = {_norm(d) for d in distributions.get(module, [module])}
        imported[module] = dists
    # triton ships with torch on Linux (torch's own dependency); onnx/onnxruntime (export) and
    # matplotlib (plot) and litdata (shards) are extras, imported only where they are used
    undeclared = {m: d for m, d in imported.items() if not d & (declared | optional | {"triton"})}
    assert not undeclared, f"imported at run time but not a runtime dependency: {undeclared}"
    assert "torchaudio" not in imported and "sklearn" not in imported and "DCLS" not in imported
    used = set().union(*imported.values())
    assert declared - used <= {"tensorboard"}, f"declared but never imported: {sorted(declared - used)}"


def test_requirements_lock_is_the_export_of_uv_lock():
    """`make lock` writes both; a hand edit or a stale export fails here."""
    packages = tomllib.loads(UV_LOCK.read_text())["package"]
    locked = {(_norm(p["name"]), p["version"]) for p in packages if _norm(p["name"]) != "dcls-audio"}
    exported = {(name, version) for name, versions in _lock_entries().items() for version in versions}
    assert exported == locked, (
        f"only in the export: {sorted(exported - locked)}; only in uv.lock: {sorted(locked - exported)}"
    )
    assert ("torch", "2.11.0") in locked and ("torchaudio", "2.11.0") in locked
