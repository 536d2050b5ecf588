"""``dcls-audio eval``: AudioSet metrics of a checkpoint on HDF5 files, and their files.

Runs through a Lightning ``Trainer.test`` so that any device count or strategy gives the same
numbers: logits are gathered once with their clip indices, duplicates dropped, metrics
computed on the complete set (see :mod:`dcls_audio.evaluation.metrics`). Outputs, in ``output_dir``:

- ``metrics.json``: ``mAP``, ``mAUC``, ``d_prime`` (mean of per-class d-primes, as
  upstream), ``d_prime_of_mAUC``, ``num_clips``, ``num_classes``, ``num_classes_scored``,
  counts of excluded classes, a note, what was evaluated, ``num_rows_dropped`` (rows
  with an empty ``audio_name``, left out) and ``num_rows_undecodable`` (rows of FLAC/Opus
  files or shards whose bytes did not decode, left out); undefined numbers are ``null``
  (strict JSON);
- ``per_class.csv``: ``index, mid, display_name, AP, AUC, d_prime, positives`` (empty AP/AUC
  where undefined);
- ``predictions.npz``: ``audio_name`` (N,), ``scores`` (N, C) sigmoid probabilities float32,
  ``target`` (N, C) uint8, ``index`` (N,) clip index, ``logits`` (N, C) float32; rows in clip
  order. Metrics are computed from the logits (same ranking as the scores, without the
  float32 saturation of the sigmoid);
- ``per_class_ap.png``: the per-class AP chart (classes sorted by AP, names readable; see
  :mod:`dcls_audio.plots.per_class`), when matplotlib is installed.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf
from torch import nn

from ..data import AudioSetDataModule, ClassInfo
from ..errors import UsageError
from ..features import LogMelFrontEnd
from ..models import load_checkpoint, resolve_checkpoint_path
from ..outputs import OutputError, atomic_output_set, ensure_writable_dir, same_file
from ..plots.per_class import write_per_class_ap_chart
from .metrics import AudioSetMetrics, TaggingMetrics

__all__ = [
    "CHART_FILE",
    "NonFiniteScoresError",
    "EvaluationModule",
    "OUTPUT_FILES",
    "chart_available",
    "evaluate",
    "format_metrics",
    "write_outputs",
]

#: the files ``eval -o DIR`` writes, as one set (see :func:`write_outputs`); the chart only
#: with matplotlib (the ``plot`` extra)
OUTPUT_FILES = ("metrics.json", "per_class.csv", "predictions.npz", "per_class_ap.png")
CHART_FILE = "per_class_ap.png"


class NonFiniteScoresError(ValueError):
    """The model gave NaN or inf scores: the metrics would be meaningless; the message names
    the first clip and the likely causes."""


class EvaluationModule(L.LightningModule):
    """Front end (no augmentation) + a loaded backbone + :class:`AudioSetMetrics`.

    At the end of ``trainer.test`` every rank holds ``result`` (:class:`TaggingMetrics`),
    ``indices`` (N,), ``logits`` (N, C), ``targets`` (N, C) and ``audio_names`` (N); global
    rank 0 writes the output files into ``output_dir`` when one is given.
    """

    def __init__(
        self,
        net: nn.Module,
        classes: list[ClassInfo],
        output_dir: Path | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.front_end = LogMelFrontEnd(augment=False)
        self.metric = AudioSetMetrics(len(classes))
        self.classes = classes
        self.output_dir = output_dir
        self.info = info or {}
        self.result: TaggingMetrics | None = None
        self.written: list[Path] = []
        self.undecodable = 0  # rows left out by this rank's batches (they did not decode)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.undecodable += int(batch.get("undecodable", 0))
        logits = self.net(self.front_end(batch["waveform"]))
        self.metric.update(logits, batch["target"], batch["index"])

    def on_test_epoch_end(self) -> None:
        dataset = self.trainer.test_dataloaders.dataset  # every rank holds all the clip names
        total = self.trainer.strategy.reduce(torch.tensor(float(self.undecodable), device=self.device), reduce_op="sum")
        self.info["num_rows_undecodable"] = self.undecodable = int(total)
        try:
            self.result = self.metric.compute()
        except ValueError:
            self._raise_if_not_finite(dataset)  # every rank holds the same gathered scores
            raise
        indices, logits, targets = self.metric.gathered()
        self.indices, self.logits, self.targets = indices.cpu(), logits.cpu(), targets.cpu()
        self.audio_names = [dataset.audio_name(i) for i in self.indices.tolist()]
        if self.output_dir is not None and self.trainer.is_global_zero:
            self.written = write_outputs(self, self.output_dir)

    def _raise_if_not_finite(self, dataset: Any) -> None:
        indices, logits, _ = self.metric.gathered()
        bad = ~torch.isfinite(logits).all(dim=1)
        if bool(bad.any()):
            first = int(indices[bad.nonzero()[0, 0]])
            raise NonFiniteScoresError(
                f"{self.info.get('checkpoint', 'the model')}: the model gave NaN/inf scores for {int(bad.sum())} of "
                f"{len(indices)} clips (first: {dataset.audio_name(first)}); no metrics were computed. The weights "
                "or the audio of those clips are broken (e.g. values out of range)."
            )


def _unique_files(data_files: Sequence[str], note: Callable[[str], None]) -> list[str]:
    """``data_files`` without repeats of one file (same path, symlink or hard link), in order."""
    unique: list[str] = []
    for path in data_files:
        twin = next((u for u in unique if same_file(u, path)), None)
        if twin is None:
            unique.append(path)
        else:
            note(f"{path} is the same file as {twin}: its clips are scored once")
    return unique


def check_output_dir(output_dir: Path, inputs: Sequence[str | Path], overwrite: bool) -> None:
    """``eval -o``: a folder (created if needed); its result files are never an input and are
    replaced only with ``overwrite``; other files in it are left alone. Raises OutputError."""
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(None, "not a folder", output_dir, f"--output-dir: {output_dir} exists and is not a folder")
    targets = [output_dir / name for name in OUTPUT_FILES]
    for target in targets:
        for item in inputs:
            if same_file(target, item):
                raise OutputError(
                    None,
                    "output is an input",
                    target,
                    f"--output-dir: {target} is also an input ({item}); refusing to write over it",
                )
    existing = [t.name for t in targets if t.exists() or t.is_symlink()]
    if existing and not overwrite:
        raise OutputError(
            None,
            "exists",
            output_dir,
            f"--output-dir: {output_dir} already holds {', '.join(existing)} (an earlier result?); "
            "pass --overwrite to replace them, or choose another folder",
        )


def _check_accelerator(accelerator: str) -> None:
    if accelerator.lower() in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UsageError(f"--accelerator {accelerator}: no CUDA GPU is available on this machine (use cpu or auto)")


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
    overwrite: bool = False,
    note: Callable[[str], None] | None = None,
) -> tuple[TaggingMetrics, Path | None, bool]:
    """Evaluate ``checkpoint`` (ours, upstream ``.pth`` or a state_dict) on ``data_files``.

    ``model_name``: needed only when the checkpoint does not say. Writes the files of the
    module docstring into ``output_dir`` (rank 0) when given. Returns ``(metrics,
    output_dir, is_global_zero)`` (the metrics are the same on every rank).
    Checkpoint, data and output problems raise before any clip is scored: a data file given
    twice (also through a link) is scored once (``note`` is told), a set without usable rows
    is an error naming the files, existing result files in ``output_dir`` are replaced only
    with ``overwrite`` (see :func:`check_output_dir`). Non-finite model scores raise
    :class:`NonFiniteScoresError` and write nothing.
    """
    note = note or (lambda text: None)
    data_files = _unique_files(list(data_files), note)
    _check_accelerator(accelerator)
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        try:
            inputs: list[str | Path] = [resolve_checkpoint_path(checkpoint)]
        except FileNotFoundError:
            inputs = [checkpoint]
        check_output_dir(out, [*inputs, *data_files, *([class_csv] if class_csv else [])], overwrite)
        ensure_writable_dir(out, "--output-dir")
    net = load_checkpoint(model_name, checkpoint, use_ema=use_ema, allow_pickle=allow_pickle).eval()
    dm = AudioSetDataModule(
        test_files=list(data_files),
        class_csv=class_csv,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() and accelerator != "cpu",
        persistent_workers=False,
    )
    dm.setup("test")
    dataset = dm.datasets["test"]
    if len(dataset) == 0:
        raise UsageError(
            f"{', '.join(map(str, data_files))}: no usable clips to score ({dataset.num_dropped} row(s) with an empty "
            "audio_name, which mark clips that failed to download, were dropped)"
        )
    if dataset.num_dropped:
        note(
            f"{dataset.num_dropped} row(s) with an empty audio_name (clips that failed to download) were dropped; "
            f"{len(dataset)} clips are scored"
        )
    model_classes = net.get_classifier().out_features
    if dm.num_classes != model_classes:
        raise UsageError(
            f"{checkpoint}: the model predicts {model_classes} classes but {data_files[0]} has {dm.num_classes}"
        )
    if "spawn" in str(strategy):
        raise UsageError(f"--strategy {strategy}: use ddp (the results stay in the spawned processes)")
    info = {
        "checkpoint": str(checkpoint),
        "data": [str(f) for f in data_files],
        "model": getattr(net, "model_name", model_name),
        "use_ema": use_ema,
        "precision": precision,
        "num_rows_dropped": dataset.num_dropped,
    }
    module = EvaluationModule(net, dm.classes, out, info)
    try:
        trainer = L.Trainer(
            callbacks=[EvalProgressBar()],
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            precision=precision,
            logger=False,
            enable_checkpointing=False,
            use_distributed_sampler=False,
            enable_model_summary=False,
        )
    except (ValueError, MisconfigurationException) as err:  # Lightning's checks of the options
        raise UsageError(f"--accelerator/--devices/--strategy/--precision: {err}") from None
    if trainer.world_size > len(dataset):
        raise UsageError(
            f"--devices: {trainer.world_size} processes for {len(dataset)} clips; every device needs at least "
            f"one clip: use --devices {len(dataset)} or fewer"
        )
    trainer.test(module, datamodule=dm, verbose=False)
    if module.undecodable and trainer.is_global_zero:
        note(f"{module.undecodable} row(s) did not decode and were left out (see the warnings naming them)")
    return module.result, out, trainer.is_global_zero


class EvalProgressBar(TQDMProgressBar):
    """Lightning's bar, named "Evaluating" (eval reads one loader: no "Testing DataLoader 0")."""

    def init_test_tqdm(self) -> Tqdm:
        return Tqdm(
            desc="Evaluating",
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            bar_format=self.BAR_FORMAT,
        )

    def on_test_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Lightning's own, with the bar's name kept."""
        if not self.has_dataloader_changed(dataloader_idx):
            return
        self.test_progress_bar.reset()
        self.test_progress_bar.total = convert_inf(self.total_test_batches_current_dataloader)
        self.test_progress_bar.initial = 0
        self.test_progress_bar.set_description("Evaluating")


def chart_available() -> bool:
    """Whether matplotlib (the ``plot`` extra) is installed, so ``eval -o`` draws its chart."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_outputs(module: EvaluationModule, output_dir: Path) -> list[Path]:
    """Write ``metrics.json``, ``per_class.csv``, ``predictions.npz`` and, with matplotlib,
    ``per_class_ap.png`` (module docstring); returns the paths written.

    The three are written as one set (:func:`~dcls_audio.outputs.atomic_output_set`):
    all into a temporary folder inside ``output_dir``, then renamed into place, so an error, a
    full disk or Ctrl-C leaves the earlier files as they were and no temporary file. Undefined
    numbers (NaN: no class could be scored) are written as JSON ``null``; the JSON is strict.
    """
    summary = {k: _json_number(v) for k, v in module.result.summary().items()}
    text = (
        json.dumps({**summary, **{k: _json_number(v) for k, v in module.info.items()}}, indent=2, allow_nan=False)
        + "\n"
    )
    names = [n for n in OUTPUT_FILES if n != CHART_FILE or chart_available()]
    with atomic_output_set(output_dir, names) as tmp:
        tmp["metrics.json"].write_text(text)
        if CHART_FILE in tmp:
            data = ", ".join(Path(d).name for d in module.info.get("data", []))
            title = f"{module.info.get('model') or 'model'}" + (f" on {data}" if data else "")
            write_per_class_ap_chart(
                tmp[CHART_FILE], module.result.ap.numpy(), [c.display_name for c in module.classes], title
            )
        with open(tmp["per_class.csv"], "w", newline="") as fh:
            _write_per_class(csv.writer(fh), module.result, module.classes)
        with open(tmp["predictions.npz"], "wb") as fh:
            np.savez_compressed(  # a file object: a path without ".npz" would get the suffix added
                fh,
                audio_name=np.array(module.audio_names, dtype=str),
                scores=torch.sigmoid(module.logits.float()).numpy(),
                target=module.targets.numpy().astype(np.uint8),
                index=module.indices.numpy(),
                logits=module.logits.float().numpy(),
            )
    return [output_dir / name for name in names]


def _write_per_class(writer: Any, result: TaggingMetrics, classes: list[ClassInfo]) -> None:
    """The rows of ``per_class.csv``: a header, then one row per class (empty AP/AUC where NaN)."""
    writer.writerow(["index", "mid", "display_name", "AP", "AUC", "d_prime", "positives"])
    columns = zip(result.ap.tolist(), result.auc.tolist(), result.class_d_prime.tolist())
    for info_c, values, positives in zip(classes, columns, result.positives.tolist(), strict=True):
        writer.writerow(
            [
                info_c.index,
                info_c.mid,
                info_c.display_name,
                *("" if math.isnan(v) else f"{v:.6f}" for v in values),
                positives,
            ]
        )


def format_metrics(result: TaggingMetrics) -> str:
    """Human-readable lines of the summary."""
    return "\n".join(
        [
            f"mAP      {result.mAP:.4f}",
            f"mAUC     {result.mAUC:.4f}",
            f"d-prime  {result.d_prime:.4f} (mean of per-class d-primes; {result.d_prime_of_mAUC:.4f} from mAUC)",
            f"clips    {result.num_clips}",
            f"classes  {result.num_classes_scored} scored of {result.num_classes} ({result.exclusion_note()})",
        ]
    )
