"""Optimizer parameter groups and the per-step warm-up + cosine learning-rate schedule.

Groups follow the DCLS-Audio recipe: weight decay on weight matrices and conv kernels only
(none on biases, other 1-D parameters, the DCLS positions ``P`` and sigmas ``SIG``, or names a
model lists in ``no_weight_decay()``), and a learning-rate factor (x5 upstream) on ``P`` and
``SIG``. Shared parameters (one ``P`` used by several layers) appear once.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from timm.optim import create_optimizer_v2
from torch import nn

from ..errors import UsageError

__all__ = [
    "FUSED_OPTIMIZERS",
    "POSITION_PARAM_NAMES",
    "build_optimizer",
    "cosine_with_warmup",
    "is_position_param",
    "param_groups",
    "scaled_lr",
]

#: timm optimizer names that are torch optimizers with a ``fused`` implementation.
FUSED_OPTIMIZERS = frozenset({"adam", "adamw"})

#: Last name segment of DCLS position parameters.
POSITION_PARAM_NAMES = ("P", "SIG")


def is_position_param(name: str) -> bool:
    """True for a DCLS position (``...P``) or sigma (``...SIG``) parameter name."""
    return name.rpartition(".")[2] in POSITION_PARAM_NAMES


def param_groups(model: nn.Module, weight_decay: float, position_lr_scale: float) -> list[dict[str, Any]]:
    """Split trainable parameters into ``decay``, ``no_decay`` and ``positions`` groups.

    Each group has ``params``, ``weight_decay``, ``lr_scale`` (multiplies the scheduled lr)
    and ``name``. Frozen parameters (``requires_grad=False``) are left out; empty groups too.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[str, dict[str, Any]] = {
        "decay": {"params": [], "weight_decay": weight_decay, "lr_scale": 1.0},
        "no_decay": {"params": [], "weight_decay": 0.0, "lr_scale": 1.0},
        "positions": {"params": [], "weight_decay": 0.0, "lr_scale": position_lr_scale},
    }
    for name, param in model.named_parameters():  # yields a shared tensor once
        if not param.requires_grad:
            continue
        if is_position_param(name):
            kind = "positions"
        elif param.ndim <= 1 or name.endswith(".bias") or name in skip:
            kind = "no_decay"
        else:
            kind = "decay"
        groups[kind]["params"].append(param)
    return [dict(g, name=n) for n, g in groups.items() if g["params"]]


def scaled_lr(lr: float, total_batch_size: int, lr_batch_size: int | None) -> float:
    """Linear scaling: ``lr`` is given for ``lr_batch_size`` clips per step (None: as is)."""
    if lr_batch_size is None:
        return lr
    return lr * total_batch_size / lr_batch_size


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    position_lr_scale: float,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """A timm optimizer (``adamw``, ``lamb``, ...) over :func:`param_groups`.

    Each group's ``lr`` starts as ``lr * lr_scale`` (a schedule then multiplies it).
    ``betas`` / ``eps``: None keeps the optimizer's default. ``fused``: torch's fused kernels
    for the optimizers that have them (:data:`FUSED_OPTIMIZERS`: one launch per step, step counts
    on the device, and a ``found_inf`` flag that skips the update); ignored for the others.
    """
    groups = param_groups(model, weight_decay, position_lr_scale)
    if not groups:
        raise UsageError("the model has no trainable parameters")
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    kwargs: dict[str, Any] = {}
    if betas is not None:
        kwargs["betas"] = tuple(betas)
    if eps is not None:
        kwargs["eps"] = eps
    if fused and name.lower() in FUSED_OPTIMIZERS:
        kwargs["fused"] = True
    try:
        return create_optimizer_v2(groups, opt=name, lr=lr, weight_decay=weight_decay, **kwargs)
    except (ValueError, AssertionError, KeyError, TypeError) as err:
        raise UsageError(f"optim.optimizer: cannot create '{name}': {err}") from None


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> float:
    """Learning rate of optimizer step ``step`` (0-based).

    Linear warm-up ``base_lr * (step + 1) / warmup_steps`` for ``step < warmup_steps``, then a
    half cosine from ``base_lr`` (at ``warmup_steps``) down to ``min_lr`` (at ``total_steps``),
    and ``min_lr`` after that.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_lambda(total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> Callable[[int], float]:
    """The schedule as a factor of ``base_lr`` (for ``torch.optim.lr_scheduler.LambdaLR``)."""

    def factor(step: int) -> float:
        return cosine_with_warmup(step, total_steps, warmup_steps, base_lr, min_lr) / base_lr

    return factor
