"""The runtime works with torchaudio not importable at all (torchaudio is a test-only oracle).

A child interpreter installs an import hook that refuses ``torchaudio`` and its submodules, then
imports every module of ``dcls_audio`` and ``dcls_core``, runs the log-mel front end on a batch and
resamples a waveform. Modules whose import fails for a missing optional dependency other than
torchaudio (e.g. Triton kernels on a machine without Triton) are reported but not failures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import importlib, importlib.abc, json, pkgutil, sys, traceback

class NoTorchaudio(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchaudio" or name.startswith("torchaudio."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, NoTorchaudio())
report = {"modules": {}, "checks": {}}

def record(key, table, fn):
    try:
        fn()
        table[key] = None
    except BaseException as exc:
        table[key] = {"type": type(exc).__name__, "name": getattr(exc, "name", None), "message": str(exc)[:300],
                      "torchaudio": "torchaudio" in traceback.format_exc()}

for package in ("dcls_audio", "dcls_core"):
    root = importlib.import_module(package)
    names = [package] + [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")]
    for name in names:
        if name.rsplit(".", 1)[-1] == "__main__":  # running it would start the CLI
            continue
        record(name, report["modules"], lambda: importlib.import_module(name))

def front_end():
    import torch
    from dcls_audio.features import LogMelFrontEnd
    x = (torch.randn(2, 320000, generator=torch.Generator().manual_seed(0)) * 3000).to(torch.int16)
    out = LogMelFrontEnd(augment=True, seed=0).train()(x)
    assert out.shape == (2, 1, 128, 1001) and bool(torch.isfinite(out).all()), out.shape
    out = LogMelFrontEnd(augment=False).eval()(x)
    assert out.shape == (2, 1, 128, 1001) and bool(torch.isfinite(out).all()), out.shape

def resampling():
    import torch
    from dcls_audio.data.resample import resample
    assert resample(torch.randn(2, 4410), 44100, 32000).shape == (2, 3200)

record("hook", report["checks"], lambda: importlib.import_module("torchaudio.functional"))  # must fail
record("front_end", report["checks"], front_end)
record("resample", report["checks"], resampling)
report["torchaudio_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] == "torchaudio")
print("REPORT" + json.dumps(report))
"""

# Modules that still import torchaudio at run time; each entry is a known defect to remove.
EXPECTED_TORCHAUDIO_IMPORTERS: set[str] = set()

# Optional dependencies whose absence may make a module unimportable on a machine without them.
OPTIONAL = {"triton", "onnx", "onnxruntime"}


@pytest.fixture(scope="module")
def report() -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT")]
    assert proc.returncode == 0 and lines, f"child failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("REPORT") :])


def test_every_module_imports_without_torchaudio(report):
    modules = report["modules"]
    assert "dcls_audio.features.logmel" in modules and "dcls_core.modules" in modules  # the walk found them
    skipped = {name: err["message"] for name, err in modules.items() if err}
    print(f"{len(modules)} modules imported without torchaudio; not importable here: {skipped}")
    needs_torchaudio = {name for name, err in modules.items() if err and err["torchaudio"]}
    assert needs_torchaudio == EXPECTED_TORCHAUDIO_IMPORTERS, {n: modules[n]["message"] for n in needs_torchaudio}
    other = {
        name: err
        for name, err in modules.items()
        if err and not err["torchaudio"] and (err["name"] or "").split(".")[0] not in OPTIONAL
    }
    assert not other, other


def test_front_end_and_resample_run_without_torchaudio(report):
    checks = dict(report["checks"])
    hook = checks.pop("hook")
    assert hook is not None and hook["type"] == "ModuleNotFoundError" and hook["torchaudio"]  # the block works
    assert checks == {"front_end": None, "resample": None}
    assert report["torchaudio_loaded"] == []
