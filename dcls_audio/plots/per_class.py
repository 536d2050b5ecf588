"""The per-class average precision chart: classes sorted by AP, names readable.

Horizontal bars, best class at the top, at most :data:`ROWS_PER_COLUMN` classes per column
(AudioSet's 527 classes make six columns); classes without an AP (no positive or no
negative clip) are left out and counted in the title; a dashed line marks the mAP.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .backend import new_figure, require_matplotlib, save_png

__all__ = ["DPI", "ROWS_PER_COLUMN", "per_class_ap_figure", "write_per_class_ap_chart"]

ROWS_PER_COLUMN = 90
DPI = 100
_ROW_IN, _COLUMN_IN, _MARGIN_IN, _MIN_WIDTH_IN = 0.18, 5.5, 1.0, 7.0


def per_class_ap_figure(ap: Sequence[float], names: Sequence[str], title: str = "per-class AP") -> Any:
    """A figure of ``ap`` (C,) per class (NaN: not scored) with the class ``names`` (C,)."""
    require_matplotlib("the per-class AP chart")
    ap = np.asarray(ap, dtype=np.float64)
    if ap.shape != (len(names),):
        raise ValueError(f"{ap.shape[0] if ap.ndim else 0} AP values for {len(names)} class names")
    scored = np.flatnonzero(~np.isnan(ap))
    order = scored[np.argsort(-ap[scored], kind="stable")]
    mean = float(ap[scored].mean()) if len(scored) else math.nan
    rows = min(max(len(order), 1), ROWS_PER_COLUMN)
    columns = max(1, math.ceil(len(order) / ROWS_PER_COLUMN))
    figure = new_figure(max(_COLUMN_IN * columns, _MIN_WIDTH_IN), _MARGIN_IN + _ROW_IN * rows + 0.8)
    axes = figure.subplots(1, columns, squeeze=False)[0]
    left_out = len(ap) - len(scored)
    note = f"; {left_out} classes without AP left out" if left_out else ""
    figure.suptitle(f"{title}\nmAP {mean:.4f} (dashed line) over {len(scored)} classes{note}", fontsize=9)
    for column, ax in enumerate(axes):
        chunk = order[column * ROWS_PER_COLUMN : (column + 1) * ROWS_PER_COLUMN]
        y = np.arange(len(chunk))
        ax.barh(y, ap[chunk], height=0.8, color="tab:blue")
        ax.set_yticks(y, [names[i] for i in chunk], fontsize=8)
        ax.set_ylim(rows - 0.5, -0.5)  # best at the top; every column has the same row height
        ax.set_xlim(0.0, 1.0)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("average precision", fontsize=8)
        if not math.isnan(mean):
            ax.axvline(mean, color="tab:red", linestyle="--", linewidth=0.8)
        ax.grid(axis="x", linewidth=0.3)
    return figure


def write_per_class_ap_chart(
    path: str | Path, ap: Sequence[float], names: Sequence[str], title: str = "per-class AP"
) -> Path:
    """Draw :func:`per_class_ap_figure` into the PNG file ``path`` (written as given: the
    caller handles temporary names). Returns ``path``."""
    save_png(per_class_ap_figure(ap, names, title), path, DPI)
    return Path(path)
