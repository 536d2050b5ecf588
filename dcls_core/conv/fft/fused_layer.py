"""The eager DCLS layer (construction and FFT convolution) as one autograd node, built for few launches.

Separately, the construction writes the dense kernel, the FFT path flips, pads and rolls it
into the transform's circular layout (three more launches each way, three more autograd nodes)
and the backward pass transforms it again. Here one ``autograd.Function`` does it all:

* the fused Triton construction writes the circular plane directly (``placement``);
* its spectrum, scaled by ``1 / prod(L)`` so that no inverse transform needs a
  normalisation pass, is kept for the backward pass instead of being recomputed;
* the backward pass hands the placed kernel's gradient straight to the construction's
  backward program (weight, positions, sigmas in one launch).

Applies to 1-D and 2-D layers whose construction and convolution the dispatcher sends to the
fused Triton construction and the FFT, with transform sizes of one register block per plane
(:func:`dcls_core.construction.fused.places`), while gradients are recorded; the dispatcher
(:func:`dcls_core.dispatch.select_fused`) decides. Under ``torch.compile`` the separate custom ops
run instead.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..._custom_op import on_tensor_device
from ...construction import fused as fused_construction
from ...construction.reference import SIGMA_VERSIONS
from ..common import bias_grad
from .conv import backward_spectral, fft_geometry, forward_spectral, kernel_spectrum

__all__ = ["fused_dcls_fft"]


class _DclsFFT(torch.autograd.Function):
    @staticmethod
    @on_tensor_device
    def forward(ctx, x, weight, P, SIG, bias, ksize, sizes, padding, out_full, groups, version, out_dtype):
        placement = (sizes, padding)
        g = fused_construction.launch_forward(weight, P, SIG, ksize, version, placement)
        g_f = kernel_spectrum(g)
        del g
        stride = [1] * len(sizes)
        y = forward_spectral(x, g_f, bias, sizes, out_full, stride, groups, out_dtype)
        ctx.save_for_backward(x, weight, P, SIG, g_f)
        ctx.args = (ksize, sizes, padding, out_full, groups, version)
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return y

    @staticmethod
    @once_differentiable
    @on_tensor_device
    def backward(ctx, dy):
        x, weight, P, SIG, g_f = ctx.saved_tensors
        ksize, sizes, padding, out_full, groups, version = ctx.args
        need_x, need_w, need_p, need_s, need_b = ctx.needs_input_grad[:5]
        need_g = need_w or need_p or need_s
        dx = dw = dP = dS = db = None
        if need_x or need_g:
            stride = [1] * len(sizes)
            dx, dg = backward_spectral(dy, x, g_f, sizes, out_full, stride, groups, need_x, need_g)
            dx = dx if need_x else None
            if need_g:
                dw, dP, dS = fused_construction.launch_backward(dg, weight, P, SIG, ksize, version, (sizes, padding))
                dw, dP, dS = (dw if need_w else None), (dP if need_p else None), (dS if need_s else None)
        if need_b and ctx.bias_dtype is not None:
            db = bias_grad(dy, len(sizes), ctx.bias_dtype)
        return dx, dw, dP, dS, db, None, None, None, None, None, None, None


def fused_dcls_fft(
    input: Tensor,
    weight: Tensor,
    P: Tensor,
    SIG: Optional[Tensor],
    bias: Optional[Tensor],
    dilated_kernel_size: Sequence[int],
    padding: Sequence[int],
    groups: int,
    padding_mode: str,
    version: str,
) -> Tensor:
    """Stride-1 DCLS convolution (1 or 2 learned axes) as :func:`dcls_core.functional.dcls_conv`
    computes it, through the placed construction and the FFT in one autograd node.

    ``input (N, C_in, *spatial)`` or unbatched; ``weight (C_out, C_in/groups, count)``;
    ``P``/``SIG`` ``(n, C_out, C_in/groups, count)``. Returns ``(N, C_out, *out)`` in the
    input's dtype (under autocast: the autocast dtype).
    """
    ksize = [int(k) for k in dilated_kernel_size]
    ndim = len(ksize)
    geo = fft_geometry(input, (*weight.shape[:2], *ksize), (1,) * ndim, padding, groups, padding_mode, "fused_dcls_fft")
    sig = SIG if version in SIGMA_VERSIONS else None
    with torch.autocast(geo.input.device.type, enabled=False):
        y = _DclsFFT.apply(
            geo.input,
            weight,
            P,
            sig,
            bias,
            ksize,
            geo.sizes,
            list(geo.padding),
            geo.out_full,
            int(groups),
            version,
            geo.out_dtype,
        )
    return y.squeeze(0) if geo.unbatched else y
