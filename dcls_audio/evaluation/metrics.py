"""AudioSet tagging metrics: mAP, mAUC and d-prime, exact on one device or many.

The field's convention: mAP is the unweighted mean over classes of the average precision
(sklearn ``average_precision_score``), mAUC the mean per-class ROC AUC, and
d-prime = sqrt(2) * Phi^-1(AUC). Both d-prime conventions are reported: the mean of the
per-class d-primes (as upstream reports it) and the d-prime of the mean AUC.

Classes without a positive or without a negative clip have no defined AP/AUC pair; they are
left out of every mean and counted (``num_classes_without_positives`` /
``num_classes_without_negatives``). A per-class AUC of exactly 0 or 1 would give an infinite
d-prime; such AUCs are moved half a rank step (1 / (2 P N)) inside (0, 1) before Phi^-1 and
counted in ``num_classes_auc_clipped``.

``AudioSetMetrics`` is a torchmetrics ``Metric``: under DDP it gathers the scores of all ranks
once together with their clip indices, drops the duplicates a padding sampler adds, and
computes on all ranks from the same complete set, so the numbers do not depend on the number
of devices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

__all__ = [
    "AudioSetMetrics",
    "TaggingMetrics",
    "average_precision",
    "deduplicate_by_index",
    "roc_auc",
    "tagging_metrics",
]

_CLASS_CHUNK = 64  # classes ranked at once: bounds the working memory to ~64 x N x 60 bytes


def _ap_auc_chunk(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AP and AUC of each row of (C, N) scores against (C, N) 0/1 targets; NaN where undefined.

    Equal scores form one threshold (as in sklearn): a positive counts with the precision at
    the end of its tie group, and with the mid-rank of its group for the AUC.
    """
    c, n = scores.shape
    sorted_scores, order = scores.sort(dim=1, descending=True)
    y = targets.gather(1, order).double()
    position = torch.arange(n, device=scores.device).expand(c, n)
    is_end = torch.ones_like(sorted_scores, dtype=torch.bool)
    is_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    is_start = torch.ones_like(is_end)
    is_start[:, 1:] = is_end[:, :-1]
    group_end = torch.where(is_end, position, n).flip(1).cummin(1).values.flip(1)
    group_start = torch.where(is_start, position, 0).cummax(1).values
    true_pos = y.cumsum(1)
    positives = true_pos[:, -1]
    negatives = n - positives
    # AP = sum over thresholds of (recall step) x precision.
    precision_at_group_end = true_pos.gather(1, group_end) / (group_end + 1)
    ap = (y * precision_at_group_end).sum(1) / positives
    # AUC = Mann-Whitney U with mid-ranks (equals the trapezoidal ROC area).
    ascending_mid_rank = n - (group_start + group_end).double() / 2
    rank_sum = (y * ascending_mid_rank).sum(1)
    auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    ap = torch.where(positives > 0, ap, torch.nan)
    auc = torch.where((positives > 0) & (negatives > 0), auc, torch.nan)
    return ap, auc


