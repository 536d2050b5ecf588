"""Triton GPU programs of the direct depthwise 2-D convolution (:mod:`.conv` imports this module,
and with it Triton, on first use).

Each output row ``(n, h)`` of one channel is a sum over the kernel rows ``i`` of an input
row times a banded (Toeplitz) matrix built from kernel row ``i``:

    y[n, c, h, w0 + v] = sum_i sum_u x[n, c, h + i - ph, w0 - pw + u] * T_i[u, v],
    T_i[u, v] = k[c, i, u - v]  (0 <= u - v < kW, else 0)

so a block of ``BM`` output rows and ``BW`` output columns is ``kH`` matrix products
``(BM, BJ) @ (BJ, BW)`` on the tensor cores, with ``BJ >= BW + kW - 1`` input columns. The
input is read through masks (no padded copy); the banded matrices ``T (C, kH, BJ, BW)`` are
built once per call by the caller (they do not depend on the column block). The same program
computes the input gradient from the kernel rotated by 180 degrees and padding ``k - 1 - p``;
the kernel gradient is the transposed product summed over rows, whose diagonals are the taps.

No ``from __future__ import annotations`` here: Triton reads the ``tl.constexpr`` hints.
"""

import triton
import triton.language as tl

__all__ = ["banded", "dw_conv2d", "dw_conv2d_kernel_grad", "language_dtype"]


def language_dtype(name: str):
    """The ``triton.language`` dtype named ``name`` (``"float32"``, ``"bfloat16"``, ``"float16"``)."""
    return getattr(tl, name)


@triton.jit
def banded(k_ptr, t_ptr, KH, KW, FLIP: tl.constexpr, BJ: tl.constexpr, BW: tl.constexpr):
    """``t[c, i, u, v] = k[c, i, u - v]`` inside the band ``0 <= u - v < kW``, else 0, in t's
    dtype (``FLIP``: ``k[c, kH-1-i, kW-1-(u-v)]``); ``k (C, kH, kW)`` contiguous, ``t (C, kH,
    BJ, BW)``. One program per ``(c, i)``."""
    ci = tl.program_id(0)
    u = tl.arange(0, BJ)[:, None]
    v = tl.arange(0, BW)[None, :]
    d = u - v
    inside = (d >= 0) & (d < KW)
    if FLIP:
        c = ci // KH
        src = k_ptr + (c * KH + KH - 1 - (ci - c * KH)).to(tl.int64) * KW + (KW - 1 - d)
    else:
        src = k_ptr + ci.to(tl.int64) * KW + d
    t = tl.load(src, mask=inside, other=0.0)
    tl.store(t_ptr + ci.to(tl.int64) * BJ * BW + u * BW + v, t.to(t_ptr.dtype.element_ty))


@triton.jit
def dw_conv2d(
    x_ptr,
    t_ptr,
    b_ptr,
    y_ptr,
    M,
    H_in,
    W_in,
    H_out,
    W_out,
    KH,
    KW,
    pad_h,
    pad_w,
    kh_lo,
    kh_hi,
    sxn,
    sxc,
    sxh,
    sxw,
    syn,
    syc,
    syh,
    syw,
    HAS_BIAS: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
    BM: tl.constexpr,
    BW: tl.constexpr,
    BJ: tl.constexpr,
):
    """``y[n, c, h, w] = sum_i sum_u x[n, c, h + i - ph, w0 - pw + u] T[c, i, u, w - w0] (+ b[c])``
    with the banded matrices ``t (C, kH, BJ, BW)``. Rows ``m = n * H_out + h < M``; grid
    ``(cdiv(M, BM), cdiv(W_out, BW), C)``; only kernel rows ``kh_lo <= i < kh_hi`` can reach
    the input."""
    c = tl.program_id(2)
    m = tl.program_id(0) * BM + tl.arange(0, BM)
    w0 = tl.program_id(1) * BW
    m_ok = m < M
    n = m // H_out
    h = m - n * H_out
    u = tl.arange(0, BJ)
    v = tl.arange(0, BW)
    col = w0 - pad_w + u
    col_ok = (col >= 0) & (col < W_in) & (u < BW + KW - 1)
    x_rows = x_ptr + n.to(tl.int64) * sxn + c.to(tl.int64) * sxc
    x_cols = col.to(tl.int64) * sxw
    t_plane = t_ptr + c.to(tl.int64) * KH * BJ * BW + u[:, None] * BW + v[None, :]
    acc = tl.zeros((BM, BW), dtype=tl.float32)
    for i in range(kh_lo, kh_hi):
        r = h + i - pad_h
        r_ok = m_ok & (r >= 0) & (r < H_in)
        a = tl.load(
            x_rows[:, None] + (r.to(tl.int64) * sxh)[:, None] + x_cols[None, :],
            mask=r_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        t = tl.load(t_plane + i * BJ * BW)
        acc = tl.dot(a.to(DOT_DTYPE), t, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c).to(tl.float32)
    out_col = w0 + v
    y_off = (n.to(tl.int64) * syn + c.to(tl.int64) * syc + (h.to(tl.int64) * syh))[:, None] + (
        out_col.to(tl.int64) * syw
    )[None, :]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & (out_col < W_out)[None, :])


