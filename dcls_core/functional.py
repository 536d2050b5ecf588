"""Functional DCLS convolutions: build the dense kernel, then convolve.

``dcls_conv{1,2,3}d`` take the module parameters and conv arguments as plain values. The
dense-kernel construction and the convolution go through :mod:`dcls_core.dispatch`, which
picks the reference path (plain torch, any device) or a fast path (fused Triton
construction; direct depthwise or FFT convolution).
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .dispatch import build_kernel, select_conv, select_fused

IntOrTuple = Union[int, Sequence[int]]
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def ntuple(value: IntOrTuple, n: int, name: str, owner: str = "dcls_core") -> tuple[int, ...]:
    """``value`` as a tuple of ``n`` ints; a ValueError naming ``owner: name`` otherwise."""
    if isinstance(value, int):
        return (value,) * n
    try:
        out = tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(f"{owner}: {name} must be an int or a tuple of {n} ints, got {value!r}") from None
    if len(out) != n:
        raise ValueError(f"{owner}: {name} must be an int or a tuple of {n} ints, got {value!r}")
    return out


def reversed_padding_repeated_twice(padding: Sequence[int]) -> tuple[int, ...]:
    """``F.pad`` order of a conv padding tuple: last axis first, both sides."""
    out: list[int] = []
    for p in reversed(tuple(padding)):
        out += [p, p]
    return tuple(out)


def apply_padding_mode(input: Tensor, padding: Sequence[int], padding_mode: str) -> tuple[Tensor, tuple[int, ...]]:
    """``(input, padding)`` for a zero-padded convolution: a non-``zeros`` ``padding_mode`` pads
    ``input`` explicitly (as ``nn.ConvNd`` does) and leaves no implicit padding."""
    if padding_mode == "zeros":
        return input, tuple(padding)
    return F.pad(input, reversed_padding_repeated_twice(padding), mode=padding_mode), (0,) * len(padding)


class ConvGeometry(NamedTuple):
    """One convolution call, checked (see :func:`conv_geometry`)."""

    input: Tensor             # (N, C_in, *spatial), explicitly padded for non-zeros padding modes
    padding: Tuple[int, ...]  # the implicit zero padding left
    out_full: List[int]       # stride-1 output size per axis
    out_dtype: torch.dtype    # the input's dtype, or the autocast dtype
    unbatched: bool


def conv_geometry(
    input: Tensor, kernel_shape: Sequence[int], stride: Sequence[int], padding: Sequence[int], groups: int,
    padding_mode: str, owner: str,
) -> ConvGeometry:
    """Check the arguments of a convolution with a ``(C_out, C_in/groups, *kernel)`` kernel
    (errors name ``owner``), add the batch axis to an unbatched input, apply a non-``zeros``
    ``padding_mode`` and derive the output size and dtype."""
    ndim = len(kernel_shape) - 2
    if ndim < 1:
        raise ValueError(f"{owner}: kernel must be (C_out, C_in/groups, *kernel), got {tuple(kernel_shape)}")
    unbatched = input.dim() == ndim + 1
    if unbatched:
        input = input.unsqueeze(0)
    if input.dim() != ndim + 2:
        raise ValueError(f"{owner}: input must have {ndim + 1} or {ndim + 2} dims, got {tuple(input.shape)}")
    stride, padding = tuple(int(s) for s in stride), tuple(int(p) for p in padding)
    if len(stride) != ndim or len(padding) != ndim:
        raise ValueError(f"{owner}: stride {stride} and padding {padding} must have {ndim} entries")
    out_dtype = input.dtype
    if torch.is_autocast_enabled(input.device.type):
        out_dtype = torch.get_autocast_dtype(input.device.type)
    input, padding = apply_padding_mode(input, padding, padding_mode)
    c_in = input.shape[1]
    c_out, cin_g = kernel_shape[:2]
    if c_in != cin_g * groups or c_out % groups:
        raise ValueError(f"{owner}: input channels {c_in}, kernel {tuple(kernel_shape)} and groups {groups} do not match")
    ksize = tuple(kernel_shape[2:])
    out_full = [s + 2 * p - k + 1 for s, p, k in zip(input.shape[2:], padding, ksize)]
    if min(out_full) < 1:
        raise ValueError(f"{owner}: kernel {ksize} larger than padded input {tuple(input.shape[2:])} + 2 x {padding}")
    return ConvGeometry(input, padding, out_full, out_dtype, unbatched)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (custom ops take dtypes as strings)."""
    return str(dtype).replace("torch.", "")


