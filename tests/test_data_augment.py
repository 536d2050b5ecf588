"""Statistics and shapes of the batch augmentations; random erasing against timm's own."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from timm.data.mixup import one_hot
from timm.data.random_erasing import RandomErasing

from dcls_audio.data import mixup
from dcls_audio.data.augment import random_erase, random_roll, sample_mixup, smooth_targets, speed_perturb


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_roll_is_a_circular_shift_with_uniform_shifts():
    length = 97
    x = torch.randn(2000, length, generator=gen(0))
    out = random_roll(x, generator=gen(1))
    assert out.shape == x.shape
    torch.testing.assert_close(out.sort(dim=1).values, x.sort(dim=1).values)  # same multiset
    shifts = []
    for row_in, row_out in zip(x, out):
        # the shift that maps row_in onto row_out (values are distinct almost surely)
        s = int((row_out == row_in[0]).nonzero()[0])
        torch.testing.assert_close(torch.roll(row_in, s), row_out)
        shifts.append(s)
    counts = np.bincount(shifts, minlength=length)
    expected = len(shifts) / length
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < length + 5 * math.sqrt(2 * length)  # uniform over the circle


def test_speed_perturbation_statistics():
    length, batch = 600, 3000
    ramp = torch.arange(1, length + 1, dtype=torch.float32).expand(batch, length).contiguous()
    out = speed_perturb(ramp, rates=(0.5, 1.5), p=0.5, generator=gen(2))
    assert out.shape == ramp.shape
    changed = ~(out == ramp).all(dim=1)
    assert abs(changed.float().mean().item() - 0.5) < 0.04
    rates = []
    for row in out[changed]:
        inside = row[row > 0]
        # the stretched signal is one contiguous run of source samples, zero-padded around it
        first, last = int((row > 0).nonzero()[0]), int((row > 0).nonzero()[-1])
        assert last - first + 1 == len(inside)
        steps = inside.diff()
        assert (steps >= 0).all()
        new_len = len(inside)
        if new_len < length:  # slowed down (r < 1): padded, whole source visible
            assert inside[0] == 1 and inside[-1] >= length - 2
            rates.append(new_len / length)
        else:  # sped up... stretched longer (r > 1) and cropped: source indices advance by < 1
            assert steps.max() <= 1
            rates.append(len(inside) / max(1.0, float(inside[-1] - inside[0])))
    rates = np.array(rates)
    assert rates.min() >= 0.49 and rates.max() <= 1.55
    assert abs(rates.mean() - 1.0) < 0.05  # U(0.5, 1.5)
    assert 0.2 < (rates < 0.75).mean() < 0.3


def test_speed_perturbation_p0_is_identity():
    x = torch.randn(8, 100)
    assert torch.equal(speed_perturb(x, p=0.0, generator=gen(0)), x)


def _boxes_of(erased: torch.Tensor) -> list[tuple[int, int] | None]:
    """Size (h, w) of the zero rectangle in each image of a ones-tensor, or None."""
    sizes = []
    for img in erased.reshape(erased.shape[0], *erased.shape[-2:]):
        zero = img == 0
        if not zero.any():
            sizes.append(None)
            continue
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        h, w = len(rows), len(cols)
        assert zero.sum() == h * w and rows.diff().eq(1).all() and cols.diff().eq(1).all()  # one rectangle
        sizes.append((h, w))
    return sizes


def test_random_erase_matches_timm_statistics():
    height, width, batch = 64, 100, 4000
    ours = _boxes_of(random_erase(torch.ones(batch, height, width), p=0.25, generator=gen(4)))
    random.seed(4)
    timm_erase = RandomErasing(probability=0.25, mode="const", max_count=1, device="cpu")
    theirs = _boxes_of(timm_erase(torch.ones(batch, 1, height, width)))
    for sizes in (ours, theirs):
        erased = [s for s in sizes if s is not None]
        assert abs(len(erased) / batch - 0.25) < 0.03
        areas = np.array([h * w for h, w in erased]) / (height * width)
        assert areas.min() >= 0.015 and areas.max() <= 0.36
    ours_area = np.mean([h * w for h, w in (s for s in ours if s)])
    theirs_area = np.mean([h * w for h, w in (s for s in theirs if s)])
    assert abs(ours_area / theirs_area - 1) < 0.08
    ours_aspect = np.mean([math.log(h / w) for h, w in (s for s in ours if s)])
    theirs_aspect = np.mean([math.log(h / w) for h, w in (s for s in theirs if s)])
    assert abs(ours_aspect - theirs_aspect) < 0.1


def test_random_erase_4d_and_value():
    spec = torch.ones(50, 2, 20, 30)
    out = random_erase(spec, p=1.0, value=-5.0, generator=gen(0))
    assert out.shape == spec.shape
    assert (out[:, 0] == out[:, 1]).all()  # one box across channels
    assert ((out == -5.0).flatten(1).any(1)).all()


def test_mixup_lambda_distribution():
    lams, perms = zip(*(sample_mixup(16, alpha=0.8, generator=gen(i)) for i in range(4000)))
    lams = np.array(lams)
    assert abs(lams.mean() - 0.5) < 0.02
    assert abs(lams.var() - 1 / (4 * (2 * 0.8 + 1))) < 0.01  # Var Beta(a, a) = 1 / (4 (2a + 1))
    assert all(sorted(p.tolist()) == list(range(16)) for p in perms[:50])
    assert sample_mixup(4, alpha=0.0)[0] == 1.0


def test_mixup_mixes_inputs_and_targets_consistently():
    batch, classes, s = 32, 10, 0.1
    target = (torch.rand(batch, classes, generator=gen(0)) < 0.3).float()
    x = target.clone()  # inputs that encode their targets
    x_mixed, y_mixed = mixup(x, target, alpha=0.8, label_smoothing=s, generator=gen(1))
    torch.testing.assert_close(y_mixed, x_mixed * (1 - s) + s / classes)
    lam, perm = sample_mixup(batch, 0.8, generator=gen(1))
    torch.testing.assert_close(x_mixed, lam * x + (1 - lam) * x[perm])
    images = torch.randn(batch, 1, 8, 8, generator=gen(2))
    out, _ = mixup(images, target, generator=gen(1))
    torch.testing.assert_close(out, lam * images + (1 - lam) * images[perm])


def test_smoothing_is_timm_one_hot_smoothing():
    classes, s = 7, 0.1
    labels = torch.tensor([0, 3, 6])
    timm_targets = one_hot(labels, classes, on_value=1 - s + s / classes, off_value=s / classes)
    torch.testing.assert_close(smooth_targets(torch.eye(classes)[labels], s), timm_targets)


def test_mixup_errors():
    with pytest.raises(TypeError, match="floating"):
        mixup(torch.zeros(2, 3, dtype=torch.int16), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="target must be"):
        mixup(torch.zeros(2, 3), torch.zeros(3, 4))
