"""Batch augmentations for audio tagging, run on the batch's device.

Every random decision is drawn on the CPU (a few numbers per clip) from ``generator`` (a CPU
``torch.Generator``; ``None`` uses torch's global RNG), so results do not depend on the device
and a seeded generator makes them reproducible. Only the heavy per-sample work (gathers,
masks) runs where the batch lives.

Semantics follow the upstream DCLS-Audio training pipeline:

- :func:`random_roll`: circular time shift by an integer drawn uniformly from [-S, S).
- :func:`speed_perturb`: with probability ``p`` a clip is stretched by a factor r ~ U(0.5, 1.5)
  with nearest-neighbour resampling (new length ceil(S * r)), then zero-padded at a random
  left/right split (r < 1) or cropped at a random start (r > 1) back to S samples.
- :func:`random_erase`: timm ``RandomErasing(probability=p, mode="const", max_count=1)`` per
  clip: area fraction ~ U(0.02, 1/3), log aspect ratio ~ U(log 0.3, log 1/0.3), up to 10
  attempts for a box that fits, box filled with 0.
- :func:`mixup`: one lambda ~ Beta(alpha, alpha) per batch, partner = a random permutation of
  the batch, targets smoothed as ``y * (1 - s) + s / C`` before mixing (upstream's
  ``batch_mixup_fn``). This is the smoothing timm's ``mixup_target`` gives one-hot targets
  (off = s/C, on = 1 - s + s/C) applied to multi-hot targets; timm's own ``multi_label=True``
  mode smooths towards 0.5 instead (``y * (1 - s) + s / 2``), which is not what upstream used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, low=0.0, high=1.0):
    """Float64 CPU tensor of U(low, high) draws."""
    return torch.rand(shape, generator=generator, dtype=torch.float64) * (high - low) + low


def _check_batch(x: torch.Tensor, ndim: int, name: str) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D batch, got shape {tuple(x.shape)}")


def random_roll(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Roll each clip of ``x`` (B, S) circularly in time by a random shift in [-S, S)."""
    _check_batch(x, 2, "random_roll")
    batch, length = x.shape
    shifts = torch.randint(-length, length, (batch,), generator=generator).tolist()
    out = torch.empty_like(x)
    for row, shift in enumerate(shifts):  # two slice copies per clip: cheaper than a (B, S) gather
        shift %= length
        out[row, shift:] = x[row, : length - shift]
        out[row, :shift] = x[row, length - shift:]
    return out


