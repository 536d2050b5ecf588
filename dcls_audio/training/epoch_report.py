"""One line after each validation: the epoch, its validation mAP and the best so far.

Printed through the progress bar (above it, without breaking it) on global rank 0, e.g.
``epoch 3 (step 120): val/mAP 0.8123 (best 0.8123 at epoch 3), val/mAUC 0.9612, val/loss 0.0712``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

__all__ = ["EpochReport", "epoch_line"]


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def epoch_line(epoch: int, step: int, metrics: dict[str, Any], best: tuple[float, int] | None) -> str | None:
    """The line for ``metrics`` (the trainer's ``callback_metrics``), or None without ``val/mAP``."""
    m_ap = _number(metrics.get("val/mAP"))
    if m_ap is None:
        return None
    parts = [f"val/mAP {m_ap:.4f}" + (f" (best {best[0]:.4f} at epoch {best[1]})" if best else "")]
    for key in ("val/mAP_ema", "val/mAUC", "val/loss"):
        value = _number(metrics.get(key))
        if value is not None:
            parts.append(f"{key} {value:.4f}")
    return f"epoch {epoch} (step {step}): " + ", ".join(parts)


class EpochReport(Callback):
    """Prints :func:`epoch_line` after every validation (not the sanity check)."""

    def __init__(self) -> None:
        self.best: tuple[float, int] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m_ap = _number(trainer.callback_metrics.get("val/mAP"))
        if m_ap is not None and (self.best is None or m_ap > self.best[0]):
            self.best = (m_ap, trainer.current_epoch)
        line = epoch_line(trainer.current_epoch, trainer.global_step, trainer.callback_metrics, self.best)
        if line is None:
            return
        bar = trainer.progress_bar_callback
        if bar is not None and hasattr(bar, "print"):
            bar.print(line)
        else:
            print(line, flush=True)

    def state_dict(self) -> dict[str, Any]:
        return {"best": list(self.best) if self.best else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        best = state_dict.get("best")
        self.best = (float(best[0]), int(best[1])) if best else None
