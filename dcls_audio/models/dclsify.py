"""Turn the depthwise convolutions of any model into DCLS layers, as DCLS-Audio does.

Every ``nn.Conv2d`` with ``groups == in_channels == out_channels`` (optionally only those with
a given square kernel size) becomes ``Dcls2d(C, C, kernel_count, dilated_kernel_size=dks,
padding=dks // 2, groups=C, version=version)`` with weight ~ N(0, 0.02) and a zero bias
(bias kept only where the convolution had one).

Positions ``P`` and sigmas ``SIG`` are shared: consecutive replaced layers (in
``named_modules`` order) of equal width use the same ``nn.Parameter`` objects, and a layer of
another width starts a new group. Upstream starts a group only when the width grows; for
the (monotonically widening) backbones both rules give the same ties, and ours also handles
a narrowing network. A shared parameter is one tensor: ``model.parameters()`` yields it once,
``state_dict()`` repeats it under every layer's key, ``load_state_dict`` writes it once per
key (same values), and ``deepcopy`` / ``.to()`` keep the tie.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from dcls_core import Dcls1d, Dcls2_1d, Dcls2d, Dcls2dK1d, Dcls3_1d, Dcls3d

from ..errors import UsageError

__all__ = ["dcls_layers", "dcls_position_parameters", "dclsify", "fold_dcls", "is_depthwise_conv", "tied_state_keys"]

_DCLS_LAYERS = (Dcls1d, Dcls2d, Dcls3d, Dcls2_1d, Dcls3_1d, Dcls2dK1d)


def is_depthwise_conv(module: nn.Module, only_kernel_size: int | None = None) -> bool:
    """True for an ``nn.Conv2d`` with groups == in == out channels (and the given square kernel)."""
    if not isinstance(module, nn.Conv2d):
        return False
    if not (module.groups == module.in_channels == module.out_channels):
        return False
    return only_kernel_size is None or tuple(module.kernel_size) == (only_kernel_size, only_kernel_size)


def dclsify(
    model: nn.Module,
    kernel_count: int = 26,
    dilated_kernel_size: int = 23,
    version: str = "gauss",
    share_positions: bool = True,
    only_kernel_size: int | None = None,
) -> nn.Module:
    """Replace depthwise convs of ``model`` by ``Dcls2d`` in place and return ``model``.

    ``share_positions``: tie ``P``/``SIG`` within runs of equal width (see module docstring).
    ``only_kernel_size``: convert only k x k depthwise convs (FastViT: 7).
    Raises ValueError when the model has no matching convolution.
    """
    if not isinstance(dilated_kernel_size, int) or dilated_kernel_size < 1:
        raise UsageError(f"dilated_kernel_size must be a positive int, got {dilated_kernel_size!r}")
    targets = [(name, m) for name, m in model.named_modules() if is_depthwise_conv(m, only_kernel_size)]
    if not targets:
        which = f"{only_kernel_size}x{only_kernel_size} " if only_kernel_size else ""
        raise ValueError(f"dclsify: {type(model).__name__} has no {which}depthwise nn.Conv2d to convert")

    group_width, P, SIG = None, None, None
    for name, conv in targets:
        channels = conv.in_channels
        layer = Dcls2d(
            channels,
            channels,
            kernel_count=kernel_count,
            stride=conv.stride,
            padding=dilated_kernel_size // 2,
            dilated_kernel_size=dilated_kernel_size,
            groups=channels,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            version=version,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        nn.init.normal_(layer.weight, std=0.02)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
        if share_positions:
            if channels != group_width:
                group_width, P, SIG = channels, layer.P, layer.SIG
            else:
                layer.P, layer.SIG = P, SIG
        layer.requires_grad_(conv.weight.requires_grad)
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, layer)
    return model


def dcls_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, layer) of every DCLS layer in ``model``."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, _DCLS_LAYERS))


def dcls_position_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The distinct ``P`` and ``SIG`` tensors of the model, each once (for optimizer groups)."""
    seen: dict[int, nn.Parameter] = {}
    for _, layer in dcls_layers(model):
        for p in (layer.P, layer.SIG):
            if p is not None:
                seen.setdefault(id(p), p)
    return list(seen.values())


def tied_state_keys(model: nn.Module) -> list[list[str]]:
    """Groups of state-dict keys that name one shared tensor (groups of two keys or more)."""
    groups: dict[int, list[str]] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(value), []).append(key)
    return [keys for keys in groups.values() if len(keys) > 1]


@torch.no_grad()
def fold_dcls(model: nn.Module) -> nn.Module:
    """Replace every DCLS layer by the plain convolution holding its current dense kernel.

    For inference only (positions stop being learnable; the kernel is no longer rebuilt each
    forward). In place; returns ``model``. A bare DCLS layer: call its ``fold()`` instead.
    """
    if isinstance(model, _DCLS_LAYERS):
        raise TypeError("fold_dcls: pass the model holding the DCLS layers; call layer.fold() on a bare layer")
    for name, layer in list(dcls_layers(model)):
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, layer.fold())
    return model
