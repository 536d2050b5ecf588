"""AudioSet data: audio files to waveforms (decoding, resampling), HDF5 datasets (int16 or FLAC/Opus
clips), litdata shards, samplers, the DataModule, packing audio folders into HDF5 or shards, and a
synthetic demo dataset.

Names are imported on first use, so ``from dcls_audio.data import load_audio`` does not pull
in Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "AudioReadError": "audio_io",
    "load_audio": "audio_io",
    "ClassInfo": "classes",
    "load_class_names": "classes",
    "CLIP_SAMPLES": "constants",
    "SAMPLE_RATE": "constants",
    "AudioSetDataModule": "datamodule",
    "ensure_demo_data": "demo",
    "AudioSetHDF5": "hdf5_dataset",
    "AudioSetShards": "shards",
    "BalancedSampler": "samplers",
    "EvalShardSampler": "samplers",
    "UniformSampler": "samplers",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


if TYPE_CHECKING:
    from .audio_io import AudioReadError, load_audio
    from .classes import ClassInfo, load_class_names
    from .constants import CLIP_SAMPLES, SAMPLE_RATE
    from .datamodule import AudioSetDataModule
    from .demo import ensure_demo_data
    from .hdf5_dataset import AudioSetHDF5
    from .samplers import BalancedSampler, EvalShardSampler, UniformSampler
    from .shards import AudioSetShards
