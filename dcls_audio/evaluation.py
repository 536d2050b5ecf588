"""``dcls-audio eval``: AudioSet metrics of a checkpoint on HDF5 files, and their files.

Runs through a Lightning ``Trainer.test`` so that any device count or strategy gives the same
numbers: logits are gathered once with their clip indices, duplicates dropped, metrics
computed on the complete set (see :mod:`dcls_audio.metrics`). Outputs, in ``output_dir``:

- ``metrics.json``: ``mAP``, ``mAUC``, ``d_prime`` (mean of per-class d-primes, as
  upstream), ``d_prime_of_mAUC``, ``num_clips``, ``num_classes``, ``num_classes_scored``,
  counts of excluded classes, a note, and what was evaluated;
- ``per_class.csv``: ``index, mid, display_name, AP, AUC, d_prime, positives`` (empty AP/AUC
  where undefined);
- ``predictions.npz``: ``audio_name`` (N,), ``scores`` (N, C) sigmoid probabilities float32,
  ``target`` (N, C) uint8, ``index`` (N,) clip index, ``logits`` (N, C) float32; rows in clip
  order. Metrics are computed from the logits (same ranking as the scores, without the
  float32 saturation of the sigmoid).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from torch import nn

from .data import AudioSetDataModule, ClassInfo, LogMelFrontEnd
from .metrics import AudioSetMetrics, TaggingMetrics
from .models import load_checkpoint
from .output_dirs import atomic_output, ensure_writable_dir

__all__ = ["EvaluationModule", "evaluate", "format_metrics", "write_outputs"]


class EvaluationModule(L.LightningModule):
    """Front end (no augmentation) + a loaded backbone + :class:`AudioSetMetrics`.

    At the end of ``trainer.test`` every rank holds ``result`` (:class:`TaggingMetrics`),
    ``indices`` (N,), ``logits`` (N, C), ``targets`` (N, C) and ``audio_names`` (N); global
    rank 0 writes the output files into ``output_dir`` when one is given.
    """

    def __init__(self, net: nn.Module, classes: list[ClassInfo], output_dir: Path | None = None,
                 info: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.net = net
        self.front_end = LogMelFrontEnd(augment=False)
        self.metric = AudioSetMetrics(len(classes))
        self.classes = classes
        self.output_dir = output_dir
        self.info = info or {}
        self.result: TaggingMetrics | None = None

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self.net(self.front_end(batch["waveform"]))
        self.metric.update(logits, batch["target"], batch["index"])

    def on_test_epoch_end(self) -> None:
        self.result = self.metric.compute()
        indices, logits, targets = self.metric.gathered()
        self.indices, self.logits, self.targets = indices.cpu(), logits.cpu(), targets.cpu()
        dataset = self.trainer.test_dataloaders.dataset  # every rank holds all the clip names
        self.audio_names = [dataset.audio_name(i) for i in self.indices.tolist()]
        if self.output_dir is not None and self.trainer.is_global_zero:
            write_outputs(self, self.output_dir)


def evaluate(
    checkpoint: str,
    data_files: Sequence[str],
    output_dir: str | Path | None = None,
    model_name: str | None = None,
    use_ema: bool = False,
    allow_pickle: bool = False,
    class_csv: str | None = None,
    batch_size: int = 32,
    num_workers: int = 2,
    accelerator: str = "auto",
    devices: int | str | list[int] = 1,
    strategy: str = "auto",
    precision: str = "32",
) -> tuple[TaggingMetrics, Path | None, bool]:
    """Evaluate ``checkpoint`` (ours, upstream ``.pth`` or a state_dict) on ``data_files``.

    ``model_name``: needed only when the checkpoint does not say. Writes the files of the
    module docstring into ``output_dir`` (rank 0) when given. Returns ``(metrics,
    output_dir, is_global_zero)`` (the metrics are the same on every rank).
    Checkpoint, data and output problems raise before any clip is scored.
    """
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        ensure_writable_dir(out, "--output-dir")
    net = load_checkpoint(model_name, checkpoint, use_ema=use_ema, allow_pickle=allow_pickle).eval()
    dm = AudioSetDataModule(
        test_files=list(data_files), class_csv=class_csv, batch_size=batch_size,
        num_workers=num_workers, pin_memory=torch.cuda.is_available() and accelerator != "cpu",
        persistent_workers=False,
    )
    dm.setup("test")
    model_classes = net.get_classifier().out_features
    if dm.num_classes != model_classes:
        raise ValueError(
            f"{checkpoint}: the model predicts {model_classes} classes but {data_files[0]} has "
            f"{dm.num_classes}"
        )
    if "spawn" in str(strategy):
        raise ValueError(f"--strategy {strategy}: use ddp (the results stay in the spawned processes)")
    info = {"checkpoint": str(checkpoint), "data": [str(f) for f in data_files],
            "model": getattr(net, "model_name", model_name), "use_ema": use_ema, "precision": precision}
    module = EvaluationModule(net, dm.classes, out, info)
    trainer = L.Trainer(
        accelerator=accelerator, devices=devices, strategy=strategy, precision=precision,
        logger=False, enable_checkpointing=False, use_distributed_sampler=False,
        enable_model_summary=False,
    )
    trainer.test(module, datamodule=dm, verbose=False)
    return module.result, out, trainer.is_global_zero


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_outputs(module: EvaluationModule, output_dir: Path) -> None:
    """Write ``metrics.json``, ``per_class.csv`` and ``predictions.npz`` (module docstring).

    Each file is written to a temporary file and renamed: a reader never sees half of one.
    """
    summary = {k: _json_number(v) for k, v in module.result.summary().items()}
    with atomic_output(output_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps({**summary, **module.info}, indent=2) + "\n")
    with atomic_output(output_dir / "per_class.csv") as tmp, open(tmp, "w", newline="") as fh:
        _write_per_class(csv.writer(fh), module.result, module.classes)
    with atomic_output(output_dir / "predictions.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(  # a file object: a path without ".npz" would get the suffix added
            fh,
            audio_name=np.array(module.audio_names, dtype=str),
            scores=torch.sigmoid(module.logits.float()).numpy(),
            target=module.targets.numpy().astype(np.uint8),
            index=module.indices.numpy(),
            logits=module.logits.float().numpy(),
        )


def _write_per_class(writer: Any, result: TaggingMetrics, classes: list[ClassInfo]) -> None:
    """The rows of ``per_class.csv``: a header, then one row per class (empty AP/AUC where NaN)."""
    writer.writerow(["index", "mid", "display_name", "AP", "AUC", "d_prime", "positives"])
    columns = zip(result.ap.tolist(), result.auc.tolist(), result.class_d_prime.tolist())
    for info_c, values, positives in zip(classes, columns, result.positives.tolist(), strict=True):
        writer.writerow([info_c.index, info_c.mid, info_c.display_name,
                         *("" if math.isnan(v) else f"{v:.6f}" for v in values), positives])


def format_metrics(result: TaggingMetrics) -> str:
    """Human-readable lines of the summary."""
    return "\n".join([
        f"mAP      {result.mAP:.4f}",
        f"mAUC     {result.mAUC:.4f}",
        f"d-prime  {result.d_prime:.4f} (mean of per-class d-primes; {result.d_prime_of_mAUC:.4f} from mAUC)",
        f"clips    {result.num_clips}",
        f"classes  {result.num_classes_scored} scored of {result.num_classes} ({result.exclusion_note()})",
    ])
