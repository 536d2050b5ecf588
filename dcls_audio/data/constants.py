"""Fixed facts of the AudioSet clip layout and the upstream log-mel front end."""

from __future__ import annotations

__all__ = [
    "AUDIOSET_NUM_CLASSES",
    "CLIP_SAMPLES",
    "CLIP_SECONDS",
    "INT16_SCALE",
    "LOGMEL_MEAN",
    "LOGMEL_STD",
    "SAMPLE_RATE",
]

SAMPLE_RATE = 32000
"""Sampling rate of every stored clip (Hz)."""

CLIP_SECONDS = 10
CLIP_SAMPLES = SAMPLE_RATE * CLIP_SECONDS
"""Samples per stored clip (320000)."""

INT16_SCALE = 2.0**15
"""int16 waveforms are divided by this to get floats in [-1, 1)."""

AUDIOSET_NUM_CLASSES = 527

LOGMEL_MEAN = -18.2696
LOGMEL_STD = 30.5735
"""Normalisation of the dB log-mel, measured upstream on balanced_train."""
