"""dcls_audio: audio tagging on AudioSet with DCLS spectrogram backbones.

The model entry points are re-exported here (timm style): ``dcls_audio.create_model(name)``,
``dcls_audio.list_models()``. Names are imported on first use, so importing the package is cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_model": "models",
    "list_models": "models",
    "load_checkpoint": "models",
    "dclsify": "models",
    "save_upstream_checkpoint": "models",
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
