"""Triton GPU programs of the log-mel front end's fused passes (see :mod:`.logmel_passes`).

Imported only when a pass first launches one (the module imports Triton). Each program has a
plain torch twin in :mod:`.logmel_passes` that it must equal; the tests run both, on the GPU and
on the CPU under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["db_normalised", "power_erased", "windowed_frames"]


@triton.jit
def _round_half_even(p):
    """``torch.round`` of float32 ``p`` (ties to even), exact for ``|p| < 2**22``."""
    r = tl.floor(p)
    frac = p - r  # exact: p and floor(p) are within 1 of each other
    odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
    up = (frac > 0.5) | ((frac == 0.5) & odd)
    return tl.where(up, r + 1.0, r)


@triton.jit
def windowed_frames(
    x_ptr,
    out_ptr,
    window_ptr,
    shift_ptr,
    offset_ptr,
    step_ptr,
    end_ptr,
    rows,
    F,
    S,
    N: tl.constexpr,
    HOP: tl.constexpr,
    SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    HAS_SPEED: tl.constexpr,
    RB: tl.constexpr,
    BK: tl.constexpr,
):
    """``out[b, f, k] = warped[b, reflect(f * HOP + k - N // 2)] * window[k]`` (float32).

    ``x`` (B, S) int16 or float, contiguous; ``warped`` is ``x * SCALE`` rolled by ``shift[b]``
    and speed-perturbed by ``offset/step/end[b]`` exactly as ``augment.apply_time_warp``
    (int32 / float32 index arithmetic, ``torch.round``'s ties to even); ``reflect`` is the
    reflection padding of ``torch.stft(center=True)``. ``out`` (B, F, N) contiguous,
    ``rows = B * F``. Launch with ``enable_fp_fusion=False`` (the index product must round
    like torch's)."""
    r = tl.program_id(0) * RB + tl.arange(0, RB)
    k = tl.program_id(1) * BK + tl.arange(0, BK)
    row_ok = r < rows
    k_ok = k < N
    b = r // F
    f = r % F
    j = f[:, None] * HOP + k[None, :] - N // 2  # index into the unpadded (warped) clip
    i = tl.where(j < 0, -j, j)
    i = tl.where(i >= S, 2 * (S - 1) - i, i)
    keep = row_ok[:, None] & k_ok[None, :]
    src = i
    if HAS_SPEED:
        offset = tl.load(offset_ptr + b, mask=row_ok, other=0).to(tl.int32)
        step = tl.load(step_ptr + b, mask=row_ok, other=1.0).to(tl.float32)
        end = tl.load(end_ptr + b, mask=row_ok, other=0).to(tl.int32)
        stretched = i + offset[:, None]
        p = _round_half_even(stretched.to(tl.float32) * step[:, None])
        p = tl.minimum(tl.maximum(p, 0.0), (S - 1).to(tl.float32))
        src = p.to(tl.int32)
        keep = keep & (stretched >= 0) & (stretched < end[:, None])
    if HAS_SHIFT:
        shift = tl.load(shift_ptr + b, mask=row_ok, other=0).to(tl.int32)
        src = (src - shift[:, None]) % S
        src = tl.where(src < 0, src + S, src)  # torch.remainder: the divisor's sign
    v = tl.load(x_ptr + b.to(tl.int64)[:, None] * S + src, mask=keep, other=0).to(tl.float32)
    w = tl.load(window_ptr + k, mask=k_ok, other=0.0)
    out = (v * SCALE) * w[None, :]
    tl.store(out_ptr + r.to(tl.int64)[:, None] * N + k[None, :], out, mask=row_ok[:, None] & k_ok[None, :])


@triton.jit
def power_erased(
    spec_ptr,
    out_ptr,
    apply_ptr,
    top_ptr,
    left_ptr,
    height_ptr,
    width_ptr,
    rows,
    F,
    K,
    HAS_ERASE: tl.constexpr,
    RB: tl.constexpr,
    BK: tl.constexpr,
):
    """``out[b, f, k] = re^2 + im^2`` of ``spec[b, f, k]`` (complex64 as (B, F, K, 2) float32,
    contiguous), 0 inside clip ``b``'s erase box (frequency rows ``[top, top + height)``, frames
    ``[left, left + width)``) when ``apply[b]``. ``out`` (B, F, K) contiguous, ``rows = B * F``."""
    r = tl.program_id(0) * RB + tl.arange(0, RB)
    k = tl.program_id(1) * BK + tl.arange(0, BK)
    row_ok = r < rows
    ok = row_ok[:, None] & (k < K)[None, :]
    at = r.to(tl.int64)[:, None] * K + k[None, :]
    re = tl.load(spec_ptr + 2 * at, mask=ok, other=0.0)
    im = tl.load(spec_ptr + 2 * at + 1, mask=ok, other=0.0)
    power = re * re + im * im
    if HAS_ERASE:
        b = r // F
        f = r % F
        apply = tl.load(apply_ptr + b, mask=row_ok, other=0) != 0
        top = tl.load(top_ptr + b, mask=row_ok, other=0)
        left = tl.load(left_ptr + b, mask=row_ok, other=0)
        height = tl.load(height_ptr + b, mask=row_ok, other=0)
        width = tl.load(width_ptr + b, mask=row_ok, other=0)
        in_frames = apply & (f >= left) & (f < left + width)
        inside = in_frames[:, None] & (k[None, :] >= top[:, None]) & (k[None, :] < (top + height)[:, None])
        power = tl.where(inside, 0.0, power)
    tl.store(out_ptr + at, power, mask=ok)


@triton.jit
def db_normalised(mel_ptr, out_ptr, F, M, amin, mean, std, BF: tl.constexpr, BM: tl.constexpr):
    """``out[b, m, f] = (10 * log10(max(mel[b, f, m], amin)) - mean) / std``: ``mel`` (B, F, M)
    contiguous in, ``out`` (B, M, F) contiguous out (the transpose the model's input wants).
    Grid ``(cdiv(F, BF), cdiv(M, BM), B)``."""
    f = tl.program_id(0) * BF + tl.arange(0, BF)
    m = tl.program_id(1) * BM + tl.arange(0, BM)
    b = tl.program_id(2).to(tl.int64)
    ok = (f < F)[:, None] & (m < M)[None, :]
    v = tl.load(mel_ptr + b * F * M + f[:, None] * M + m[None, :], mask=ok, other=1.0)
    db = 10.0 * (tl.log(tl.maximum(v, amin)) * 0.43429448190325176)  # log10(x) = ln(x) / ln(10)
    out = (db - mean) / std
    tl.store(out_ptr + b * M * F + m[None, :] * F + f[:, None], out, mask=ok)
