"""Fused construction of 2-D DCLS kernels (forward and backward) in one Triton launch each.

Same function as :func:`dcls_core.kernel.construct_kernel` for two learned axes: per kernel
slot ``q`` (an ``(out, in/groups)`` pair) the per-axis factors ``fy (count, kH)`` and
``fx (count, kW)`` are computed in registers and ``kernel = (ws * fy)^T @ fx`` with
``ws = weight / (sum fx * sum fy + 1e-7)`` (``v0``: ``ws = weight``). The backward pass
recomputes the factors and writes the gradients of ``weight``, ``P`` and ``SIG`` directly,
replacing the dozens of small kernels (and their launches) of the autograd graph.
float32 parameters only; Triton is imported on first use.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .kernel import SIGMA_VERSIONS, VERSIONS

VERSION_CODES = {"v0": 0, "v1": 1, "max": 2, "gauss": 3}


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _kernels():
    from . import triton_construct_kernels as k

    return k.construct_fwd, k.construct_bwd


def _axis_rows(version: str) -> tuple[int, int]:
    """Rows of ``P`` for (height, width) of a 2-D kernel (see :func:`kernel.position_axes`)."""
    return (0, 1) if version == "v0" else (1, 0)


def _meta(weight: Tensor, KH: int, KW: int, version: str) -> dict:
    count = weight.shape[-1]
    return dict(
        KH=KH, KW=KW, BMC=max(16, _next_pow2(count)), BKH=max(16, _next_pow2(KH)), BKW=max(16, _next_pow2(KW)),
        VERSION=VERSION_CODES[version], HAS_SIG=version in SIGMA_VERSIONS, num_warps=2,
    )


class _Construct2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, P: Tensor, SIG: Optional[Tensor], KH: int, KW: int, version: str) -> Tensor:
        fwd, _ = _kernels()
        prefix, count = weight.shape[:-1], weight.shape[-1]
        Q = weight.numel() // count
        w = weight.contiguous()
        p = P.contiguous().reshape(2, Q, count)
        s = SIG.contiguous().reshape(2, Q, count) if SIG is not None else p
        rh, rw = _axis_rows(version)
        kernel = torch.empty((*prefix, KH, KW), device=weight.device, dtype=torch.float32)
        fwd[(Q,)](w, p[rh], p[rw], s[rh], s[rw], kernel, count, **_meta(weight, KH, KW, version))
        ctx.save_for_backward(w, p, s)
        ctx.meta = (KH, KW, version, tuple(weight.shape), SIG is not None)
        return kernel

    @staticmethod
    def backward(ctx, grad: Tensor):
        _, bwd = _kernels()
        w, p, s = ctx.saved_tensors
        KH, KW, version, wshape, has_sig = ctx.meta
        count = wshape[-1]
        Q = w.numel() // count
        rh, rw = _axis_rows(version)
        dw = torch.empty(wshape, device=w.device, dtype=torch.float32)
        dP = torch.empty((2, Q, count), device=w.device, dtype=torch.float32)
        dS = torch.empty((2, Q, count), device=w.device, dtype=torch.float32) if has_sig else dP
        bwd[(Q,)](
            w, p[rh], p[rw], s[rh], s[rw], grad.contiguous().float(),
            dw, dP[rh], dP[rw], dS[rh], dS[rw], count, **_meta(w, KH, KW, version),
        )
        dP = dP.reshape(2, *wshape)
        dS = dS.reshape(2, *wshape) if has_sig else None
        return dw, dP, dS, None, None, None


def supports(weight: Tensor, P: Tensor, SIG: Optional[Tensor], dilated_kernel_size: Sequence[int], version: str) -> bool:
    """True if :func:`construct_kernel_2d` builds this kernel (2 learned axes, float32, CUDA)."""
    from .triton_depthwise import triton_available

    return (
        len(tuple(dilated_kernel_size)) == 2
        and version in VERSIONS
        and weight.is_cuda
        and weight.dtype == P.dtype == torch.float32
        and (SIG is None or SIG.dtype == torch.float32)
        and P.shape[0] == 2 and P.shape[1:] == weight.shape
        and weight.shape[-1] <= 256
        and max(dilated_kernel_size) <= 128
        and triton_available()
    )


def construct_kernel_2d(weight: Tensor, P: Tensor, SIG: Optional[Tensor], dilated_kernel_size: Sequence[int], version: str) -> Tensor:
    """:func:`dcls_core.kernel.construct_kernel` for two learned axes, fused (float32)."""
    KH, KW = (int(v) for v in dilated_kernel_size)
    if version in SIGMA_VERSIONS and SIG is None:
        raise ValueError(f"version {version!r} needs SIG")
    with torch.autocast(weight.device.type, enabled=False):
        return _Construct2d.apply(weight, P, SIG if version in SIGMA_VERSIONS else None, KH, KW, version)
