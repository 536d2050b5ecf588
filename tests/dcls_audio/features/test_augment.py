"""Statistics and shapes of the batch augmentations; random erasing against timm's own; the
batched device ops against the per-clip implementation they replace (kept below as the reference),
without host syncs and under ``torch.compile``."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from timm.data.mixup import one_hot
from timm.data.random_erasing import RandomErasing
from torch.utils._python_dispatch import TorchDispatchMode

from dcls_audio.features import LogMelFrontEnd, mixup
from dcls_audio.features.augment import (
    apply_erase,
    apply_mixup,
    apply_time_warp,
    random_erase,
    random_roll,
    sample_erase_boxes,
    sample_front_end,
    sample_mixup,
    sample_mixup_draws,
    smooth_targets,
    speed_perturb,
)


# ----------------------------------------------------------------------------- reference
# The per-clip implementation these ops replace (same draws from the same generator calls).
def _reference_random_roll(x, generator):
    batch, length = x.shape
    shifts = torch.randint(-length, length, (batch,), generator=generator).tolist()
    out = torch.empty_like(x)
    for row, shift in enumerate(shifts):
        shift %= length
        out[row, shift:] = x[row, : length - shift]
        out[row, :shift] = x[row, length - shift :]
    return out


def _u(shape, generator, low=0.0, high=1.0):
    return torch.rand(shape, generator=generator, dtype=torch.float64) * (high - low) + low


def _reference_speed_perturb(x, rates=(0.5, 1.5), p=0.5, generator=None):
    batch, length = x.shape
    apply = _u((batch,), generator) < p
    rate = _u((batch,), generator, *rates)
    new_length = torch.ceil(length * rate).long()
    missing = length - new_length
    pad_left = torch.floor(_u((batch,), generator) * (missing + 1).clamp_min(1)).long()
    crop_start = torch.floor(_u((batch,), generator) * (-missing).clamp_min(1)).long()
    offset = torch.where(missing > 0, -pad_left, torch.where(missing < 0, crop_start, 0))
    out = x.clone()
    for row in apply.nonzero().flatten().tolist():
        step = float(torch.tensor(1.0 / rate[row].item()).float())
        for t in range(length):
            stretched = int(offset[row]) + t
            if stretched < 0 or stretched >= int(new_length[row]):
                out[row, t] = 0
            else:
                source = int(torch.tensor(float(stretched), dtype=torch.float32).mul(step).round())
                out[row, t] = x[row, min(max(source, 0), length - 1)]
    return out


def _reference_random_erase(spec, p, generator):
    """Per clip, timm's box rule (draws as ``sample_erase_boxes``), erased with a slice assignment."""
    batch, height, width = spec.shape[0], spec.shape[-2], spec.shape[-1]
    boxes = sample_erase_boxes(batch, height, width, p=p, generator=generator)
    out = spec.clone()
    for b in range(batch):
        if boxes.apply[b]:
            t, left, h, w = (int(v[b]) for v in (boxes.top, boxes.left, boxes.height, boxes.width))
            out[b, ..., t : t + h, left : left + w] = 0
    return out


def _reference_mixup(x, target, alpha, s, generator):
    lam, perm = sample_mixup(x.shape[0], alpha, generator)
    y = target.float() * (1.0 - s) + s / target.shape[-1]
    return x * lam + x[perm] * (1.0 - lam), y * lam + y[perm] * (1.0 - lam)


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
    out, _ = mixup(images, target, alpha=0.8, label_smoothing=0.1, generator=gen(1))
    torch.testing.assert_close(out, lam * images + (1 - lam) * images[perm])


def test_smoothing_is_timm_one_hot_smoothing():
    classes, s = 7, 0.1
    labels = torch.tensor([0, 3, 6])
    timm_targets = one_hot(labels, classes, on_value=1 - s + s / classes, off_value=s / classes)
    torch.testing.assert_close(smooth_targets(torch.eye(classes)[labels], s), timm_targets)


