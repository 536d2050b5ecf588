"""AudioSet metrics against sklearn / scipy, class exclusion, de-duplication."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

from dcls_audio.evaluation.metrics import (
    AudioSetMetrics,
    average_precision,
    deduplicate_by_index,
    roc_auc,
    tagging_metrics,
)
from dcls_audio.training.module import AudioTaggingModule


def _scores_and_targets(n=300, c=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, c, generator=g) < 0.15).float()
    scores = torch.randn(n, c, generator=g) + 1.2 * targets
    scores[:, :8] = (scores[:, :8] * 2).round() / 2  # heavy ties in some classes
    scores[:, 8] = 0.5  # one class with a single tied score
    targets[:, 20] = 0  # no positives
    targets[:, 21] = 1  # no negatives
    targets[0, 22], targets[1:, 22] = 1, 0  # a single positive
    return scores, targets


def _sklearn(scores, targets):
    s, t = scores.numpy(), targets.numpy()
    ap = np.array([average_precision_score(t[:, k], s[:, k]) if t[:, k].any() else np.nan for k in range(t.shape[1])])
    auc = np.array(
        [roc_auc_score(t[:, k], s[:, k]) if 0 < t[:, k].sum() < len(t) else np.nan for k in range(t.shape[1])]
    )
    return ap, auc


def test_per_class_ap_and_auc_equal_sklearn_with_ties():
    scores, targets = _scores_and_targets()
    ap_ref, auc_ref = _sklearn(scores, targets)
    np.testing.assert_allclose(average_precision(scores, targets).numpy(), ap_ref, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(roc_auc(scores, targets).numpy(), auc_ref, atol=1e-9, equal_nan=True)


def test_means_exclude_classes_without_positives_or_negatives():
    scores, targets = _scores_and_targets()
    ap_ref, auc_ref = _sklearn(scores, targets)
    scored = ~np.isnan(auc_ref)
    m = tagging_metrics(scores, targets)
    assert m.num_clips == 300 and m.num_classes == 24
    assert m.num_classes_scored == scored.sum() == 22
    assert m.num_classes_without_positives == 1 and m.num_classes_without_negatives == 1
    assert m.mAP == pytest.approx(ap_ref[scored].mean(), abs=1e-9)
    assert m.mAUC == pytest.approx(auc_ref[scored].mean(), abs=1e-9)
    assert m.d_prime == pytest.approx(np.mean(np.sqrt(2) * norm.ppf(auc_ref[scored])), abs=1e-9)
    assert m.d_prime_of_mAUC == pytest.approx(np.sqrt(2) * norm.ppf(auc_ref[scored].mean()), abs=1e-9)
    assert "22 of 24" in m.exclusion_note() and "1 without positive" in m.exclusion_note()
    assert m.positives.tolist() == targets.sum(0).long().tolist()
    summary = m.summary()
    assert {"mAP", "mAUC", "d_prime", "num_clips", "num_classes_scored", "note"} <= set(summary)


def test_perfect_class_gets_a_finite_d_prime_and_is_counted():
    targets = torch.tensor([[1, 0], [1, 1], [0, 0], [0, 1]], dtype=torch.float32)
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.4], [0.1, 0.3], [0.2, 0.2]])
    m = tagging_metrics(scores, targets)
    assert m.auc[0] == 1.0 and m.num_classes_auc_clipped == 1
    p, n = 2, 2
    assert m.class_d_prime[0].item() == pytest.approx(math.sqrt(2) * norm.ppf(1 - 0.5 / (p * n)))
    assert math.isfinite(m.d_prime)


def test_large_input_matches_sklearn_map():
    g = torch.Generator().manual_seed(1)
    targets = (torch.rand(2000, 527, generator=g) < 0.02).float()
    scores = torch.randn(2000, 527, generator=g) + 2 * targets
    ap_ref, _ = _sklearn(scores, targets)
    assert tagging_metrics(scores, targets).mAP == pytest.approx(np.nanmean(ap_ref), abs=1e-6)


def test_bad_inputs_are_rejected():
    scores, targets = _scores_and_targets(n=10)
    with pytest.raises(ValueError, match="0/1"):
        tagging_metrics(scores, targets * 0.9)
    with pytest.raises(ValueError, match="clips, classes"):
        tagging_metrics(scores, targets[:5])
    with pytest.raises(ValueError, match="NaN"):
        tagging_metrics(torch.full_like(scores, float("nan")), targets)


def test_deduplicate_keeps_first_row_per_index_in_index_order():
    indices = torch.tensor([5, 2, 5, 0, 2])
    rows = torch.tensor([[50.0], [20.0], [51.0], [0.0], [21.0]])
    unique, kept = deduplicate_by_index(indices, rows)
    assert unique.tolist() == [0, 2, 5]
    assert kept.flatten().tolist() == [0.0, 20.0, 50.0]


def test_metric_accumulates_batches_and_drops_duplicate_clips():
    scores, targets = _scores_and_targets(n=101)
    metric = AudioSetMetrics(24)
    order = torch.randperm(101, generator=torch.Generator().manual_seed(0))
    padded = torch.cat([order, order[:5]])  # a padding sampler repeats clips
    for chunk in padded.split(16):
        metric.update(scores[chunk], targets[chunk], chunk)
    result = metric.compute()
    reference = tagging_metrics(scores, targets)
    assert result.num_clips == 101
    assert result.mAP == pytest.approx(reference.mAP, abs=1e-12)
    assert result.mAUC == pytest.approx(reference.mAUC, abs=1e-12)
    indices, gathered_scores, _ = metric.gathered()
    assert indices.tolist() == list(range(101))
    torch.testing.assert_close(gathered_scores, scores)
    metric.reset()
    with pytest.raises(RuntimeError):
        metric.compute()


class _ReplayedOutputs(nn.Module):
    """Returns the next rows of ``scores`` in one output buffer reused by every call, as a
    compiled model replaying CUDA graphs does."""

    def __init__(self, scores: torch.Tensor) -> None:
        super().__init__()
        self.scores, self.row = scores, 0
        self.buffer = torch.empty(16, scores.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.buffer[: x.shape[0]]
        out.copy_(self.scores[self.row : self.row + x.shape[0]])
        self.row += x.shape[0]
        return out


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_validation_keeps_its_own_logits_when_cuda_graph_replays_reuse_the_output():
    scores, targets = _scores_and_targets(n=40)
    module = AudioTaggingModule(
        "convnext_audio_tiny",
        24,
        model_kwargs=dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)),
        compile=True,
        compile_mode="reduce-overhead",
    ).eval()
    module.net = _ReplayedOutputs(scores)
    for i, chunk in enumerate(torch.arange(40).split(16)):
        batch = {"waveform": torch.zeros(len(chunk), 3200, dtype=torch.int16), "target": targets[chunk], "index": chunk}
        module.validation_step(batch, i)
    result = module.val_metrics.compute()
    torch.testing.assert_close(module.val_metrics.gathered()[1], scores)
    assert result.mAP == pytest.approx(tagging_metrics(scores, targets).mAP, abs=1e-12)
