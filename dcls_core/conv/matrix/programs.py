"""Triton GPU programs of the matrix path (:mod:`.conv` imports this module, and with it Triton, on
first use): the matrices ``T`` built from the kernel, and the kernel gradient's tap sums.

``matrices`` writes ``T[c, r, o] = k[c, tap(r, o)]`` straight from the kernel's taps, the tap
index computed from the positions; the torch build casts and pads the kernel and gathers ``T``
through an index table (an index read per entry written, and three more operations on the host).

The kernel gradient of channel ``c`` sums the entries of the product of the output gradient and
the input, ``E_c = dy_c^T @ x_c`` (``(S_out, S_in)``, float32), that belong to each tap: entry
``(o, r)`` holds tap ``r - o * stride + pad`` per axis. Gathering the entries into tap order and
summing segments moves ``E`` three times (read, write sorted, read again); this program reads it
once. One program per channel and kernel row ``i``: for each output row ``oh`` it loads the
entries of input row ``rh = oh * stride_h + i - pad_h`` as a skewed tile, row ``ow`` from column
``ow * stride_w - pad_w`` on, so that column ``j`` of the tile holds kernel column ``j``: the
kernel row is the tile's column sums, added up over the output rows (a fixed order: the same
result on every run). Each tile row is contiguous in memory.

No ``from __future__ import annotations`` here: Triton reads the ``tl.constexpr`` hints.
"""

import triton
import triton.language as tl

__all__ = ["matrices", "tap_sums"]


@triton.jit
def tap_sums(
    e_ptr,
    dk_ptr,
    H_in,
    W_in,
    H_out,
    W_out,
    KH,
    KW,
    pad_h,
    pad_w,
    stride_h,
    stride_w,
    BW_OUT: tl.constexpr,
    BKW: tl.constexpr,
):
    """``dk[c, i, j] = sum of e[c, oh * W_out + ow, rh * W_in + rw]`` over the entries with
    ``rh - oh * stride_h + pad_h == i`` and ``rw - ow * stride_w + pad_w == j``; ``e (C, H_out *
    W_out, H_in * W_in)`` and ``dk (C, KH, KW)`` contiguous float32; ``BKW >= KW`` and ``BW_OUT``
    (output columns per tile) powers of two. Grid ``(C * KH,)``."""
    pid = tl.program_id(0)
    c = pid // KH
    i = pid - c * KH
    j = tl.arange(0, BKW)[None, :]
    s_in = H_in * W_in
    channel = e_ptr + c.to(tl.int64) * H_out * W_out * s_in
    acc = tl.zeros((BKW,), dtype=tl.float32)
    # only the output rows whose input row rh = oh * stride_h + i - pad_h lies in the input (the
    # divisions see no negative numerator: Triton divides toward zero, its interpreter downwards)
    oh_lo = (tl.maximum(pad_h - i, 0) + stride_h - 1) // stride_h
    last = H_in - 1 + pad_h - i
    oh_hi = tl.minimum(H_out, tl.where(last >= 0, tl.maximum(last, 0) // stride_h + 1, 0))
    for oh in range(oh_lo, oh_hi):
        rh = oh * stride_h + i - pad_h
        row_ok = (rh >= 0) & (rh < H_in)  # true within the bounds above
        for ow0 in range(0, W_out, BW_OUT):  # blocks of BW_OUT output columns
            ow = ow0 + tl.arange(0, BW_OUT)[:, None]
            rw = ow * stride_w + j - pad_w  # the input column of tap column j for output column ow
            inside = row_ok & (ow < W_out) & (j < KW) & (rw >= 0) & (rw < W_in)
            rows = channel + (oh * W_out + ow).to(tl.int64) * s_in
            acc += tl.sum(tl.load(rows + rh * W_in + rw, mask=inside, other=0.0), axis=0)
    taps = tl.arange(0, BKW)
    tl.store(dk_ptr + (c * KH + i).to(tl.int64) * KW + taps, acc, mask=taps < KW)


@triton.jit
def matrices(
    k_ptr,
    t_ptr,
    H_in,
    W_in,
    H_out,
    W_out,
    KH,
    KW,
    pad_h,
    pad_w,
    stride_h,
    stride_w,
    k_stride_c,
    k_stride_h,
    k_stride_w,
    row_blocks,
    BR: tl.constexpr,
    BO: tl.constexpr,
):
    """``t[c, rh * W_in + rw, oh * W_out + ow] = k[c, rh - oh * stride_h + pad_h, rw - ow *
    stride_w + pad_w]`` where that tap exists, else 0, in ``t``'s dtype (the value cast as
    ``Tensor.to`` casts it); ``k`` ``(C, KH, KW)`` of any strides, ``t (C, H_in * W_in, H_out *
    W_out)`` contiguous. Grid ``(C * row_blocks,)``, ``row_blocks`` blocks of ``BR`` rows of
    ``t`` each; ``BR`` and ``BO`` (columns per store) powers of two."""
    pid = tl.program_id(0)
    c = pid // row_blocks
    s_in = H_in * W_in
    s_out = H_out * W_out
    r = (pid - c * row_blocks) * BR + tl.arange(0, BR)[:, None]
    rh = r // W_in
    rw = r - rh * W_in
    taps = k_ptr + c.to(tl.int64) * k_stride_c
    rows = t_ptr + (c.to(tl.int64) * s_in + r) * s_out
    for o0 in range(0, s_out, BO):
        o = o0 + tl.arange(0, BO)[None, :]
        oh = o // W_out
        th = rh - oh * stride_h + pad_h
        tw = rw - (o - oh * W_out) * stride_w + pad_w
        inside = (r < s_in) & (o < s_out)
        tap = inside & (th >= 0) & (th < KH) & (tw >= 0) & (tw < KW)
        value = tl.load(taps + th * k_stride_h + tw * k_stride_w, mask=tap, other=0.0)
        tl.store(rows + o, value.to(t_ptr.dtype.element_ty), mask=inside)