def _check_inputs(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"scores and targets must both be (clips, classes); got {tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    if scores.shape[0] == 0:
        raise ValueError("no clips to score")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    binary = targets > 0.5
    if not torch.equal(binary.to(targets.dtype), targets):
        raise ValueError("targets must be 0/1 (evaluate on unmixed, unsmoothed labels)")
    return scores.T.contiguous(), binary.T.contiguous()


def _per_class(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scores, targets = _check_inputs(scores, targets)  # now (C, N)
    parts = [
        _ap_auc_chunk(scores[i : i + _CLASS_CHUNK], targets[i : i + _CLASS_CHUNK])
        for i in range(0, scores.shape[0], _CLASS_CHUNK)
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-class average precision as sklearn's ``average_precision_score``.

    Args:
        scores: (N, C) any monotone score (logits or probabilities).
        targets: (N, C) 0/1.
    Returns:
        (C,) float64, NaN for classes without positives.
    """
    return _per_class(scores, targets)[0]


def roc_auc(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-class ROC AUC as sklearn's ``roc_auc_score``: (C,) float64, NaN where undefined."""
    return _per_class(scores, targets)[1]


def d_prime(auc: torch.Tensor) -> torch.Tensor:
    """sqrt(2) * Phi^-1(AUC), elementwise (infinite at AUC 0 and 1)."""
    return math.sqrt(2.0) * torch.special.ndtri(auc.double())


@dataclass
class TaggingMetrics:
    """Summary and per-class results of one evaluation.

    ``ap``, ``auc``, ``d_prime`` and ``positives`` are (C,) CPU tensors; ``scored`` (C,) bool
    marks the classes that enter the means.
    """

    mAP: float
    mAUC: float
    d_prime: float
    d_prime_of_mAUC: float
    num_clips: int
    num_classes: int
    num_classes_scored: int
    num_classes_without_positives: int
    num_classes_without_negatives: int
    num_classes_auc_clipped: int
    ap: torch.Tensor = field(repr=False)
    auc: torch.Tensor = field(repr=False)
    class_d_prime: torch.Tensor = field(repr=False)
    positives: torch.Tensor = field(repr=False)
    scored: torch.Tensor = field(repr=False)

    def summary(self) -> dict[str, float | int | str]:
        """The scalar results as a JSON-ready dict (with a note on excluded classes)."""
        out: dict[str, float | int | str] = {
            "mAP": self.mAP,
            "mAUC": self.mAUC,
            "d_prime": self.d_prime,
            "d_prime_of_mAUC": self.d_prime_of_mAUC,
            "num_clips": self.num_clips,
            "num_classes": self.num_classes,
            "num_classes_scored": self.num_classes_scored,
            "num_classes_without_positives": self.num_classes_without_positives,
            "num_classes_without_negatives": self.num_classes_without_negatives,
            "num_classes_auc_clipped": self.num_classes_auc_clipped,
        }
        out["note"] = self.exclusion_note()
        return out

    def exclusion_note(self) -> str:
        """One sentence on which classes the means cover."""
        text = f"means over {self.num_classes_scored} of {self.num_classes} classes"
        excluded = []
        if self.num_classes_without_positives:
            excluded.append(f"{self.num_classes_without_positives} without positive clips")
        if self.num_classes_without_negatives:
            excluded.append(f"{self.num_classes_without_negatives} without negative clips")
        if excluded:
            text += "; excluded: " + ", ".join(excluded)
        if self.num_classes_auc_clipped:
            text += (
                f"; {self.num_classes_auc_clipped} classes with AUC 0 or 1 moved half a rank "
                "step inside (0, 1) for d-prime"
            )
        return text


def tagging_metrics(scores: torch.Tensor, targets: torch.Tensor) -> TaggingMetrics:
    """mAP, mAUC and both d-primes of (N, C) scores against (N, C) 0/1 targets."""
    ap, auc = _per_class(scores, targets)
    ap, auc = ap.cpu(), auc.cpu()
    n = scores.shape[0]
    positives = (targets > 0.5).sum(0).cpu().double()
    negatives = n - positives
    scored = (positives > 0) & (negatives > 0)
    half_step = 0.5 / (positives * negatives).clamp_min(1)
    clipped_auc = torch.minimum(torch.maximum(auc, half_step), 1 - half_step)
    auc_clipped = scored & (clipped_auc != auc)
    class_dp = torch.where(scored, d_prime(clipped_auc), torch.nan)
    if scored.any():
        m_ap = ap[scored].mean().item()
        m_auc = auc[scored].mean().item()
        dp = class_dp[scored].mean().item()
        dp_of_mauc = d_prime(torch.tensor(m_auc, dtype=torch.float64)).item()
    else:
        m_ap = m_auc = dp = dp_of_mauc = math.nan
    return TaggingMetrics(
        mAP=m_ap,
        mAUC=m_auc,
        d_prime=dp,
        d_prime_of_mAUC=dp_of_mauc,
        num_clips=n,
        num_classes=scores.shape[1],
        num_classes_scored=int(scored.sum()),
        num_classes_without_positives=int((positives == 0).sum()),
        num_classes_without_negatives=int((negatives == 0).sum()),
        num_classes_auc_clipped=int(auc_clipped.sum()),
        ap=ap,
        auc=auc,
        class_d_prime=class_dp,
        positives=positives.long(),
        scored=scored,
    )


def deduplicate_by_index(indices: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Keep the first row of each clip index and order rows by index.

    Args:
        indices: (M,) int64 clip indices, possibly repeated (padding samplers).
        tensors: (M, ...) rows aligned with ``indices``.
    Returns:
        (unique indices (N,), *tensors restricted to those rows (N, ...)).
    """
    unique, inverse = torch.unique(indices, sorted=True, return_inverse=True)
    rows = torch.arange(indices.numel(), device=indices.device)
    first = torch.full_like(unique, indices.numel()).scatter_reduce_(0, inverse, rows, reduce="amin")
    return (unique, *(t[first] for t in tensors))


class AudioSetMetrics(Metric):
    """Accumulates (scores, targets, clip indices); ``compute()`` -> :class:`TaggingMetrics`.

    ``update(scores (B, C), targets (B, C) 0/1, indices (B,))``. Scores may be logits: every
    metric here depends on the ranking only. Float32 scores are kept without a copy: pass
    scores that nothing overwrites later. After ``compute()``, ``gathered()`` returns the
    de-duplicated (indices, scores, targets) the numbers were computed from.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")
        self.add_state("indices", default=[], dist_reduce_fx="cat")
        self._gathered: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def update(self, scores: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor) -> None:
        if scores.ndim != 2 or scores.shape[1] != self.num_classes:
            raise ValueError(f"expected scores (B, {self.num_classes}), got {tuple(scores.shape)}")
        if targets.shape != scores.shape or indices.shape != scores.shape[:1]:
            raise ValueError(
                f"targets {tuple(targets.shape)} and indices {tuple(indices.shape)} do not match "
                f"scores {tuple(scores.shape)}"
            )
        self.scores.append(scores.detach().float())
        self.targets.append((targets > 0.5).to(torch.uint8))
        self.indices.append(indices.detach().long())

    def compute(self) -> TaggingMetrics:
        if isinstance(self.indices, list) and not self.indices:  # (a tensor once synced)
            raise RuntimeError("AudioSetMetrics.compute() called before any update()")
        indices, scores, targets = deduplicate_by_index(
            dim_zero_cat(self.indices), dim_zero_cat(self.scores), dim_zero_cat(self.targets)
        )
        self._gathered = (indices, scores, targets)
        return tagging_metrics(scores, targets.float())

    def gathered(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(indices (N,), scores (N, C), targets (N, C) uint8) of the last ``compute()``."""
        if self._gathered is None:
            raise RuntimeError("call compute() first")
        return self._gathered

    def reset(self) -> None:
        super().reset()
        self._gathered = None
