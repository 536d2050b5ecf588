"""Waveforms to model input: the log-mel front end (on the batch's device: op by op in plain torch,
or as three fused passes, Triton programs on CUDA), its ONNX twin built from convolutions, and the
train-time augmentations (time roll, speed perturbation, random erasing, batch mixup).

Names are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "AugmentConfig": "augment",
    "LogMelFrontEnd": "logmel",
    "ConvLogMel": "onnx_logmel",
    "mixup": "augment",
    "spectral": None,
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from . import spectral
    from .augment import AugmentConfig, mixup
    from .logmel import LogMelFrontEnd
    from .onnx_logmel import ConvLogMel
