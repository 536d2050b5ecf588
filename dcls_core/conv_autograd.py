"""Autograd plumbing shared by the convolutions that run as an ``autograd.Function`` eagerly
and as ``torch.library`` custom ops under ``torch.compile`` (:mod:`dcls_core.fft_conv`,
:mod:`dcls_core.direct_conv`).

Both take ``(x, kernel, bias, *settings)`` and have a backward implementation
``backward_impl(dy, x, kernel, *saved_settings, need_x, need_kernel) -> (dx, dkernel)``.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor


def bias_grad(dy: Tensor, ndim: int, dtype: torch.dtype) -> Tensor:
    """Bias gradient ``(C_out,)`` in ``dtype`` from ``dy (N, C_out, *ndim spatial)``."""
    return dy.sum((0, *range(2, 2 + ndim)), dtype=torch.promote_types(dtype, torch.float32)).to(dtype)


def save_conv(ctx, x: Tensor, kernel: Tensor, bias: Optional[Tensor], settings: Sequence) -> None:
    """Keep what :func:`conv_gradients` needs: ``x``, ``kernel``, the ``settings`` handed to
    the backward implementation and the bias dtype."""
    ctx.save_for_backward(x, kernel)
    ctx.args = tuple(settings)
    ctx.bias_dtype = bias.dtype if bias is not None else None


def conv_gradients(ctx, dy: Tensor, backward_impl: Callable) -> tuple:
    """Gradients of ``(x, kernel, bias)`` (None for every other input) through
    ``backward_impl`` (the eager function or the backward custom op)."""
    x, kernel = ctx.saved_tensors
    need_x, need_k, need_b = ctx.needs_input_grad[:3]
    dx = dk = db = None
    if need_x or need_k:
        dx, dk = backward_impl(dy, x, kernel, *ctx.args, need_x, need_k)
        dx, dk = (dx if need_x else None), (dk if need_k else None)
    if need_b and ctx.bias_dtype is not None:
        db = bias_grad(dy, dy.dim() - 2, ctx.bias_dtype)
    return (dx, dk, db) + (None,) * (len(ctx.needs_input_grad) - 3)
