"""Console noise from Lightning and torch that says nothing to a user of this command,
silenced for the ``train`` and ``eval`` commands (:func:`quiet_lightning`).

Left out: Lightning's tip advertising its logging service and its note on loading the
training data to count steps; deprecation warnings raised inside
Lightning by the torch it runs on (``LeafSpec``); the notes that our LightningModule overrides
``transfer_batch_to_device`` (on purpose) and that a resumed run's checkpoint folder is not
empty (it is that run's); torch's ``weights_only`` notices (every file here is read with
``weights_only=True``). Everything else Lightning says (devices, the model summary, its own
warnings) is shown as before.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["DROPPED_INFO", "NOISE_PATTERNS", "quiet_lightning"]

#: regular expressions of warning texts that are dropped
NOISE_PATTERNS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
    r"You have overridden `transfer_batch_to_device` in `LightningModule`",
    r"Checkpoint directory .* exists and is not empty",
    r".*`?weights_only`?",
)
#: starts of Lightning's info lines that are dropped
DROPPED_INFO = ("\N{ELECTRIC LIGHT BULB} Tip:", "Loading `train_dataloader` to estimate number of stepping batches")
_LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(DROPPED_INFO)


_FILTER = _DropTips()


def quiet_lightning() -> None:
    """Install the warning filters and the log filter (idempotent; process-wide)."""
    for pattern in NOISE_PATTERNS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
