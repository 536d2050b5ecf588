"""An eager DCLS layer call (fused construction, then a convolution path's op) as one autograd node.

Built separately, a training step's layer is two autograd nodes: the construction's and the
convolution's, each with its Python forward and backward, saved tensors and device guard. On a
fast GPU an eager DCLS model waits for exactly that host time, so here one
``autograd.Function`` runs both:

* forward: the fused construction's forward program writes the dense kernel, cut to the taps
  that meet the input where the dispatcher cut it, and the path's forward pass convolves;
* backward: the path's backward pass gives the input, kernel and bias gradients; the kernel
  gradient (back at full size if cut) goes straight to the construction's backward program,
  which writes the weight, position and sigma gradients in one launch.

The results equal the two nodes' (same programs, same order of operations). Forward and backward
run with the input's GPU current, as the registered ops do (:func:`dcls_core._custom_op.on_tensor_device`). Taken by
:func:`dcls_core.functional.dcls_conv` where :func:`dcls_core.dispatch.plan_layer` plans it
(gradients recorded, not compiling, the fused construction and a path with ``prepare``: the
direct and matrix paths); under ``torch.compile`` the separate custom ops run instead.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._custom_op import on_tensor_device
from ..construction import fused as fused_construction
from ..construction.reference import SIGMA_VERSIONS
from .common import PreparedConv, cut_kernel, reversed_padding_repeated_twice

__all__ = ["construct_and_convolve"]


class _ConstructAndConvolve(torch.autograd.Function):
    @staticmethod
    @on_tensor_device
    def forward(ctx, x, weight, P, SIG, bias, ksize, version, cuts, op, settings):
        kernel = fused_construction.launch_forward(weight, P, SIG, ksize, version)
        if any(cuts):
            kernel = cut_kernel(kernel, cuts)
        y = op.forward(x, kernel, bias, *settings)
        ctx.save_for_backward(x, kernel, weight, P, SIG, bias)
        ctx.args = (ksize, version, cuts, op, tuple(op.backward_settings(*settings)))
        return y

    @staticmethod
    @once_differentiable
    @on_tensor_device
    def backward(ctx, dy):
        x, kernel, weight, P, SIG, bias = ctx.saved_tensors
        ksize, version, cuts, op, saved = ctx.args
        need_x, need_w, need_p, need_s, need_b = ctx.needs_input_grad[:5]
        need_k = need_w or need_p or need_s
        need_b = need_b and bias is not None
        dw = dP = dS = None
        if not (need_x or need_k or need_b):
            return (None,) * 10
        dx, dk, db = op.backward(dy, x, kernel, bias, *saved, need_x, need_k, need_b)
        if need_k:
            if any(cuts):  # the cut taps get no gradient
                dk = F.pad(dk, reversed_padding_repeated_twice(cuts))
            dw, dP, dS = fused_construction.launch_backward(dk, weight, P, SIG, ksize, version)
            dw, dP, dS = (dw if need_w else None), (dP if need_p else None), (dS if need_s else None)
        return (dx if need_x else None), dw, dP, dS, (db if need_b else None), None, None, None, None, None


def construct_and_convolve(
    input: Tensor,
    weight: Tensor,
    P: Tensor,
    SIG: Optional[Tensor],
    bias: Optional[Tensor],
    dilated_kernel_size: Sequence[int],
    cuts: Sequence[int],
    prepare: Callable[..., PreparedConv],
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    padding_mode: str,
    version: str,
) -> Tensor:
    """:func:`dcls_core.functional.dcls_conv` through the fused construction and the path whose
    ``prepare`` is given, in one autograd node.

    ``cuts``: taps cut from both ends of each kernel axis (``padding`` is the padding after the
    cut, as :func:`dcls_core.dispatch.plan_layer` gives both). ``input (N, C_in, *spatial)`` or
    unbatched; ``weight (C_out, C_in/groups, count)``; ``P``/``SIG`` ``(n, C_out, C_in/groups,
    count)``. Returns what the path returns for the cut kernel.
    """
    ksize = tuple(int(k) for k in dilated_kernel_size)
    kernel_shape = (*weight.shape[:2], *(k - 2 * c for k, c in zip(ksize, cuts)))
    call = prepare(input, kernel_shape, bias, stride, padding, groups, padding_mode)
    sig = SIG if version in SIGMA_VERSIONS else None
    with torch.autocast(input.device.type, enabled=False):
        y = _ConstructAndConvolve.apply(
            call.input, weight, P, sig, call.bias, ksize, version, tuple(cuts), call.op, call.settings
        )
    return call.finish(y)
