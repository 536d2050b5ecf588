"""What every convolution path shares: the argument checks of one call, ``padding_mode``, and the
bias gradient."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PADDING_MODES",
    "ConvGeometry",
    "PreparedConv",
    "apply_padding_mode",
    "bias_grad",
    "conv_geometry",
    "crop_to_reach",
    "cut_kernel",
    "dtype_name",
    "reach_cuts",
    "reversed_padding_repeated_twice",
]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


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

    input: Tensor  # (N, C_in, *spatial), explicitly padded for non-zeros padding modes
    padding: tuple[int, ...]  # the implicit zero padding left
    out_full: list[int]  # stride-1 output size per axis
    out_dtype: torch.dtype  # the input's dtype, or the autocast dtype
    unbatched: bool


class PreparedConv(NamedTuple):
    """One call of a convolution path laid out for its registered op (a path's ``prepare``):
    ``op(input, kernel, bias, *settings)`` is the path's output before :meth:`finish`. ``input``
    may be a differentiable copy of the caller's input (another layout or dtype)."""

    op: Any  # dcls_core._custom_op.RegisteredOp
    input: Tensor
    bias: Optional[Tensor]
    settings: tuple
    unbatched: bool
    view: Optional[Callable[[Tensor], Tensor]] = None  # the op's output -> (N, C_out, *out), if not already

    def finish(self, y: Tensor) -> Tensor:
        """The op's output as the path returns it."""
        if self.view is not None:
            y = self.view(y)
        return y.squeeze(0) if self.unbatched else y


def conv_geometry(
    input: Tensor,
    kernel_shape: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    padding_mode: str,
    owner: str,
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
        raise ValueError(
            f"{owner}: input channels {c_in}, kernel {tuple(kernel_shape)} and groups {groups} do not match"
        )
    ksize = tuple(kernel_shape[2:])
    out_full = [s + 2 * p - k + 1 for s, p, k in zip(input.shape[2:], padding, ksize)]
    if min(out_full) < 1:
        raise ValueError(f"{owner}: kernel {ksize} larger than padded input {tuple(input.shape[2:])} + 2 x {padding}")
    return ConvGeometry(input, padding, out_full, out_dtype, unbatched)


def reach_cuts(
    kernel_size: Sequence[int], spatial: Sequence[int], stride: Sequence[int], padding: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(cuts, padding)``: the taps :func:`crop_to_reach` drops at each end of each axis, and the
    padding left (``kernel_size`` the spatial kernel sizes)."""
    cuts, pads = [], []
    for size, s, p, k in zip(tuple(spatial)[-len(kernel_size) :], stride, padding, kernel_size):
        out = (size + 2 * p - k) // s + 1
        lo, hi = max(0, p - (out - 1) * s), min(k, p + size)
        c = max(0, min(lo, k - hi, p)) if out >= 1 else 0  # no output: leave the error to the conv
        cuts.append(int(c))
        pads.append(int(p - c))
    return tuple(cuts), tuple(pads)


def crop_to_reach(
    kernel: Tensor, spatial: Sequence[int], stride: Sequence[int], padding: Sequence[int]
) -> tuple[Tensor, tuple[int, ...]]:
    """``(kernel, padding)`` with the kernel cut to the taps that meet the input, for a
    zero-padded convolution; the output is unchanged, exactly.

    Along an axis of input size ``S``, padding ``p``, stride ``s``, kernel size ``k`` and output
    size ``O``, tap ``i`` meets the input for some output iff ``p - (O - 1) s <= i < p + S``. A
    symmetric cut of ``c`` taps at both ends, ``c`` the smaller of the unreachable counts at the
    two ends, with padding ``p - c``, keeps ``O`` and every sum (only zeros are dropped). A
    23x23 kernel on a 8x7 input becomes 15x13. ``kernel`` is ``(C_out, C_in/groups, *k)``;
    the result is a view (its gradient is zero outside the kept taps, as the full kernel's).
    """
    cuts, pads = reach_cuts(kernel.shape[2:], spatial, stride, padding)
    if not any(cuts):
        return kernel, tuple(int(p) for p in padding)
    return cut_kernel(kernel, cuts), pads


def cut_kernel(kernel: Tensor, cuts: Sequence[int]) -> Tensor:
    """``kernel (C_out, C_in/groups, *k)`` without ``cuts[a]`` taps at both ends of axis ``a`` (a view)."""
    return kernel[(slice(None), slice(None), *(slice(c, k - c) for c, k in zip(cuts, kernel.shape[2:])))]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (custom ops take dtypes as strings)."""
    return str(dtype).replace("torch.", "")


def bias_grad(dy: Tensor, ndim: int, dtype: torch.dtype) -> Tensor:
    """Bias gradient ``(C_out,)`` in ``dtype`` from ``dy (N, C_out, *ndim spatial)``."""
    return dy.sum((0, *range(2, 2 + ndim)), dtype=torch.promote_types(dtype, torch.float32)).to(dtype)