def conv_nd(
    input: Tensor,
    kernel: Tensor,
    bias: Optional[Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    padding_mode: str = "zeros",
) -> Tensor:
    """Plain dense convolution with the ``padding_mode`` handling of ``nn.ConvNd``.

    ``input`` is ``(N, C_in, *spatial)`` or unbatched; ``kernel`` is
    ``(C_out, C_in/groups, *kernel)``; the number of kernel axes picks conv1d/2d/3d.
    """
    input, padding = apply_padding_mode(input, padding, padding_mode)
    return _CONV[kernel.dim() - 2](input, kernel, bias, tuple(stride), padding, 1, groups)


def dcls_conv(
    input: Tensor,
    weight: Tensor,
    P: Tensor,
    SIG: Optional[Tensor],
    bias: Optional[Tensor],
    dilated_kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int = 1,
    padding_mode: str = "zeros",
    version: str = "gauss",
) -> Tensor:
    """DCLS convolution over ``len(dilated_kernel_size)`` spatial axes (all learned).

    The whole layer goes through :mod:`dcls_core.fused_fft` where the dispatcher selects it
    (:func:`dcls_core.dispatch.select_fused`); otherwise the dense kernel is built and convolved.
    """
    if select_fused(input, weight, P, SIG, dilated_kernel_size, stride, padding, padding_mode, version):
        from .fused_fft import fused_dcls_fft

        return fused_dcls_fft(input, weight, P, SIG, bias, dilated_kernel_size, padding, groups, padding_mode, version)
    kernel = build_kernel(weight, P, SIG, tuple(dilated_kernel_size), version)
    return conv_with_kernel(input, kernel, bias, stride, padding, groups, padding_mode)


def conv_with_kernel(
    input: Tensor,
    kernel: Tensor,
    bias: Optional[Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    padding_mode: str = "zeros",
) -> Tensor:
    """:func:`conv_nd` through the convolution the dispatcher selects (direct, FFT or ``F.conv``)."""
    _, conv = select_conv(input, kernel, stride, padding, groups, padding_mode)
    return conv(input, kernel, bias, tuple(stride), tuple(padding), groups, padding_mode)


def _functional(ndim: int):
    def fn(
        input: Tensor,
        weight: Tensor,
        P: Tensor,
        SIG: Optional[Tensor] = None,
        bias: Optional[Tensor] = None,
        dilated_kernel_size: IntOrTuple = 1,
        stride: IntOrTuple = 1,
        padding: IntOrTuple = 0,
        groups: int = 1,
        padding_mode: str = "zeros",
        version: str = "gauss",
    ) -> Tensor:
        return dcls_conv(
            input, weight, P, SIG, bias,
            ntuple(dilated_kernel_size, ndim, "dilated_kernel_size", fn.__name__),
            ntuple(stride, ndim, "stride", fn.__name__),
            ntuple(padding, ndim, "padding", fn.__name__),
            groups, padding_mode, version,
        )

    fn.__name__ = f"dcls_conv{ndim}d"
    fn.__doc__ = (
        f"{ndim}-D DCLS convolution. ``weight`` ``(out, in/groups, count)``, ``P``/``SIG`` "
        f"``({ndim}, out, in/groups, count)``; input ``(N, in, *{ndim} spatial)``."
    )
    return fn


dcls_conv1d = _functional(1)
dcls_conv2d = _functional(2)
dcls_conv3d = _functional(3)
