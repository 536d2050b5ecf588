"""Fused construction of DCLS kernels with one to three learned axes, one Triton launch each way.

Same function as :func:`dcls_core.construction.reference.construct_kernel`. Per kernel slot
``q`` (an ``(out, in/groups, *dense)`` index) the per-axis factors ``fy (count, kH)`` and
``fx (count, kW)`` are computed in registers and ``kernel = (ws * fy)^T @ fx`` with
``ws = weight / (sum fx * sum fy + 1e-7)`` (``v0``: ``ws = weight``); with one learned axis ``fy``
is a unit row; with three, each ``(kH, kW)`` plane ``d`` is that product with ``ws * fz[:, d]``.
The backward launch recomputes the factors and writes the gradients of ``weight``, ``P`` and
``SIG``, replacing the many small operations of the reference's autograd graph and their
intermediates. float32 parameters on CUDA; the GPU programs (:mod:`.programs`) are imported on
first use. Eagerly this is an ``autograd.Function``; under ``torch.compile`` the programs run as
``torch.library`` custom ops (:func:`dcls_core._custom_op.register_op`).

Dispatch contract: :func:`supports` (what it computes), :func:`pays` (where it beats the
reference), :func:`construct_kernel_fused` (the function).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .._custom_op import register_op
from .._triton import launch, next_power_of_2, triton_available
from .reference import SIGMA_VERSIONS, VERSIONS, position_axes

__all__ = [
    "MAX_COUNT",
    "MAX_SIZE",
    "MIN_COUNT",
    "Placement",
    "construct_kernel_fused",
    "launch_backward",
    "launch_forward",
    "pays",
    "places",
    "supports",
]

VERSION_CODES = {"v0": 0, "v1": 1, "max": 2, "gauss": 3}
MAX_COUNT = 256
MAX_SIZE = 128
MIN_COUNT = 2  # kernel_count 1 (learnable delays): one tiny program per (out, in) pair loses to einsum


def _programs():
    """The forward and backward GPU programs (imports Triton)."""
    from . import programs

    return programs.construct_fwd, programs.construct_bwd


def _axis_rows(n: int, version: str) -> tuple[int, int, int]:
    """Rows of ``P`` that move along the (height, width, depth) kernel axes; with one axis
    the same row for height and width, with fewer than three the height row for depth."""
    axes = position_axes(n, version)
    if n == 3:
        return axes.index(1), axes.index(2), axes.index(0)
    return axes.index(0), axes.index(n - 1), axes.index(0)


Placement = tuple[Sequence[int], Sequence[int]]  # (transform sizes, paddings) per learned axis


def _meta(count: int, sizes: Sequence[int], version: str, has_sig: bool, placement: Optional[Placement] = None) -> dict:
    KD = int(sizes[0]) if len(sizes) == 3 else 1
    KH, KW = _pair(sizes[-2:], 1)
    meta = dict(
        KD=KD,
        BKD=max(16, next_power_of_2(KD)),
        KH=KH,
        KW=KW,
        BMC=max(16, next_power_of_2(count)),
        BKH=max(16, next_power_of_2(KH)),
        BKW=max(16, next_power_of_2(KW)),
        VERSION=VERSION_CODES[version],
        HAS_SIG=has_sig,
        NAX=len(sizes),
        PLACED=placement is not None,
        LH=1,
        LW=1,
        BLH=16,
        BLW=16,
        num_warps=2,
    )
    if placement is not None:
        if len(sizes) > 2:
            raise ValueError("placement: one or two learned axes only")
        LH, LW = _pair(placement[0], 1)
        meta.update(LH=LH, LW=LW, BLH=max(16, next_power_of_2(LH)), BLW=max(16, next_power_of_2(LW)))
        meta["num_warps"] = 8 if meta["BLH"] * meta["BLW"] >= 4096 else 4
    return meta


def _pair(values: Sequence[int], unit: int) -> tuple[int, int]:
    """(height, width) values of one or two axes; one axis: ``unit`` for the height."""
    return (unit, int(values[0])) if len(values) == 1 else (int(values[0]), int(values[1]))


def _pads(placement: Optional[Placement]) -> tuple[int, int]:
    return (0, 0) if placement is None else _pair(placement[1], 0)


def _flat_params(weight: Tensor, P: Tensor, SIG: Optional[Tensor], n: int, version: str) -> tuple:
    """``(count, Q, weight, P, SIG or P, rows)`` as the programs read them: ``Q`` kernel slots of
    ``count`` elements, ``P`` and ``SIG`` contiguous ``(n, *weight.shape)``, read as ``n`` rows of
    ``Q * count``; ``rows`` = the rows of the (height, width, depth) axes as the programs'
    ``RH``, ``RW``, ``RD`` (no views: each view is one more host operation per call)."""
    count = weight.shape[-1]
    Q = weight.numel() // count
    p = P.contiguous()
    s = SIG.contiguous() if SIG is not None else p
    rh, rw, rd = _axis_rows(n, version)
    return count, Q, weight.contiguous(), p, s, dict(ROW=Q * count, RH=rh, RW=rw, RD=rd)


def launch_forward(
    weight: Tensor,
    P: Tensor,
    SIG: Optional[Tensor],
    sizes: Sequence[int],
    version: str,
    placement: Optional[Placement] = None,
) -> Tensor:
    """Run the forward program: the ``(*prefix, *sizes)`` float32 kernel or, with ``placement =
    (L, padding)``, its circular ``(*prefix, *L)`` plane for the FFT convolution (tap ``i`` at
    ``(padding - i) mod L`` per axis, as :func:`dcls_core.conv.fft.conv.placed_kernel`)."""
    fwd, _ = _programs()
    count, Q, w, p, s, rows = _flat_params(weight, P, SIG, len(sizes), version)
    shape = sizes if placement is None else placement[0]
    kernel = torch.empty((*weight.shape[:-1], *shape), device=weight.device, dtype=torch.float32)
    meta = _meta(count, sizes, version, SIG is not None, placement)
    launch(fwd, (Q,), (w, p, s, kernel), count, *_pads(placement), **rows, **meta)
    return kernel


def launch_backward(
    grad: Tensor,
    weight: Tensor,
    P: Tensor,
    SIG: Optional[Tensor],
    sizes: Sequence[int],
    version: str,
    placement: Optional[Placement] = None,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Run the backward program: gradients of ``weight``, ``P`` and ``SIG`` (None without SIG);
    ``grad`` is that of the kernel, or of its placed plane with ``placement``."""
    _, bwd = _programs()
    count, Q, w, p, s, rows = _flat_params(weight, P, SIG, len(sizes), version)
    dw = torch.empty(weight.shape, device=w.device, dtype=torch.float32)
    dP = torch.empty(P.shape, device=w.device, dtype=torch.float32)
    dS = torch.empty(P.shape, device=w.device, dtype=torch.float32) if SIG is not None else dP
    launch(
        bwd,
        (Q,),
        (w, p, s, grad.contiguous().float(), dw, dP, dS),
        count,
        *_pads(placement),
        **rows,
        **_meta(count, sizes, version, SIG is not None, placement),
    )
    return dw, dP, (dS if SIG is not None else None)


