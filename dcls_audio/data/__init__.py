"""AudioSet data: HDF5 datasets, samplers, the DataModule, the log-mel front end and augmentations,
packing audio folders into HDF5, and a synthetic demo dataset.

Names are imported on first use, so ``from dcls_audio.data import load_audio`` does not pull
in Lightning.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AudioReadError": "audio_io",
    "load_audio": "audio_io",
    "mixup": "augment",
    "ClassInfo": "classes",
    "load_class_names": "classes",
    "CLIP_SAMPLES": "constants",
    "SAMPLE_RATE": "constants",
    "AudioSetDataModule": "datamodule",
    "ensure_demo_data": "demo",
    "AugmentConfig": "frontend",
    "LogMelFrontEnd": "frontend",
    "AudioSetHDF5": "hdf5_dataset",
    "BalancedSampler": "samplers",
    "EvalShardSampler": "samplers",
    "UniformSampler": "samplers",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .audio_io import AudioReadError, load_audio
    from .augment import mixup
    from .classes import ClassInfo, load_class_names
    from .constants import CLIP_SAMPLES, SAMPLE_RATE
    from .datamodule import AudioSetDataModule
    from .demo import ensure_demo_data
    from .frontend import AugmentConfig, LogMelFrontEnd
    from .hdf5_dataset import AudioSetHDF5
    from .samplers import BalancedSampler, EvalShardSampler, UniformSampler
