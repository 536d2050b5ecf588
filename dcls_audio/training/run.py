"""``dcls-audio train``: run directories, the Trainer and its callbacks, resume, interrupts.

A run lives in ``<run.output_dir>/<run.name>/version_N/`` with ``config.yaml``,
``checkpoints/last.ckpt`` (end of each epoch, every ``run.checkpoint_every_n_steps`` steps and
on SIGINT/SIGTERM), ``checkpoints/best-*.ckpt`` (best ``val/mAP``; ``best-ema-*`` for
``val/mAP_ema``), ``tensorboard/`` logs, ``csv/version_K/metrics.csv`` (one per start or
resume), and ``finished`` once training ended.
Starting again with the same name continues the newest unfinished version from its
``last.ckpt`` (``run.auto_resume``); ``resume=PATH`` continues any checkpoint. A checkpoint
taken inside an epoch continues that epoch's clip order after the batches it had trained on
(the train sampler asks the trainer's progress when the epoch's iteration starts).

Checkpoints are written to a temporary file and renamed, so a run killed at any moment keeps
its previous checkpoint intact. A first SIGINT (Ctrl-C) or a SIGTERM stops at the end of the
current training batch (or after the current validation) and writes ``last.ckpt``; a second
SIGINT aborts at once.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..data import AudioSetDataModule, ensure_demo_data
from ..models.checkpoint import shorten_keys
from ..outputs import atomic_output, ensure_writable_dir
from .config import ConfigError, TrainConfig, dump_config
from .module import AudioTaggingModule, NonFiniteLossError
from .optim import scaled_lr

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

RUN_DIR_ENV = "DCLS_AUDIO_RUN_DIR"  # hands rank 0's run directory to re-launched DDP ranks
FINISHED_MARKER = "finished"
LAST_CHECKPOINT = "last.ckpt"


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


@rank_zero_only
def _say(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------- run directory
def _versions(root: Path) -> list[Path]:
    found = [p for p in root.glob("version_*") if p.is_dir() and p.name[8:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[8:]))


def resolve_run_dir(
    output_dir: str | Path, name: str, auto_resume: bool, resume: str | Path | None
) -> tuple[Path, Path | None]:
    """Pick the run directory and the checkpoint to resume from.

    ``resume`` given: the run directory holding it (``<run>/checkpoints/x.ckpt``), else a new
    version. Otherwise, with ``auto_resume``, the newest version without a ``finished`` marker
    (resuming from its ``last.ckpt`` when there is one); else a new version.
    Returns ``(run_dir, checkpoint or None)``.
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    root = Path(output_dir) / name
    if resume is not None:
        ckpt = Path(resume)
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: checkpoint not found: {ckpt}")
        if ckpt.parent.name == "checkpoints" and (ckpt.parent.parent / "config.yaml").is_file():
            return ckpt.parent.parent, ckpt
        run_dir = Path(inherited) if inherited else _new_version(root)
        return run_dir, ckpt
    if inherited:
        run_dir = Path(inherited)
    else:
        versions = _versions(root) if root.is_dir() else []
        unfinished = versions and not (versions[-1] / FINISHED_MARKER).exists()
        run_dir = versions[-1] if auto_resume and unfinished else _new_version(root)
    last = run_dir / "checkpoints" / LAST_CHECKPOINT
    return run_dir, (last if auto_resume and last.is_file() else None)


