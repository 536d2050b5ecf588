"""Exponential moving average of a network's weights.

The EMA copy is a plain ``deepcopy`` of the network (so its state-dict keys are the network's
and shared tensors such as DCLS positions stay shared in the copy), frozen, updated after each
optimizer step with ``ema = decay * ema + (1 - decay) * weight`` on floating parameters and
buffers; integer buffers are copied.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["make_ema", "update_ema"]


def make_ema(net: nn.Module) -> nn.Module:
    """A frozen copy of ``net`` (no gradients), for :func:`update_ema`."""
    ema = copy.deepcopy(net)
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """One EMA step of ``ema`` towards ``net`` (same architecture), in place."""
    ema_tensors, net_tensors = [], []
    for e, n in zip(
        [*ema.parameters(), *ema.buffers()], [*net.parameters(), *net.buffers()], strict=True
    ):
        if e.dtype.is_floating_point:
            ema_tensors.append(e)
            net_tensors.append(n.detach().to(e.dtype))
        else:
            e.copy_(n)
    if ema_tensors:
        torch._foreach_lerp_(ema_tensors, net_tensors, 1.0 - decay)
