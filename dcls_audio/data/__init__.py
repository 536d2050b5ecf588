"""AudioSet data: HDF5 datasets, samplers, the DataModule, the log-mel front end and augmentations,
packing audio folders into HDF5, and a synthetic demo dataset."""
from .audio_io import AudioReadError, load_audio
from .augment import mixup
from .classes import ClassInfo, load_class_names
from .constants import CLIP_SAMPLES, SAMPLE_RATE
from .datamodule import AudioSetDataModule
from .demo import ensure_demo_data
from .frontend import AugmentConfig, LogMelFrontEnd
from .hdf5_dataset import AudioSetHDF5
from .samplers import BalancedSampler, EvalShardSampler, UniformSampler

__all__ = [
    "AudioReadError",
    "AudioSetDataModule",
    "AudioSetHDF5",
    "AugmentConfig",
    "BalancedSampler",
    "CLIP_SAMPLES",
    "ClassInfo",
    "EvalShardSampler",
    "LogMelFrontEnd",
    "SAMPLE_RATE",
    "UniformSampler",
    "ensure_demo_data",
    "load_audio",
    "load_class_names",
    "mixup",
]
