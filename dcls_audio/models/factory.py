"""``create_model``: a registered backbone, optionally with a checkpoint's weights (timm's entry point)."""

from __future__ import annotations

from os import PathLike
from typing import Any

from torch import nn

from .checkpoint import load_checkpoint, resolve_checkpoint_path
from .registry import build_model

__all__ = ["create_model"]


def create_model(
    name: str,
    checkpoint_path: str | PathLike | None = None,
    use_ema: bool = False,
    allow_pickle: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build model ``name`` (see :func:`~dcls_audio.models.registry.build_model` for ``kwargs``),
    optionally loading a checkpoint.

    ``checkpoint_path``: a file (upstream ``.pth``, Lightning ``.ckpt`` or a state_dict) or a
    model name whose ``<name>.pth`` sits in a checkpoints folder (see ``checkpoints/README.md``),
    resolved before the model is built; ``use_ema`` picks the EMA weights; ``allow_pickle`` see
    :func:`~dcls_audio.models.checkpoint.load_checkpoint`. Input (B, 1, 128, T); output logits
    (B, num_classes).
    """
    if checkpoint_path is not None:
        checkpoint_path = resolve_checkpoint_path(checkpoint_path)  # fail before building
    model = build_model(name, **kwargs)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path, use_ema=use_ema, allow_pickle=allow_pickle)
    return model
