"""``dcls-audio train``: run directories, the Trainer and its callbacks, resume, interrupts.

A run lives in ``<run.output_dir>/<run.name>/version_N/`` with ``config.yaml``,
``checkpoints/last.ckpt`` (end of each epoch, every ``run.checkpoint_every_n_steps`` steps and
on SIGINT/SIGTERM), ``checkpoints/best-*.ckpt`` (best ``val/mAP``; ``best-ema-*`` for
``val/mAP_ema``), ``tensorboard/`` logs, ``csv/version_K/metrics.csv`` (one per start or
resume), and ``finished`` once training ended.
Starting again with the same name continues the newest unfinished version from its
``last.ckpt`` (``run.auto_resume``); ``resume=PATH`` continues any checkpoint (in its own run
directory only when it is that run's ``last.ckpt``, else in a new version). A run directory has
one owner: the process training it holds a lock on it (:mod:`.run_dir`). A checkpoint taken
inside an epoch continues that epoch's clip order after the batches it had trained on (the
train sampler asks the trainer's progress when the epoch's iteration starts). A run stopped or
killed at any point and resumed trains the batches an uninterrupted run trains, in its order.

Checkpoints are written to a temporary file and renamed, so a run killed at any moment keeps
its previous checkpoint intact. A first SIGINT (Ctrl-C) or a SIGTERM stops at the end of the
current training batch (or after the current validation) and writes ``last.ckpt``; a second
SIGINT aborts at once (exit status 130).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..data import AudioSetDataModule, ensure_demo_data
from ..data.datamodule import auto_loader_settings
from ..errors import UsageError
from ..models.checkpoint import shorten_keys
from ..outputs import atomic_output, ensure_writable_dir
from .config import ConfigError, TrainConfig, dump_config
from .epoch_report import EpochReport
from .loggers import build_loggers, finish_loggers
from .module import AudioTaggingModule, NonFiniteLossError
from .optim import scaled_lr
from .progress import TrainProgressBar
from .run_dir import (
    FINISHED_MARKER,
    LAST_CHECKPOINT,
    RESUME_ENV,
    RUN_DIR_ENV,
    RunClaim,
    claim_run_dir,
    release_claim,
    resolve_run_dir,
)
from .stop_agreement import StopAgreement
from .threads import set_cpu_training_threads
from .validation_figures import ValidationFigures

__all__ = [
    "TrainResult",
    "TrainingStopped",
    "build_datamodule",
    "build_module",
    "print_summary",
    "resolve_run_dir",
    "summary_lines",
    "train",
]

#: exit status of an aborted run (128 + SIGINT, as a shell reports it)
EXIT_ABORTED = 130


class TrainingStopped(RuntimeError):
    """Training stopped before its end for a reason the user must see (message says why)."""


@dataclass
class TrainResult:
    """Where a run's outputs are and how it ended."""

    run_dir: Path
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    best_score: float | None
    global_step: int
    epoch: int
    interrupted: bool
    val_files: list[str]
    #: training rows left out because they did not decode (FLAC/Opus files, shards)
    undecodable_rows: int = 0


