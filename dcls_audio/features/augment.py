"""Batch augmentations for audio tagging: host draws, then batched device ops without host syncs.

Each augmentation has two halves:

- ``sample_*`` draws its random numbers on the CPU (a few per clip) from ``generator`` (a CPU
  ``torch.Generator``; ``None`` uses torch's global RNG). The draws depend only on the
  generator, never on the device, so a seeded generator reproduces a run on any device.
- ``apply_*`` is a pure, branch-free function of the batch and the draws (as device tensors):
  no per-clip Python loop, no ``.item()`` / ``.tolist()`` / ``nonzero()`` / boolean-mask
  indexing, so it queues its kernels without waiting for the device, compiles with
  ``torch.compile(fullgraph=True)`` and can be replayed in a CUDA graph.

Between the two, :func:`move_draws` packs a step's draws (their bytes) into one pinned buffer and
sends it with a single ``non_blocking`` copy (the caching host allocator keeps the pinned buffer
alive until the copy has run, so the host never waits); on the device every draw is a view of
that buffer, so moving them launches nothing else. :func:`draws_to` moves several draw objects
(a step's front-end and mixup draws) through that one copy. The convenience functions
:func:`random_roll`, :func:`speed_perturb`, :func:`random_erase` and :func:`mixup` do all three.

Semantics follow the upstream DCLS-Audio training pipeline:

- roll: circular time shift by an integer drawn uniformly from [-S, S).
- speed perturbation: with probability ``p`` a clip is stretched by a factor r ~ U(0.5, 1.5)
  with nearest-neighbour resampling (new length ceil(S * r)), then zero-padded at a random
  left/right split (r < 1) or cropped at a random start (r > 1) back to S samples.
- random erasing: timm ``RandomErasing(probability=p, mode="const", max_count=1)`` per clip:
  area fraction ~ U(0.02, 1/3), log aspect ratio ~ U(log 0.3, log 1/0.3), up to 10 attempts
  for a box that fits, box filled with 0.
- mixup: one lambda ~ Beta(alpha, alpha) per batch, partner = a random permutation of the
  batch, targets smoothed as ``y * (1 - s) + s / C`` before mixing (upstream's
  ``batch_mixup_fn``). This is the smoothing timm's ``mixup_target`` gives one-hot targets
  (off = s/C, on = 1 - s + s/C) applied to multi-hot targets; timm's own ``multi_label=True``
  mode smooths towards 0.5 instead (``y * (1 - s) + s / 2``), which is not what upstream used.

Roll and speed perturbation compose into one gather (:func:`apply_time_warp`): the output
sample t of a rolled-then-stretched clip is input sample ``(source(t) - shift) mod S``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "EraseBoxes",
    "FrontEndDraws",
    "MixupDraws",
    "SpeedDraws",
    "apply_erase",
    "apply_mixup",
    "apply_time_warp",
    "draws_to",
    "erase_mask",
    "mixup",
    "move_draws",
    "random_erase",
    "random_roll",
    "sample_erase_boxes",
    "sample_front_end",
    "sample_mixup",
    "sample_roll",
    "sample_speed",
    "smooth_targets",
    "speed_perturb",
]


@dataclass
class AugmentConfig:
    """Switches and parameters of the front end's train-time augmentations: the one place of their
    defaults (the upstream values), which the functions below also default to."""

    roll: bool = True
    speed: bool = True
    speed_rates: tuple[float, float] = (0.5, 1.5)
    speed_p: float = 0.5
    erase: bool = True
    erase_p: float = 0.25

    @classmethod
    def from_any(cls, value: bool | Mapping[str, Any] | AugmentConfig | None) -> AugmentConfig | None:
        """``True`` -> defaults, ``False``/``None`` -> no augmentation, a dict -> overrides."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"augment: unknown option(s) {unknown}; known: {sorted(known)}")
            return cls(**value)
        raise TypeError(f"augment must be a bool, a dict or an AugmentConfig, got {type(value).__name__}")


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, low=0.0, high=1.0) -> Tensor:
    """Float64 CPU tensor of U(low, high) draws."""
    return torch.rand(shape, generator=generator, dtype=torch.float64) * (high - low) + low