def _forward(weight: Tensor, P: Tensor, SIG: Optional[Tensor], sizes: list[int], version: str) -> Tensor:
    return launch_forward(weight, P, SIG, sizes, version)


def _forward_fake(weight, P, SIG, sizes, version):
    return weight.new_empty((*weight.shape[:-1], *sizes))


def _backward(
    grad: Tensor,
    weight: Tensor,
    P: Tensor,
    SIG: Optional[Tensor],
    sizes: list[int],
    version: str,
    need_w: bool,
    need_p: bool,
    need_s: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """One launch writes all three gradients; those not wanted are handed back empty."""
    dw, dP, dS = launch_backward(grad, weight, P, SIG, sizes, version)
    return (
        dw if need_w else weight.new_empty(0),
        dP if need_p else P.new_empty(0),
        dS if need_s and dS is not None else weight.new_empty(0) if SIG is None else SIG.new_empty(0),
    )


_construct = register_op("fused_construct", _forward, _backward, _forward_fake, num_tensors=3, device_types="cuda")


def places(sizes: Sequence[int]) -> bool:
    """True if the programs can write the placed plane of these transform sizes (one register block)."""
    return max(sizes) <= MAX_SIZE


def supports(
    weight: Tensor, P: Tensor, SIG: Optional[Tensor], dilated_kernel_size: Sequence[int], version: str
) -> bool:
    """True if :func:`construct_kernel_fused` builds this kernel (1 to 3 learned axes, float32, CUDA)."""
    sizes = tuple(dilated_kernel_size)
    return (
        len(sizes) in (1, 2, 3)
        and version in VERSIONS
        and weight.is_cuda
        and weight.dtype == P.dtype == torch.float32
        and (SIG.dtype == torch.float32 if SIG is not None else version not in SIGMA_VERSIONS)
        and P.shape[0] == len(sizes)
        and P.shape[1:] == weight.shape
        and weight.shape[-1] <= MAX_COUNT
        and max(sizes) <= MAX_SIZE
        and triton_available()
    )


def pays(weight: Tensor) -> bool:
    """The ``auto`` rule: from ``MIN_COUNT`` elements per kernel up the fused construction is faster
    than the reference's einsum."""
    return weight.shape[-1] >= MIN_COUNT


def construct_kernel_fused(
    weight: Tensor, P: Tensor, SIG: Optional[Tensor], dilated_kernel_size: Sequence[int], version: str
) -> Tensor:
    """:func:`dcls_core.construction.reference.construct_kernel` for one to three learned axes, fused
    (float32 result; arguments as :func:`supports` accepts)."""
    if version in SIGMA_VERSIONS and SIG is None:
        raise ValueError(f"version {version!r} needs SIG")
    args = (weight, P, SIG if version in SIGMA_VERSIONS else None, [int(s) for s in dilated_kernel_size], version)
    with torch.autocast(weight.device.type, enabled=False):
        return _construct(*args)
