"""Triton GPU programs of the fused construction (:mod:`dcls_core.construction.fused`); this module
imports Triton, so the launchers import it on first use.

``construct_fwd`` writes the dense kernel of one kernel slot per program, ``construct_bwd`` the
gradients of its weight, positions and sigmas. With ``PLACED`` the kernel is written (and its
gradient read) as the circular ``(LH, LW)`` plane of the FFT convolution: tap ``a`` of an axis at
slot ``(pad - a) mod L``, taps that share a slot summed (``placed = Mh^T ker Mw`` with 0/1
placement matrices).

No ``from __future__ import annotations`` here: Triton reads the ``tl.constexpr`` hints.
"""

import triton
import triton.language as tl

from .reference import GAUSS_SIGMA_OFFSET, NORM_EPS

SIG_OFFSET = tl.constexpr(GAUSS_SIGMA_OFFSET)
EPS = tl.constexpr(NORM_EPS)

__all__ = ["construct_fwd", "construct_bwd"]


@triton.jit
def _sign(v):
    return tl.where(v > 0, 1.0, tl.where(v < 0, -1.0, 0.0))


@triton.jit
def _factor(grid, p, s, SIZE: tl.constexpr, VERSION: tl.constexpr):
    # p, s: (BMC,), grid: (BK,) float -> (BMC, BK)
    centre = p + (SIZE // 2)
    if VERSION == 0:
        lower = tl.floor(centre)
        frac = centre - lower
        lo = lower[:, None]
        f = tl.where(grid[None, :] == lo, 1.0 - frac[:, None], 0.0) + tl.where(
            grid[None, :] == lo + 1.0, frac[:, None], 0.0
        )
    elif VERSION == 1:
        d = grid[None, :] - centre[:, None]
        f = tl.maximum(1.0 - tl.abs(d), 0.0)
    elif VERSION == 2:
        d = grid[None, :] - centre[:, None]
        f = tl.maximum(tl.abs(s)[:, None] + 1.0 - tl.abs(d), 0.0)
    else:
        d = grid[None, :] - centre[:, None]
        sc = d / (tl.abs(s)[:, None] + SIG_OFFSET)
        f = tl.exp(-0.5 * sc * sc)
    return f


@triton.jit
def _factor_grad(grid, p, s, df, SIZE: tl.constexpr, VERSION: tl.constexpr):
    # gradient of sum(df * factor) with respect to p and s, each (BMC,)
    centre = p + (SIZE // 2)
    if VERSION == 0:
        lower = tl.floor(centre)[:, None]
        slope = tl.where(grid[None, :] == lower + 1.0, 1.0, 0.0) - tl.where(grid[None, :] == lower, 1.0, 0.0)
        dp = tl.sum(df * slope, 1)
        ds = dp * 0.0
    elif VERSION == 1:
        d = grid[None, :] - centre[:, None]
        on = (1.0 - tl.abs(d)) > 0
        dp = tl.sum(tl.where(on, df * _sign(d), 0.0), 1)
        ds = dp * 0.0
    elif VERSION == 2:
        d = grid[None, :] - centre[:, None]
        on = (tl.abs(s)[:, None] + 1.0 - tl.abs(d)) > 0
        dp = tl.sum(tl.where(on, df * _sign(d), 0.0), 1)
        ds = tl.sum(tl.where(on, df, 0.0), 1) * _sign(s)
    else:
        d = grid[None, :] - centre[:, None]
        sig = tl.abs(s)[:, None] + SIG_OFFSET
        sc = d / sig
        f = tl.exp(-0.5 * sc * sc)
        t = df * f * sc / sig
        dp = tl.sum(t, 1)
        ds = tl.sum(t * sc, 1) * _sign(s)
    return dp, ds


@triton.jit
def _load_params(w_ptr, ph_ptr, pw_ptr, sh_ptr, sw_ptr, q, Mc, BMC: tl.constexpr, HAS_SIG: tl.constexpr):
    m = tl.arange(0, BMC)
    m_ok = m < Mc
    offs = q * Mc + m
    w = tl.load(w_ptr + offs, mask=m_ok, other=0.0)
    p_h = tl.load(ph_ptr + offs, mask=m_ok, other=0.0)
    p_w = tl.load(pw_ptr + offs, mask=m_ok, other=0.0)
    if HAS_SIG:
        s_h = tl.load(sh_ptr + offs, mask=m_ok, other=0.0)
        s_w = tl.load(sw_ptr + offs, mask=m_ok, other=0.0)
    else:
        s_h = p_h * 0.0
        s_w = p_w * 0.0
    return m, m_ok, w, p_h, p_w, s_h, s_w


@triton.jit
def _axis_factors(
    a, b, m_ok, p_h, p_w, s_h, s_w, KH: tl.constexpr, KW: tl.constexpr, VERSION: tl.constexpr, NAX: tl.constexpr
):
    """Per-element interpolation factors ``fy (BMC, BKH)`` and ``fx (BMC, BKW)``, zero
    outside the kernel and the element count; one learned axis: ``fy`` is a unit first row.
    (With three axes these are the two last ones; the first is :func:`_depth_factors`.)"""
    if NAX >= 2:
        fy = tl.where(m_ok[:, None] & (a < KH)[None, :], _factor(a.to(tl.float32), p_h, s_h, KH, VERSION), 0.0)
    else:
        fy = tl.where(m_ok[:, None] & (a == 0)[None, :], 1.0, 0.0)
    fx = tl.where(m_ok[:, None] & (b < KW)[None, :], _factor(b.to(tl.float32), p_w, s_w, KW, VERSION), 0.0)
    return fy, fx


@triton.jit
def _depth_factors(
    m_ok, pd_ptr, sd_ptr, offs, KD: tl.constexpr, BKD: tl.constexpr, VERSION: tl.constexpr, HAS_SIG: tl.constexpr
):
    """First-axis factors ``fz (BMC, BKD)`` of a three-axis kernel, their grid and sums."""
    c = tl.arange(0, BKD)
    p_d = tl.load(pd_ptr + offs, mask=m_ok, other=0.0)
    if HAS_SIG:
        s_d = tl.load(sd_ptr + offs, mask=m_ok, other=0.0)
    else:
        s_d = p_d * 0.0
    fz = tl.where(m_ok[:, None] & (c < KD)[None, :], _factor(c.to(tl.float32), p_d, s_d, KD, VERSION), 0.0)
    return c, p_d, s_d, fz, tl.sum(fz, 1)


@triton.jit
def _column(f, c, d):
    """``f[:, d]`` of a ``(BMC, BK)`` register block."""
    return tl.sum(tl.where(c[None, :] == d, f, 0.0), 1)


@triton.jit
def _placement(a, KH: tl.constexpr, LH: tl.constexpr, PH, BLH: tl.constexpr):
    """0/1 matrix ``(BKH, BLH)``: 1 where tap ``a < KH`` lands on slot ``u = (PH - a) mod LH``."""
    u = tl.arange(0, BLH)
    slot = (PH + LH * KH - a) % LH
    return tl.where((a < KH)[:, None] & (u < LH)[None, :] & (slot[:, None] == u[None, :]), 1.0, 0.0)


@triton.jit
def construct_fwd(
    w_ptr,
    p_ptr,
    s_ptr,
    k_ptr,
    Mc,
    PH,
    PW,
    ROW,
    RH: tl.constexpr,
    RW: tl.constexpr,
    RD: tl.constexpr,
    KD: tl.constexpr,
    BKD: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    BMC: tl.constexpr,
    BKH: tl.constexpr,
    BKW: tl.constexpr,
    VERSION: tl.constexpr,
    HAS_SIG: tl.constexpr,
    NAX: tl.constexpr,
    PLACED: tl.constexpr,
    LH: tl.constexpr,
    LW: tl.constexpr,
    BLH: tl.constexpr,
    BLW: tl.constexpr,
):
    q = tl.program_id(0).to(tl.int64)  # q * plane size can pass 2**31
    ph_ptr, pw_ptr, pd_ptr = p_ptr + RH * ROW, p_ptr + RW * ROW, p_ptr + RD * ROW
    sh_ptr, sw_ptr, sd_ptr = s_ptr + RH * ROW, s_ptr + RW * ROW, s_ptr + RD * ROW
    m, m_ok, w, p_h, p_w, s_h, s_w = _load_params(w_ptr, ph_ptr, pw_ptr, sh_ptr, sw_ptr, q, Mc, BMC, HAS_SIG)
    a = tl.arange(0, BKH)
    b = tl.arange(0, BKW)
    fy, fx = _axis_factors(a, b, m_ok, p_h, p_w, s_h, s_w, KH, KW, VERSION, NAX)
    if NAX == 3:  # one (KH, KW) plane per first-axis tap
        c, p_d, s_d, fz, sz = _depth_factors(m_ok, pd_ptr, sd_ptr, q * Mc + m, KD, BKD, VERSION, HAS_SIG)
        if VERSION == 0:
            ws = w
        else:
            ws = w / (tl.sum(fx, 1) * tl.sum(fy, 1) * sz + EPS)
        mask = (a < KH)[:, None] & (b < KW)[None, :]
        for d in range(KD):
            wd = ws * _column(fz, c, d)
            plane = tl.dot(tl.trans(fy * wd[:, None]), fx, input_precision="ieee")
            tl.store(k_ptr + (q * KD + d) * (KH * KW) + a[:, None] * KW + b[None, :], plane, mask=mask)
        return
    if VERSION == 0:
        ws = w
    else:
        ws = w / (tl.sum(fx, 1) * tl.sum(fy, 1) + EPS)
    ker = tl.dot(tl.trans(fy * ws[:, None]), fx, input_precision="ieee")
    if PLACED:
        mh = _placement(a, KH, LH, PH, BLH)
        mw = _placement(b, KW, LW, PW, BLW)
        plane = tl.dot(tl.dot(tl.trans(mh), ker, input_precision="ieee"), mw, input_precision="ieee")
        u = tl.arange(0, BLH)
        v = tl.arange(0, BLW)
        mask = (u < LH)[:, None] & (v < LW)[None, :]
        tl.store(k_ptr + q * (LH * LW) + u[:, None] * LW + v[None, :], plane, mask=mask)
    else:
        mask = (a < KH)[:, None] & (b < KW)[None, :]
        tl.store(k_ptr + q * (KH * KW) + a[:, None] * KW + b[None, :], ker, mask=mask)


@triton.jit
def construct_bwd(
    w_ptr,
    p_ptr,
    s_ptr,
    g_ptr,
    dw_ptr,
    dp_ptr,
    ds_ptr,
    Mc,
    PH,
    PW,
    ROW,
    RH: tl.constexpr,
    RW: tl.constexpr,
    RD: tl.constexpr,
    KD: tl.constexpr,
    BKD: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    BMC: tl.constexpr,
    BKH: tl.constexpr,
    BKW: tl.constexpr,
    VERSION: tl.constexpr,
    HAS_SIG: tl.constexpr,
    NAX: tl.constexpr,
    PLACED: tl.constexpr,
    LH: tl.constexpr,
    LW: tl.constexpr,
    BLH: tl.constexpr,
    BLW: tl.constexpr,
):
    q = tl.program_id(0).to(tl.int64)  # q * plane size can pass 2**31
    ph_ptr, pw_ptr, pd_ptr = p_ptr + RH * ROW, p_ptr + RW * ROW, p_ptr + RD * ROW
    sh_ptr, sw_ptr, sd_ptr = s_ptr + RH * ROW, s_ptr + RW * ROW, s_ptr + RD * ROW
    dph_ptr, dpw_ptr, dpd_ptr = dp_ptr + RH * ROW, dp_ptr + RW * ROW, dp_ptr + RD * ROW
    dsh_ptr, dsw_ptr, dsd_ptr = ds_ptr + RH * ROW, ds_ptr + RW * ROW, ds_ptr + RD * ROW
    m, m_ok, w, p_h, p_w, s_h, s_w = _load_params(w_ptr, ph_ptr, pw_ptr, sh_ptr, sw_ptr, q, Mc, BMC, HAS_SIG)
    a = tl.arange(0, BKH)
    b = tl.arange(0, BKW)
    ga = a.to(tl.float32)
    gb = b.to(tl.float32)
    y_ok = m_ok[:, None] & (a < KH)[None, :]
    x_ok = m_ok[:, None] & (b < KW)[None, :]
    fy, fx = _axis_factors(a, b, m_ok, p_h, p_w, s_h, s_w, KH, KW, VERSION, NAX)
    if NAX == 3:
        pass  # planes loaded one by one below
    elif PLACED:  # gradient of the placed plane -> gradient of the kernel: Mh dG Mw^T
        u = tl.arange(0, BLH)
        v = tl.arange(0, BLW)
        p_mask = (u < LH)[:, None] & (v < LW)[None, :]
        dplane = tl.load(g_ptr + q * (LH * LW) + u[:, None] * LW + v[None, :], mask=p_mask, other=0.0)
        mh = _placement(a, KH, LH, PH, BLH)
        mw = _placement(b, KW, LW, PW, BLW)
        g = tl.dot(tl.dot(mh, dplane, input_precision="ieee"), tl.trans(mw), input_precision="ieee")
    else:
        g_mask = (a < KH)[:, None] & (b < KW)[None, :]
        g = tl.load(g_ptr + q * (KH * KW) + a[:, None] * KW + b[None, :], mask=g_mask, other=0.0)
    offs = q * Mc + m
    if NAX == 3:  # sum the per-plane terms over the first axis's taps
        c, p_d, s_d, fz, sz = _depth_factors(m_ok, pd_ptr, sd_ptr, offs, KD, BKD, VERSION, HAS_SIG)
        g_mask = (a < KH)[:, None] & (b < KW)[None, :]
        h1 = tl.zeros([BMC, BKH], dtype=tl.float32)  # sum_d fz[:, d] (G_d fx^T)^T
        h2 = tl.zeros([BMC, BKW], dtype=tl.float32)  # sum_d fz[:, d] (G_d^T fy^T)^T
        tz = tl.zeros([BMC, BKD], dtype=tl.float32)  # [m, d] = sum_ab G_d fy fx
        for d in range(KD):
            g = tl.load(g_ptr + (q * KD + d) * (KH * KW) + a[:, None] * KW + b[None, :], mask=g_mask, other=0.0)
            h1_d = tl.trans(tl.dot(g, tl.trans(fx), input_precision="ieee"))
            fz_d = _column(fz, c, d)[:, None]
            h1 += fz_d * h1_d
            h2 += fz_d * tl.trans(tl.dot(tl.trans(g), tl.trans(fy), input_precision="ieee"))
            tz += tl.where(c[None, :] == d, tl.sum(fy * h1_d, 1)[:, None], 0.0)
        dws = tl.sum(fz * tz, 1)
    else:
        h1 = tl.trans(tl.dot(g, tl.trans(fx), input_precision="ieee"))  # (BMC, BKH)
        h2 = tl.trans(tl.dot(tl.trans(g), tl.trans(fy), input_precision="ieee"))  # (BMC, BKW)
        dws = tl.sum(fy * h1, 1)
    if VERSION == 0:
        ws = w
        dw = dws
        dfy = ws[:, None] * h1
        dfx = ws[:, None] * h2
        if NAX == 3:
            dfz = ws[:, None] * tz
    else:
        sx = tl.sum(fx, 1)
        sy = tl.sum(fy, 1)
        if NAX == 3:
            denom = sx * sy * sz + EPS
        else:
            denom = sx * sy + EPS
        ws = w / denom
        dw = dws / denom
        d_total = -dws * ws / denom
        if NAX == 3:
            dfy = ws[:, None] * h1 + (d_total * sx * sz)[:, None]
            dfx = ws[:, None] * h2 + (d_total * sy * sz)[:, None]
            dfz = ws[:, None] * tz + (d_total * sx * sy)[:, None]
        else:
            dfy = ws[:, None] * h1 + (d_total * sx)[:, None]
            dfx = ws[:, None] * h2 + (d_total * sy)[:, None]
    dfy = tl.where(y_ok, dfy, 0.0)
    dfx = tl.where(x_ok, dfx, 0.0)
    dp_w, ds_w = _factor_grad(gb, p_w, s_w, dfx, KW, VERSION)
    tl.store(dw_ptr + offs, dw, mask=m_ok)
    tl.store(dpw_ptr + offs, dp_w, mask=m_ok)
    if HAS_SIG:
        tl.store(dsw_ptr + offs, ds_w, mask=m_ok)
    if NAX >= 2:
        dp_h, ds_h = _factor_grad(ga, p_h, s_h, dfy, KH, VERSION)
        tl.store(dph_ptr + offs, dp_h, mask=m_ok)
        if HAS_SIG:
            tl.store(dsh_ptr + offs, ds_h, mask=m_ok)
    if NAX == 3:
        dfz = tl.where(m_ok[:, None] & (c < KD)[None, :], dfz, 0.0)
        dp_d, ds_d = _factor_grad(c.to(tl.float32), p_d, s_d, dfz, KD, VERSION)
        tl.store(dpd_ptr + offs, dp_d, mask=m_ok)
        if HAS_SIG:
            tl.store(dsd_ptr + offs, ds_d, mask=m_ok)
