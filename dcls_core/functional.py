"""Functional DCLS convolutions: build the dense kernel, then convolve.

``dcls_conv{1,2,3}d`` take the module parameters and conv arguments as plain values. The
dense-kernel construction and the convolution go through :mod:`dcls_core.dispatch`, which
picks the reference path (plain torch, any device) or a fast path (fused Triton
construction; direct depthwise or FFT convolution). ``conv_nd`` is the reference convolution.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from torch import Tensor

from .conv.common import PADDING_MODES, crop_to_reach, cut_kernel
from .conv.fft.fused_layer import fused_dcls_fft
from .conv.layer_node import construct_and_convolve
from .conv.reference import conv_nd
from .dispatch import plan_layer, select_conv

__all__ = [
    "IntOrTuple",
    "PADDING_MODES",
    "conv_nd",
    "conv_with_kernel",
    "dcls_conv",
    "dcls_conv1d",
    "dcls_conv2d",
    "dcls_conv3d",
    "ntuple",
]

IntOrTuple = Union[int, Sequence[int]]


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

    The dispatcher plans the call once (:func:`dcls_core.dispatch.plan_layer`): the whole layer runs
    as one autograd node (:mod:`dcls_core.conv.fft.fused_layer`, :mod:`dcls_core.conv.layer_node`) where
    it plans that; otherwise the dense kernel is built, cut to the taps that meet the input, and
    convolved.
    """
    plan = plan_layer(input, weight, P, SIG, dilated_kernel_size, stride, padding, padding_mode, version)
    if plan.fused:
        return fused_dcls_fft(input, weight, P, SIG, bias, dilated_kernel_size, padding, groups, padding_mode, version)
    if plan.prepare is not None:
        return construct_and_convolve(
            input, weight, P, SIG, bias, dilated_kernel_size, plan.cuts, plan.prepare, stride, plan.padding, groups,
            padding_mode, version,
        )  # fmt: skip
    kernel = plan.construct(weight, P, SIG, tuple(dilated_kernel_size), version)
    if any(plan.cuts):
        kernel = cut_kernel(kernel, plan.cuts)
    return plan.conv(input, kernel, bias, tuple(stride), plan.padding, groups, padding_mode)


def conv_with_kernel(
    input: Tensor,
    kernel: Tensor,
    bias: Optional[Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    padding_mode: str = "zeros",
) -> Tensor:
    """:func:`conv_nd` through the convolution the dispatcher selects (direct, FFT or ``F.conv``).

    With zero padding the kernel is first cut to the taps that can meet the input
    (:func:`dcls_core.conv.common.crop_to_reach`): large kernels on small late-stage inputs
    convolve only what they reach, on every path."""
    if padding_mode == "zeros":
        kernel, padding = crop_to_reach(kernel, input.shape[2 - kernel.dim() :], stride, padding)
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
            input,
            weight,
            P,
            SIG,
            bias,
            ntuple(dilated_kernel_size, ndim, "dilated_kernel_size", fn.__name__),
            ntuple(stride, ndim, "stride", fn.__name__),
            ntuple(padding, ndim, "padding", fn.__name__),
            groups,
            padding_mode,
            version,
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
