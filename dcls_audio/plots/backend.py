"""matplotlib, imported on demand. Figures are made as ``matplotlib.figure.Figure`` objects,
not through pyplot: no display is needed and the caller's pyplot state and backend are left
alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["PLOT_EXTRA_HINT", "PlotUnavailable", "new_figure", "require_matplotlib", "save_png"]

PLOT_EXTRA_HINT = "pip install 'dcls-audio[plot]' (matplotlib)"


class PlotUnavailable(ImportError):
    """matplotlib is not installed; the message says what to install."""


def require_matplotlib(what: str) -> None:
    """Raise :class:`PlotUnavailable` naming ``what`` when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(f"{what} needs matplotlib: {PLOT_EXTRA_HINT}") from None


def new_figure(width_in: float, height_in: float) -> Any:
    """A ``matplotlib.figure.Figure`` of the given size in inches."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), layout="constrained")


def save_png(figure: Any, path: str | Path, dpi: int) -> None:
    """Write ``figure`` as PNG to ``path`` (the caller's temporary name)."""
    figure.savefig(str(path), format="png", dpi=dpi)
