"""Convolution through the FFT: a cost that does not grow with the kernel size.

``fft_conv_nd`` computes exactly what ``F.conv{1,2,3}d`` computes (cross-correlation, any
``groups``, stride, zero or ``padding_mode`` padding, no dilation) with ``torch.fft``, so it
runs on every device torch's FFT runs on, and autograd differentiates it. Each spatial axis
is transformed at a size ``L >= max(size + padding, out_size, kernel)`` with only the factors
2, 3, 5 and 7, large enough that the circular convolution never wraps data onto an output
that is kept. Half-precision inputs are transformed in float32 and the result cast back.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

FFT_PRIMES = (2, 3, 5, 7)


def fast_fft_size(n: int) -> int:
    """Smallest ``m >= n`` whose prime factors are all in (2, 3, 5, 7)."""
    if n < 1:
        raise ValueError(f"fast_fft_size: n must be >= 1, got {n}")
    m = n
    while True:
        rest = m
        for p in FFT_PRIMES:
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 1


def _pad_order(padding: Sequence[int]) -> tuple[int, ...]:
    out: list[int] = []
    for p in reversed(tuple(padding)):
        out += [p, p]
    return tuple(out)


def _kernel_spectrum(kernel: Tensor, sizes: Sequence[int], padding: Sequence[int]) -> Tensor:
    """rfft of the kernel laid out so that a circular convolution gives the correlation.

    Tap ``i`` of each axis goes to index ``(padding - i) mod L``: flip, pad to ``L``, roll.
    """
    ndim = len(sizes)
    dims = tuple(range(-ndim, 0))
    ksize = kernel.shape[-ndim:]
    flipped = kernel.flip(dims)
    pad: list[int] = []
    for L, k in zip(reversed(sizes), reversed(ksize)):
        pad += [0, L - k]
    placed = F.pad(flipped, pad)
    shifts = tuple(p - k + 1 for p, k in zip(padding, ksize))
    placed = placed.roll(shifts, dims)
    return torch.fft.rfftn(placed, dim=dims)


def fft_conv_nd(
    input: Tensor,
    kernel: Tensor,
    bias: Optional[Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    padding_mode: str = "zeros",
) -> Tensor:
    """``F.conv{n}d(input, kernel, bias, stride, padding, groups=groups)`` through the FFT.

    Args:
        input: ``(N, C_in, *spatial)`` or unbatched ``(C_in, *spatial)``.
        kernel: ``(C_out, C_in/groups, *kernel)``; ``n = kernel.dim() - 2`` spatial axes.
        bias: ``(C_out,)`` or None.
        stride, padding: ``n`` ints each.
        groups: as in ``nn.ConvNd``.
        padding_mode: ``zeros``, ``reflect``, ``replicate`` or ``circular``.

    Returns:
        ``(N, C_out, *out)`` (unbatched if the input was), in the dtype of ``input`` (under
        autocast: the autocast dtype).
    """
    ndim = kernel.dim() - 2
    if ndim < 1:
        raise ValueError(f"fft_conv_nd: kernel must be (C_out, C_in/groups, *kernel), got {tuple(kernel.shape)}")
    unbatched = input.dim() == ndim + 1
    if unbatched:
        input = input.unsqueeze(0)
    if input.dim() != ndim + 2:
        raise ValueError(f"fft_conv_nd: input must have {ndim + 1} or {ndim + 2} dims, got {tuple(input.shape)}")
    stride, padding = tuple(stride), tuple(padding)
    if len(stride) != ndim or len(padding) != ndim:
        raise ValueError(f"fft_conv_nd: stride {stride} and padding {padding} must have {ndim} entries")
    out_dtype = input.dtype
    if torch.is_autocast_enabled(input.device.type):
        out_dtype = torch.get_autocast_dtype(input.device.type)
    with torch.autocast(input.device.type, enabled=False):
        if padding_mode != "zeros":
            input = F.pad(input, _pad_order(padding), mode=padding_mode)
            padding = (0,) * ndim
        work = torch.float64 if input.dtype == torch.float64 else torch.float32
        x = input.to(work)
        k = kernel.to(work)
        batch, c_in = x.shape[:2]
        c_out, cin_g = k.shape[:2]
        if c_in != cin_g * groups or c_out % groups:
            raise ValueError(
                f"fft_conv_nd: input channels {c_in}, kernel {tuple(k.shape)} and groups {groups} do not match"
            )
        spatial = tuple(x.shape[2:])
        ksize = tuple(k.shape[2:])
        out_full = tuple(s + 2 * p - kk + 1 for s, p, kk in zip(spatial, padding, ksize))
        if min(out_full) < 1:
            raise ValueError(f"fft_conv_nd: kernel {ksize} larger than padded input {spatial} + 2 x {padding}")
        sizes = tuple(
            fast_fft_size(max(s + p, o, kk)) for s, p, o, kk in zip(spatial, padding, out_full, ksize)
        )
        dims = tuple(range(-ndim, 0))
        x_f = torch.fft.rfftn(x, s=sizes, dim=dims)
        k_f = _kernel_spectrum(k, sizes, padding)
        freq = x_f.shape[2:]
        cout_g = c_out // groups
        if cin_g == 1:
            # depthwise / channel multiplier: an elementwise product per channel
            x_f = x_f.unsqueeze(2) if cout_g > 1 else x_f
            k_f = k_f.reshape(groups, cout_g, *freq) if cout_g > 1 else k_f.reshape(c_out, *freq)
            y_f = (x_f * k_f).reshape(batch, c_out, *freq)
        else:
            x_g = x_f.reshape(batch, groups, cin_g, -1)
            k_g = k_f.reshape(groups, cout_g, cin_g, -1)
            y_f = torch.einsum("ngcf,gocf->ngof", x_g, k_g).reshape(batch, c_out, *freq)
        y = torch.fft.irfftn(y_f, s=sizes, dim=dims)
        index = tuple(slice(0, o, st) for o, st in zip(out_full, stride))
        y = y[(Ellipsis, *index)]
        if bias is not None:
            y = y + bias.to(work).reshape(c_out, *([1] * ndim))
        y = y.to(out_dtype).contiguous()
    return y.squeeze(0) if unbatched else y
