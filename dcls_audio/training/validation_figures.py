"""Validation pictures in TensorBoard: per-class AP and precision-recall curves.

After each validation (global rank 0, TensorBoard logger present) this callback reads the
module's ``last_validation`` (``(TaggingMetrics, scores (N, C), targets (N, C))``, set by
``AudioTaggingModule._log_metrics``) and writes, at the current step:

- ``val/per_class_AP``: a histogram of the scored classes' AP, and, with matplotlib (the
  ``plot`` extra), the sorted per-class AP chart as an image (the one ``eval`` writes);
- ``val_pr/<class>``: TensorBoard PR curves of the :data:`PR_CURVE_CLASSES` classes with the
  most positive clips (all of them for a small class list).
"""

from __future__ import annotations

import re
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

__all__ = ["PR_CURVE_CLASSES", "ValidationFigures"]

PR_CURVE_CLASSES = 20


def _tag(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.\-]+", "_", name).strip("_") or "class"


class ValidationFigures(Callback):
    """See the module docstring. ``class_names``: (C,) display names."""

    def __init__(self, class_names: list[str]) -> None:
        self.class_names = class_names
        self._warned = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        held = getattr(pl_module, "last_validation", None)
        pl_module.last_validation = None  # the scores are not kept until the next validation
        if held is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        writer = next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if writer is None:
            return
        result, scores, targets = held
        step = trainer.global_step
        ap = result.ap.double()
        scored = ~torch.isnan(ap)
        if bool(scored.any()):
            writer.add_histogram("val/per_class_AP", ap[scored].numpy(), step)
        self._ap_chart(writer, ap, step)
        probabilities = torch.sigmoid(scores.float()).cpu()
        targets = targets.cpu().bool()
        positives = targets.sum(dim=0)
        order = torch.argsort(positives, descending=True, stable=True)
        for c in order[:PR_CURVE_CLASSES].tolist():
            if positives[c] == 0:
                break
            writer.add_pr_curve(f"val_pr/{_tag(self.class_names[c])}", targets[:, c], probabilities[:, c], step)

    def _ap_chart(self, writer: Any, ap: torch.Tensor, step: int) -> None:
        from ..plots import PlotUnavailable, per_class_ap_figure

        try:
            figure = per_class_ap_figure(ap.numpy(), self.class_names, title=f"validation, step {step}")
        except PlotUnavailable as err:
            if not self._warned:
                self._warned = True
                print(f"note: no per-class AP image in TensorBoard: {err}", flush=True)
            return
        writer.add_figure("val/per_class_AP", figure, step, close=False)
