"""Exponential moving average of a network's weights.

The EMA copy is a plain ``deepcopy`` of the network (so its state-dict keys are the network's
and shared tensors such as DCLS positions stay shared in the copy), frozen, updated after each
optimizer step with ``ema = decay * ema + (1 - decay) * weight`` on floating parameters and
buffers; integer buffers are copied.

The (EMA, network) tensor pairs are collected once per pair of modules and reused: each step
is then one ``_foreach_lerp_`` and one ``_foreach_copy_``. The pairs are collected again when a
tensor's storage moved (``.to(device)``, ``.half()``, ...) or another network is passed;
``load_state_dict`` copies in place and keeps them. After replacing a parameter or submodule of
either network, call :func:`forget_ema_pairs`.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["forget_ema_pairs", "make_ema", "update_ema"]


@dataclass
class _Pairs:
    """The tensors one EMA step reads and writes, and what they were collected from."""

    net: weakref.ref
    ema_floats: list[Tensor]  # lerped towards net_floats (same dtype) then net_casts (cast each step)
    net_floats: list[Tensor]
    net_casts: list[Tensor]
    ema_others: list[Tensor]  # integer / bool tensors, copied from net_others
    net_others: list[Tensor]
    data_ptrs: list[int]

    def tensors(self) -> list[Tensor]:
        return [*self.ema_floats, *self.net_floats, *self.net_casts, *self.ema_others, *self.net_others]

    def valid_for(self, net: nn.Module) -> bool:
        """Same network, and no tensor's storage was replaced since the pairs were collected."""
        return self.net() is net and [t.data_ptr() for t in self.tensors()] == self.data_ptrs


_PAIRS: weakref.WeakKeyDictionary[nn.Module, _Pairs] = weakref.WeakKeyDictionary()


def make_ema(net: nn.Module) -> nn.Module:
    """A frozen copy of ``net`` (no gradients), for :func:`update_ema`."""
    ema = copy.deepcopy(net)
    ema.requires_grad_(False)
    return ema


def forget_ema_pairs(ema: nn.Module) -> None:
    """Drop the tensor pairs cached for ``ema``; the next :func:`update_ema` collects them anew."""
    _PAIRS.pop(ema, None)


def _collect(ema: nn.Module, net: nn.Module) -> _Pairs:
    same, cast, others = [], [], []
    for e, n in zip([*ema.parameters(), *ema.buffers()], [*net.parameters(), *net.buffers()], strict=True):
        if not e.dtype.is_floating_point:
            others.append((e, n))
        elif n.dtype == e.dtype:
            same.append((e, n))
        else:
            cast.append((e, n))
    pairs = _Pairs(
        net=weakref.ref(net),
        ema_floats=[e for e, _ in same] + [e for e, _ in cast],
        net_floats=[n for _, n in same],
        net_casts=[n for _, n in cast],
        ema_others=[e for e, _ in others],
        net_others=[n for _, n in others],
        data_ptrs=[],
    )
    pairs.data_ptrs = [t.data_ptr() for t in pairs.tensors()]
    return pairs


def _pairs(ema: nn.Module, net: nn.Module) -> _Pairs:
    pairs = _PAIRS.get(ema)
    if pairs is None or not pairs.valid_for(net):
        pairs = _PAIRS[ema] = _collect(ema, net)
    return pairs


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """One EMA step of ``ema`` towards ``net`` (same architecture), in place."""
    pairs = _pairs(ema, net)
    if pairs.ema_floats:
        targets = pairs.net_floats
        if pairs.net_casts:
            dtypes = [e.dtype for e in pairs.ema_floats[len(targets) :]]
            targets = targets + [n.to(d) for n, d in zip(pairs.net_casts, dtypes)]
        torch._foreach_lerp_(pairs.ema_floats, targets, 1.0 - decay)
    if pairs.ema_others:
        torch._foreach_copy_(pairs.ema_others, pairs.net_others)