def _new_version(root: Path) -> Path:
    versions = _versions(root) if root.is_dir() else []
    number = int(versions[-1].name[8:]) + 1 if versions else 0
    return root / f"version_{number}"


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
    computed from part of the set. This callback then saves the checkpoint. A second SIGINT
    raises KeyboardInterrupt at once. Lightning's handler runs at most once per process: under
    DDP rank 0 also sends SIGTERM to the other ranks, which may have had a signal of their own.
    """

    def __init__(self, checkpoint_path: Path) -> None:
        self.checkpoint_path = checkpoint_path
        self._lightning_sigterm: Any = None
        self._previous: dict[int, Any] = {}
        self._deferred = False
        self._forwarded = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._deferred = self._forwarded = False
        self._lightning_sigterm = signal.getsignal(signal.SIGTERM)
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle(trainer))
        except ValueError:  # not the main thread: leave signal handling alone
            self._previous.clear()

    def _handle(self, trainer: L.Trainer):
        def handler(signum: int, frame: Any) -> None:
            if signum == signal.SIGINT:
                signal.signal(signal.SIGINT, signal.default_int_handler)  # a second one aborts
                _say(
                    "\nInterrupt: stopping after this step and saving a checkpoint "
                    "(press Ctrl-C again to abort without saving)"
                )
            if trainer.validating:
                self._deferred = True
            else:
                self._forward(frame)

        return handler

    def _forward(self, frame: Any) -> None:
        """Hand the stop to Lightning's SIGTERM handler, once: a second call would start its
        stop (and, on rank 0, its signals to the other ranks) again."""
        if self._forwarded:
            return
        self._forwarded = True
        if callable(self._lightning_sigterm):
            self._lightning_sigterm(signal.SIGTERM, frame)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._deferred:
            self._deferred = False
            self._forward(None)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
        if isinstance(exception, SIGTERMException) and not trainer.sanity_checking:
            trainer.save_checkpoint(self.checkpoint_path)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


# ----------------------------------------------------------------------------- building
def build_datamodule(cfg: TrainConfig) -> tuple[AudioSetDataModule, list[str]]:
    """The DataModule of ``cfg.data`` (demo data when no files are given), checked up front.

    Returns ``(datamodule, val_files)``. Missing files or a wrong HDF5 layout raise here,
    before any training work.
    """
    data = cfg.data
    train_files, val_files = list(data.train_files), list(data.val_files)
    if not train_files:
        _say("No data.train_files given: using the built-in demo data (generated on first use)")
        train_h5, eval_h5 = ensure_demo_data()
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
    return dm, val_files


def _trainer_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    kwargs = dict(vars(cfg.trainer))
    del kwargs["progress_bar_refresh_rate"]  # a callback's setting (see _callbacks)
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
    """``last.ckpt`` at each epoch end (after its validation) and every n steps; best by val/mAP;
    the progress bar (updated every ``trainer.progress_bar_refresh_rate`` batches: reading the
    loss for it waits for the device)."""
    callbacks: list[Callback] = [
        _last_checkpoint(ckpt_dir, save_on_train_epoch_end=True),
        LearningRateMonitor(logging_interval="step"),
    ]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=cfg.trainer.progress_bar_refresh_rate))
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
    return callbacks, best


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
        raise ValueError(f"cannot resume from {path}: not a readable training checkpoint ({err})") from None
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

    Raises:
        ConfigError / FileNotFoundError / ValueError / OSError: bad config, data or output dir (before
            any training work).
        TrainingStopped: non-finite loss (the last good checkpoint is kept).
        OSError: a checkpoint or log could not be written (disk full, permissions).
    """
    dm, val_files = build_datamodule(cfg)
    num_classes = dm.num_classes
    if cfg.model.num_classes is not None and cfg.model.num_classes != num_classes:
        raise ConfigError(f"model.num_classes is {cfg.model.num_classes} but the data has {num_classes} classes")
    auto_resume = cfg.run.auto_resume and not cfg.trainer.fast_dev_run
    run_dir, resume_from = resolve_run_dir(cfg.run.output_dir, cfg.run.name, auto_resume, resume)
    ensure_writable_dir(run_dir, "run.output_dir")
    ckpt_dir = run_dir / "checkpoints"

    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    own_callbacks, best = _callbacks(cfg, ckpt_dir, has_val=bool(val_files))
    stopper = StopOnSignal(ckpt_dir / LAST_CHECKPOINT)
    loggers = [
        TensorBoardLogger(save_dir=run_dir, name="tensorboard", version=""),
        CSVLogger(save_dir=run_dir, name="csv"),  # csv/version_K: one file per (re)start
    ]
    trainer = L.Trainer(
        **_trainer_kwargs(cfg),
        default_root_dir=run_dir,
        logger=loggers,
        callbacks=[*own_callbacks, stopper, *callbacks],
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # the DataModule shards by rank itself
    )
    total_batch = cfg.data.batch_size * cfg.trainer.accumulate_grad_batches * trainer.world_size
    lr = scaled_lr(cfg.optim.lr, total_batch, cfg.optim.lr_batch_size)
    module = build_module(cfg, num_classes, dm.class_names, dm.class_mids, lr)
    if resume_from is not None:
        _check_resumable(resume_from, module)
    if cfg.model.init_checkpoint and resume_from is None:
        _say(module.load_initial_weights(cfg.model.init_checkpoint, cfg.model.init_checkpoint_ema))
    if trainer.is_global_zero:
        (run_dir / "config.yaml").write_text(dump_config(cfg))
    scaling = f" ({cfg.optim.lr:g} x {total_batch}/{cfg.optim.lr_batch_size})" if cfg.optim.lr_batch_size else ""
    _say(f"Run directory: {run_dir}")
    _say(
        f"Model {cfg.model.name}: {sum(p.numel() for p in module.net.parameters()):,} parameters, "
        f"{num_classes} classes; total batch {total_batch}, peak lr {lr:.3g}{scaling}"
    )
    if resume_from is not None:
        _say(f"Resuming from {resume_from}")

    interrupted = False
    os.environ[RUN_DIR_ENV] = str(run_dir)  # for DDP ranks that Lightning re-launches during fit
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=resume_from)
    except SIGTERMException:
        interrupted = True
    except NonFiniteLossError as err:
        last = ckpt_dir / LAST_CHECKPOINT
        keep = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
        raise TrainingStopped(f"{err}; training stopped, {keep}") from None
    finally:
        os.environ.pop(RUN_DIR_ENV, None)
    interrupted = interrupted or trainer.interrupted
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
    )


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
