"""The training progress bar: Lightning's TQDM bar plus a loss that is never waited for.

Metrics logged with ``prog_bar=True`` are turned into Python numbers after every training step
(a host wait for the device), so the training loss is logged for the loggers only and this bar
shows the module's ``recent_loss`` instead: the newest loss the device has already computed
(a few steps old at most), read from a non-blocking host copy.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf

__all__ = ["LOSS_KEY", "TrainProgressBar"]

#: the key under which the bar shows the recent training loss
LOSS_KEY = "loss"


class TrainProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` (same arguments) that adds ``loss`` from ``pl_module.recent_loss`` and
    leaves out ``v_num`` (the first logger's version, e.g. ``_0`` for TensorBoard's empty one);
    the validation bar is "Validation" like the epoch bar's "Epoch N" (no "DataLoader 0" for
    the one validation loader)."""

    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Lightning's own, but the bar is named "Validation" (not "Validation DataLoader 0")."""
        if not self.has_dataloader_changed(dataloader_idx):
            return
        self.val_progress_bar.reset()
        self.val_progress_bar.total = convert_inf(self.total_val_batches_current_dataloader)
        self.val_progress_bar.initial = 0
        desc = self.sanity_check_description if trainer.sanity_checking else self.validation_description
        self.val_progress_bar.set_description(desc if dataloader_idx == 0 else f"{desc} {dataloader_idx}")

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the logger's version, not the run's (printed as the run directory)
        loss = getattr(pl_module, "recent_loss", None)
        if trainer.training and loss is not None:
            items[LOSS_KEY] = f"{loss:.4g}"
        return items
