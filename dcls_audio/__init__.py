"""dcls_audio: audio tagging on AudioSet with DCLS spectrogram backbones.

The model entry points are re-exported here (timm style): ``dcls_audio.create_model(name)``,
``dcls_audio.list_models()``. Names are imported on first use, so importing the package is cheap.
"""

from __future__ import annotations

from ._lazy import lazy_exports

_EXPORTS = {
    "create_model": "models",
    "list_models": "models",
    "load_checkpoint": "models",
    "dclsify": "models",
    "save_upstream_checkpoint": "models",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
