"""Samplers: determinism per (seed, epoch), balance, DDP partitions without duplicates or drops."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DistributedSampler

from dcls_audio.data import BalancedSampler, EvalShardSampler, UniformSampler
from dcls_audio.data.samplers import balanced_clip_weights


def test_uniform_is_a_permutation_deterministic_per_seed_and_epoch():
    a, b = UniformSampler(100, seed=1), UniformSampler(100, seed=1)
    first = list(a)
    assert sorted(first) == list(range(100)) and first == list(b) and first == list(a)
    a.set_epoch(1)
    second = list(a)
    assert sorted(second) == list(range(100)) and second != first
    assert list(UniformSampler(100, seed=2)) != first
    assert isinstance(a, DistributedSampler)  # Lightning leaves DistributedSampler instances in place


@pytest.mark.parametrize("n, world", [(100, 4), (103, 4), (10, 3)])
def test_uniform_ddp_shares_are_disjoint_and_equal(n, world):
    shares = [list(UniformSampler(n, num_replicas=world, rank=r, seed=7)) for r in range(world)]
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == n // world
    flat = [i for s in shares for i in s]
    assert len(set(flat)) == len(flat) == world * (n // world)
    for r in range(world):  # the ranks agree on the epoch order: same result when rebuilt
        assert list(UniformSampler(n, num_replicas=world, rank=r, seed=7)) == shares[r]


def test_uniform_padding_and_samples_per_epoch():
    shares = [list(UniformSampler(10, num_replicas=3, rank=r, drop_last=False)) for r in range(3)]
    assert [len(s) for s in shares] == [4, 4, 4]
    assert set(i for s in shares for i in s) == set(range(10))
    long = list(UniformSampler(10, samples_per_epoch=25))
    assert len(long) == 25 and sorted(long[:10]) == list(range(10)) and sorted(long[10:20]) == list(range(10))


def _skewed_targets(n=1000):
    """Class 0 on 90% of clips, class 1 on 10%, class 2 on the first 20 clips too."""
    targets = np.zeros((n, 3), dtype=bool)
    targets[: n // 10, 1] = True
    targets[n // 10 :, 0] = True
    targets[:20, 2] = True
    return targets


def test_balanced_weights_are_sum_of_inverse_label_frequencies():
    targets = _skewed_targets()
    weights = balanced_clip_weights([targets[:500], targets[500:]])
    np.testing.assert_allclose(weights[0], 1 / 100 + 1 / 20)
    np.testing.assert_allclose(weights[500], 1 / 900)
    unlabelled = np.vstack([targets, np.zeros((1, 3), bool)])
    w = balanced_clip_weights([unlabelled])
    assert w[-1] == w[:-1].min() > 0


def test_balanced_sampler_oversamples_rare_classes():
    targets = _skewed_targets()
    weights = balanced_clip_weights([targets])
    sampler = BalancedSampler(weights, seed=0, samples_per_epoch=20000)
    drawn = targets[np.array(list(sampler))]
    freq = drawn.mean(axis=0)
    # expected label frequency of class c: sum over clips with c of their weight / total weight
    expected = (targets * weights[:, None]).sum(0) / weights.sum()
    np.testing.assert_allclose(freq, expected, atol=0.015)
    assert freq[1] > 0.5 > targets[:, 1].mean()  # rare class over-sampled
    assert freq[2] > 0.15 > targets[:, 2].mean()
    sampler.set_epoch(0)
    assert list(sampler) == list(BalancedSampler(weights, seed=0, samples_per_epoch=20000))
    sampler.set_epoch(1)
    assert list(sampler) != list(BalancedSampler(weights, seed=0, samples_per_epoch=20000))


def test_balanced_ddp_shares_partition_the_epoch_draws():
    weights = np.linspace(1, 2, 50)
    whole = list(BalancedSampler(weights, seed=3, samples_per_epoch=60))
    shares = [list(BalancedSampler(weights, num_replicas=4, rank=r, seed=3, samples_per_epoch=60)) for r in range(4)]
    assert [len(s) for s in shares] == [15] * 4
    interleaved = [shares[i % 4][i // 4] for i in range(60)]
    assert interleaved == whole


@pytest.mark.parametrize("n, world", [(10, 3), (7, 4), (100, 8), (3, 5), (0, 2)])
def test_eval_shards_cover_every_clip_exactly_once(n, world):
    shards = [list(EvalShardSampler(n, num_replicas=world, rank=r)) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(EvalShardSampler(n, world, r)) for r in range(world)] == list(map(len, shards))


@pytest.mark.parametrize("kind", ["uniform", "balanced"])
def test_resumed_epoch_continues_after_the_draws_used(kind):
    """With ``progress`` saying (epoch e, k draws used), iterating epoch e yields that rank's
    order from draw k on; other epochs are whole."""

    def make(rank):
        if kind == "uniform":
            return UniformSampler(20, num_replicas=2, rank=rank, seed=3)
        return BalancedSampler(np.linspace(1, 2, 20), num_replicas=2, rank=rank, seed=3)

    for rank in (0, 1):
        plain, resumed = make(rank), make(rank)
        resumed.progress = lambda: (1, 4)
        for epoch in (0, 1, 2):
            plain.set_epoch(epoch)
            resumed.set_epoch(epoch)
            full = list(plain)
            assert list(resumed) == (full[4:] if epoch == 1 else full)


def test_sampler_errors():
    with pytest.raises(ValueError, match="empty"):
        UniformSampler(0)
    with pytest.raises(ValueError, match="weights"):
        BalancedSampler(np.array([0.0, 0.0]))
    with pytest.raises(ValueError, match="samples_per_epoch"):
        UniformSampler(5, samples_per_epoch=0)
    with pytest.raises(ValueError, match="cannot be split"):
        UniformSampler(2, num_replicas=4)
