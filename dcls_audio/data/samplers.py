"""Training and evaluation samplers that shard themselves across DDP ranks.

All samplers subclass ``torch.utils.data.DistributedSampler`` only so that Lightning leaves
them in place (it swaps in its own sampler for any other kind when
``use_distributed_sampler=True``); they take ``num_replicas`` and ``rank`` explicitly and never
touch ``torch.distributed``.

- :class:`UniformSampler`: a fresh random permutation per (seed, epoch) (upstream default).
- :class:`BalancedSampler`: draws with replacement, clip weight = sum over its labels of
  1 / (label count + ``prior``) (inverse label frequency, as PANNs/AST do).
- :class:`EvalShardSampler`: contiguous, unequal shards that together cover every clip once.

Training samplers generate one epoch order from ``numpy.random.default_rng([seed, epoch])``
(identical on all ranks) and give rank r the positions r, r + W, r + 2W, ... of it, so the ranks
get disjoint, equally long shares (``drop_last=True`` cuts the order to a multiple of W;
``drop_last=False`` pads it by wrapping around). Their ``progress`` hook (set by the DataModule)
lets a run resumed inside an epoch continue that epoch's order where its checkpoint left it.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator

import numpy as np
from torch.utils.data import DistributedSampler

from ..errors import UsageError

__all__ = ["BalancedSampler", "EvalShardSampler", "UniformSampler", "balanced_clip_weights", "shard_bounds"]


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch)])


class _ShardedTrainSampler(DistributedSampler):
    """Common part: total draws per epoch, the strided split across ranks, ``set_epoch``."""

    def __init__(
        self,
        num_items: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        drop_last: bool = True,
    ) -> None:
        if num_items <= 0:
            raise UsageError(f"{type(self).__name__}: the dataset is empty")
        if samples_per_epoch is not None and samples_per_epoch <= 0:
            raise ValueError(f"samples_per_epoch must be positive, got {samples_per_epoch}")
        super().__init__(
            range(num_items), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last
        )
        self.num_items = num_items
        self.epoch_total = samples_per_epoch or num_items
        if drop_last:
            self.num_samples = self.epoch_total // num_replicas
        else:
            self.num_samples = math.ceil(self.epoch_total / num_replicas)
        if self.num_samples == 0:
            raise ValueError(
                f"{type(self).__name__}: {self.epoch_total} samples per epoch cannot be split over "
                f"{num_replicas} ranks with drop_last=True"
            )
        self.total_size = self.num_samples * num_replicas
        # () -> (epoch, this rank's draws of it already trained on), asked when an iteration
        # starts; a run resumed inside an epoch continues that epoch's order after them
        self.progress: Callable[[], tuple[int, int]] | None = None

    def epoch_order(self) -> np.ndarray:
        """All ranks' draws of the current epoch, (epoch_total,) int64."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order()
        if self.total_size > len(order):
            order = np.resize(order, self.total_size)  # wrap around
        mine = order[self.rank : self.total_size : self.num_replicas]
        if self.progress is not None:
            epoch, used = self.progress()
            if epoch == self.epoch and used > 0:
                mine = mine[used:]
        return iter(mine.tolist())

    def __len__(self) -> int:
        return self.num_samples


class UniformSampler(_ShardedTrainSampler):
    """Random permutations of ``range(num_items)`` (repeated if ``samples_per_epoch`` > N)."""

    def epoch_order(self) -> np.ndarray:
        rng = _rng(self.seed, self.epoch)
        rounds = math.ceil(self.epoch_total / self.num_items)
        order = np.concatenate([rng.permutation(self.num_items) for _ in range(rounds)])
        return order[: self.epoch_total]


def balanced_clip_weights(target_chunks: Iterable[np.ndarray], prior: float = 0.0) -> np.ndarray:
    """Clip weight = sum over the clip's labels of 1 / (label count + prior); -> (N,) float64.

    One pass over the (n, C) chunks, keeping only the (clip, label) pairs. ``prior`` 0 is plain
    inverse frequency (PANNs/AST); upstream's unused weighted sampler had 1000 / (100 + count),
    i.e. ``prior=100`` up to scale. A clip without any label gets the smallest weight of a
    labelled clip (never zero, so it can still be drawn).
    """
    clips, labels, num_clips, num_classes = [], [], 0, 0
    for chunk in target_chunks:
        row, col = np.nonzero(np.asarray(chunk))
        clips.append(row + num_clips)
        labels.append(col)
        num_clips += len(chunk)
        num_classes = np.shape(chunk)[1]
    if num_clips == 0:
        raise ValueError("balanced_clip_weights: no targets")
    clips, labels = np.concatenate(clips), np.concatenate(labels)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64) + prior
    inverse = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
    weights = np.bincount(clips, weights=inverse[labels], minlength=num_clips)
    unlabelled = weights <= 0
    if unlabelled.all():
        return np.ones_like(weights)
    if unlabelled.any():
        weights[unlabelled] = weights[~unlabelled].min()
    return weights


class BalancedSampler(_ShardedTrainSampler):
    """Draws ``samples_per_epoch`` (default N) clips with replacement, probability ~ ``weights``."""

    def __init__(
        self,
        weights: np.ndarray,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        drop_last: bool = True,
    ) -> None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 1 or not np.all(np.isfinite(weights)) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("BalancedSampler: weights must be a 1-D array of finite non-negative values, not all 0")
        super().__init__(len(weights), num_replicas, rank, seed, samples_per_epoch, drop_last)
        self.probabilities = weights / weights.sum()

    def epoch_order(self) -> np.ndarray:
        rng = _rng(self.seed, self.epoch)
        return rng.choice(self.num_items, size=self.epoch_total, replace=True, p=self.probabilities)


def shard_bounds(num_items: int, num_replicas: int, rank: int) -> tuple[int, int]:
    """Contiguous shard ``[start, stop)`` of rank ``rank``; sizes differ by at most one."""
    return rank * num_items // num_replicas, (rank + 1) * num_items // num_replicas


class EvalShardSampler(DistributedSampler):
    """In-order contiguous shard of ``range(num_items)`` for one rank; no padding, no drops."""

    def __init__(self, num_items: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(range(max(num_items, 1)), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_items = num_items
        self.start, self.stop = shard_bounds(num_items, num_replicas, rank)
        self.num_samples = self.stop - self.start
        self.total_size = num_items

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.num_samples