def test_mixup_errors():
    with pytest.raises(TypeError, match="floating"):
        mixup(torch.zeros(2, 3, dtype=torch.int16), torch.zeros(2, 4), alpha=0.8, label_smoothing=0.1)
    with pytest.raises(ValueError, match="target must be"):
        mixup(torch.zeros(2, 3), torch.zeros(3, 4), alpha=0.8, label_smoothing=0.1)


# ----------------------------------------------------------------------------- new vs reference
def test_roll_equals_the_per_clip_reference():
    x = torch.randn(16, 501, generator=gen(0))
    torch.testing.assert_close(random_roll(x, gen(3)), _reference_random_roll(x, gen(3)), rtol=0, atol=0)


def test_speed_perturbation_equals_the_per_clip_reference():
    x = torch.randn(12, 400, generator=gen(0))
    ours = speed_perturb(x, rates=(0.5, 1.5), p=0.7, generator=gen(5))
    torch.testing.assert_close(ours, _reference_speed_perturb(x, (0.5, 1.5), 0.7, gen(5)), rtol=0, atol=0)
    assert not torch.equal(ours, x)


def test_erase_equals_the_per_clip_reference():
    spec = torch.randn(40, 2, 30, 50, generator=gen(0))
    ours = random_erase(spec, p=0.6, generator=gen(6))
    torch.testing.assert_close(ours, _reference_random_erase(spec, 0.6, gen(6)), rtol=0, atol=0)


def test_mixup_equals_the_reference():
    x = torch.randn(16, 1, 8, 9, generator=gen(0))
    target = (torch.rand(16, 11, generator=gen(1)) < 0.3).float()
    for ours, ref in zip(mixup(x, target, 0.8, 0.1, gen(7)), _reference_mixup(x, target, 0.8, 0.1, gen(7))):
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    x0, y0 = mixup(x, target, alpha=0.0, label_smoothing=0.1, generator=gen(7))
    assert x0 is x and torch.equal(y0, smooth_targets(target, 0.1))


def test_roll_then_speed_is_one_gather_equal_to_both_in_turn():
    x = torch.randn(32, 700, generator=gen(0))
    g = gen(8)
    expected = _reference_speed_perturb(_reference_random_roll(x, g), (0.5, 1.5), 0.5, g)
    draws = sample_front_end(32, 700, roll=True, speed=((0.5, 1.5), 0.5), erase=None, generator=gen(8))
    torch.testing.assert_close(apply_time_warp(x, draws.shift, draws.speed), expected, rtol=0, atol=0)


def test_front_end_augmentation_equals_the_reference_chain():
    """The front end's one-copy draws give what roll, speed and erase called in turn gave."""
    torch.manual_seed(0)
    wave = (torch.randn(3, 4000) * 3000).to(torch.int16)
    front = LogMelFrontEnd(clip_samples=4000, augment={"speed_p": 1.0, "erase_p": 1.0}, seed=9).train()
    ours = front(wave)
    g = gen(9)
    x = front.to_float(wave)
    x = _reference_speed_perturb(_reference_random_roll(x, g), (0.5, 1.5), 1.0, g)
    power = _reference_random_erase(front.spectrogram(x), 1.0, g)
    expected = ((front.to_db(front.mel_scale(power)) - front.mean) / front.std).unsqueeze(1)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    assert front.power_shape() == tuple(front.spectrogram(x).shape[-2:])


def test_augmentations_are_reproducible_and_differ_between_seeds():
    x = torch.randn(8, 300, generator=gen(0))
    assert torch.equal(
        speed_perturb(random_roll(x, gen(1)), p=1.0, generator=gen(2)),
        speed_perturb(random_roll(x, gen(1)), p=1.0, generator=gen(2)),
    )
    assert not torch.equal(random_roll(x, gen(1)), random_roll(x, gen(2)))


def _all_ops(x, spec, image, target, draws, boxes, mix):
    warped = apply_time_warp(x, draws.shift, draws.speed)
    erased = apply_erase(spec, boxes)
    return warped, erased, *apply_mixup(image, target, mix, 0.1)


def _draw_all(batch=4, length=256):
    draws = sample_front_end(batch, length, roll=True, speed=((0.5, 1.5), 0.5), erase=None, generator=gen(1))
    boxes = sample_erase_boxes(batch, 20, 30, p=0.5, generator=gen(2))
    return draws, boxes, sample_mixup_draws(batch, 0.8, gen(3))


