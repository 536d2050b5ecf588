"""Dense DCLS kernel construction: the reference implementation in plain torch (any device).

A DCLS kernel is a sum of ``kernel_count`` weights, each spread over a dense grid of size
``dilated_kernel_size`` by an interpolation centred on a learned (fractional) position.
Every supported interpolation is a product of one 1-D factor per learned axis, so the dense
kernel is an einsum over ``kernel_count`` of per-axis factors. This never materialises the
``(positions x out x in x count)`` tensors of the reference package; memory is that of the
per-axis factors plus the dense kernel itself.

Interpolations (``d`` = grid index minus position, ``s`` = sigma):

* ``v0``    bilinear weights at ``floor(p)`` and ``floor(p) + 1``; not normalised.
* ``v1``    triangle ``relu(1 - |d|)``; normalised.
* ``max``   ``relu(|s| + 1 - |d|)``; normalised.
* ``gauss`` ``exp(-0.5 * (d / (|s| + 0.27))**2)``; normalised.

Normalised means each weight's interpolation is divided by (its sum over the kernel + 1e-7).

Axis convention (kept from ``dcls`` 0.1.1 so released weights keep their meaning): in
``v1``/``max``/``gauss`` ``P[0]`` moves along the LAST kernel axis, ``P[1]`` along the one
before it, and so on; in ``v0`` ``P[i]`` moves along axis ``i``, except for 3-D where
``P[1]`` moves along the last axis and ``P[2]`` along the middle one. Each position is offset
by half the size of the axis it moves along, so a position of 0 is the kernel centre (for
non-square kernels this differs from 0.1.1, which offsets ``P[i]`` by ``size[i] // 2``).
"""

from __future__ import annotations

import string
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = [
    "VERSIONS",
    "NORMALISED_VERSIONS",
    "SIGMA_VERSIONS",
    "GAUSS_SIGMA_OFFSET",
    "NORM_EPS",
    "position_axes",
    "axis_factor",
    "construct_kernel",
]

VERSIONS = ("v0", "v1", "max", "gauss")
NORMALISED_VERSIONS = ("v1", "max", "gauss")
SIGMA_VERSIONS = ("max", "gauss")
GAUSS_SIGMA_OFFSET = 0.27
NORM_EPS = 1e-7


def position_axes(num_axes: int, version: str) -> tuple[int, ...]:
    """Kernel axis that ``P[i]`` moves along, for each ``i`` (see the module docstring)."""
    if version == "v0":
        if num_axes == 3:
            return (0, 2, 1)
        return tuple(range(num_axes))
    return tuple(reversed(range(num_axes)))


def axis_factor(p: Tensor, sig: Optional[Tensor], size: int, version: str) -> Tensor:
    """One axis' interpolation factors.

    Args:
        p: positions ``(*prefix, count)``, 0 = centre of the axis.
        sig: sigmas of the same shape (``max``/``gauss``) or None.
        size: number of grid points along the axis.
        version: ``v0``, ``v1``, ``max`` or ``gauss``.

    Returns:
        ``(*prefix, count, size)`` un-normalised factors.
    """
    grid = torch.arange(size, device=p.device, dtype=p.dtype)
    centre = (p + (size // 2)).unsqueeze(-1)
    if version == "v0":
        lower = centre.detach().floor()
        frac = centre - lower
        at_lower = (grid == lower).to(p.dtype)
        at_upper = (grid == lower + 1).to(p.dtype)
        return at_lower * (1 - frac) + at_upper * frac
    dist = grid - centre
    if version == "v1":
        return (1 - dist.abs()).relu()
    if version == "max":
        return (sig.abs().unsqueeze(-1) + 1.0 - dist.abs()).relu()
    if version == "gauss":
        scaled = dist / (sig.abs().unsqueeze(-1) + GAUSS_SIGMA_OFFSET)
        return (-0.5 * scaled * scaled).exp()
    raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")


def construct_kernel(
    weight: Tensor,
    P: Tensor,
    SIG: Optional[Tensor],
    dilated_kernel_size: Sequence[int],
    version: str = "gauss",
) -> Tensor:
    """Build the dense DCLS kernel.

    Args:
        weight: ``(*prefix, count)``; prefix is ``(out, in/groups)`` for the N-d layers and
            ``(out, in/groups, *dense)`` for the layers with dense dims.
        P: ``(n, *prefix, count)`` positions, one row per learned axis.
        SIG: like ``P`` for ``max``/``gauss``, else None.
        dilated_kernel_size: ``n`` sizes of the learned kernel axes, in kernel-axis order.
        version: ``v0``, ``v1``, ``max`` or ``gauss`` (which kernel axis each ``P[i]`` moves
            along: :func:`position_axes`).

    Returns:
        ``(*prefix, *dilated_kernel_size)`` dense kernel in the dtype of ``weight``.
    """
    sizes = tuple(int(s) for s in dilated_kernel_size)
    n = len(sizes)
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    if P.shape[0] != n or P.shape[1:] != weight.shape:
        raise ValueError(f"P must have shape ({n}, *{tuple(weight.shape)}), got {tuple(P.shape)}")
    if version in SIGMA_VERSIONS and (SIG is None or SIG.shape != P.shape):
        raise ValueError(f"version {version!r} needs SIG of shape {tuple(P.shape)}")
    axes = position_axes(n, version)
    device_type = weight.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        factors = [
            axis_factor(P[i], SIG[i] if version in SIGMA_VERSIONS else None, sizes[axes[i]], version) for i in range(n)
        ]
        scaled_weight = weight
        if version in NORMALISED_VERSIONS:
            total = factors[0].sum(-1)
            for f in factors[1:]:
                total = total * f.sum(-1)
            scaled_weight = weight / (total + NORM_EPS)
        letters = string.ascii_lowercase[:n]
        operands = ["...z"] + [f"...z{letters[axes[i]]}" for i in range(n)]
        equation = ",".join(operands) + "->..." + letters
        return torch.einsum(equation, scaled_weight, *factors)
