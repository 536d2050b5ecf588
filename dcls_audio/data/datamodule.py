"""LightningDataModule over PANNs-layout HDF5 files.

Distribution is handled here, not by Lightning: the train loader uses
:class:`~dcls_audio.data.samplers.UniformSampler` or ``BalancedSampler`` and the evaluation
loaders :class:`~dcls_audio.data.samplers.EvalShardSampler`, each built with the rank and world
size read from the attached trainer (``trainer.global_rank``, ``trainer.world_size``; 0 and 1
without a trainer). These samplers are ``DistributedSampler`` subclasses, so Lightning keeps
them whatever ``use_distributed_sampler`` says; ``Trainer(use_distributed_sampler=False)``
states the intent. Lightning calls ``set_epoch`` on the train sampler each epoch. Evaluation
shards are contiguous and may differ in length by one clip: every clip is seen exactly once.

Batches are dicts from the default collate: ``waveform`` int16 (B, 320000), ``target``
float32 (B, C), ``index`` int64 (B,), ``audio_name`` list[str].
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from .classes import ClassInfo, display_names, mids, resolve_class_names
from .constants import CLIP_SAMPLES
from .hdf5_dataset import AudioSetHDF5, PathLike, as_path_list, check_files_exist, common_num_classes
from .samplers import BalancedSampler, EvalShardSampler, UniformSampler, balanced_clip_weights

log = logging.getLogger(__name__)

SAMPLERS = ("uniform", "balanced")
_SPLITS = ("train", "val", "test", "predict")


class AudioSetDataModule(L.LightningDataModule):
    """Train/val/test/predict loaders over HDF5 files (see the module docstring).

    Args:
        train_files, val_files, test_files, predict_files: one path or a list of paths each;
            several files of a split are concatenated.
        class_csv: class-name CSV (``index,mid,display_name``); default AudioSet's when the
            files have 527 classes, generic names otherwise.
        batch_size: per device. ``eval_batch_size`` defaults to it.
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
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        sampler: str = "uniform",
        seed: int = 0,
        samples_per_epoch: int | None = None,
        balance_prior: float = 0.0,
        drop_last: bool = True,
        clip_samples: int = CLIP_SAMPLES,
    ) -> None:
        super().__init__()
        self.files: dict[str, list[Path]] = {
            "train": as_path_list(train_files, "train_files"),
            "val": as_path_list(val_files, "val_files"),
            "test": as_path_list(test_files, "test_files"),
            "predict": as_path_list(predict_files, "predict_files"),
        }
        for split, paths in self.files.items():
            check_files_exist(paths, f"{split}_files")
        if not any(self.files.values()):
            raise ValueError("AudioSetDataModule: give at least one of train/val/test/predict_files")
        if class_csv is not None and not Path(class_csv).is_file():
            raise FileNotFoundError(f"class_csv: file not found: {class_csv}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size or 1)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if samples_per_epoch is not None and samples_per_epoch <= 0:
            raise ValueError(f"samples_per_epoch must be positive, got {samples_per_epoch}")
        self.save_hyperparameters(logger=False)
        self.class_csv = class_csv
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.sampler = sampler
        self.seed = seed
        self.samples_per_epoch = samples_per_epoch
        self.balance_prior = balance_prior
        self.drop_last = drop_last
        self.clip_samples = clip_samples
        self.datasets: dict[str, AudioSetHDF5] = {}
        self._classes: list[ClassInfo] | None = None
        self._balance_weights: np.ndarray | None = None
        self._resume_position: tuple[int, int] | None = None   # (epoch, batches done) from a checkpoint

    # ------------------------------------------------------------------ classes
    @property
    def classes(self) -> list[ClassInfo]:
        """Class list of the data; every split's files must agree on the class count."""
        if self._classes is None:
            paths = [path for split in _SPLITS for path in self.files[split]]
            num_classes = common_num_classes(paths, self.clip_samples)
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
                raise ValueError(f"AudioSetDataModule: no {split}_files given")
            self.classes  # check class counts agree across splits first
            self.datasets[split] = AudioSetHDF5(self.files[split], self.class_csv, self.clip_samples)
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
    def _loader(self, dataset: AudioSetHDF5, sampler, batch_size: int, drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=drop_last,
        )

    def train_sampler(self) -> UniformSampler | BalancedSampler:
        """The train sampler for this rank (built from the trainer's rank and world size)."""
        dataset = self._dataset("train")
        rank, world = self._rank_and_world()
        kwargs = dict(num_replicas=world, rank=rank, seed=self.seed,
                      samples_per_epoch=self.samples_per_epoch, drop_last=self.drop_last)
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
