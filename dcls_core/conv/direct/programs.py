"""Triton GPU programs of the direct depthwise 2-D convolution (:mod:`.conv` imports this module,
and with it Triton, on first use).

Each output patch of ``PH x PW`` positions of one channel is the window of the input it reads
times one patch matrix made from the kernel (the same for every patch: the rows of one product
are the samples and patches of a channel); see the section below. The input gradient is the same
product of the output gradient with the kernel rotated by 180 degrees; the kernel gradient is the
transposed product summed over the rows, whose diagonals hold the taps.

No ``from __future__ import annotations`` here: Triton reads the ``tl.constexpr`` hints.
"""

import triton
import triton.language as tl

__all__ = [
    "dw_conv2d_patches",
    "dw_conv2d_patches_kernel_grad",
    "pad_planes",
    "patch_matrix",
]


# ---- patch tiles: a block of output positions of one channel as one matrix product ----------
#
# An output patch of PH x PW positions (``BN = PH * PW``) of channel ``c`` is a product of the
# input window it reads, ``(PH + kH - 1) x (PW + kW - 1)`` positions flattened, with one matrix
#
#     B[r, u, v] = k[c, r - vh, u - vw]   (v = vh * PW + vw; 0 where the tap is outside the kernel)
#
# that is the same for every patch (the convolution is translation invariant), so the batch
# gives the rows of the product: ``y[n, patch] = window[n, :] @ B``. Per output this multiplies
# (PH + kH - 1)(PW + kW - 1) values (900 for 8x8 patches and 23x23 kernels, against 529 taps),
# and each program reads its window once; banded products per kernel row (the design measured
# before this one) read every input row once per kernel row. The windows are read from a
# zero-padded copy of the input (:func:`pad_planes`: contiguous rows, the padding in place, the
# products' dtype), so the loads need no bounds and a window row starts at a multiple of PW.


@triton.jit
def pad_planes(
    src_ptr,
    dst_ptr,
    C,
    H,
    W,
    top,
    left,
    LH,
    LW,
    s_n,
    s_c,
    s_h,
    s_w,
    d_n,
    d_c,
    d_h,
    d_w,
    BC: tl.constexpr,
    BW: tl.constexpr,
):
    """``dst[n, c, top + h, left + w] = src[n, c, h, w]``, 0 elsewhere, in dst's dtype; ``dst (N,
    C, LH, LW)`` and ``src`` any strides (blocks of ``BC`` channels by ``BW`` columns, so
    channels-last and contiguous tensors both move whole sectors on either side: also the
    layout change between the two). Grid ``(N * LH, cdiv(C, BC))``."""
    row = tl.program_id(0)
    n = row // LH
    hp = row - n * LH
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    c_ok = (c < C)[:, None]
    h = hp - top
    h_ok = (h >= 0) & (h < H)
    src_row = src_ptr + n.to(tl.int64) * s_n + (c.to(tl.int64) * s_c)[:, None] + h.to(tl.int64) * s_h
    dst_row = dst_ptr + n.to(tl.int64) * d_n + (c.to(tl.int64) * d_c)[:, None] + hp.to(tl.int64) * d_h
    for w0 in range(0, LW, BW):
        wp = w0 + tl.arange(0, BW)
        w = (wp - left)[None, :]
        v = tl.load(src_row + w.to(tl.int64) * s_w, mask=c_ok & h_ok & (w >= 0) & (w < W), other=0.0)
        dst = dst_row + wp.to(tl.int64)[None, :] * d_w
        tl.store(dst, v.to(dst_ptr.dtype.element_ty), mask=c_ok & (wp < LW)[None, :])


