"""Shared test fixtures and markers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import dcls_audio
import dcls_core

# tests/dcls_core and tests/dcls_audio share the packages' names: where the repository root is not
# first on sys.path, `import dcls_core` finds the test folder. Stop with a clear message instead.
for _package in (dcls_core, dcls_audio):
    if getattr(_package, "__file__", None) is None:
        raise pytest.UsageError(
            f"`import {_package.__name__}` found the test folder tests/{_package.__name__} instead of the "
            "package: run `python -m pytest` from the repository root (pyproject.toml puts it on the path)"
        )

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fixed_conv_rules(monkeypatch):
    """Every test sees the dispatcher's fixed rules (no per-shape measurement, whose choice depends
    on the machine's timings); tests of the measurement set ``DCLS_AUTOTUNE=1`` themselves."""
    monkeypatch.setenv("DCLS_AUTOTUNE", "0")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present")
    return SHARED


@pytest.fixture(scope="session")
def upstream_dir(shared_dir: Path) -> Path:
    path = shared_dir / "upstream"
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    return path


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module: on a shared 2-core runner, 2 OpenMP threads spin-wait
    against other processes and run several times slower; one thread keeps test time predictable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SAMPLE_RATE, CLIP_SAMPLES = 32000, 320000


def tone_clips(
    labels: list[list[int]],
    num_classes: int = 527,
    seed: int = 0,
    base_hz: float = 200.0,
    step_hz: float = 37.0,
    random_phase: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """int16 (N, 10 s) clips of faint noise plus a tone at ``base_hz + step_hz * c`` for each
    label ``c`` (at a random phase when asked), and their bool (N, C) targets."""
    rng = np.random.default_rng(seed)
    t = np.arange(CLIP_SAMPLES) / SAMPLE_RATE
    waves = (0.01 * rng.standard_normal((len(labels), CLIP_SAMPLES))).astype(np.float32)
    targets = np.zeros((len(labels), num_classes), bool)
    for i, clip in enumerate(labels):
        for c in clip:
            phase = rng.uniform(0, 6) if random_phase else 0.0
            waves[i] += 0.3 * np.sin(2 * np.pi * (base_hz + step_hz * c) * t + phase)
            targets[i, c] = True
    return np.round(np.clip(waves, -1, 1) * 32767).astype(np.int16), targets


def write_tone_h5(
    path: Path, labels: list[list[int]], num_classes: int = 527, seed: int = 0, name_format: str = "clip{:03d}", **tones
) -> Path:
    """A PANNs-layout file of :func:`tone_clips` (``tones``: its keyword arguments)."""
    from dcls_audio.data.hdf5_dataset import write_hdf5  # here: the dcls_core tests need no dcls_audio

    waves, targets = tone_clips(labels, num_classes, seed, **tones)
    names = [name_format.format(i) for i in range(len(labels))]
    return write_hdf5(path, names, waves, targets)


@pytest.fixture(scope="session")
def tone_h5() -> Callable[..., Path]:
    """:func:`write_tone_h5`, for tests and fixtures that write tiny HDF5 files."""
    return write_tone_h5


@pytest.fixture(autouse=True)
def _no_dcls_environment(monkeypatch):
    """Every test starts without the user's DCLS_* switches (DCLS_CONV would otherwise route
    even the float64 reference of the comparisons through a fast path)."""
    for name in ("DCLS_IMPL", "DCLS_CONV", "DCLS_FFT_CHUNKS"):
        monkeypatch.delenv(name, raising=False)
