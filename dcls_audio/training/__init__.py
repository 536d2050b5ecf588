"""Training: the typed config and its recipes, the LightningModule (front end, augmentations,
mixup, backbone, loss), optimizer and schedule, EMA, the non-finite step guard, and
:func:`train`, which runs ``dcls-audio train``.

Names are imported on first use, so reading a config does not import torch or Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "ConfigError": "config",
    "TrainConfig": "config",
    "load_config": "config",
    "AudioTaggingModule": "module",
    "build_optimizer": "optim",
    "TrainResult": "run",
    "TrainingStopped": "run",
    "train": "run",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from .config import ConfigError, TrainConfig, load_config
    from .module import AudioTaggingModule
    from .optim import build_optimizer
    from .run import TrainingStopped, TrainResult, train