@triton.jit
def patch_matrix(k_ptr, b_ptr, KH, KW, R_ROWS, FLIP: tl.constexpr, PW: tl.constexpr, U: tl.constexpr, BN: tl.constexpr):
    """``b[c, r, u, v] = k[c, r - vh, u - vw]`` inside the kernel, else 0 (``v = vh * PW + vw``;
    ``FLIP``: ``k[c, kH-1-(r-vh), kW-1-(u-vw)]``), in b's dtype; ``k (C, kH, kW)`` contiguous,
    ``b (C, R_ROWS, U, BN)``. One program per ``(c, r)``."""
    cr = tl.program_id(0)
    c = cr // R_ROWS
    r = cr - c * R_ROWS
    u = tl.arange(0, U)[:, None]
    v = tl.arange(0, BN)[None, :]
    dh = r - v // PW
    dw = u - v % PW
    inside = (dh >= 0) & (dh < KH) & (dw >= 0) & (dw < KW)
    if FLIP:
        tap = (KH - 1 - dh) * KW + (KW - 1 - dw)
    else:
        tap = dh * KW + dw
    t = tl.load(k_ptr + c.to(tl.int64) * KH * KW + tap, mask=inside, other=0.0)
    tl.store(b_ptr + cr.to(tl.int64) * U * BN + u * BN + v, t.to(b_ptr.dtype.element_ty))


@triton.jit
def _patch_rows(m, N, NPW, PH: tl.constexpr, PW: tl.constexpr):
    """Row ``m = patch * N + n`` of a product -> ``(n, first output row, first window column)``
    (the window columns of patch column ``j`` start at ``j * PW``: aligned loads)."""
    p = m // N
    n = m - p * N
    ph = p // NPW
    return n, ph * PH, (p - ph * NPW) * PW