@rank_zero_only
def _say(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------- callbacks
class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, then renames it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        try:
            with atomic_output(path) as tmp:
                torch.save(checkpoint, tmp)
        except OSError as err:
            raise OSError(err.errno, f"cannot write checkpoint {path}: {err.strerror or err}") from err


class StopOnSignal(Callback):
    """SIGINT/SIGTERM -> stop cleanly and write ``last.ckpt``.

    The first signal is handed to Lightning's SIGTERM handling, which stops at the end of the
    current training batch (the weights and loop counters agree there); a signal that arrives
    during validation waits until the validation ends, so validation metrics are never
    computed from part of the set. This callback then saves the checkpoint, unless the stop
    came once the epoch had ended: its end-of-epoch ``last.ckpt`` is then the one to resume
    from (a second save would record the next epoch as begun with the last one's batch count,
    and a resumed run would skip it). A second SIGINT ends the process at once with one line
    and exit status 130 (no checkpoint; the previous ``last.ckpt`` stays, and a half-written
    temporary is removed when the run is started again). Lightning's handler runs at most once
    per process.

    With several processes (DDP) the signal only records the request: the ranks agree on it
    through a lagged CPU all-reduce after each training batch (:mod:`.stop_agreement`) and all
    stop after the same step, whichever rank had the signal; Lightning's own per-step device
    broadcast of the flag (a host sync every step) and its collective inside the signal handler
    are left out.
    """

    def __init__(self, checkpoint_path: Path) -> None:
        self.checkpoint_path = checkpoint_path
        self._lightning_sigterm: Any = None
        self._previous: dict[int, Any] = {}
        self._deferred = False
        self._forwarded = False
        self._agreement: StopAgreement | None = None
        self._requested = self._agreed = self._held_for_validation = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # here, not in setup: Lightning installs its SIGTERM handler between the two
        self._deferred = self._forwarded = self._requested = self._agreed = self._held_for_validation = False
        self._agreement = StopAgreement.create() if trainer.world_size > 1 else None
        if self._agreement is not None:
            # Lightning's per-step device broadcast of rank 0's flag: replaced by the agreement
            trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = _no_broadcast
        self._lightning_sigterm = signal.getsignal(signal.SIGTERM)
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle(trainer))
        except ValueError:  # not the main thread: leave signal handling alone
            self._previous.clear()

    def _handle(self, trainer: L.Trainer):
        def handler(signum: int, frame: Any) -> None:
            if signum == signal.SIGINT:
                signal.signal(signal.SIGINT, _abort)  # a second one aborts
                _say(
                    "\nInterrupt: stopping after this step and saving a checkpoint "
                    "(press Ctrl-C again to abort without saving)"
                )
            if self._agreement is not None:
                self._requested = True  # agreed on after a training batch (no collective here)
            elif trainer.validating:
                self._deferred = True
            else:
                self._forward(frame)

        return handler

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._agreement is None:
            return
        self._agreed = self._agreement.step(self._requested) or self._agreed
        if self._agreed and not trainer.fit_loop.epoch_loop._should_accumulate():
            # every rank reads the agreed stop after the same batch and acts on it after the
            # same optimizer step (never inside a gradient-accumulation cycle); Lightning raises
            # its SIGTERMException at the end of this batch, after a validation due here
            trainer._signal_connector.received_sigterm = True
            self._held_for_validation = False

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's evaluation loop stops after its first batch when the flag is set: an
        # agreed stop waits until this validation has run over the whole set (on every rank)
        if self._agreement is not None and not trainer.sanity_checking and trainer.received_sigterm:
            trainer._signal_connector.received_sigterm = False
            self._held_for_validation = True

    def _forward(self, frame: Any) -> None:
        """Hand the stop to Lightning's SIGTERM handler, once: a second call would start its
        stop (and, on rank 0, its signals to the other ranks) again."""
        if self._forwarded:
            return
        self._forwarded = True
        if callable(self._lightning_sigterm):
            self._lightning_sigterm(signal.SIGTERM, frame)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._held_for_validation:
            self._held_for_validation = False
            trainer._signal_connector.received_sigterm = True
        if self._deferred:
            self._deferred = False
            self._forward(None)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
        self._close_agreement()
        if isinstance(exception, SIGTERMException) and not trainer.sanity_checking and not _epoch_ended(trainer):
            trainer.save_checkpoint(self.checkpoint_path, weights_only=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_agreement()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()
        self._close_agreement()

    def _close_agreement(self) -> None:
        if self._agreement is not None:
            self._agreement.close()
            self._agreement = None

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def _no_broadcast() -> None:
    """Stands in for Lightning's per-step SIGTERM broadcast (see :class:`StopOnSignal`)."""


def _abort(signum: int, frame: Any) -> None:
    """A second Ctrl-C: one line, then exit 130 at once (no cleanup that could hang)."""
    try:
        sys.stdout.flush()
        print("\ndcls-audio train: aborted (second Ctrl-C); no checkpoint was written", file=sys.stderr, flush=True)
    finally:
        os._exit(EXIT_ABORTED)


def _epoch_ended(trainer: L.Trainer) -> bool:
    """Whether the fit loop stopped after an epoch ended (its end-of-epoch checkpoint written)
    and before the next one began."""
    progress = trainer.fit_loop.epoch_progress.current
    return progress.completed == progress.started


# ----------------------------------------------------------------------------- building
def build_datamodule(cfg: TrainConfig) -> tuple[AudioSetDataModule, list[str]]:
    """The DataModule of ``cfg.data`` (demo data when no files are given), checked up front.

    Returns ``(datamodule, val_files)``. Missing files or a wrong HDF5 layout raise here,
    before any training work. Rows dropped for an empty ``audio_name`` (clips that failed to
    download) are counted in what is printed, per file.
    """
    data = cfg.data
    train_files, val_files = list(data.train_files), list(data.val_files)
    if not train_files:
        train_h5, eval_h5 = ensure_demo_data()
        _say(f"No data.train_files given: using the built-in demo data in {train_h5.parent} (made on first use)")
        train_files, val_files = [str(train_h5)], [str(eval_h5)]
    dm = AudioSetDataModule(
        train_files=train_files,
        val_files=val_files or None,
        class_csv=data.class_csv,
        batch_size=data.batch_size,
        num_workers=data.num_workers,
        pin_memory=data.pin_memory,
        persistent_workers=data.persistent_workers,
        prefetch_factor=data.prefetch_factor,
        sampler=data.sampler,
        samples_per_epoch=data.samples_per_epoch,
        balance_prior=data.balance_prior,
        seed=cfg.run.seed,
    )
    dm.setup("fit")  # opens and checks every file now
    for split, key in (("train", "data.train_files"), ("val", "data.val_files")):
        for line in dropped_rows_lines(dm.datasets.get(split), key):
            _say(line)
    return dm, val_files


def dropped_rows_lines(dataset: Any, key: str) -> list[str]:
    """One line per file of ``dataset`` (an ``AudioSetHDF5`` or None) that had rows with an
    empty ``audio_name``, which are left out of training and validation."""
    if dataset is None:
        return []
    return [
        f"{key}: {path}: {dropped} row(s) with an empty audio_name (clips that failed to download) left out; "
        f"{total - dropped} used"
        for path, dropped, total in zip(dataset.files, dataset.dropped_per_file, _rows_per_file(dataset))
        if dropped
    ]


def _rows_per_file(dataset: Any) -> list[int]:
    """Rows of each file of an ``AudioSetHDF5``, dropped ones included."""
    return [len(rows) + dropped for rows, dropped in zip(dataset._rows, dataset.dropped_per_file)]


def check_train_batches(dm: AudioSetDataModule, world_size: int) -> None:
    """A train set that gives no full batch per device is an error (the last partial batch of
    an epoch is dropped, so such a run would train 0 steps), naming the files and sizes."""
    dataset = dm.datasets["train"]
    per_epoch = dm.samples_per_epoch or len(dataset)
    per_device = per_epoch // world_size
    if per_device >= dm.batch_size:
        return
    sizes = zip(dataset.files, _rows_per_file(dataset), dataset.dropped_per_file)
    files = ", ".join(f"{path} ({rows - dropped} clips)" for path, rows, dropped in sizes)
    dropped = f", {dataset.num_dropped} rows with an empty audio_name left out" if dataset.num_dropped else ""
    share = f" over {world_size} devices ({per_device} each)" if world_size > 1 else ""
    raise ConfigError(
        f"data.train_files: {per_epoch} training clips per epoch{share}{dropped} give no full batch of "
        f"data.batch_size {dm.batch_size} (an epoch's last partial batch is dropped): {files}. "
        "Lower data.batch_size or give more clips"
    )


def _trainer_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    kwargs = dict(vars(cfg.trainer))
    del kwargs["progress_bar_refresh_rate"]  # a callback's setting (see _callbacks)
    del kwargs["logger"]  # names of loggers, built by build_loggers
    for key in ("limit_train_batches", "limit_val_batches", "val_check_interval", "gradient_clip_val"):
        if kwargs[key] is None:
            del kwargs[key]
    return kwargs


def _last_checkpoint(ckpt_dir: Path, **trigger: Any) -> ModelCheckpoint:
    """Writes ``last.ckpt`` (overwriting it) on the given trigger."""
    return ModelCheckpoint(
        dirpath=ckpt_dir,
        filename=LAST_CHECKPOINT[:-5],
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
        **trigger,
    )


def _callbacks(cfg: TrainConfig, ckpt_dir: Path, has_val: bool) -> tuple[list[Callback], ModelCheckpoint | None]:
    """Best by val/mAP (and val/mAP_ema); ``last.ckpt`` at each epoch end (after its validation
    and the best checkpoints) and every n steps;
    the progress bar (updated every ``trainer.progress_bar_refresh_rate`` batches; its loss is
    a recent one that the device already computed, never waited for)."""
    callbacks: list[Callback] = [
        _last_checkpoint(ckpt_dir, save_on_train_epoch_end=True),
        LearningRateMonitor(logging_interval="step"),
    ]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(TrainProgressBar(refresh_rate=cfg.trainer.progress_bar_refresh_rate))
    if cfg.run.checkpoint_every_n_steps:
        callbacks.append(_last_checkpoint(ckpt_dir, every_n_train_steps=cfg.run.checkpoint_every_n_steps))
    best = None
    if has_val:
        best = ModelCheckpoint(
            dirpath=ckpt_dir,
            monitor="val/mAP",
            mode="max",
            save_top_k=1,
            filename="best-epoch{epoch}-step{step}-mAP{val/mAP:.4f}",
            auto_insert_metric_name=False,
        )
        callbacks.append(best)
        if cfg.ema.enabled:
            callbacks.append(
                ModelCheckpoint(
                    dirpath=ckpt_dir,
                    monitor="val/mAP_ema",
                    mode="max",
                    save_top_k=1,
                    filename="best-ema-epoch{epoch}-step{step}-mAP{val/mAP_ema:.4f}",
                    auto_insert_metric_name=False,
                )
            )
    # the best checkpoints save first, so that a last.ckpt written at the same moment holds
    # their new state: a run resumed from it then replaces this best file, never leaves it behind
    bests = [c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor is not None]
    return [*bests, *(c for c in callbacks if c not in bests)], best


def build_module(
    cfg: TrainConfig, num_classes: int, class_names: list[str], class_mids: list[str], lr: float
) -> AudioTaggingModule:
    """The LightningModule of ``cfg`` with an absolute peak ``lr``."""
    m, o = cfg.model, cfg.optim
    arch = {
        k: getattr(m, k)
        for k in ("layer_scale_init_value", "kernel_count", "dilated_kernel_size", "version", "depths", "dims")
        if getattr(m, k) is not None
    }
    return AudioTaggingModule(
        model_name=m.name,
        num_classes=num_classes,
        model_kwargs={"drop_path_rate": m.drop_path_rate, **arch},
        class_names=class_names,
        class_mids=class_mids,
        **{f.name: getattr(o, f.name) for f in fields(o) if f.name not in ("lr", "lr_batch_size")},
        lr=lr,
        front_end_augment=cfg.augment.front_end,
        mixup_alpha=cfg.augment.mixup_alpha,
        label_smoothing=cfg.augment.label_smoothing,
        ema_decay=cfg.ema.decay if cfg.ema.enabled else None,
        freeze_positions=m.freeze_positions,
        clamp_positions=m.clamp_positions,
        channels_last=m.channels_last,
        compile=m.compile,
        compile_mode=m.compile_mode,
        init_checkpoint=m.init_checkpoint,
        init_checkpoint_ema=m.init_checkpoint_ema,
        seed=cfg.run.seed,
    )


def _check_resumable(path: Path, module: AudioTaggingModule) -> None:
    """The checkpoint to resume must hold tensors of the shapes the config builds."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        shapes = {k: tuple(v.shape) for k, v in saved["state_dict"].items()}
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise UsageError(f"cannot resume from {path}: not a readable training checkpoint ({err})") from None
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if shapes != ours:
        held = (saved.get("hyper_parameters") or {}).get("model_name", "another network")
        differences = "".join(f"\n  {line}" for line in _state_differences(shapes, ours))
        raise ConfigError(
            f"cannot resume from {path}: it holds {held} with other tensors than the config's "
            f"{module.hparams.model_name} builds:{differences}\n"
            "Start a new run (--run.name NAME or --run.auto_resume false) or fine-tune from it "
            "with --model.init_checkpoint"
        )


_BEST_STEP = re.compile(r"^best-(?:ema-)?epoch\d+-step(\d+)-.*\.ckpt$")


def remove_later_best(ckpt_dir: Path, resume_from: Path) -> list[Path]:
    """Delete the ``best-*.ckpt`` files of ``ckpt_dir`` taken at a later step than ``resume_from``.

    A run killed between two ``last.ckpt`` saves may have written a best checkpoint from steps
    that the resumed run trains again; the resumed run does not know that file, and would keep
    it next to its own best. Returns the removed paths.
    """
    try:
        step = int(torch.load(resume_from, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception:  # noqa: BLE001 - a checkpoint without a step removes nothing
        return []
    removed = []
    for path in sorted(ckpt_dir.glob("best-*.ckpt")):
        match = _BEST_STEP.match(path.name)
        if match and int(match.group(1)) > step:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _state_differences(saved: dict[str, tuple[int, ...]], ours: dict[str, tuple[int, ...]]) -> list[str]:
    """The missing, unexpected and other-shape keys of a checkpoint's state dict, each list shortened."""
    missing = [k for k in ours if k not in saved]
    unexpected = [k for k in saved if k not in ours]
    reshaped = [f"{k} {saved[k]} vs {ours[k]}" for k in ours if k in saved and saved[k] != ours[k]]
    named = (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("other shapes, checkpoint vs config", reshaped),
    )
    return [f"{what} ({len(keys)}): {shorten_keys(keys)}" for what, keys in named if keys]


# ----------------------------------------------------------------------------- train
def train(cfg: TrainConfig, resume: str | Path | None = None, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train as ``cfg`` says; resume from ``resume`` or the run directory's ``last.ckpt``.

    ``callbacks``: extra Lightning callbacks for this run.

    The run directory is locked for this process until the function returns (:mod:`.run_dir`).

    Raises:
        ConfigError / FileNotFoundError / ValueError / OSError: bad config, data or output dir (before
            any training work); ``RunDirInUse`` (an OSError): ``resume`` is the ``last.ckpt`` of a run
            that another process is training.
        TrainingStopped: non-finite loss (the last good checkpoint is kept).
        OSError: a checkpoint or log could not be written (disk full, permissions).
    """
    if resume is not None and not Path(resume).is_file():  # before the demo data or a run folder is made
        raise FileNotFoundError(f"--resume: checkpoint not found: {resume}")
    dm, val_files = build_datamodule(cfg)
    num_classes = dm.num_classes
    if cfg.model.num_classes is not None and cfg.model.num_classes != num_classes:
        raise ConfigError(f"model.num_classes is {cfg.model.num_classes} but the data has {num_classes} classes")
    check_train_batches(dm, world_size=1)  # the device count is checked again once the trainer is built
    auto_resume = cfg.run.auto_resume and not cfg.trainer.fast_dev_run
    ensure_writable_dir(cfg.run.output_dir, "run.output_dir")
    claim = claim_run_dir(cfg.run.output_dir, cfg.run.name, auto_resume, resume)
    threads = torch.get_num_threads()  # CPU training may lower it (threads.py); restored after
    try:
        return _train_in(cfg, claim, dm, val_files, callbacks)
    except BaseException:
        _discard_if_unused(claim)
        raise
    finally:
        release_claim(claim, cfg.run.output_dir, cfg.run.name)
        torch.set_num_threads(threads)


def _discard_if_unused(claim: RunClaim) -> None:
    """Remove a new run directory that an error left with nothing in it but its lock file."""
    if claim.lock is None or claim.resume_from is not None:
        return
    try:
        if {p.name for p in claim.run_dir.iterdir()} <= {".lock"}:
            (claim.run_dir / ".lock").unlink(missing_ok=True)
            claim.run_dir.rmdir()
    except OSError:
        pass


def _train_in(
    cfg: TrainConfig, claim: RunClaim, dm: AudioSetDataModule, val_files: list[str], callbacks: Sequence[Callback]
) -> TrainResult:
    """:func:`train` in the claimed run directory."""
    run_dir, resume_from = claim.run_dir, claim.resume_from
    ensure_writable_dir(run_dir, "run.output_dir")
    ckpt_dir = run_dir / "checkpoints"
    num_classes = dm.num_classes

    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    own_callbacks, best = _callbacks(cfg, ckpt_dir, has_val=bool(val_files))
    stopper = StopOnSignal(ckpt_dir / LAST_CHECKPOINT)
    loggers = build_loggers(cfg.trainer.logger, run_dir, cfg.run.name)
    reports = [EpochReport(), ValidationFigures(dm.class_names)] if val_files else []
    try:
        trainer = L.Trainer(
            **_trainer_kwargs(cfg),
            default_root_dir=run_dir,
            logger=loggers,
            callbacks=[*own_callbacks, *reports, stopper, *callbacks],
            plugins=[AtomicCheckpointIO()],
            use_distributed_sampler=False,  # the DataModule shards by rank itself
        )
    except (ValueError, MisconfigurationException) as err:  # Lightning's checks of the trainer.* values
        raise ConfigError(f"trainer.*: {err}") from None
    check_train_batches(dm, trainer.world_size)
    if isinstance(trainer.accelerator, CPUAccelerator):
        workers = auto_loader_settings(**dm.requested_loader, devices_per_node=trainer.num_devices).num_workers
        set_cpu_training_threads(workers, processes=trainer.num_devices)
    total_batch = cfg.data.batch_size * cfg.trainer.accumulate_grad_batches * trainer.world_size
    lr = scaled_lr(cfg.optim.lr, total_batch, cfg.optim.lr_batch_size)
    module = build_module(cfg, num_classes, dm.class_names, dm.class_mids, lr)
    if resume_from is not None:
        _check_resumable(resume_from, module)
        if trainer.is_global_zero and resume_from.parent.resolve() == ckpt_dir.resolve():
            for path in remove_later_best(ckpt_dir, resume_from):
                _say(f"Note: removed {path}: written after {resume_from.name} by the run being resumed")
    if cfg.model.init_checkpoint and resume_from is None:
        _say(module.load_initial_weights(cfg.model.init_checkpoint, cfg.model.init_checkpoint_ema))
    if trainer.is_global_zero:
        with atomic_output(run_dir / "config.yaml") as tmp:
            tmp.write_text(dump_config(cfg))
        (run_dir / FINISHED_MARKER).unlink(missing_ok=True)  # a finished run resumed goes on
    scaling = f" ({cfg.optim.lr:g} x {total_batch}/{cfg.optim.lr_batch_size})" if cfg.optim.lr_batch_size else ""
    if claim.note:
        _say(f"Note: {claim.note}")
    _say(f"Run directory: {run_dir}")
    _say(
        f"Model {cfg.model.name}: {sum(p.numel() for p in module.net.parameters()):,} parameters, "
        f"{num_classes} classes; total batch {total_batch}, peak lr {lr:.3g}{scaling}"
    )
    if resume_from is not None:
        _say(f"Resuming from {resume_from}")

    interrupted = False
    os.environ[RUN_DIR_ENV] = str(run_dir)  # for DDP ranks that Lightning re-launches during fit
    os.environ[RESUME_ENV] = str(resume_from or "")
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=resume_from)
    except SIGTERMException:
        interrupted = not _fit_done(trainer)  # a stop after the last epoch's end: finished
    except NonFiniteLossError as err:
        last = ckpt_dir / LAST_CHECKPOINT
        keep = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
        raise TrainingStopped(f"{err}; training stopped, {keep}") from None
    finally:
        os.environ.pop(RUN_DIR_ENV, None)
        os.environ.pop(RESUME_ENV, None)
        finish_loggers(loggers)
    interrupted = interrupted or (trainer.interrupted and not _fit_done(trainer))
    last = ckpt_dir / LAST_CHECKPOINT
    if not interrupted and trainer.is_global_zero and not cfg.trainer.fast_dev_run:
        (run_dir / FINISHED_MARKER).write_text(f"step {trainer.global_step}\n")
    best_path = Path(best.best_model_path) if best is not None and best.best_model_path else None
    best_score = float(best.best_model_score) if best is not None and best.best_model_score is not None else None
    return TrainResult(
        run_dir=run_dir,
        last_checkpoint=last if last.is_file() else None,
        best_checkpoint=best_path,
        best_score=best_score,
        global_step=trainer.global_step,
        epoch=trainer.current_epoch,
        interrupted=interrupted,
        val_files=val_files,
        undecodable_rows=module.undecodable_rows,
    )


def _fit_done(trainer: L.Trainer) -> bool:
    """Whether training reached its end: ``max_steps`` steps or ``max_epochs`` completed epochs
    (a stop asked for after the last epoch ended finished the run)."""
    loop = trainer.fit_loop
    if loop.max_steps not in (None, -1) and trainer.global_step >= loop.max_steps:
        return True
    return loop.max_epochs not in (None, -1) and loop.epoch_progress.current.completed >= loop.max_epochs


def print_summary(result: TrainResult) -> None:
    """Print :func:`summary_lines` (rank 0 only)."""
    for line in summary_lines(result):
        _say(line)


def summary_lines(result: TrainResult) -> list[str]:
    """What to print at the end of a run: where the checkpoints are and how to use them."""
    lines = []
    if result.interrupted:
        lines.append(f"Interrupted at step {result.global_step}; checkpoint: {result.last_checkpoint}")
        lines.append(f"Continue with: dcls-audio train ... --resume {result.last_checkpoint}")
        return lines
    ckpt = result.best_checkpoint or result.last_checkpoint
    score = f" (val/mAP {result.best_score:.4f})" if result.best_score is not None else ""
    lines.append(f"Training done: {result.epoch} epochs, {result.global_step} steps. Run: {result.run_dir}")
    if result.undecodable_rows:
        lines.append(f"{result.undecodable_rows} training row(s) did not decode and were left out (warnings name them)")
    if ckpt is None:
        lines.append("No checkpoint was written (fast_dev_run).")
        return lines
    lines.append(f"Best checkpoint{score}: {ckpt}")
    data = " ".join(result.val_files) if result.val_files else "EVAL.h5"
    lines.append(
        f"Evaluate it:  dcls-audio eval --checkpoint {ckpt} --data {data} --output-dir {result.run_dir / 'eval'}"
    )
    lines.append(f"Tag audio:    dcls-audio infer --checkpoint {ckpt} AUDIO_FILE ...")
    lines.append(f"TensorBoard:  tensorboard --logdir {result.run_dir}")
    return lines