@triton.jit
def _input_rows(x_chan, n, h, m_ok, i, col, col_ok, pad_h, H_in, sxn, sxh, sxw, KH, kh_lo, kh_hi):
    """``(BM, BJ)`` input block of kernel row ``i``: ``x[n, c, h + i - ph, col]``, 0 outside."""
    r = h + i - pad_h
    ok = m_ok & (r >= 0) & (r < H_in) & (i < KH) & (i >= kh_lo) & (i < kh_hi)
    return tl.load(
        x_chan + (n.to(tl.int64) * sxn + r.to(tl.int64) * sxh)[:, None] + (col.to(tl.int64) * sxw)[None, :],
        mask=ok[:, None] & col_ok[None, :],
        other=0.0,
    )


@triton.jit
def _store_taps(part_ptr, g, row, i, KH, KW, d, j):
    taps = tl.zeros(j.shape, dtype=tl.float32)
    for jj in range(0, KW):
        taps = tl.where(j == jj, tl.sum(tl.where(d == jj, g, 0.0)), taps)
    tl.store(part_ptr + (row + i) * KW + j, taps, mask=(j < KW) & (i < KH))


@triton.jit
def dw_conv2d_kernel_grad(
    x_ptr,
    dy_ptr,
    part_ptr,
    M,
    C,
    H_in,
    W_in,
    H_out,
    W_out,
    KH,
    KW,
    pad_h,
    pad_w,
    kh_lo,
    kh_hi,
    rows_per_split,
    sxn,
    sxc,
    sxh,
    sxw,
    sdn,
    sdc,
    sdh,
    sdw,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
    BM: tl.constexpr,
    BW: tl.constexpr,
    BJ: tl.constexpr,
    BK: tl.constexpr,
):
    """Partial kernel gradients ``part[s, c, i, j] = sum_{m in split s, w in column block}
    dy[n, c, h, w] x[n, c, h + i - ph, w + j - pw]``; ``part (splits * column blocks, C, kH,
    kW)`` float32, summed by the caller. A program takes four kernel rows (four products
    ``(BJ, BM) @ (BM, BW)`` per block of rows), so each block of ``dy`` is read once for them
    and their input rows overlap in the cache; tap ``j`` of row ``i`` is the ``j``-th diagonal
    of its product. Grid ``(C * cdiv(kH, 4), cdiv(W_out, BW), splits)``."""
    groups = tl.cdiv(KH, 4)
    cg = tl.program_id(0)
    c = cg // groups
    i0 = (cg - c * groups) * 4
    w0 = tl.program_id(1) * BW
    split = tl.program_id(2)
    u = tl.arange(0, BJ)
    v = tl.arange(0, BW)
    col = w0 - pad_w + u
    col_ok = (col >= 0) & (col < W_in) & (u < BW + KW - 1)
    out_col = w0 + v
    out_ok = out_col < W_out
    m_start = split * rows_per_split
    m_end = tl.minimum(M, m_start + rows_per_split)
    m_end = tl.where((i0 + 3 >= kh_lo) & (i0 < kh_hi), m_end, m_start)
    x_chan = x_ptr + c.to(tl.int64) * sxc
    dy_chan = dy_ptr + c.to(tl.int64) * sdc
    g0 = tl.zeros((BJ, BW), dtype=tl.float32)
    g1 = tl.zeros((BJ, BW), dtype=tl.float32)
    g2 = tl.zeros((BJ, BW), dtype=tl.float32)
    g3 = tl.zeros((BJ, BW), dtype=tl.float32)
    for m0 in range(m_start, m_end, BM):
        m = m0 + tl.arange(0, BM)
        m_ok = m < m_end
        n = m // H_out
        h = m - n * H_out
        e = tl.load(
            dy_chan + (n.to(tl.int64) * sdn + h.to(tl.int64) * sdh)[:, None] + (out_col.to(tl.int64) * sdw)[None, :],
            mask=m_ok[:, None] & out_ok[None, :],
            other=0.0,
        ).to(DOT_DTYPE)
        a = _input_rows(x_chan, n, h, m_ok, i0, col, col_ok, pad_h, H_in, sxn, sxh, sxw, KH, kh_lo, kh_hi)
        g0 = tl.dot(tl.trans(a.to(DOT_DTYPE)), e, g0, input_precision=PRECISION)
        a = _input_rows(x_chan, n, h, m_ok, i0 + 1, col, col_ok, pad_h, H_in, sxn, sxh, sxw, KH, kh_lo, kh_hi)
        g1 = tl.dot(tl.trans(a.to(DOT_DTYPE)), e, g1, input_precision=PRECISION)
        a = _input_rows(x_chan, n, h, m_ok, i0 + 2, col, col_ok, pad_h, H_in, sxn, sxh, sxw, KH, kh_lo, kh_hi)
        g2 = tl.dot(tl.trans(a.to(DOT_DTYPE)), e, g2, input_precision=PRECISION)
        a = _input_rows(x_chan, n, h, m_ok, i0 + 3, col, col_ok, pad_h, H_in, sxn, sxh, sxw, KH, kh_lo, kh_hi)
        g3 = tl.dot(tl.trans(a.to(DOT_DTYPE)), e, g3, input_precision=PRECISION)
    d = u[:, None] - v[None, :]
    j = tl.arange(0, BK)
    block = split * tl.num_programs(1) + tl.program_id(1)
    row = (block.to(tl.int64) * C + c) * KH + i0
    _store_taps(part_ptr, g0, row, 0, KH - i0, KW, d, j)
    _store_taps(part_ptr, g1, row, 1, KH - i0, KW, d, j)
    _store_taps(part_ptr, g2, row, 2, KH - i0, KW, d, j)
    _store_taps(part_ptr, g3, row, 3, KH - i0, KW, d, j)
