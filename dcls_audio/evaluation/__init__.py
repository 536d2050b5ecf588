"""Evaluation: the AudioSet metrics (mAP, mAUC, d-prime; exact under DDP) and
:func:`evaluate`, which runs ``dcls-audio eval``.

Names are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "AudioSetMetrics": "metrics",
    "TaggingMetrics": "metrics",
    "tagging_metrics": "metrics",
    "evaluate": "evaluate",
    "format_metrics": "evaluate",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from .evaluate import evaluate, format_metrics
    from .metrics import AudioSetMetrics, TaggingMetrics, tagging_metrics