def _to_device(device: torch.device | str, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Small CPU tensors (the per-batch random draws) on ``device`` through one asynchronous
    pinned copy, so the host does not wait for the GPU work already queued."""
    device = torch.device(device)
    if device.type == "cpu":
        return tensors
    packed = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
    if device.type == "cuda":
        packed = packed.pin_memory()
    packed = packed.to(device, non_blocking=True)
    out, start = [], 0
    for t in tensors:
        out.append(packed[start: start + t.numel()].view(t.shape).to(t.dtype))
        start += t.numel()
    return tuple(out)


def speed_perturb(
    x: torch.Tensor,
    rates: tuple[float, float] = (0.5, 1.5),
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Speed perturbation of ``x`` (B, S) per clip with probability ``p``; returns (B, S)."""
    _check_batch(x, 2, "speed_perturb")
    batch, length = x.shape
    apply = _uniform((batch,), generator) < p
    rate = _uniform((batch,), generator, *rates)
    new_length = torch.ceil(length * rate).long()
    missing = length - new_length  # > 0: pad, < 0: crop
    pad_left = torch.floor(_uniform((batch,), generator) * (missing + 1).clamp_min(1)).long()
    crop_start = torch.floor(_uniform((batch,), generator) * (-missing).clamp_min(1)).long()
    offset = torch.where(missing > 0, -pad_left, torch.where(missing < 0, crop_start, 0))
    chosen = apply.nonzero().flatten()
    if chosen.numel() == 0:
        return x
    device = x.device
    rows, start, step, end = _to_device(
        device, chosen, offset[chosen], (1.0 / rate[chosen]).float(), new_length[chosen]
    )
    stretched = start[:, None] + torch.arange(length, device=device)[None, :]
    source = stretched.float().mul_(step[:, None]).round_().long().clamp_(0, length - 1)
    outside = (stretched < 0) | (stretched >= end[:, None])
    out = x.clone()
    out[rows] = x[rows].gather(1, source).masked_fill_(outside, 0)
    return out


@dataclass
class EraseBoxes:
    """Per-clip erase decisions (CPU tensors of shape (B,)); ``apply`` False means untouched."""

    apply: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor


def sample_erase_boxes(
    batch: int,
    height: int,
    width: int,
    p: float = 0.25,
    min_area: float = 0.02,
    max_area: float = 1 / 3,
    min_aspect: float = 0.3,
    max_aspect: float | None = None,
    attempts: int = 10,
    generator: torch.Generator | None = None,
) -> EraseBoxes:
    """Draw one timm-style random-erasing box per clip for (height, width) images."""
    max_aspect = max_aspect or 1.0 / min_aspect
    apply = _uniform((batch,), generator) <= p
    target_area = _uniform((batch, attempts), generator, min_area, max_area) * (height * width)
    aspect = torch.exp(_uniform((batch, attempts), generator, math.log(min_aspect), math.log(max_aspect)))
    box_h = torch.round(torch.sqrt(target_area * aspect)).long()
    box_w = torch.round(torch.sqrt(target_area / aspect)).long()
    fits = (box_w < width) & (box_h < height)
    first = fits.long().argmax(dim=1)
    rows = torch.arange(batch)
    box_h, box_w = box_h[rows, first], box_w[rows, first]
    top = torch.floor(_uniform((batch,), generator) * (height - box_h + 1)).long()
    left = torch.floor(_uniform((batch,), generator) * (width - box_w + 1)).long()
    return EraseBoxes(apply & fits.any(dim=1), top, left, box_h, box_w)


def erase_mask(boxes: EraseBoxes, height: int, width: int, device: torch.device | str) -> torch.Tensor:
    """Boolean mask (B, height, width), True inside each applied box."""
    top, box_h, left, box_w, apply = _to_device(
        device, boxes.top, boxes.height, boxes.left, boxes.width, boxes.apply
    )

    def span(start, size, extent):
        pos = torch.arange(extent, device=device)[None, :]
        return (pos >= start[:, None]) & (pos < (start + size)[:, None])

    rows = span(top, box_h, height) & apply[:, None]
    cols = span(left, box_w, width)
    return rows[:, :, None] & cols[:, None, :]


def random_erase(
    spec: torch.Tensor,
    p: float = 0.25,
    value: float = 0.0,
    generator: torch.Generator | None = None,
    **box_kwargs,
) -> torch.Tensor:
    """Erase one random box per clip (probability ``p``) of ``spec`` (B, [C,] H, W) with ``value``."""
    if spec.ndim not in (3, 4):
        raise ValueError(f"random_erase: expected (B, H, W) or (B, C, H, W), got {tuple(spec.shape)}")
    batch, height, width = spec.shape[0], spec.shape[-2], spec.shape[-1]
    boxes = sample_erase_boxes(batch, height, width, p=p, generator=generator, **box_kwargs)
    if not bool(boxes.apply.any()):
        return spec
    mask = erase_mask(boxes, height, width, spec.device)
    if spec.ndim == 4:
        mask = mask[:, None]
    return spec.masked_fill(mask, value)


def sample_mixup(
    batch_size: int, alpha: float = 0.8, generator: torch.Generator | None = None
) -> tuple[float, torch.Tensor]:
    """One mixup draw: ``(lam ~ Beta(alpha, alpha), partner permutation (B,))``; alpha <= 0 gives lam 1."""
    perm = torch.randperm(batch_size, generator=generator)
    if alpha <= 0:
        return 1.0, perm
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha)), perm


def smooth_targets(target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Multi-label smoothing as upstream: ``y * (1 - s) + s / C`` for targets (B, C)."""
    num_classes = target.shape[-1]
    return target * (1.0 - label_smoothing) + label_smoothing / num_classes


def mixup(
    x: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.8,
    label_smoothing: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mixup of inputs ``x`` (B, ...) and soft targets ``target`` (B, C).

    Returns ``(lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm])`` with ``y`` the
    smoothed targets (see the module docstring for the smoothing convention).
    """
    if not torch.is_floating_point(x):
        raise TypeError(f"mixup: x must be a floating tensor, got {x.dtype}")
    if target.ndim != 2 or target.shape[0] != x.shape[0]:
        raise ValueError(
            f"mixup: target must be (B, C) with B = {x.shape[0]}, got shape {tuple(target.shape)}"
        )
    lam, perm = sample_mixup(x.shape[0], alpha, generator)
    y = smooth_targets(target.float(), label_smoothing)
    if lam == 1.0:  # nothing to mix (alpha 0: smoothing only)
        return x, y
    (perm,) = _to_device(x.device, perm)
    return x * lam + x[perm] * (1.0 - lam), y * lam + y[perm.to(y.device)] * (1.0 - lam)
