"""Triton kernels of :mod:`dcls_core.triton_depthwise` (imports Triton; load lazily)."""
import triton
import triton.language as tl


@triton.jit
def conv_fwd(
    x_ptr, k_ptr, b_ptr, y_ptr,
    M, H, W, Ho, Wo,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    pad_h, pad_w,
    KH, KW, U,
    BM: tl.constexpr, BW: tl.constexpr, BK: tl.constexpr,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_w = tl.program_id(1)
    c = tl.program_id(2)
    rows = pid_m * BM + tl.arange(0, BM)
    row_ok = rows < M
    n = rows // Ho
    h = rows - n * Ho
    w0 = pid_w * BW
    wo = tl.arange(0, BW)
    x_rows = x_ptr + c * sxc + n * sxn
    k_base = k_ptr + c * (KH * KW)
    acc = tl.zeros((BM, BW), dtype=tl.float32)
    for k0 in range(0, KH * U, BK):
        kk = k0 + tl.arange(0, BK)
        i = kk // U
        u = kk - i * U
        k_ok = kk < KH * U
        hin = h[:, None] + i[None, :] - pad_h
        win = w0 + u - pad_w
        a_mask = row_ok[:, None] & k_ok[None, :] & (hin >= 0) & (hin < H) & ((win >= 0) & (win < W))[None, :]
        a = tl.load(x_rows[:, None] + hin * sxh + (win * sxw)[None, :], mask=a_mask, other=0.0)
        d = u[:, None] - wo[None, :]
        t_mask = k_ok[:, None] & (d >= 0) & (d < KW)
        t = tl.load(k_base + i[:, None] * KW + d, mask=t_mask, other=0.0)
        acc = tl.dot(a, t, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c).to(tl.float32)
    wout = w0 + wo
    y_mask = row_ok[:, None] & (wout < Wo)[None, :]
    y_offs = c * syc + (n * syn + h * syh)[:, None] + (wout * syw)[None, :]
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)


@triton.jit
def conv_wgrad(
    x_ptr, dy_ptr, part_ptr,
    M, H, W, Ho, Wo, rows_per_split,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    pad_h, pad_w,
    KH, KW, U,
    BI: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    split = tl.program_id(0)
    c = tl.program_id(1)
    n_split = tl.num_programs(0)
    ii = tl.arange(0, BI)
    jj = tl.arange(0, BJ)
    k_start = split * rows_per_split * U
    k_end = k_start + rows_per_split * U
    acc = tl.zeros((BI, BJ), dtype=tl.float32)
    x_c = x_ptr + c * sxc
    dy_c = dy_ptr + c * syc
    for k0 in range(0, rows_per_split * U, BK):
        kk = k_start + k0 + tl.arange(0, BK)
        k_ok = (kk < k_end) & (kk < M * U)
        r = kk // U
        u = kk - r * U
        n = r // Ho
        h = r - n * Ho
        # A[i, (r, u)] = x[n, h + i - pad_h, u - pad_w]
        hin = h[None, :] + ii[:, None] - pad_h
        win = u - pad_w
        a_mask = (ii < KH)[:, None] & k_ok[None, :] & (hin >= 0) & (hin < H) & ((win >= 0) & (win < W))[None, :]
        a = tl.load(x_c + (n * sxn + win * sxw)[None, :] + hin * sxh, mask=a_mask, other=0.0)
        # B[(r, u), j] = dy[n, h, u - j]
        wy = u[:, None] - jj[None, :]
        b_mask = k_ok[:, None] & (jj < KW)[None, :] & (wy >= 0) & (wy < Wo)
        b = tl.load(dy_c + (n * syn + h * syh)[:, None] + wy * syw, mask=b_mask, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    out = part_ptr + (c * n_split + split) * (BI * BJ) + ii[:, None] * BJ + jj[None, :]
    tl.store(out, acc)


@triton.jit
def conv_fwd_rows(
    x_ptr, k_ptr, b_ptr, y_ptr,
    M, H, W, Ho, Wo,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    pad_h, pad_w,
    KH, KW, U,
    BM: tl.constexpr, BW: tl.constexpr, BK: tl.constexpr,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
):
    """``conv_fwd`` with the reduction split as kernel rows (outer) x column chunks (inner)."""
    pid_m = tl.program_id(0)
    pid_w = tl.program_id(1)
    c = tl.program_id(2)
    rows = pid_m * BM + tl.arange(0, BM)
    row_ok = rows < M
    n = rows // Ho
    h = rows - n * Ho
    w0 = pid_w * BW
    wo = tl.arange(0, BW)
    x_rows = x_ptr + c * sxc + n * sxn
    k_base = k_ptr + c * (KH * KW)
    acc = tl.zeros((BM, BW), dtype=tl.float32)
    for i in range(KH):
        hin = h + i - pad_h
        r_ok = row_ok & (hin >= 0) & (hin < H)
        a_rows = x_rows + hin * sxh
        for u0 in range(0, U, BK):
            u = u0 + tl.arange(0, BK)
            win = w0 + u - pad_w
            c_ok = (u < U) & (win >= 0) & (win < W)
            a = tl.load(a_rows[:, None] + (win * sxw)[None, :], mask=r_ok[:, None] & c_ok[None, :], other=0.0)
            d = u[:, None] - wo[None, :]
            t = tl.load(k_base + i * KW + d, mask=(d >= 0) & (d < KW), other=0.0)
            acc = tl.dot(a, t, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c).to(tl.float32)
    wout = w0 + wo
    y_mask = row_ok[:, None] & (wout < Wo)[None, :]
    y_offs = c * syc + (n * syn + h * syh)[:, None] + (wout * syw)[None, :]
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)
