"""A small synthetic AudioSet-format dataset: generated sounds of real AudioSet classes.

Each clip (10 s, 32 kHz, int16) holds low-level white background noise plus either one sound
event (single label) or a mixture of 2-3 events of different classes at random levels,
onsets and durations; "Silence" clips hold only the background. Targets use the true AudioSet
indices (527 columns), so models, metrics and class names work exactly as on AudioSet.

Generation is deterministic: clip k of a split is drawn from ``numpy.random.default_rng([seed,
split, k])``. :func:`ensure_demo_data` writes ``demo_train.h5`` and ``demo_eval.h5`` once and
reuses them while their ``demo_settings`` attribute (:data:`DEMO_VERSION`, split, seed,
clip length) matches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np
import scipy.fft

from ..errors import UsageError
from ..outputs import atomic_output
from .classes import ClassInfo, load_class_names
from .constants import AUDIOSET_NUM_CLASSES, CLIP_SAMPLES, SAMPLE_RATE
from .hdf5_dataset import create_layout

__all__ = [
    "DEMO_CLASS_NAMES",
    "DEMO_VERSION",
    "SILENCE",
    "Synth",
    "default_demo_root",
    "demo_classes",
    "ensure_demo_data",
    "iter_demo_clips",
    "split_size",
    "synthesize_clip",
    "write_demo_split",
]

log = logging.getLogger(__name__)

DEMO_VERSION = 1
"""Bump when the generator's output changes; stored files of another version are regenerated."""

DEMO_CLASS_NAMES = (
    "Sine wave",
    "Beep, bleep",
    "Chirp tone",
    "Siren",
    "Buzz",
    "Hum",
    "Pulse",
    "Clicking",
    "White noise",
    "Pink noise",
    "Silence",
)
SILENCE = "Silence"
_NOISES = {"White noise", "Pink noise"}
_SPLITS = {"train": (0, 24, 216), "eval": (1, 8, 72)}  # split id, singles per class, mixtures

Synth = Callable[[np.random.Generator, np.ndarray], np.ndarray]


def demo_classes() -> list[ClassInfo]:
    """The AudioSet classes the demo data uses, looked up by display name."""
    by_name = {c.display_name: c for c in load_class_names()}
    missing = [n for n in DEMO_CLASS_NAMES if n not in by_name]
    if missing:
        raise UsageError(f"demo classes {missing} are not in the AudioSet class CSV")
    return [by_name[n] for n in DEMO_CLASS_NAMES]