def test_ops_compile_with_fullgraph_and_agree_with_eager():
    x, spec = torch.randn(4, 256, generator=gen(0)), torch.randn(4, 20, 30, generator=gen(1))
    image, target = torch.randn(4, 1, 6, 7, generator=gen(2)), (torch.rand(4, 5, generator=gen(3)) < 0.5).float()
    draws, boxes, mix = _draw_all()
    eager = _all_ops(x, spec, image, target, draws, boxes, mix)
    torch._dynamo.reset()
    compiled = torch.compile(_all_ops, fullgraph=True, backend="aot_eager")(x, spec, image, target, draws, boxes, mix)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.cuda
def test_ops_run_without_host_sync_on_cuda():
    dev = torch.device("cuda")
    x, spec = torch.randn(4, 256, device=dev), torch.randn(4, 20, 30, device=dev)
    image, target = torch.randn(4, 1, 6, 7, device=dev), (torch.rand(4, 5, device=dev) < 0.5).float()
    draws, boxes, mix = _draw_all()
    cpu = _all_ops(x.cpu(), spec.cpu(), image.cpu(), target.cpu(), draws, boxes, mix)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        moved = _all_ops(x, spec, image, target, draws.to(dev), boxes.to(dev), mix.to(dev))
        warped = speed_perturb(random_roll(x, gen(4)), generator=gen(5))
        also = random_erase(warped.reshape(4, 16, 16), generator=gen(6))
        mixed = mixup(image, target, 0.8, 0.1, generator=gen(7))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for a, b in zip(moved, cpu):  # the same draws give the same result on either device
        torch.testing.assert_close(a.cpu(), b, rtol=1e-6, atol=1e-6)
    assert also.shape == (4, 16, 16) and mixed[0].shape == image.shape


def test_a_front_end_with_every_augmentation_switched_off_moves_its_empty_draws():
    from dcls_audio.features.augment import move_draws

    assert move_draws("meta") == ()
    front_end = LogMelFrontEnd(augment={"roll": False, "speed": False, "erase": False}).train()
    draws = front_end.sample_augmentations(2)
    if draws is not None:
        draws.to("meta")  # a non-CPU device: the one packed copy has nothing to pack


# ----------------------------------------------------------------------------- moving draws
def test_packed_draws_come_back_bit_for_bit():
    """Every dtype a draw has, 0-d, empty and non-contiguous tensors: the bytes the one copy moves
    are the tensors' own, at aligned offsets."""
    from dcls_audio.features.augment import _ALIGN, _pack_bytes, _unpack_bytes

    g = gen(11)
    tensors = (
        torch.randint(-(2**62), 2**62, (5,), generator=g),  # int64 beyond float64's exact range
        torch.rand(3, generator=g) < 0.5,
        torch.tensor(0.1234567, dtype=torch.float32),
        torch.rand(2, 3, dtype=torch.float64, generator=g).t(),
        torch.empty(0, dtype=torch.int64),
        torch.randint(0, 9, (7,), dtype=torch.int32, generator=g),
        torch.tensor([float("nan"), -0.0], dtype=torch.float32),
    )
    packed, offsets = _pack_bytes(tensors, pin=False)
    assert packed.dtype == torch.uint8 and all(o % _ALIGN == 0 for o in offsets)
    for got, want in zip(_unpack_bytes(packed.clone(), offsets, tensors), tensors):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).contiguous().view(torch.uint8))


