"""Export: a checkpoint to ONNX or TorchScript with DCLS layers folded (``dcls-audio export``).

Names are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {"export_model": "exporter", "read_metadata": "exporter", "run_export": "exporter"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from .exporter import export_model, read_metadata, run_export