# ---------------------------------------------------------------------------- sound synthesis
def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _fade(n: int, fade: int = 320) -> np.ndarray:
    env = np.ones(n, dtype=np.float32)
    k = min(fade, n // 2)
    if k:
        ramp = np.linspace(0.0, 1.0, k, dtype=np.float32)
        env[:k], env[n - k :] = ramp, ramp[::-1]
    return env


def _tone(t: np.ndarray, freq: float) -> np.ndarray:
    return np.sin(2 * np.pi * freq * t, dtype=np.float32)


def _gate(local: np.ndarray, on: float, ramp: float = 0.005) -> np.ndarray:
    """Envelope 1 for 0 <= local < on with ``ramp``-second linear edges (no clicks), else 0."""
    return np.clip(np.minimum(local, on - local) / ramp, 0.0, 1.0).astype(np.float32)


def _sine(rng, t):
    return _tone(t, _log_uniform(rng, 200, 4000))


def _beeps(rng, t):
    freq, on, period = _log_uniform(rng, 600, 4000), rng.uniform(0.08, 0.25), rng.uniform(0.35, 1.0)
    local = (t + rng.uniform(0, period)) % period
    return _tone(t, freq) * _gate(local, on)


def _chirps(rng, t):
    sweep = rng.uniform(0.4, 1.5)
    f0, f1 = _log_uniform(rng, 200, 800), _log_uniform(rng, 2500, 8000)
    if rng.random() < 0.5:
        f0, f1 = f1, f0
    local = t % sweep
    rate = np.log(f1 / f0) / sweep  # exponential sweep f(u) = f0 exp(rate u)
    phase = 2 * np.pi * f0 * np.expm1(rate * local) / rate
    return np.sin(phase).astype(np.float32) * _gate(local, 0.85 * sweep)


def _siren(rng, t):
    centre, depth, period = rng.uniform(600, 1200), rng.uniform(0.2, 0.4), rng.uniform(1.0, 3.0)
    # f(t) = centre * (1 + depth * sin(2 pi t / period)); phase is its integral
    phase = 2 * np.pi * centre * (t - depth * period / (2 * np.pi) * np.cos(2 * np.pi * t / period))
    return (np.sin(phase) + 0.4 * np.sin(2 * phase) + 0.2 * np.sin(3 * phase)).astype(np.float32)


def _buzz(rng, t):
    f0 = rng.uniform(90, 250)
    return (2.0 * ((f0 * t) % 1.0) - 1.0).astype(np.float32)  # sawtooth


def _hum(rng, t):
    f0 = 50.0 if rng.random() < 0.5 else 60.0
    return (_tone(t, f0) + 0.6 * _tone(t, 2 * f0) + 0.4 * _tone(t, 3 * f0)).astype(np.float32)


def _pulses(rng, t):
    rate, freq = rng.uniform(2.0, 6.0), rng.uniform(80, 300)
    local = (t + rng.uniform(0, 1 / rate)) % (1 / rate)
    attack = np.minimum(local / 0.002, 1.0)
    return (_tone(local, freq) * attack * np.exp(-local / 0.025)).astype(np.float32)


def _clicks(rng, t):
    out = np.zeros_like(t)
    count = rng.integers(4, 12) * max(1, int(len(t) / SAMPLE_RATE))
    for start in rng.integers(0, max(1, len(t) - 64), size=count):
        width = int(rng.integers(16, 64))
        burst = rng.standard_normal(width, dtype=np.float32) * np.exp(-np.arange(width) / (width / 4))
        out[start : start + width] += burst
    return out / max(1e-6, float(np.abs(out).max()))


def _white(rng, t):
    return rng.standard_normal(len(t), dtype=np.float32)


def _pink(rng, t):
    size = scipy.fft.next_fast_len(len(t), real=True)
    spectrum = scipy.fft.rfft(rng.standard_normal(size, dtype=np.float32))
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum), dtype=np.float32))  # power ~ 1/f
    spectrum[0] = 0
    pink = scipy.fft.irfft(spectrum, n=size)[: len(t)]
    return pink / max(1e-9, float(pink.std()))


# name -> (synth, duration range s, level range dB, level is "rms" or "peak")
_EVENTS: dict[str, tuple[Synth, tuple[float, float], tuple[float, float], str]] = {
    "Sine wave": (_sine, (3, 10), (-30, -10), "rms"),
    "Beep, bleep": (_beeps, (2, 8), (-30, -10), "rms"),
    "Chirp tone": (_chirps, (2, 8), (-30, -10), "rms"),
    "Siren": (_siren, (3, 10), (-30, -10), "rms"),
    "Buzz": (_buzz, (1.5, 8), (-32, -14), "rms"),
    "Hum": (_hum, (4, 10), (-28, -10), "rms"),
    "Pulse": (_pulses, (2, 8), (-18, -4), "peak"),
    "Clicking": (_clicks, (2, 8), (-16, -3), "peak"),
    "White noise": (_white, (2, 10), (-38, -18), "rms"),
    "Pink noise": (_pink, (2, 10), (-34, -16), "rms"),
}


def _event(name: str, rng: np.random.Generator, clip_samples: int, quieter_db: float = 0.0) -> tuple[int, np.ndarray]:
    """One event of class ``name``: ``(start sample, samples)`` at a random level and onset."""
    synth, (d_min, d_max), (lo, hi), norm = _EVENTS[name]
    seconds = clip_samples / SAMPLE_RATE
    duration = min(rng.uniform(d_min, d_max), seconds)
    length = max(1, int(duration * SAMPLE_RATE))
    start = int(rng.integers(0, clip_samples - length + 1))
    t = np.arange(length, dtype=np.float32) / SAMPLE_RATE
    sound = synth(rng, t)
    scale = float(np.abs(sound).max()) if norm == "peak" else float(np.sqrt(np.mean(sound**2)))
    gain = 10 ** ((rng.uniform(lo, hi) - quieter_db) / 20) / max(scale, 1e-9)
    return start, sound * gain * _fade(length)


def synthesize_clip(rng: np.random.Generator, names: list[str], clip_samples: int = CLIP_SAMPLES) -> np.ndarray:
    """One clip: background noise plus the events ``names`` (empty for silence); float32 (S,)."""
    clip = rng.standard_normal(clip_samples, dtype=np.float32) * 10 ** (rng.uniform(-65, -50) / 20)
    mixture = len(names) > 1
    for name in names:
        # in mixtures keep broadband noise below the other events so they stay audible
        start, sound = _event(name, rng, clip_samples, quieter_db=6.0 if mixture and name in _NOISES else 0.0)
        clip[start : start + len(sound)] += sound
    return np.clip(clip, -1.0, 1.0)


