"""A classifier and its class labels from a checkpoint, ready for tagging or export.

Checkpoints: a released upstream ``.pth``, our Lightning ``.ckpt`` (class names stored in
``hyper_parameters["class_names"]``), a plain state_dict, or a model name whose file sits in
a checkpoints folder. Labels: a class CSV given by the caller, else the names stored in the
checkpoint, else AudioSet's 527 classes (shipped CSV), else generic ``class_NNN`` names.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ..data.classes import display_names, resolve_class_names
from ..data.constants import AUDIOSET_NUM_CLASSES
from ..models import (
    CheckpointError,
    build_loaded_model,
    extract_state_dict,
    get_spec,
    read_checkpoint,
    resolve_checkpoint_path,
)

__all__ = ["TaggingModel", "labels_from_checkpoint", "load_tagging_model"]

_LABEL_KEYS = ("class_names", "labels", "display_names")


@dataclass
class TaggingModel:
    """``model``: log-mel (B, 1, 128, 1001) -> logits (B, C); ``labels``: C display names."""

    model: nn.Module
    labels: list[str]
    model_name: str
    checkpoint: Path
    labels_source: str


def _output_classes(model: nn.Module) -> int:
    num = getattr(model, "num_classes", None)
    if isinstance(num, int):
        return num
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ValueError(f"cannot tell the number of classes of {type(model).__name__}")
    return linear[-1].out_features


def labels_from_checkpoint(obj: Any) -> list[str] | None:
    """Class display names stored in a loaded checkpoint (Lightning ``hyper_parameters``), or None."""
    if not isinstance(obj, Mapping):
        return None
    hparams = obj.get("hyper_parameters")
    if not isinstance(hparams, Mapping):
        return None
    for key in _LABEL_KEYS:
        names = hparams.get(key)
        if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
            return list(names)
    return None


def load_tagging_model(
    checkpoint: str | PathLike,
    model_name: str | None = None,
    use_ema: bool = False,
    allow_pickle: bool = False,
    class_csv: str | PathLike | None = None,
) -> TaggingModel:
    """Build the model a checkpoint holds and load its weights (eval mode, CPU, fp32).

    ``model_name`` is needed only when the checkpoint does not say (plain state_dicts whose
    keys fit several models). Raises ValueError for an unknown model name,
    FileNotFoundError for a missing checkpoint or class CSV, and
    ``dcls_audio.models.CheckpointError`` for a file that does not fit.
    """
    if model_name is not None:
        get_spec(model_name)  # unknown names fail here, before the file is read
    file = resolve_checkpoint_path(checkpoint)
    obj = read_checkpoint(file, allow_pickle=allow_pickle)
    contents = extract_state_dict(obj, use_ema=use_ema, source=str(file))
    model = build_loaded_model(contents, model_name, str(file))
    num_classes = _output_classes(model)

    stored = labels_from_checkpoint(obj)
    if stored is not None and class_csv is None:
        if len(stored) != num_classes:
            raise CheckpointError(f"{file}: stores {len(stored)} class names for a model with {num_classes} outputs")
        labels, source = stored, "checkpoint"
    else:
        labels = display_names(resolve_class_names(num_classes, class_csv, data_source=f"the model in {file}"))
        source = (
            str(class_csv)
            if class_csv is not None
            else ("AudioSet class CSV" if num_classes == AUDIOSET_NUM_CLASSES else "generic names")
        )
    return TaggingModel(model.eval(), labels, model.model_name, file, source)