@triton.jit
def dw_conv2d_patches(
    xp_ptr,
    b_ptr,
    bias_ptr,
    y_ptr,
    N,
    M,
    NPW,
    H_out,
    W_out,
    row_lo,
    row_hi,
    col_shift,
    R_ROWS,
    sxn,
    sxc,
    sxh,
    syn,
    syc,
    syh,
    syw,
    HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr,
    PH: tl.constexpr,
    PW: tl.constexpr,
    U: tl.constexpr,
    BM: tl.constexpr,
    BK: tl.constexpr,
):
    """``y[n, c, oh0 + vh, j PW - col_shift + vw] = sum_{r, u} xp[n, c, oh0 + r, j PW + u] B[c, r,
    u, v] (+ b[c])`` for the ``BM`` rows ``m = patch * N + n`` of a program (patch column ``j``)
    and its ``PH x PW`` patch positions ``v`` (outputs outside ``y`` are not stored): ``xp`` the
    zero-padded input (:func:`pad_planes`, unit column stride; its rows ``[row_lo, row_hi)`` hold
    the input, the others are skipped), ``B (C, R_ROWS, U, PH * PW)`` from :func:`patch_matrix` in
    xp's dtype. Grid ``(cdiv(M, BM), C)``."""
    BN: tl.constexpr = PH * PW
    RK: tl.constexpr = BK // U  # window rows per step
    c = tl.program_id(1)
    m_first = tl.program_id(0) * BM
    m = m_first + tl.arange(0, BM)
    m_ok = m < M
    n, oh0, ow0 = _patch_rows(m, N, NPW, PH, PW)
    # window rows holding input for some row of this block (the patches' first rows grow with m)
    top = (m_first // N // NPW) * PH
    bottom = ((tl.minimum(m_first + BM, M) - 1) // N // NPW) * PH
    lo = tl.maximum(row_lo - bottom, 0)
    hi = tl.minimum(row_hi - top, R_ROWS)
    kk = tl.arange(0, BK)
    rr = kk // U
    uu = kk - rr * U
    v = tl.arange(0, BN)
    a_ptrs = (
        xp_ptr
        + (n.to(tl.int64) * sxn + c.to(tl.int64) * sxc + (oh0 + lo).to(tl.int64) * sxh + ow0)[:, None]
        + (rr * sxh + uu)[None, :]
    )
    b_ptrs = b_ptr + c.to(tl.int64) * R_ROWS * U * BN + lo * U * BN + kk[:, None] * BN + v[None, :]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for r0 in range(lo, hi, RK):
        a = tl.load(a_ptrs, mask=m_ok[:, None], other=0.0)
        bt = tl.load(b_ptrs, mask=(r0 + rr < R_ROWS)[:, None], other=0.0)
        acc = tl.dot(a, bt, acc, input_precision=PRECISION)
        a_ptrs += RK * sxh
        b_ptrs += BK * BN
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c).to(tl.float32)
    oh = oh0[:, None] + (v // PW)[None, :]
    ow = (ow0 - col_shift)[:, None] + (v % PW)[None, :]
    y_off = (n.to(tl.int64) * syn + c.to(tl.int64) * syc)[:, None] + oh.to(tl.int64) * syh + ow.to(tl.int64) * syw
    y_ok = m_ok[:, None] & (oh < H_out) & (ow >= 0) & (ow < W_out)
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=y_ok)


@triton.jit
def dw_conv2d_patches_kernel_grad(
    xp_ptr,
    dyp_ptr,
    part_ptr,
    N,
    M,
    NPW,
    C,
    R_ROWS,
    dy_top,
    dy_left,
    rows_per_split,
    sxn,
    sxc,
    sxh,
    sdn,
    sdc,
    sdh,
    PRECISION: tl.constexpr,
    PH: tl.constexpr,
    PW: tl.constexpr,
    U: tl.constexpr,
    BM: tl.constexpr,
    BK: tl.constexpr,
):
    """Partial products ``part[s, c, r, u, v] = sum_{m in split s} xp[n, c, oh0 + r, ow0 + u]
    dy[n, c, oh0 + vh, ow0 + vw]`` (rows ``m = patch * N + n``) for the ``BK`` window positions of
    step ``kb``: ``xp`` the forward's zero-padded input, ``dyp`` a zero-padded output gradient
    holding ``dy[n, c, h, w]`` at ``(dy_top + h, dy_left + w)`` (both with unit column stride,
    zero beyond the output; rows with ``dy_top + h < 0`` are cut and read as 0); ``part (splits,
    C, R_ROWS * U, PH * PW)`` float32. The kernel gradient is its sum over the splits and along
    the diagonals, ``dk[c, i, j] = sum_v part[c, i + vh, j + vw, v]`` (the caller's). Grid ``(C *
    cdiv(R_ROWS, BK / U), splits)``."""
    BN: tl.constexpr = PH * PW
    RK: tl.constexpr = BK // U
    steps = tl.cdiv(R_ROWS, RK)
    ck = tl.program_id(0)
    c = ck // steps
    kb = ck - c * steps
    split = tl.program_id(1)
    kk = tl.arange(0, BK)
    rr = kk // U
    uu = kk - rr * U
    v = tl.arange(0, BN)
    vh = v // PW
    vw = v - vh * PW
    k_ok = kb * RK + rr < R_ROWS
    x_cols = ((kb * RK + rr) * sxh + uu)[None, :]
    e_cols = ((dy_top + vh) * sdh + dy_left + vw)[None, :]
    x_chan = xp_ptr + c.to(tl.int64) * sxc
    dy_chan = dyp_ptr + c.to(tl.int64) * sdc
    g = tl.zeros((BK, BN), dtype=tl.float32)
    m_start = split * rows_per_split
    m_end = tl.minimum(M, m_start + rows_per_split)
    for m0 in range(m_start, m_end, BM):
        m = m0 + tl.arange(0, BM)
        m_ok = (m < m_end)[:, None]
        n, oh0, ow0 = _patch_rows(m, N, NPW, PH, PW)
        a = tl.load(
            x_chan + (n.to(tl.int64) * sxn + oh0.to(tl.int64) * sxh + ow0)[:, None] + x_cols,
            mask=m_ok & k_ok[None, :],
            other=0.0,
        )
        e_rows = (n.to(tl.int64) * sdn + oh0.to(tl.int64) * sdh + ow0)[:, None]
        # with padding beyond kH - 1 the top output rows see no input (their dy was cut: dy_top < 0)
        e_ok = m_ok & (dy_top + oh0[:, None] + vh[None, :] >= 0)
        e = tl.load(dy_chan + e_rows + e_cols, mask=e_ok, other=0.0)
        g = tl.dot(tl.trans(a), e, g, input_precision=PRECISION)
    row = (split.to(tl.int64) * C + c) * R_ROWS * U + kb * BK
    tl.store(part_ptr + (row + kk)[:, None] * BN + v[None, :], g, mask=k_ok[:, None])
