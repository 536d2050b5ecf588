"""LightningDataModule over AudioSet clips: HDF5 files (PANNs int16, or FLAC/Opus bytes written by
``dcls-audio pack --codec``; the codec is read from each file) or one folder of litdata shards
(``pack --shards``; a bucket URL works through litdata's remote support) per split.

Distribution is handled here, not by Lightning: the train loader uses
:class:`~dcls_audio.data.samplers.UniformSampler` or ``BalancedSampler`` and the evaluation
loaders :class:`~dcls_audio.data.samplers.EvalShardSampler`, each built with the rank and world
size read from the attached trainer (``trainer.global_rank``, ``trainer.world_size``; 0 and 1
without a trainer). These samplers are ``DistributedSampler`` subclasses, so Lightning keeps
them whatever ``use_distributed_sampler`` says; ``Trainer(use_distributed_sampler=False)``
states the intent. Lightning calls ``set_epoch`` on the train sampler each epoch. Evaluation
shards are contiguous and may differ in length by one clip: every clip is seen exactly once.

Batches are dicts: ``waveform`` int16 (B, 320000), ``target`` float32 (B, C), ``index`` int64
(B,), ``audio_name`` list[str]; each is read from the HDF5 files in one go
(:meth:`AudioSetHDF5.__getitems__`).

Loader settings left as None are chosen from the machine by :func:`auto_loader_settings`: the
CPU cores this process may use (``os.sched_getaffinity``) shared by the devices of this node.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import UsageError
from .classes import ClassInfo, display_names, mids, resolve_class_names
from .constants import CLIP_SAMPLES
from .hdf5_dataset import (
    AudioSetHDF5,
    PathLike,
    as_path_list,
    check_files_exist,
    collate_clips,
    common_num_classes,
)
from .samplers import (
    BalancedSampler,
    EvalShardSampler,
    UniformSampler,
    balanced_clip_weights,
)
from .shards import AudioSetShards, is_shard_location

__all__ = [
    "AudioSetDataModule",
    "LoaderSettings",
    "MAX_AUTO_WORKERS",
    "SAMPLERS",
    "auto_loader_settings",
    "available_cores",
]

log = logging.getLogger(__name__)

SAMPLERS = ("uniform", "balanced")
#: at most this many loader workers per device when chosen automatically
MAX_AUTO_WORKERS = 12


@dataclass(frozen=True)
class LoaderSettings:
    """DataLoader settings of one process (one device)."""

    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    prefetch_factor: int | None


def available_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def auto_loader_settings(
    num_workers: int | None = None,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = None,
    devices_per_node: int = 1,
    accelerator: str = "cpu",
    cores: int | None = None,
) -> LoaderSettings:
    """Fill the unset (None) loader settings from the machine.

    Workers: the cores of this node shared by its ``devices_per_node`` processes, one left for
    the process itself, at most :data:`MAX_AUTO_WORKERS`; on the CPU accelerator half of that
    (the training itself needs the cores). Pinned memory: on CUDA only. Persistent workers: when
    there are workers. Prefetch: 4 batches per worker (2 with 8 or more workers), None without
    workers.
    """
    cores = available_cores() if cores is None else cores
    share = max(1, cores // max(1, devices_per_node))
    if num_workers is None:
        workers = share - 1 if accelerator != "cpu" else share // 2
        num_workers = max(0, min(MAX_AUTO_WORKERS, workers))
    if pin_memory is None:
        pin_memory = accelerator in ("cuda", "gpu")
    if persistent_workers is None:
        persistent_workers = True
    persistent_workers = bool(persistent_workers) and num_workers > 0
    if num_workers == 0:
        prefetch_factor = None
    elif prefetch_factor is None:
        prefetch_factor = 2 if num_workers >= 8 else 4
    return LoaderSettings(num_workers, bool(pin_memory), persistent_workers, prefetch_factor)


_SPLITS = ("train", "val", "test", "predict")


def _locations(files, argument: str) -> list:
    """Paths, keeping bucket URLs (``s3://...``) as strings (a Path would fold their ``//``)."""
    if isinstance(files, str) and is_shard_location(files) and not Path(files).exists():
        return [files]
    if isinstance(files, (list, tuple)):
        return [f if isinstance(f, str) and "://" in f else Path(f) for f in files]
    return as_path_list(files, argument)


def _check_locations(locations: list, argument: str) -> None:
    """HDF5 files must exist; a shard folder or URL must be the split's only entry."""
    shards = [loc for loc in locations if is_shard_location(loc)]
    if shards and len(locations) > 1:
        raise UsageError(f"{argument}: a shard folder ({shards[0]}) must be the split's only entry")
    if not shards:
        check_files_exist(locations, argument)


def _common_num_classes(locations: list, clip_samples: int) -> int:
    """The class count of all the splits' files and shard folders (ValueError naming a misfit)."""
    hdf5 = [loc for loc in locations if not is_shard_location(loc)]
    counts = [(hdf5[0], common_num_classes(hdf5, clip_samples))] if hdf5 else []
    for loc in locations:
        if loc not in hdf5:
            counts.append((loc, AudioSetShards(loc, clip_samples=clip_samples).num_classes))
    for loc, count in counts[1:]:
        if count != counts[0][1]:
            raise UsageError(f"{loc}: has {count} classes but {counts[0][0]} has {counts[0][1]}")
    return counts[0][1]


class AudioSetDataModule(L.LightningDataModule):
    """Train/val/test/predict loaders over HDF5 files (see the module docstring).

    Args:
        train_files, val_files, test_files, predict_files: one path or a list of paths each;
            several files of a split are concatenated.
        class_csv: class-name CSV (``index,mid,display_name``); default AudioSet's when the
            files have 527 classes, generic names otherwise.
        batch_size: per device. ``eval_batch_size`` defaults to it.
        num_workers, pin_memory, persistent_workers, prefetch_factor: loader settings; None:
            chosen from the machine and the attached trainer (:func:`auto_loader_settings`).
        sampler: "uniform" (upstream) or "balanced" (inverse label frequency).
        samples_per_epoch: clips drawn per epoch over all ranks (default: the train set size).
    """

    def __init__(
        self,
        train_files: PathLike | Sequence[PathLike] | None = None,
        val_files: PathLike | Sequence[PathLike] | None = None,
        test_files: PathLike | Sequence[PathLike] | None = None,
        predict_files: PathLike | Sequence[PathLike] | None = None,
        class_csv: PathLike | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool | None = None,
        prefetch_factor: int | None = None,
        sampler: str = "uniform",
        seed: int = 0,
        samples_per_epoch: int | None = None,
        balance_prior: float = 0.0,
        drop_last: bool = True,
        clip_samples: int = CLIP_SAMPLES,
    ) -> None:
        super().__init__()
        self.files: dict[str, list[Path]] = {
            "train": _locations(train_files, "train_files"),
            "val": _locations(val_files, "val_files"),
            "test": _locations(test_files, "test_files"),
            "predict": _locations(predict_files, "predict_files"),
        }
        for split, paths in self.files.items():
            _check_locations(paths, f"{split}_files")
        if not any(self.files.values()):
            raise UsageError("AudioSetDataModule: give at least one of train/val/test/predict_files")
        if class_csv is not None and not Path(class_csv).is_file():
            raise FileNotFoundError(f"class_csv: file not found: {class_csv}")
        if sampler not in SAMPLERS:
            raise UsageError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size or 1)):
            if not isinstance(value, int) or value <= 0:
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
        if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 0):
            raise UsageError(f"num_workers must be an integer >= 0 or None (automatic), got {num_workers!r}")
        if prefetch_factor is not None and (not isinstance(prefetch_factor, int) or prefetch_factor < 1):
            raise UsageError(f"prefetch_factor must be a positive integer or None (automatic), got {prefetch_factor!r}")
        if samples_per_epoch is not None and samples_per_epoch <= 0:
            raise UsageError(f"samples_per_epoch must be positive, got {samples_per_epoch}")
        self.save_hyperparameters(logger=False)
        self.class_csv = class_csv
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.requested_loader = dict(
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            prefetch_factor=prefetch_factor,
        )
        self.sampler = sampler
        self.seed = seed
        self.samples_per_epoch = samples_per_epoch
        self.balance_prior = balance_prior
        self.drop_last = drop_last
        self.clip_samples = clip_samples
        self.datasets: dict[str, AudioSetHDF5] = {}
        self._classes: list[ClassInfo] | None = None
        self._balance_weights: np.ndarray | None = None
        self._resume_position: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    # ------------------------------------------------------------------ classes
    @property
    def classes(self) -> list[ClassInfo]:
        """Class list of the data; every split's files must agree on the class count."""
        if self._classes is None:
            paths = [path for split in _SPLITS for path in self.files[split]]
            num_classes = _common_num_classes(paths, self.clip_samples)
            self._classes = resolve_class_names(
                num_classes, self.class_csv, data_source=f"{paths[0]}: dataset 'target'"
            )
        return self._classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    class_names = property(lambda self: display_names(self.classes))
    class_mids = property(lambda self: mids(self.classes))

    # ------------------------------------------------------------------ setup
    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _dataset(self, split: str) -> AudioSetHDF5:
        if split not in self.datasets:
            if not self.files[split]:
                raise UsageError(f"AudioSetDataModule: no {split}_files given")
            _ = self.classes  # check class counts agree across splits first
            files = self.files[split]
            if is_shard_location(files[0]):
                self.datasets[split] = AudioSetShards(files[0], self.class_csv, self.clip_samples)
            else:
                self.datasets[split] = AudioSetHDF5(files, self.class_csv, self.clip_samples)
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        wanted = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("predict",),
            None: _SPLITS,
        }[stage]
        for split in wanted:
            if self.files[split]:
                self._dataset(split)

    # ------------------------------------------------------------------ loaders
    def loader_settings(self) -> LoaderSettings:
        """The loader settings: those given, the rest chosen for this machine and trainer."""
        trainer = self.trainer
        devices, accelerator = 1, "cpu"
        if trainer is not None:
            devices = max(1, int(getattr(trainer, "num_devices", 1) or 1))
            kind = type(getattr(trainer, "accelerator", None)).__name__
            accelerator = kind.replace("Accelerator", "").lower() if kind.endswith("Accelerator") else "cpu"
        elif self.requested_loader["num_workers"] is None or self.requested_loader["pin_memory"] is None:
            import torch  # no trainer: judge by what this process could train on

            accelerator = "cuda" if torch.cuda.is_available() else "cpu"
            devices = max(1, torch.cuda.device_count()) if accelerator == "cuda" else 1
        return auto_loader_settings(**self.requested_loader, devices_per_node=devices, accelerator=accelerator)

    @property
    def num_workers(self) -> int:
        return self.loader_settings().num_workers

    @property
    def pin_memory(self) -> bool:
        return self.loader_settings().pin_memory

    @property
    def persistent_workers(self) -> bool:
        return self.loader_settings().persistent_workers

    def _loader(self, dataset: AudioSetHDF5, sampler, batch_size: int, drop_last: bool) -> DataLoader:
        settings = self.loader_settings()
        if isinstance(dataset, AudioSetHDF5):
            # PCM rows are read by the pin-memory thread straight into the pinned batch (one copy
            # instead of three: contiguous_rows.PendingRows); the loader pins only with a GPU
            dataset.defer_pcm_reads = settings.pin_memory and torch.cuda.is_available()
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=settings.num_workers,
            pin_memory=settings.pin_memory,
            persistent_workers=settings.persistent_workers,
            prefetch_factor=settings.prefetch_factor,
            drop_last=drop_last,
            collate_fn=collate_clips,
        )

    def train_sampler(self) -> UniformSampler | BalancedSampler:
        """The train sampler for this rank (built from the trainer's rank and world size)."""
        dataset = self._dataset("train")
        rank, world = self._rank_and_world()
        kwargs = dict(
            num_replicas=world,
            rank=rank,
            seed=self.seed,
            samples_per_epoch=self.samples_per_epoch,
            drop_last=self.drop_last,
        )
        if self.sampler == "balanced":
            if self._balance_weights is None:
                self._balance_weights = balanced_clip_weights(dataset.iter_targets(), self.balance_prior)
            return BalancedSampler(self._balance_weights, **kwargs)
        return UniformSampler(len(dataset), **kwargs)

    def train_dataloader(self) -> DataLoader:
        sampler = self.train_sampler()
        sampler.progress = self._train_progress
        return self._loader(self._dataset("train"), sampler, self.batch_size, drop_last=True)

    def _train_progress(self) -> tuple[int, int]:
        """(epoch, clips of it this rank already trained on) of the checkpoint the run resumed
        from ((-1, 0) if none). Read from the checkpoint (:meth:`load_state_dict`), not from
        the trainer's loops: with loader workers the sampler is read when the loader's iterator
        is made, which can come before Lightning restores its loops."""
        if self._resume_position is None:
            return -1, 0
        epoch, batches = self._resume_position
        return epoch, batches * self.batch_size

    def state_dict(self) -> dict:
        """Saved in every checkpoint: the epoch and the batches of it trained so far."""
        trainer = self.trainer
        if trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"train_position": [int(trainer.current_epoch), int(done)]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restored by Lightning before the loaders are built (see :meth:`_train_progress`)."""
        position = state_dict.get("train_position")
        self._resume_position = (int(position[0]), int(position[1])) if position else None

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self._dataset(split)
        rank, world = self._rank_and_world()
        sampler = EvalShardSampler(len(dataset), num_replicas=world, rank=rank)
        return self._loader(dataset, sampler, self.eval_batch_size, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")

    def teardown(self, stage: str | None = None) -> None:
        for dataset in self.datasets.values():
            dataset.close()