def _clip_labels(rng: np.random.Generator, k: int, singles: int) -> list[str]:
    """Event classes of clip ``k``: the first ``singles * len(classes)`` clips are single-label."""
    if k < singles * len(DEMO_CLASS_NAMES):
        name = DEMO_CLASS_NAMES[k % len(DEMO_CLASS_NAMES)]
        return [] if name == SILENCE else [name]
    pool = [n for n in DEMO_CLASS_NAMES if n != SILENCE]
    while True:
        names = list(rng.choice(pool, size=2 if rng.random() < 0.7 else 3, replace=False))
        if not _NOISES.issubset(names):
            return names


def iter_demo_clips(
    split: str, seed: int = 0, clip_samples: int = CLIP_SAMPLES
) -> Iterator[tuple[str, np.ndarray, list[int]]]:
    """Clips of a split as ``(audio_name, int16 waveform (S,), AudioSet class indices)``."""
    split_id, singles, _ = _SPLITS[split]
    index_of = {c.display_name: c.index for c in demo_classes()}
    for k in range(split_size(split)):
        rng = np.random.default_rng([seed, split_id, k])
        names = _clip_labels(rng, k, singles)
        clip = synthesize_clip(rng, names, clip_samples)
        labels = [index_of[n] for n in names] or [index_of[SILENCE]]
        yield f"demo_{split}_{k:04d}", np.round(clip * 32767).astype(np.int16), sorted(labels)


# ---------------------------------------------------------------------------- files on disk
def _settings(split: str, seed: int, clip_samples: int) -> str:
    return json.dumps(
        {"version": DEMO_VERSION, "split": split, "seed": seed, "clip_samples": clip_samples}, sort_keys=True
    )


def _is_current(path: Path, settings: str) -> bool:
    try:
        with h5py.File(path, "r") as h5:
            return h5.attrs.get("demo_settings") == settings
    except (OSError, KeyError):
        return False


def split_size(split: str) -> int:
    """Number of clips of a demo split."""
    _, singles, mixtures = _SPLITS[split]
    return singles * len(DEMO_CLASS_NAMES) + mixtures


def write_demo_split(path: Path, split: str, seed: int = 0, clip_samples: int = CLIP_SAMPLES) -> Path:
    """Generate one split into ``path`` (written to a temporary file, then renamed)."""
    rows = split_size(split)
    names = np.zeros(rows, dtype="S20")
    targets = np.zeros((rows, AUDIOSET_NUM_CLASSES), dtype=bool)
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            names_ds, waves, targets_ds = create_layout(h5, rows, AUDIOSET_NUM_CLASSES, clip_samples)
            for row, (name, wave, labels) in enumerate(iter_demo_clips(split, seed, clip_samples)):
                waves[row] = wave
                names[row] = name.encode()
                targets[row, labels] = True
            names_ds[:], targets_ds[:] = names, targets
            h5.attrs["demo_settings"] = _settings(split, seed, clip_samples)
            h5.attrs["sample_rate"] = SAMPLE_RATE
    return path


def default_demo_root() -> Path:
    """``$DCLS_AUDIO_DATA/demo``, else ``<repo>/data/demo`` in a source checkout, else a user cache."""
    if os.environ.get("DCLS_AUDIO_DATA"):
        return Path(os.environ["DCLS_AUDIO_DATA"]) / "demo"
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        return repo / "data" / "demo"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dcls-audio" / "demo"


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive lock on ``lock_path`` (so concurrent ranks generate once)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent writers still end with complete files
        yield
        return
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_demo_data(
    root: str | os.PathLike | None = None, seed: int = 0, clip_samples: int = CLIP_SAMPLES
) -> tuple[Path, Path]:
    """Paths ``(train.h5, eval.h5)`` of the demo data, generating them on first use.

    ``root`` defaults to :func:`default_demo_root`. Files are regenerated when the generator
    version or the settings differ from the stored ones.
    """
    root = Path(root) if root is not None else default_demo_root()
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    with _exclusive(root / ".demo.lock"):
        for split in ("train", "eval"):
            path = root / f"demo_{split}.h5"
            if not _is_current(path, _settings(split, seed, clip_samples)):
                log.info("generating demo %s data into %s", split, path)
                write_demo_split(path, split, seed, clip_samples)
            paths.append(path)
    return paths[0], paths[1]
