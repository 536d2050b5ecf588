"""Pictures (optional extra ``plot``: matplotlib): the per-class AP chart of ``eval`` and of
validation, and the timeline of ``infer --plot``. Functions take plain arrays and write PNG
files (or return matplotlib figures); without matplotlib they raise :class:`PlotUnavailable`
saying what to install.

Names are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "PLOT_EXTRA_HINT": "backend",
    "PlotUnavailable": "backend",
    "require_matplotlib": "backend",
    "per_class_ap_figure": "per_class",
    "write_per_class_ap_chart": "per_class",
    "TimelineData": "timeline",
    "timeline_figure": "timeline",
    "write_timelines": "timeline",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from .backend import PLOT_EXTRA_HINT, PlotUnavailable, require_matplotlib
    from .per_class import per_class_ap_figure, write_per_class_ap_chart
    from .timeline import TimelineData, timeline_figure, write_timelines
