"""A recording's top classes over time: window scores as a heat map with times and names.

One panel per file: rows are the file's ``top`` classes (best-scoring window first), columns
are its windows, each drawn from halfway to the previous window's centre to halfway to the
next one's (the first from the file's start, the last to its end), so the x axis is the
recording's time in seconds (``m:ss`` ticks for files over two minutes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .backend import new_figure, require_matplotlib, save_png

__all__ = ["DPI", "TimelineData", "time_edges", "timeline_figure", "write_timelines"]

DPI = 100
_WIDTH_IN, _ROW_IN, _PANEL_EXTRA_IN = 12.0, 0.3, 1.2


@dataclass
class TimelineData:
    """One file: ``scores`` (W, C) per window, ``spans_s`` (W, 2) window start and end."""

    name: str
    scores: np.ndarray
    spans_s: np.ndarray


def time_edges(spans_s: np.ndarray) -> np.ndarray:
    """(W + 1,) column edges in seconds for windows with ``spans_s`` (W, 2), see the module docstring."""
    spans_s = np.asarray(spans_s, dtype=np.float64)
    centres = spans_s.mean(axis=1)
    inner = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[spans_s[0, 0]], inner, [spans_s[-1, 1]]])


def _minutes(seconds: float, _pos: Any = None) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _panel(ax: Any, data: TimelineData, labels: Sequence[str], top: int) -> Any:
    scores = np.asarray(data.scores, dtype=np.float64)
    classes = np.argsort(-scores.max(axis=0), kind="stable")[:top]
    edges = time_edges(data.spans_s)
    mesh = ax.pcolormesh(
        edges, np.arange(len(classes) + 1), scores[:, classes].T, vmin=0.0, vmax=1.0, cmap="magma", shading="flat"
    )
    ax.set_yticks(np.arange(len(classes)) + 0.5, [labels[i] for i in classes], fontsize=8)
    ax.set_ylim(len(classes), 0)  # the best class on top
    ax.set_title(data.name, fontsize=9, loc="left")
    if edges[-1] > 120:
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(_minutes))
        ax.set_xlabel("time (m:ss)", fontsize=8)
    else:
        ax.set_xlabel("time (s)", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    return mesh


def timeline_figure(files: Sequence[TimelineData], labels: Sequence[str], top: int = 10) -> Any:
    """One heat-map panel per file (see the module docstring); a shared colour bar of scores."""
    require_matplotlib("infer --plot")
    if not files:
        raise ValueError("no tagged file to draw")
    rows = [min(top, np.asarray(f.scores).shape[1]) for f in files]
    heights = [_PANEL_EXTRA_IN + _ROW_IN * r for r in rows]
    figure = new_figure(_WIDTH_IN, sum(heights))
    axes = figure.subplots(len(files), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    mesh = None
    for ax, data in zip(axes, files):
        mesh = _panel(ax, data, labels, top)
    figure.colorbar(mesh, ax=list(axes), label="score", fraction=0.03, pad=0.01)
    return figure


def write_timelines(path: str | Path, files: Sequence[TimelineData], labels: Sequence[str], top: int = 10) -> Path:
    """Draw :func:`timeline_figure` into the PNG file ``path`` (written as given). Returns ``path``."""
    save_png(timeline_figure(files, labels, top), path, DPI)
    return Path(path)
