"""Convolution through the FFT: a cost that does not grow with the kernel size.

``fft_conv_nd`` computes what ``F.conv{1,2,3}d`` computes (cross-correlation, any ``groups``,
stride, zero or ``padding_mode`` padding, no dilation) with ``torch.fft`` on any device.

Each spatial axis is transformed at a size ``L >= max(size + padding, out_size)`` with only
the factors 2, 3, 5 and 7 (on CUDA the cheapest for cuFFT, :mod:`.sizes`). The kernel is placed
circularly (tap ``i`` at ``(padding - i) mod L``, taps that share a slot are summed), so the
circular convolution of the unpadded input equals the zero-padded correlation on every output
that is kept; ``L`` need not exceed the kernel. The work runs in float32 (float64 for float64
inputs); half-precision inputs are read and the output written in their dtype. The element-wise
passes (pad and cast, spectrum products, crop, cast and bias, the depthwise backward) are Triton
programs on CUDA (:mod:`.passes`).

Memory: for depthwise-like kernels the forward and the backward pass run over the batch in
equal chunks (at most ``MAX_CHUNKS``) whose spectra stay under ``CHUNK_BYTES`` each;
``DCLS_FFT_CHUNKS=n`` forces ``n`` chunks. Products are taken in place and the backward pass
recomputes the input's spectrum instead of keeping it, so a pass needs about three chunk
spectra beyond ``F.conv``'s memory. Every chunk costs a dozen launches: more, smaller chunks
trade time for memory (measured in ``benchmarks/NOTES_layers.md``).
Gradients (derived in the spatial domain, no complex autograd):

    dx = irfft(dY * conj(G))[:H],   dg = irfft(sum_n dY * conj(X)),   db = sum(dy)

Eagerly this is an ``autograd.Function``; under ``torch.compile`` the same passes run as
``torch.library`` custom ops (:func:`dcls_core._custom_op.register_op`).
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._custom_op import register_op
from ..common import bias_grad, conv_geometry, dtype_name
from ..cost import large_kernel
from . import passes
from .passes import channels_last
from .sizes import transform_sizes

__all__ = [
    "CHUNKS_ENV",
    "CHUNK_BYTES",
    "FFTGeometry",
    "MAX_CHUNKS",
    "backward_spectral",
    "fft_conv_nd",
    "fft_geometry",
    "forward_spectral",
    "kernel_spectrum",
    "pays",
    "placed_kernel",
    "supports",
    "transform_sizes_for",
]

MAX_CHUNKS = 8  # batch chunks per pass at most (each costs a dozen launches)
CHUNK_BYTES = 128 * 2**20  # one chunk's spectrum at most (unless MAX_CHUNKS are reached)
CHUNKS_ENV = "DCLS_FFT_CHUNKS"  # this many chunks per pass: more save memory, fewer save launches
FORCE_CHUNKS: Optional[int] = None  # benchmarks and tests: as the environment variable


def placed_kernel(kernel: Tensor, sizes: Sequence[int], padding: Sequence[int]) -> Tensor:
    """``(C_out, C_in/g, *sizes)`` circular kernel: tap ``i`` at ``(padding - i) mod L``.

    Flip, pad each axis to a multiple of ``L``, fold the periods onto one (summing taps that
    share a slot), roll by ``padding - k + 1``. Differentiable.
    """
    ndim = len(sizes)
    dims = tuple(range(-ndim, 0))
    ksize = tuple(kernel.shape[-ndim:])
    g = kernel.flip(dims)
    pad: list[int] = []
    for L, k in zip(reversed(sizes), reversed(ksize)):
        pad += [0, -(-k // L) * L - k]
    g = F.pad(g, pad)
    for axis, L in zip(dims, sizes):
        ax = g.dim() + axis
        periods = g.shape[ax] // L
        if periods > 1:
            shape = list(g.shape)
            g = g.reshape(shape[:ax] + [periods, L] + shape[ax + 1 :]).sum(ax)
    shifts = tuple(p - k + 1 for p, k in zip(padding, ksize))
    return g.roll(shifts, dims)


def _chunk_size(x: Tensor, g_f: Tensor) -> int:
    """Samples per chunk for the kernel spectrum ``g_f (C_out, C_in/g, *F)``: the batch in
    equal chunks with spectra under ``CHUNK_BYTES``. Channel-mixing kernels run in one pass:
    each chunk would re-read the whole kernel spectrum, which costs more than it saves."""
    batch = x.shape[0]
    forced = FORCE_CHUNKS if FORCE_CHUNKS is not None else _env_chunks()
    if forced is not None:
        return max(1, -(-batch // forced))
    if g_f.shape[1] > 1:
        return max(1, batch)  # (at least 1: the step of the chunk loop)
    per_sample = max(x.shape[1], g_f.shape[0]) * math.prod(g_f.shape[2:]) * g_f.element_size()
    chunks = min(MAX_CHUNKS, max(1, -(-per_sample * batch // CHUNK_BYTES)))
    return max(1, -(-batch // chunks))


def _env_chunks() -> Optional[int]:
    value = os.environ.get(CHUNKS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{CHUNKS_ENV} must be a positive integer, got {value!r}")
    return int(value)


def _mix(a_f: Tensor, b_f: Tensor, groups: int, transpose: bool) -> Tensor:
    """Per-frequency channel mixing. ``a_f (n, C_a, *F)``; ``b_f (C_out, cin_g, *F)`` spectrum.

    Forward (``transpose=False``): ``Y[n, g, o] = sum_c X[n, g, c] B[g, o, c]``.
    Input gradient (``True``): ``dX[n, g, c] = sum_o dY[n, g, o] conj(B[g, o, c])``.
    Depthwise kernels in the forward direction multiply ``a_f`` in place (and return it);
    the depthwise backward runs in :func:`.passes.backward_mix_`.
    """
    n = a_f.shape[0]
    freq = a_f.shape[2:]
    c_out, cin_g = b_f.shape[:2]
    cout_g = c_out // groups
    if cin_g == 1 and cout_g == 1 and not transpose:
        return passes.spectral_mul_(a_f, b_f.reshape(c_out, *freq))
    b_g = b_f.reshape(groups, cout_g, cin_g, -1)
    if transpose:
        a_g = a_f.reshape(n, groups, cout_g, -1)
        out = torch.einsum("ngof,gocf->ngcf", a_g, torch.conj_physical(b_g))  # no lazy conj: see passes
        return out.reshape(n, groups * cin_g, *freq)
    a_g = a_f.reshape(n, groups, cin_g, -1)
    out = torch.einsum("ngcf,gocf->ngof", a_g, b_g)
    return out.reshape(n, c_out, *freq)


def _kernel_grad(dy_f: Tensor, x_f: Tensor, groups: int, c_out: int) -> Tensor:
    """``dG[g, o, c] = sum_n dY[n, g, o] conj(X[n, g, c])`` as ``(C_out, cin_g, *F)``."""
    n = dy_f.shape[0]
    freq = dy_f.shape[2:]
    cin_g = x_f.shape[1] // groups
    cout_g = c_out // groups
    out = torch.einsum(
        "ngof,ngcf->gocf", dy_f.reshape(n, groups, cout_g, -1), torch.conj_physical(x_f.reshape(n, groups, cin_g, -1))
    )
    return out.reshape(c_out, cin_g, *freq)


def _crop(t: Tensor, out_full: Sequence[int], stride: Sequence[int]) -> Tensor:
    return t[(Ellipsis, *(slice(0, o, s) for o, s in zip(out_full, stride)))]


def kernel_spectrum(g: Tensor) -> Tensor:
    """``rfftn`` of the placed kernel ``g (C_out, C_in/g, *L)`` over its spatial axes, scaled
    by ``1 / prod(L)``: the inverse transforms of the products then need no normalisation."""
    ndim = g.dim() - 2
    return torch.fft.rfftn(g, dim=tuple(range(-ndim, 0)), norm="forward")


def _output(x: Tensor, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    """The forward's output, uninitialised: channels-last where the (4-D) input is
    (:func:`.passes.channels_last`), contiguous otherwise."""
    if channels_last(x):
        return torch.empty(tuple(shape), device=x.device, dtype=dtype, memory_format=torch.channels_last)
    return torch.empty(tuple(shape), device=x.device, dtype=dtype)


def forward_spectral(
    x: Tensor,
    g_f: Tensor,
    bias: Optional[Tensor],
    sizes: list[int],
    out_full: list[int],
    stride: list[int],
    groups: int,
    out_dtype: torch.dtype,
) -> Tensor:
    """Forward pass with the kernel's (scaled) spectrum ``g_f`` (:func:`kernel_spectrum`)."""
    ndim = len(sizes)
    dims = tuple(range(-ndim, 0))
    work = torch.float64 if g_f.dtype == torch.complex128 else torch.float32
    c_out = g_f.shape[0]
    out_shape = [-(-o // s) for o, s in zip(out_full, stride)]
    y = _output(x, (x.shape[0], c_out, *out_shape), out_dtype)
    chunk = _chunk_size(x, g_f)
    strided = any(s != 1 for s in stride)
    for s in range(0, x.shape[0], chunk):
        y_f = _mix(
            torch.fft.rfftn(passes.padded(x[s : s + chunk], sizes, work), dim=dims), g_f, groups, transpose=False
        )
        full = torch.fft.irfftn(y_f, s=sizes, dim=dims, norm="forward")
        del y_f
        if strided:
            y[s : s + chunk] = _crop(full, out_full, stride)
        else:
            passes.crop_into(y[s : s + chunk], full, bias)
        del full
    if bias is not None and strided:
        y += bias.reshape(c_out, *([1] * ndim)).to(y.dtype)
    return y


def backward_spectral(
    dy: Tensor,
    x: Tensor,
    g_f: Tensor,
    sizes: list[int],
    out_full: list[int],
    stride: list[int],
    groups: int,
    need_x: bool,
    need_g: bool,
) -> tuple[Tensor, Tensor]:
    """``(dx, dg)``: gradients of the input and of the placed kernel (``(C_out, C_in/g, *L)``)
    from the kernel's scaled spectrum ``g_f``; an empty tensor for each one not needed."""
    ndim = len(sizes)
    dims = tuple(range(-ndim, 0))
    work = torch.float64 if g_f.dtype == torch.complex128 else torch.float32
    c_out, cin_g = g_f.shape[:2]
    depthwise = cin_g == 1 and c_out == groups
    dx = torch.empty_like(x) if need_x else x.new_empty(0)
    # depthwise: the first chunk writes dg_f, scaled by 1 / prod(L) (no normalisation pass)
    dg_f = torch.empty_like(g_f) if need_g and depthwise and x.shape[0] else None
    chunk = _chunk_size(x, g_f)
    strided = any(s != 1 for s in stride)
    for s in range(0, x.shape[0], chunk):
        dy_c = dy[s : s + chunk]
        if strided:  # scatter the strided gradient onto the full grid
            up = dy_c.new_zeros((dy_c.shape[0], c_out, *sizes), dtype=work)
            _crop(up, out_full, stride).copy_(dy_c)
        else:
            up = passes.padded(dy_c, sizes, work)
        dy_f = torch.fft.rfftn(up, dim=dims)
        del up, dy_c
        x_f = torch.fft.rfftn(passes.padded(x[s : s + chunk], sizes, work), dim=dims) if need_g else None
        if depthwise:
            dx_f = passes.backward_mix_(
                dy_f, x_f, g_f, dg_f, need_x, need_g, accumulate=s > 0, scale=1 / math.prod(sizes)
            )
        else:
            if need_g:
                part = _kernel_grad(dy_f, x_f, groups, c_out)
                dg_f = part if dg_f is None else dg_f.add_(part)
            dx_f = _mix(dy_f, g_f, groups, transpose=True) if need_x else None
        del dy_f, x_f
        if need_x:
            passes.crop_into(dx[s : s + chunk], torch.fft.irfftn(dx_f, s=sizes, dim=dims, norm="forward"))
        del dx_f
    if not need_g:
        return dx, g_f.new_empty(0, dtype=work)
    if dg_f is None:  # an empty batch: no chunk ran
        dg_f = torch.zeros_like(g_f)
    dg = torch.fft.irfftn(dg_f, s=sizes, dim=dims, norm="forward" if depthwise else "backward")
    return dx, dg


def _forward(
    x: Tensor,
    g: Tensor,
    bias: Optional[Tensor],
    sizes: list[int],
    out_full: list[int],
    stride: list[int],
    groups: int,
    out_dtype: str,
) -> Tensor:
    return forward_spectral(x, kernel_spectrum(g), bias, sizes, out_full, stride, groups, getattr(torch, out_dtype))


def _forward_fake(x, g, bias, sizes, out_full, stride, groups, out_dtype):
    out_shape = [-(-o // s) for o, s in zip(out_full, stride)]
    return _output(x, (x.shape[0], g.shape[0], *out_shape), getattr(torch, out_dtype))


def _backward(
    dy: Tensor,
    x: Tensor,
    g: Tensor,
    bias: Optional[Tensor],
    sizes: list[int],
    out_full: list[int],
    stride: list[int],
    groups: int,
    need_x: bool,
    need_g: bool,
    need_b: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    if need_x or need_g:
        dx, dg = backward_spectral(dy, x, kernel_spectrum(g), sizes, out_full, stride, groups, need_x, need_g)
    else:
        dx, dg = x.new_empty(0), g.new_empty(0)
    db = bias_grad(dy, len(sizes), bias.dtype) if need_b and bias is not None else dy.new_empty(0)
    return dx, dg, db


def _backward_settings(sizes, out_full, stride, groups, out_dtype):
    return sizes, out_full, stride, groups


_fft_conv = register_op(
    "fft_conv", _forward, _backward, _forward_fake, num_tensors=3, backward_settings=_backward_settings
)


class FFTGeometry(NamedTuple):
    """What the FFT passes need to know about one call (see :func:`fft_geometry`)."""

    input: Tensor  # (N, C_in, *spatial), explicitly padded for non-zeros padding modes
    padding: tuple[int, ...]  # the implicit zero padding left
    out_full: list[int]  # stride-1 output size per axis
    out_dtype: torch.dtype  # the input's dtype, or the autocast dtype
    unbatched: bool
    sizes: list[int]  # transform size per axis


def fft_geometry(
    input: Tensor,
    kernel_shape: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    padding_mode: str,
    owner: str = "fft_conv_nd",
) -> FFTGeometry:
    """:func:`dcls_core.conv.common.conv_geometry` and the transform sizes."""
    geo = conv_geometry(input, kernel_shape, stride, padding, groups, padding_mode, owner)
    sizes = transform_sizes_for(geo.input.shape[2:], geo.padding, kernel_shape[2:], "zeros", geo.input.device.type)
    return FFTGeometry(*geo, sizes)


def transform_sizes_for(
    spatial: Sequence[int], padding: Sequence[int], ksize: Sequence[int], padding_mode: str, device_type: str
) -> list[int]:
    """Transform size per axis of a stride-1 convolution of an input of size ``spatial``:
    at least ``max(size + padding, output size)`` (non-``zeros`` modes pad explicitly first)."""
    if padding_mode != "zeros":
        spatial, padding = [s + 2 * p for s, p in zip(spatial, padding)], [0] * len(padding)
    minimal = [max(s + p, s + 2 * p - k + 1) for s, p, k in zip(spatial, padding, ksize)]
    return list(transform_sizes(minimal, device_type))


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
    geo = fft_geometry(input, kernel.shape, stride, padding, groups, padding_mode)
    with torch.autocast(geo.input.device.type, enabled=False):
        work = torch.float64 if geo.input.dtype == torch.float64 else torch.float32
        g = placed_kernel(kernel.to(work), geo.sizes, geo.padding)
        args = (
            geo.input,
            g,
            bias,
            geo.sizes,
            geo.out_full,
            [int(v) for v in stride],
            int(groups),
            dtype_name(geo.out_dtype),
        )
        y = _fft_conv(*args)
    return y.squeeze(0) if geo.unbatched else y


def supports(input: Tensor, kernel_shape: Sequence[int], stride: Sequence[int], groups: int) -> bool:
    """Every call ``F.conv`` computes without dilation, on any device and dtype."""
    return True


def pays(input: Tensor, kernel_shape: Sequence[int], stride: Sequence[int], groups: int) -> bool:
    """The ``auto`` rule: on CUDA, for large kernels (:func:`dcls_core.conv.cost.large_kernel`)."""
    return input.is_cuda and large_kernel(input, kernel_shape, stride)