class _DeviceOps(TorchDispatchMode):
    """The operators that create or touch tensors on a device other than the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.device.type != "cpu" for t in torch.utils._pytree.tree_leaves(out)):
            self.ops.append(func.overloadpacket.__name__)
        return out


def test_a_steps_draws_reach_the_device_in_one_copy_and_views():
    """The training step's front-end and mixup draws: one host -> device copy, the rest views."""
    from dcls_audio.features.augment import draws_to

    front = LogMelFrontEnd(seed=0, clip_samples=64000).train()
    draws, mix = front.sample_augmentations(4), sample_mixup_draws(4, 0.8, gen(12))
    with _DeviceOps() as device_ops:
        moved, moved_mix, nothing = draws_to("meta", draws, mix, None)
    assert device_ops.ops.count("_to_copy") == 1
    assert set(device_ops.ops) <= {"_to_copy", "slice", "view", "detach"}, device_ops.ops  # views only
    assert nothing is None and moved.erase_shape == draws.erase_shape
    for got, want in zip(
        [moved.shift, moved.speed.offset, moved.speed.step, moved.erase.apply, moved_mix.perm, moved_mix.lam],
        [draws.shift, draws.speed.offset, draws.speed.step, draws.erase.apply, mix.perm, mix.lam],
    ):
        assert got.device.type == "meta" and got.dtype == want.dtype and got.shape == want.shape
    assert draws_to("cpu", mix).perm is mix.perm  # the CPU keeps the draws as they are


class _AllOps(TorchDispatchMode):
    """Every operator called."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


# torch's CPU kernels of these hand float tensors to MKL's vector math, which starts a thread team per
# call (milliseconds on a busy many-core host, every training step)
_VECTOR_MATH = {"exp", "sqrt", "log", "log1p", "expm1", "sin", "cos", "tan", "tanh", "erf", "pow", "lgamma"}


def test_a_steps_host_draws_stay_off_threaded_vector_math():
    front = LogMelFrontEnd(seed=0, clip_samples=64000).train()
    with _AllOps() as called:
        front.sample_augmentations(64)
        sample_mixup_draws(64, 0.8, gen(13))
    assert called.ops and not called.ops & _VECTOR_MATH, sorted(called.ops & _VECTOR_MATH)


def test_erase_box_sizes_follow_the_rule_in_python_floats():
    """Box sides = round(sqrt(area * aspect)), round(sqrt(area / aspect)) for the first of the
    attempts that fits, with the same uniform draws, computed here with Python's math."""
    batch, height, width, attempts = 256, 20, 30, 10
    boxes = sample_erase_boxes(batch, height, width, p=1.0, attempts=attempts, generator=gen(14))
    g = gen(14)
    _u((batch,), g)  # apply
    area = (_u((batch, attempts), g, 0.02, 1 / 3) * (height * width)).tolist()
    log_aspect = _u((batch, attempts), g, math.log(0.3), math.log(1 / 0.3)).tolist()
    fitted = 0
    for b in range(batch):
        sides = [
            (round(math.sqrt(a * math.exp(r))), round(math.sqrt(a / math.exp(r))))
            for a, r in zip(area[b], log_aspect[b])
        ]
        fits = [(h, w) for h, w in sides if h < height and w < width]
        assert bool(boxes.apply[b]) == bool(fits)
        if fits:
            fitted += 1
            assert (int(boxes.height[b]), int(boxes.width[b])) == fits[0]
    assert fitted > batch // 2


def test_compiled_ops_take_draws_that_are_views_of_one_buffer():
    """On a GPU a step's draws arrive as views of one byte buffer (different dtypes, one storage);
    the compiled ops (fullgraph) take them as such and agree with eager on separate tensors."""
    from dcls_audio.features.augment import _draw_tensors, _pack_bytes, _unpack_bytes, _with_tensors

    x, spec = torch.randn(4, 256, generator=gen(0)), torch.randn(4, 20, 30, generator=gen(1))
    image, target = torch.randn(4, 1, 6, 7, generator=gen(2)), (torch.rand(4, 5, generator=gen(3)) < 0.5).float()
    draws, boxes, mix = _draw_all()
    tensors = tuple(t for d in (draws, boxes, mix) for t in _draw_tensors(d))
    packed, offsets = _pack_bytes(tensors, pin=False)
    views = iter(_unpack_bytes(packed, offsets, tensors))
    as_views = [_with_tensors(d, views) for d in (draws, boxes, mix)]
    assert len({t.untyped_storage().data_ptr() for d in as_views for t in _draw_tensors(d)}) == 1
    eager = _all_ops(x, spec, image, target, draws, boxes, mix)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(_all_ops, fullgraph=True, backend="aot_eager")(x, spec, image, target, *as_views)
    finally:
        torch._dynamo.reset()
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