def _host_math(fn: Any, t: Tensor) -> Tensor:
    """``fn`` (a numpy ufunc such as ``np.exp``) of a CPU float tensor, single-threaded.

    torch's CPU ``exp``/``sqrt``/``log``... of float tensors go to MKL's vector math, which starts a
    thread team even for a few hundred values: on a GPU host whose cores the loader's workers keep
    busy, milliseconds of host time per call, every training step (``benchmarks/NOTES_layers.md``,
    run 12); numpy's libm computes the same values without threads."""
    return torch.from_numpy(fn(t.numpy()))


def _check_batch(x: Tensor, ndim: int, name: str) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D batch, got shape {tuple(x.shape)}")


#: byte alignment of each draw in the packed buffer: every dtype's view of it is aligned, and
#: to the 16 bytes compiled code (Triton, the inductor) assumes of its inputs
_ALIGN = 16


def move_draws(device: torch.device | str, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Small CPU tensors (a step's random draws) on ``device`` through ONE ``non_blocking`` copy of
    their bytes (from pinned memory on CUDA); each comes back with its shape, dtype and values, as
    a view of the copied buffer (no further device work). On the CPU the tensors are returned as
    they are."""
    device = torch.device(device)
    if device.type == "cpu" or not tensors:
        return tensors
    packed, offsets = _pack_bytes(tensors, pin=device.type == "cuda")
    return _unpack_bytes(packed.to(device, non_blocking=True), offsets, tensors)


def _pack_bytes(tensors: tuple[Tensor, ...], pin: bool) -> tuple[Tensor, list[int]]:
    """The tensors' bytes in one uint8 CPU tensor, each at an offset aligned to :data:`_ALIGN`
    (returned with the offsets); the buffer's own start is aligned by the allocator."""
    offsets, total = [], 0
    for t in tensors:
        offsets.append(total)
        total += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
    packed = torch.empty(total, dtype=torch.uint8, pin_memory=pin)
    for t, start in zip(tensors, offsets):
        if t.numel():
            raw = t.detach().reshape(-1).view(torch.uint8)
            packed[start : start + raw.numel()].copy_(raw)
    return packed, offsets


def _unpack_bytes(packed: Tensor, offsets: list[int], like: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Views of ``packed`` (from :func:`_pack_bytes`) with the shapes and dtypes of ``like``."""
    return tuple(
        packed[start : start + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
        for t, start in zip(like, offsets)
    )


def _draw_tensors(obj) -> list[Tensor]:
    """The tensors of a draws dataclass in field order (nested draws included, None skipped)."""
    out: list[Tensor] = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Tensor):
            out.append(value)
        elif is_dataclass(value):
            out.extend(_draw_tensors(value))
    return out


def _with_tensors(obj, moved):
    """A copy of the draws dataclass ``obj`` whose tensors are the next ones of ``moved``, in
    :func:`_draw_tensors`' order."""
    values = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Tensor):
            value = next(moved)
        elif is_dataclass(value):
            value = _with_tensors(value, moved)
        values[f.name] = value
    return type(obj)(**values)


def draws_to(device: torch.device | str, *draws):
    """Draw objects (:class:`FrontEndDraws`, :class:`MixupDraws`, ... or None) on ``device``, all
    through one :func:`move_draws` copy; returns them in order (None stays None). One object comes
    back as itself, not in a tuple."""
    tensors = [t for d in draws if d is not None for t in _draw_tensors(d)]
    moved = iter(move_draws(device, *tensors))
    out = tuple(None if d is None else _with_tensors(d, moved) for d in draws)
    return out[0] if len(out) == 1 else out


# ----------------------------------------------------------------------------- roll + speed
def sample_roll(batch: int, length: int, generator: torch.Generator | None = None) -> Tensor:
    """Circular shifts (B,) int64, uniform in [-length, length)."""
    return torch.randint(-length, length, (batch,), generator=generator)


@dataclass
class SpeedDraws:
    """Per-clip speed perturbation, (B,) each. Output sample t reads the input at
    ``round((offset + t) * step)`` when ``0 <= offset + t < end``, else 0. Clips left alone
    have offset 0, step 1, end S (the identity)."""

    offset: Tensor  # int64
    step: Tensor  # float32: 1 / rate
    end: Tensor  # int64: stretched length ceil(S * rate)

    def to(self, device: torch.device | str) -> SpeedDraws:
        return draws_to(device, self)


def sample_speed(
    batch: int,
    length: int,
    rates: tuple[float, float] = AugmentConfig.speed_rates,
    p: float = AugmentConfig.speed_p,
    generator: torch.Generator | None = None,
) -> SpeedDraws:
    """Draw a speed perturbation per clip (applied with probability ``p``)."""
    apply = _uniform((batch,), generator) < p
    rate = _uniform((batch,), generator, *rates)
    new_length = torch.ceil(length * rate).long()
    missing = length - new_length  # > 0: pad, < 0: crop
    pad_left = torch.floor(_uniform((batch,), generator) * (missing + 1).clamp_min(1)).long()
    crop_start = torch.floor(_uniform((batch,), generator) * (-missing).clamp_min(1)).long()
    offset = torch.where(missing > 0, -pad_left, torch.where(missing < 0, crop_start, 0))
    return SpeedDraws(
        offset=torch.where(apply, offset, 0),
        step=torch.where(apply, (1.0 / rate).float(), torch.ones((), dtype=torch.float32)),
        end=torch.where(apply, new_length, length),
    )


def apply_time_warp(x: Tensor, shift: Tensor | None = None, speed: SpeedDraws | None = None) -> Tensor:
    """Roll each clip of ``x`` (B, S) by ``shift`` (B,) then speed-perturb it by ``speed``; one gather.

    ``out[b, t] = x[b, (t - shift[b]) mod S]`` for the roll alone; with ``speed``, t is first
    mapped to ``round((offset + t) * step)`` (clamped to [0, S-1]) and samples outside
    ``[0, end)`` of the stretched clip are 0. Index arithmetic is int32 / float32 as in the
    upstream code, so outputs are exact.
    """
    _check_batch(x, 2, "apply_time_warp")
    if shift is None and speed is None:
        return x
    length = x.shape[1]
    t = torch.arange(length, device=x.device, dtype=torch.int32)[None, :]
    outside = None
    if speed is not None:
        stretched = t + speed.offset.to(torch.int32)[:, None]
        source = stretched.float().mul_(speed.step.float()[:, None]).round_().clamp_(0, length - 1).to(torch.int32)
        outside = (stretched < 0) | (stretched >= speed.end.to(torch.int32)[:, None])
    else:
        source = t
    if shift is not None:
        source = torch.remainder(source - shift.to(torch.int32)[:, None], length)
    out = x.gather(1, source.expand(x.shape[0], length).long())
    return out if outside is None else out.masked_fill_(outside, 0)


def random_roll(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Roll each clip of ``x`` (B, S) circularly in time by a random shift in [-S, S)."""
    _check_batch(x, 2, "random_roll")
    (shift,) = move_draws(x.device, sample_roll(x.shape[0], x.shape[1], generator))
    return apply_time_warp(x, shift=shift)


def speed_perturb(
    x: Tensor,
    rates: tuple[float, float] = AugmentConfig.speed_rates,
    p: float = AugmentConfig.speed_p,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Speed perturbation of ``x`` (B, S) per clip with probability ``p``; returns (B, S)."""
    _check_batch(x, 2, "speed_perturb")
    speed = sample_speed(x.shape[0], x.shape[1], rates, p, generator).to(x.device)
    return apply_time_warp(x, speed=speed)


# ----------------------------------------------------------------------------- random erasing
@dataclass
class EraseBoxes:
    """Per-clip erase boxes, (B,) each; ``apply`` False means the clip is left untouched."""

    apply: Tensor  # bool
    top: Tensor  # int64
    left: Tensor
    height: Tensor
    width: Tensor

    def to(self, device: torch.device | str) -> EraseBoxes:
        return draws_to(device, self)


def sample_erase_boxes(
    batch: int,
    height: int,
    width: int,
    p: float = AugmentConfig.erase_p,
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
    aspect = _host_math(np.exp, _uniform((batch, attempts), generator, math.log(min_aspect), math.log(max_aspect)))
    box_h = torch.round(_host_math(np.sqrt, target_area * aspect)).long()
    box_w = torch.round(_host_math(np.sqrt, target_area / aspect)).long()
    fits = (box_w < width) & (box_h < height)
    first = fits.long().argmax(dim=1)
    rows = torch.arange(batch)
    box_h, box_w = box_h[rows, first], box_w[rows, first]
    top = torch.floor(_uniform((batch,), generator) * (height - box_h + 1)).long()
    left = torch.floor(_uniform((batch,), generator) * (width - box_w + 1)).long()
    return EraseBoxes(apply & fits.any(dim=1), top, left, box_h, box_w)


def erase_mask(boxes: EraseBoxes, height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """Boolean mask (B, height, width), True inside each applied box (``boxes`` on ``device``)."""
    device = boxes.top.device if device is None else torch.device(device)
    rows = torch.arange(height, device=device)[None, :]
    cols = torch.arange(width, device=device)[None, :]
    in_rows = (rows >= boxes.top[:, None]) & (rows < (boxes.top + boxes.height)[:, None]) & boxes.apply[:, None]
    in_cols = (cols >= boxes.left[:, None]) & (cols < (boxes.left + boxes.width)[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :]


def apply_erase(spec: Tensor, boxes: EraseBoxes, value: float = 0.0) -> Tensor:
    """``spec`` (B, [C,] H, W) with each applied box (on ``spec``'s device) filled with ``value``;
    one box spans all channels."""
    if spec.ndim not in (3, 4):
        raise ValueError(f"random_erase: expected (B, H, W) or (B, C, H, W), got {tuple(spec.shape)}")
    mask = erase_mask(boxes, spec.shape[-2], spec.shape[-1], spec.device)
    if spec.ndim == 4:
        mask = mask[:, None]
    return spec.masked_fill(mask, value)


def random_erase(
    spec: Tensor,
    p: float = AugmentConfig.erase_p,
    value: float = 0.0,
    generator: torch.Generator | None = None,
    **box_kwargs,
) -> Tensor:
    """Erase one random box per clip (probability ``p``) of ``spec`` (B, [C,] H, W) with ``value``."""
    if spec.ndim not in (3, 4):
        raise ValueError(f"random_erase: expected (B, H, W) or (B, C, H, W), got {tuple(spec.shape)}")
    batch, height, width = spec.shape[0], spec.shape[-2], spec.shape[-1]
    boxes = sample_erase_boxes(batch, height, width, p=p, generator=generator, **box_kwargs)
    return apply_erase(spec, boxes.to(spec.device), value)


# ----------------------------------------------------------------------------- front end
@dataclass
class FrontEndDraws:
    """One step's draws for the front end's augmentations; a field is None when that
    augmentation is off. ``erase_shape`` is the (H, W) the boxes were drawn for."""

    shift: Tensor | None = None
    speed: SpeedDraws | None = None
    erase: EraseBoxes | None = None
    erase_shape: tuple[int, int] | None = None

    def to(self, device: torch.device | str) -> FrontEndDraws:
        """All draws on ``device`` through one copy."""
        return draws_to(device, self)


def sample_front_end(
    batch: int,
    length: int,
    roll: bool,
    speed: tuple[tuple[float, float], float] | None,
    erase: tuple[tuple[int, int], float] | None,
    generator: torch.Generator | None = None,
) -> FrontEndDraws:
    """The front end's draws in its order: roll, speed ``(rates, p)``, erase ``((H, W), p)``.

    Drawn in the same order as :func:`random_roll`, :func:`speed_perturb` and
    :func:`random_erase` called one after the other on one generator, so both give equal outputs.
    """
    shift = sample_roll(batch, length, generator) if roll else None
    speed_draws = sample_speed(batch, length, speed[0], speed[1], generator) if speed is not None else None
    boxes, shape = None, None
    if erase is not None:
        shape = (int(erase[0][0]), int(erase[0][1]))
        boxes = sample_erase_boxes(batch, *shape, p=erase[1], generator=generator)
    return FrontEndDraws(shift, speed_draws, boxes, shape)


# ----------------------------------------------------------------------------- mixup
@dataclass
class MixupDraws:
    """One batch's mixup: ``perm`` (B,) int64 partners, ``lam`` and ``1 - lam`` as 0-d float32
    (both computed in float64 on the host, as the Python-float formula of upstream)."""

    perm: Tensor
    lam: Tensor
    one_minus_lam: Tensor

    def to(self, device: torch.device | str) -> MixupDraws:
        return draws_to(device, self)


def sample_mixup(batch_size: int, alpha: float, generator: torch.Generator | None = None) -> tuple[float, Tensor]:
    """One mixup draw: ``(lam ~ Beta(alpha, alpha), partner permutation (B,))``; alpha <= 0 gives lam 1."""
    perm = torch.randperm(batch_size, generator=generator)
    if alpha <= 0:
        return 1.0, perm
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))  # a CPU tensor: no device sync
    return float(np.random.default_rng(seed).beta(alpha, alpha)), perm


def sample_mixup_draws(batch_size: int, alpha: float, generator: torch.Generator | None = None) -> MixupDraws:
    """:func:`sample_mixup` as a :class:`MixupDraws` (CPU tensors)."""
    lam, perm = sample_mixup(batch_size, alpha, generator)
    return MixupDraws(perm, torch.tensor(lam, dtype=torch.float32), torch.tensor(1.0 - lam, dtype=torch.float32))


def smooth_targets(target: Tensor, label_smoothing: float) -> Tensor:
    """Multi-label smoothing as upstream: ``y * (1 - s) + s / C`` for targets (B, C)."""
    num_classes = target.shape[-1]
    return target * (1.0 - label_smoothing) + label_smoothing / num_classes


def _check_mixup(x: Tensor, target: Tensor) -> None:
    if not torch.is_floating_point(x):
        raise TypeError(f"mixup: x must be a floating tensor, got {x.dtype}")
    if target.ndim != 2 or target.shape[0] != x.shape[0]:
        raise ValueError(f"mixup: target must be (B, C) with B = {x.shape[0]}, got shape {tuple(target.shape)}")


def apply_mixup(x: Tensor, target: Tensor, draws: MixupDraws | None, label_smoothing: float) -> tuple[Tensor, Tensor]:
    """``(lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm])`` with ``y`` the smoothed
    float targets (B, C); ``draws`` None: smoothing only. ``draws`` on ``x``'s device."""
    _check_mixup(x, target)
    y = smooth_targets(target.float(), label_smoothing)
    if draws is None:
        return x, y
    perm = draws.perm
    x_mixed = x * draws.lam.to(x.dtype) + x.index_select(0, perm) * draws.one_minus_lam.to(x.dtype)
    y_mixed = y * draws.lam + y.index_select(0, perm) * draws.one_minus_lam
    return x_mixed, y_mixed


def mixup(
    x: Tensor,
    target: Tensor,
    alpha: float,
    label_smoothing: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Batch mixup of inputs ``x`` (B, ...) and soft targets ``target`` (B, C) (see
    :func:`apply_mixup`); alpha <= 0: smoothing only."""
    _check_mixup(x, target)
    draws = sample_mixup_draws(x.shape[0], alpha, generator).to(x.device) if alpha > 0 else None
    return apply_mixup(x, target, draws, label_smoothing)
