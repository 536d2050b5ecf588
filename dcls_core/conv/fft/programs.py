"""Triton GPU programs of the FFT convolution's element-wise passes (:mod:`.passes` imports this
module, and with it Triton, on first use).

Complex tensors are read as interleaved float32 pairs. Planes are ``(rows, cols)`` images of
one (sample, channel); ``pad_cast`` and ``crop_cast`` move them between an input-sized tensor
of any dtype and strides and a contiguous zero-padded float32 transform buffer.

No ``from __future__ import annotations`` here: Triton reads the ``tl.constexpr`` hints.
"""

import triton
import triton.language as tl

__all__ = ["backward_mix", "crop_cast", "crop_cast_cl", "pad_cast", "pad_cast_cl", "spectral_mul"]


@triton.jit
def pad_cast(src_ptr, dst_ptr, rows, C, H, W, LH, LW, s_n, s_c, s_h, s_w, RB: tl.constexpr, BW: tl.constexpr):
    """``dst[p, h, w] = src[n, c, h, w]`` inside ``H x W``, 0 elsewhere; ``dst (N*C, LH, LW)``
    contiguous. A program writes ``RB`` rows (``rows = N*C*LH``) of ``BW``-column steps."""
    r = tl.program_id(0) * RB + tl.arange(0, RB)
    h = r % LH
    plane = r // LH
    n = (plane // C).to(tl.int64)
    c = (plane % C).to(tl.int64)
    src_row = n * s_n + c * s_c + h.to(tl.int64) * s_h
    dst_row = r.to(tl.int64) * LW
    row_ok = r < rows
    row_in = row_ok & (h < H)
    for w0 in range(0, LW, BW):
        w = w0 + tl.arange(0, BW)
        v = tl.load(src_ptr + src_row[:, None] + w[None, :] * s_w, mask=row_in[:, None] & (w < W)[None, :], other=0.0)
        tl.store(dst_ptr + dst_row[:, None] + w[None, :], v.to(tl.float32), mask=row_ok[:, None] & (w < LW)[None, :])


@triton.jit
def crop_cast(
    src_ptr,
    dst_ptr,
    bias_ptr,
    rows,
    C,
    H,
    W,
    LH,
    LW,
    d_n,
    d_c,
    d_h,
    d_w,
    HAS_BIAS: tl.constexpr,
    RB: tl.constexpr,
    BW: tl.constexpr,
):
    """``dst[n, c, h, w] = src[p, h, w] (+ bias[c])`` for ``h < H, w < W``, in dst's dtype;
    ``src (N*C, LH, LW)`` contiguous float32, ``dst`` any strides. ``rows = N*C*H``."""
    r = tl.program_id(0) * RB + tl.arange(0, RB)
    h = r % H
    plane = r // H
    c32 = plane % C
    n = (plane // C).to(tl.int64)
    c = c32.to(tl.int64)
    src_row = plane.to(tl.int64) * LH * LW + h.to(tl.int64) * LW
    dst_row = n * d_n + c * d_c + h.to(tl.int64) * d_h
    row_ok = r < rows
    if HAS_BIAS:
        b = tl.load(bias_ptr + c32, mask=row_ok, other=0.0).to(tl.float32)
    for w0 in range(0, W, BW):
        w = w0 + tl.arange(0, BW)
        m = row_ok[:, None] & (w < W)[None, :]
        v = tl.load(src_ptr + src_row[:, None] + w[None, :], mask=m, other=0.0)
        if HAS_BIAS:
            v = v + b[:, None]
        tl.store(dst_ptr + dst_row[:, None] + w[None, :] * d_w, v.to(dst_ptr.dtype.element_ty), mask=m)


@triton.jit
def pad_cast_cl(src_ptr, dst_ptr, C, H, W, LH, LW, s_n, s_h, s_w, BC: tl.constexpr, BW: tl.constexpr):
    """:func:`pad_cast` for a source with channel stride 1 (channels-last): blocks of ``BC``
    channels (contiguous in the source) by ``BW`` columns (contiguous in ``dst``), so both the
    reads and the writes are coalesced. Grid ``(N * LH, cdiv(C, BC))``: a program writes row
    ``h`` of ``BC`` planes, zeros where ``h >= H`` or ``w >= W``."""
    nh = tl.program_id(0)
    n = (nh // LH).to(tl.int64)
    h = nh % LH
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    c_ok = c < C
    src_row = src_ptr + n * s_n + h.to(tl.int64) * s_h
    dst_row = dst_ptr + ((n * C + c.to(tl.int64)) * LH + h) * LW
    for w0 in range(0, LW, BW):
        w = w0 + tl.arange(0, BW)
        v = tl.load(
            src_row + c[:, None] + w.to(tl.int64)[None, :] * s_w,
            mask=c_ok[:, None] & (w < W)[None, :] & (h < H),
            other=0.0,
        )
        tl.store(dst_row[:, None] + w[None, :], v.to(tl.float32), mask=c_ok[:, None] & (w < LW)[None, :])


@triton.jit
def crop_cast_cl(
    src_ptr,
    dst_ptr,
    bias_ptr,
    C,
    H,
    W,
    LH,
    LW,
    d_n,
    d_h,
    d_w,
    HAS_BIAS: tl.constexpr,
    BC: tl.constexpr,
    BW: tl.constexpr,
):
    """:func:`crop_cast` into a destination with channel stride 1 (channels-last): blocks of
    ``BC`` channels by ``BW`` columns, read along the columns and written along the channels.
    Grid ``(N * H, cdiv(C, BC))``."""
    nh = tl.program_id(0)
    n = (nh // H).to(tl.int64)
    h = nh % H
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    c_ok = c < C
    src_row = src_ptr + ((n * C + c.to(tl.int64)) * LH + h) * LW
    dst_row = dst_ptr + n * d_n + h.to(tl.int64) * d_h
    if HAS_BIAS:
        b = tl.load(bias_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    for w0 in range(0, W, BW):
        w = w0 + tl.arange(0, BW)
        m = c_ok[:, None] & (w < W)[None, :]
        v = tl.load(src_row[:, None] + w[None, :], mask=m, other=0.0)
        if HAS_BIAS:
            v = v + b[:, None]
        tl.store(dst_row + c[:, None] + w.to(tl.int64)[None, :] * d_w, v.to(dst_ptr.dtype.element_ty), mask=m)


@triton.jit
def spectral_mul(a_ptr, b_ptr, CF, BLOCK: tl.constexpr):
    """In place ``a[n, q] *= b[q]``; ``a (N, CF)``, ``b (CF)`` complex; grid ``(N, cdiv(CF, BLOCK))``."""
    q = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = q < CF
    i = tl.program_id(0).to(tl.int64) * CF + q
    ar = tl.load(a_ptr + 2 * i, mask=ok, other=0.0)
    ai = tl.load(a_ptr + 2 * i + 1, mask=ok, other=0.0)
    br = tl.load(b_ptr + 2 * q, mask=ok, other=0.0)
    bi = tl.load(b_ptr + 2 * q + 1, mask=ok, other=0.0)
    tl.store(a_ptr + 2 * i, ar * br - ai * bi, mask=ok)
    tl.store(a_ptr + 2 * i + 1, ar * bi + ai * br, mask=ok)


@triton.jit
def backward_mix(
    dy_ptr,
    x_ptr,
    g_ptr,
    dg_ptr,
    N,
    CF,
    scale,
    NEED_X: tl.constexpr,
    NEED_G: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Depthwise backward in the frequency domain, one pass over the chunk.

    ``dg[q] += scale * sum_n dY[n, q] conj(X[n, q])`` (NEED_G; ``=`` without ACCUMULATE) and,
    in place, ``dY[n, q] *= conj(G[q])`` (NEED_X); ``dY, X (N, CF)``, ``G, dg (CF)`` complex. Each program owns a
    block of ``q``: no atomics, the sum runs over ``n`` in order (deterministic).
    """
    q = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = q < CF
    gr = tl.load(g_ptr + 2 * q, mask=ok, other=0.0)
    gi = tl.load(g_ptr + 2 * q + 1, mask=ok, other=0.0)
    off = q.to(tl.int64)  # (n, q) offset, advanced by CF per sample in 64-bit
    acc_r = tl.zeros([BLOCK], dtype=tl.float32)
    acc_i = tl.zeros([BLOCK], dtype=tl.float32)
    for _ in range(0, N):
        yr = tl.load(dy_ptr + 2 * off, mask=ok, other=0.0)
        yi = tl.load(dy_ptr + 2 * off + 1, mask=ok, other=0.0)
        if NEED_G:
            xr = tl.load(x_ptr + 2 * off, mask=ok, other=0.0)
            xi = tl.load(x_ptr + 2 * off + 1, mask=ok, other=0.0)
            acc_r += yr * xr + yi * xi
            acc_i += yi * xr - yr * xi
        if NEED_X:
            tl.store(dy_ptr + 2 * off, yr * gr + yi * gi, mask=ok)
            tl.store(dy_ptr + 2 * off + 1, yi * gr - yr * gi, mask=ok)
        off += CF
    if NEED_G:
        acc_r = acc_r * scale
        acc_i = acc_i * scale
        if ACCUMULATE:
            acc_r += tl.load(dg_ptr + 2 * q, mask=ok, other=0.0)
            acc_i += tl.load(dg_ptr + 2 * q + 1, mask=ok, other=0.0)
        tl.store(dg_ptr + 2 * q, acc_r, mask=ok)
        tl.store(dg_ptr + 2 * q + 1, acc_i, mask=ok)
