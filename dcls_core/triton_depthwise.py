"""Depthwise 2-D convolution for large kernels as Toeplitz matrix products on tensor cores.

One channel's convolution ``y[h, w] = sum_{i, j} x[h + i - ph, w + j - pw] k[i, j]`` is, for a
tile of ``BW`` output columns starting at ``w0``, a matrix product

    y[(n, h), w] = sum_{(i, u)} x[n, h + i - ph, w0 + u - pw] * T[(i, u), w],
    T[(i, u), w] = k[i, u - w]   (zero unless 0 <= u - w < kW),  u in [0, BW + kW - 1),

so the reduction runs over ``kH * (BW + kW - 1)`` terms and ``tl.dot`` does it. The input
gradient is the same product with the flipped kernel; the kernel gradient is

    dk[i, j] = sum_{(n, h, u)} x[n, h + i - ph, u - pw] * dy[n, h, u - j],

a ``(kH x R) @ (R x kW)`` product whose reduction ``R`` runs over every row and column.
Rows are the flattened ``(n, h)`` pairs, so small images still fill the matrix tiles.

Stride 1, no dilation, ``C_in == C_out == groups``; float32 (tf32, tf32x3 or ieee products),
bfloat16 and float16 (float32 accumulation). Triton is imported on first use only.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch
from torch import Tensor

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_ELEMENTS = 2**31 - 1  # int32 offsets inside the kernels
# Tile settings merged over the defaults (benchmarks sweep them): {"forward": {...}, "wgrad": {...}}
CONFIG_OVERRIDES: dict[str, dict] = {"forward": {}, "wgrad": {}}


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True if Triton imports and a CUDA device is present."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def _kernels():
    from . import triton_depthwise_kernels as k

    return {"flat": k.conv_fwd, "rows": k.conv_fwd_rows}, k.conv_wgrad


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _precision(dtype: torch.dtype, precision: Optional[str]) -> str:
    if precision is not None:
        return precision
    if dtype != torch.float32:
        return "tf32"  # only float32 operands read it
    return "tf32" if torch.backends.cudnn.allow_tf32 else "tf32x3"


def forward_config(M: int, Wo: int, KW: int) -> dict:
    """Tile sizes of the forward / input-gradient product for an output of width ``Wo``."""
    BW = 16 if Wo <= 16 else 32
    return dict(LOOP="flat", BM=64 if M >= 64 else 16, BW=BW, BK=32, num_warps=4, num_stages=3)


def wgrad_config(M: int, C: int, KH: int, KW: int) -> dict:
    """Tile sizes and row split of the kernel-gradient product."""
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count if torch.cuda.is_available() else 132
    splits = max(1, min(-(-M // 64), -(-4 * sms // C)))
    return dict(BI=max(16, _next_pow2(KH)), BJ=max(16, _next_pow2(KW)), BK=64, splits=splits, num_warps=4, num_stages=3)


def _conv_forward(x: Tensor, k: Tensor, bias: Optional[Tensor], padding: Sequence[int], precision: str, config: Optional[dict] = None) -> Tensor:
    """``F.conv2d(x, k, bias, padding=padding, groups=C)`` for ``k`` of shape ``(C, 1, kH, kW)``."""
    conv_fwds, _ = _kernels()
    N, C, H, W = x.shape
    KH, KW = k.shape[-2:]
    ph, pw = padding
    Ho, Wo = H + 2 * ph - KH + 1, W + 2 * pw - KW + 1
    M = N * Ho
    y = torch.empty((N, C, Ho, Wo), device=x.device, dtype=x.dtype,
                    memory_format=torch.channels_last if _is_channels_last(x) else torch.contiguous_format)
    cfg = {**forward_config(M, Wo, KW), **CONFIG_OVERRIDES["forward"], **(config or {})}
    BW = cfg["BW"]
    U = BW + KW - 1
    grid = (triton_cdiv(M, cfg["BM"]), triton_cdiv(Wo, BW), C)
    kc = k.reshape(C, KH * KW).contiguous()
    conv_fwds[cfg["LOOP"]][grid](
        x, kc, bias if bias is not None else kc, y,
        M, H, W, Ho, Wo,
        *x.stride(), *y.stride(),
        ph, pw, KH, KW, U,
        BM=cfg["BM"], BW=BW, BK=cfg["BK"],
        HAS_BIAS=bias is not None, PRECISION=precision,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return y


def _conv_wgrad(x: Tensor, dy: Tensor, KH: int, KW: int, padding: Sequence[int], precision: str, config: Optional[dict] = None) -> Tensor:
    """``dk (C, 1, kH, kW)`` in float32 for ``y = conv(x, k)``, given ``dy``."""
    _, conv_wgrad = _kernels()
    N, C, H, W = x.shape
    Ho, Wo = dy.shape[-2:]
    ph, pw = padding
    M = N * Ho
    cfg = {**wgrad_config(M, C, KH, KW), **CONFIG_OVERRIDES["wgrad"], **(config or {})}
    splits = cfg["splits"]
    rows_per_split = triton_cdiv(M, splits)
    splits = triton_cdiv(M, rows_per_split)
    U = Wo + KW - 1
    BI, BJ = cfg["BI"], cfg["BJ"]
    part = torch.empty((C, splits, BI, BJ), device=x.device, dtype=torch.float32)
    conv_wgrad[(splits, C)](
        x, dy, part,
        M, H, W, Ho, Wo, rows_per_split,
        *x.stride(), *dy.stride(),
        ph, pw, KH, KW, U,
        BI=BI, BJ=BJ, BK=cfg["BK"], PRECISION=precision,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return part.sum(1)[:, :KH, :KW].unsqueeze(1)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _is_channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class _DepthwiseConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, k: Tensor, bias: Optional[Tensor], padding: tuple, precision: str) -> Tensor:
        ctx.save_for_backward(x, k)
        ctx.padding = padding
        ctx.precision = precision
        ctx.has_bias = bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return _conv_forward(x, k, bias, padding, precision)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, k = ctx.saved_tensors
        KH, KW = k.shape[-2:]
        ph, pw = ctx.padding
        dx = dk = db = None
        if ctx.needs_input_grad[0]:
            flipped = k.flip((-2, -1))
            dx = _conv_forward(dy, flipped, None, (KH - 1 - ph, KW - 1 - pw), ctx.precision)
        if ctx.needs_input_grad[1]:
            dk = _conv_wgrad(x, dy, KH, KW, ctx.padding, ctx.precision).to(k.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum((0, 2, 3), dtype=torch.float32).to(ctx.bias_dtype)
        return dx, dk, db, None, None


def supports(input: Tensor, kernel: Tensor, stride: Sequence[int], padding: Sequence[int], groups: int, padding_mode: str, compute_dtype: torch.dtype) -> bool:
    """True if :func:`depthwise_conv2d` computes this convolution."""
    if kernel.dim() != 4 or input.dim() not in (3, 4) or not input.is_cuda:
        return False
    C = input.shape[-3]
    KH, KW = kernel.shape[-2:]
    ph, pw = padding
    return (
        triton_available()
        and compute_dtype in SUPPORTED_DTYPES
        and groups == C and kernel.shape[0] == C and kernel.shape[1] == 1
        and tuple(stride) == (1, 1)
        and padding_mode == "zeros"
        and 0 <= ph <= KH - 1 and 0 <= pw <= KW - 1
        and input.shape[-2] + 2 * ph >= KH and input.shape[-1] + 2 * pw >= KW
        and input.numel() < MAX_ELEMENTS
    )


def depthwise_conv2d(
    input: Tensor,
    kernel: Tensor,
    bias: Optional[Tensor],
    padding: Sequence[int],
    precision: Optional[str] = None,
) -> Tensor:
    """Depthwise ``F.conv2d(input, kernel, bias, padding=padding, groups=C)`` with Triton.

    Args:
        input: ``(N, C, H, W)`` or ``(C, H, W)`` on CUDA.
        kernel: ``(C, 1, kH, kW)``.
        bias: ``(C,)`` or None.
        padding: ``(ph, pw)`` with ``0 <= p <= k - 1``.
        precision: float32 product mode: ``tf32``, ``tf32x3`` or ``ieee``; default follows
            ``torch.backends.cudnn.allow_tf32`` (``tf32`` if allowed, else ``tf32x3``).

    Returns:
        ``(N, C, H + 2 ph - kH + 1, W + 2 pw - kW + 1)``. Under autocast, inputs are cast to
        the autocast dtype (as ``F.conv2d`` does); otherwise ``kernel`` is cast to the input dtype.
    """
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    dtype = input.dtype
    if torch.is_autocast_enabled(input.device.type):
        dtype = torch.get_autocast_dtype(input.device.type)
    with torch.autocast(input.device.type, enabled=False):
        x = input.to(dtype)
        k = kernel.to(dtype)
        out = _DepthwiseConv2d.apply(x, k, bias, tuple(int(p) for p in padding), _precision(dtype, precision))
    return out.squeeze(0) if unbatched else out
