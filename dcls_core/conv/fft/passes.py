"""The element-wise passes of the FFT convolution, in two implementations side by side.

* Triton programs (:mod:`.programs`, imported on first use): CUDA, float32 work (complex64
  spectra). Padding and the dtype cast are one pass, so are the crop, the cast and the bias
  (one or two spatial axes); the spectrum product and the depthwise backward (kernel gradient
  and the input gradient's spectrum in one pass, without the ``(N, C, F)`` product tensor)
  take any number of axes.
* torch operations: everywhere else (CPU, float64, 3-D pad/crop), and the reference for the
  programs (the same arithmetic: the bias is added before the cast to the output dtype).

``FORCE_TORCH = True`` (or :func:`torch_only`) makes every call take the torch operations.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor

from ..._triton import launch, next_power_of_2, triton_available

__all__ = ["FORCE_TORCH", "backward_mix_", "channels_last", "crop_into", "padded", "spectral_mul_", "torch_only"]

FORCE_TORCH = False
_TILE = 1024  # elements per program of pad / crop: rows x a power-of-2 of columns
_BLOCK = 1024  # complex elements per program of the spectrum product
_MIX_BLOCK = 128  # (channel, frequency) slots per program of the depthwise backward
_CL_TILE = (32, 32)  # channels x columns per step of the channels-last pad / crop programs


def _tile(cols: int) -> tuple[int, int]:
    """``(rows, cols)`` of a pad/crop program for planes ``cols`` wide."""
    bw = min(128, max(16, next_power_of_2(cols)))
    return _TILE // bw, bw


@contextlib.contextmanager
def torch_only() -> Iterator[None]:
    """Within the block every pass runs as torch operations (tests, benchmarks)."""
    global FORCE_TORCH
    saved, FORCE_TORCH = FORCE_TORCH, True
    try:
        yield
    finally:
        FORCE_TORCH = saved


_PROGRAMS: list = []  # the GPU program module, imported on first use


def _programs():
    if not _PROGRAMS:
        from . import programs

        _PROGRAMS.append(programs)
    return _PROGRAMS[0]


def _triton_ok(t: Tensor) -> bool:
    return not FORCE_TORCH and t.is_cuda and triton_available()


def _planes(shape: Sequence[int], ndim: int) -> tuple[int, int]:
    """``(rows, cols)`` of the last ``ndim`` (1 or 2) axes."""
    return (1, shape[-1]) if ndim == 1 else (shape[-2], shape[-1])


def _strides4(t: Tensor, ndim: int) -> tuple[int, int, int, int]:
    s = t.stride()
    return (s[0], s[1], 0, s[2]) if ndim == 1 else tuple(s)  # type: ignore[return-value]


def channels_last(t: Tensor) -> bool:
    """True for a 4-D ``(N, C, H, W)`` tensor laid out channels-last (channel stride 1, more than
    one channel and position): what a timm ConvNeXt or ConvFormer block hands its depthwise
    convolution. The FFT's output then takes that layout too, as ``F.conv2d``'s does."""
    return (
        t.dim() == 4
        and t.shape[1] > 1
        and t.shape[2] * t.shape[3] > 1
        and t.is_contiguous(memory_format=torch.channels_last)
    )


def padded(x: Tensor, sizes: Sequence[int], work: torch.dtype) -> Tensor:
    """``x (n, C, *spatial)`` (any dtype, any strides) zero-padded at the end of each spatial
    axis to ``sizes``, as a contiguous ``work``-dtype tensor ``(n, C, *sizes)``."""
    ndim = len(sizes)
    n, c = x.shape[:2]
    out = x.new_empty((n, c, *sizes), dtype=work) if work == torch.float32 and ndim <= 2 and _triton_ok(x) else None
    if out is None or out.numel() == 0:
        out = x.new_zeros((n, c, *sizes), dtype=work)
        out[(Ellipsis, *(slice(0, s) for s in x.shape[2:]))] = x
        return out
    H, W = _planes(x.shape, ndim)
    LH, LW = _planes(sizes, ndim)
    if ndim == 2 and channels_last(x):
        bc, bw = _CL_TILE
        s_n, _, s_h, s_w = x.stride()
        launch(_programs().pad_cast_cl, (n * LH, -(-c // bc)), (x, out), c, H, W, LH, LW, s_n, s_h, s_w, BC=bc, BW=bw)
        return out
    rows = n * c * LH
    rb, bw = _tile(LW)
    launch(_programs().pad_cast, (-(-rows // rb),), (x, out), rows, c, H, W, LH, LW, *_strides4(x, ndim), RB=rb, BW=bw)
    return out


def crop_into(dst: Tensor, full: Tensor, bias: Optional[Tensor] = None) -> None:
    """``dst (n, C, *out) = full[..., :out] (+ bias per channel)`` in ``dst``'s dtype;
    ``full (n, C, *sizes)`` is a contiguous float transform output."""
    ndim = dst.dim() - 2
    c = dst.shape[1]
    if full.dtype != torch.float32 or ndim > 2 or not _triton_ok(full) or dst.numel() == 0:
        src = full[(Ellipsis, *(slice(0, s) for s in dst.shape[2:]))]
        dst.copy_(src if bias is None else src + bias.reshape(c, *([1] * ndim)).to(src.dtype))
        return
    H, W = _planes(dst.shape, ndim)
    LH, LW = _planes(full.shape, ndim)
    if ndim == 2 and channels_last(dst):
        bc, bw = _CL_TILE
        d_n, _, d_h, d_w = dst.stride()
        launch(
            _programs().crop_cast_cl,
            (dst.shape[0] * H, -(-c // bc)),
            (full, dst, bias.contiguous() if bias is not None else full),
            c,
            H,
            W,
            LH,
            LW,
            d_n,
            d_h,
            d_w,
            HAS_BIAS=bias is not None,
            BC=bc,
            BW=bw,
        )
        return
    rows = dst.shape[0] * c * H
    rb, bw = _tile(W)
    launch(
        _programs().crop_cast,
        (-(-rows // rb),),
        (full, dst, bias.contiguous() if bias is not None else full),
        rows,
        c,
        H,
        W,
        LH,
        LW,
        *_strides4(dst, ndim),
        HAS_BIAS=bias is not None,
        RB=rb,
        BW=bw,
    )


def spectral_mul_(a_f: Tensor, b_f: Tensor) -> Tensor:
    """In place ``a_f (n, C, *F) *= b_f (C, *F)``; returns ``a_f``."""
    if a_f.dtype != torch.complex64 or not _triton_ok(a_f) or not (a_f.is_contiguous() and b_f.is_contiguous()):
        return a_f.mul_(b_f.reshape(a_f.shape[1:]))
    per_sample = b_f.numel()
    launch(
        _programs().spectral_mul,
        (a_f.shape[0], -(-per_sample // _BLOCK)),
        (torch.view_as_real(a_f), torch.view_as_real(b_f)),
        per_sample,
        BLOCK=_BLOCK,
    )
    return a_f


def backward_mix_(
    dy_f: Tensor,
    x_f: Optional[Tensor],
    g_f: Tensor,
    dg_f: Optional[Tensor],
    need_x: bool,
    need_g: bool,
    accumulate: bool = True,
    scale: float = 1.0,
) -> Tensor:
    """Depthwise backward in the frequency domain: ``dg_f += scale * sum_n dy_f * conj(x_f)``
    (with ``need_g``; ``=`` instead of ``+=`` without ``accumulate``) and, in place, ``dy_f *=
    conj(g_f)`` (with ``need_x``). ``dy_f, x_f (n, C, *F)``; ``g_f, dg_f (C, 1, *F)``.
    Returns ``dy_f`` (the input gradient's spectrum)."""
    tensors = [t for t in (dy_f, x_f, g_f, dg_f) if t is not None]
    fused = all(t.dtype == torch.complex64 and t.is_contiguous() for t in tensors) and _triton_ok(dy_f)
    if not fused:
        if need_g:
            # conj_physical, never a lazy conj() view: compiled (AOT) graphs run custom ops without
            # the conjugate-bit fallback, where a conj view reads as the plain tensor
            part = (torch.conj_physical(x_f) * dy_f).sum(0).reshape(dg_f.shape)
            if scale != 1.0:
                part = part * scale
            if accumulate:
                dg_f += part
            else:
                dg_f.copy_(part)
        if need_x:
            dy_f.mul_(torch.conj_physical(g_f).reshape(dy_f.shape[1:]))
        return dy_f
    per_sample = g_f.numel()
    dummy = torch.view_as_real(dy_f)
    launch(
        _programs().backward_mix,
        (-(-per_sample // _MIX_BLOCK),),
        (
            dummy,
            torch.view_as_real(x_f) if need_g else dummy,
            torch.view_as_real(g_f),
            torch.view_as_real(dg_f) if need_g else dummy,
        ),
        dy_f.shape[0],
        per_sample,
        float(scale),
        NEED_X=need_x,
        NEED_G=need_g,
        ACCUMULATE=accumulate,
        BLOCK=_MIX_BLOCK,
    )
    return dy_f
