"""Direct depthwise 2-D convolution on the tensor cores: no transform, no workspace.

``direct_dw_conv2d`` computes what ``F.conv2d(x, k, b, 1, padding, groups=C)`` computes for a
depthwise kernel ``k (C, 1, kH, kW)`` with Triton programs (:mod:`.programs`, imported on first
use): every block of output rows is ``kH`` products of an input block with a banded (Toeplitz)
matrix made from one kernel row. Forward, input gradient and kernel gradient each take one
launch (plus the banded matrices, and the sum of the kernel gradient's per-block partial sums),
and need no memory beyond their outputs and the banded matrices (``C x kH x 64 x 32`` values for
a 23-wide kernel): where the FFT convolution keeps several transforms of batch chunks, this path
keeps none.

Precision follows ``nn.Conv2d``: float32 inputs run as TF32 on the tensor cores when
``torch.backends.cudnn.allow_tf32`` is set (PyTorch's default) and in full float32
otherwise; half-precision inputs or autocast multiply in that dtype. Accumulation is float32.
Under ``torch.compile`` the passes run as ``torch.library`` custom ops
(:func:`dcls_core._custom_op.register_op`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..._custom_op import register_op
from ..._triton import triton_available
from ..common import PreparedConv, bias_grad, conv_geometry, dtype_name
from ..cost import large_kernel

__all__ = ["DTYPES", "MAX_KW", "direct_dw_conv2d", "pays", "prepare", "supports"]

# tile settings: the best of the sweeps in benchmarks/NOTES_layers.md
_BM = 32  # output rows (n, h) per program of the forward / input gradient
_NUM_WARPS = 4
_NUM_STAGES = 2
_BM_GRAD = 32  # rows per step of the kernel gradient's reduction
_GRAD_NUM_STAGES = 3
_MIN_GRAD_PROGRAMS = 1024  # the kernel gradient splits its rows until this many programs run
MAX_KW = 64  # widest kernel row (the banded block is at most 128 columns)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_PROGRAMS: list = []  # the GPU program module, imported on first use


def _programs():
    if not _PROGRAMS:
        from . import programs

        _PROGRAMS.append(programs)
    return _PROGRAMS[0]


def supports(input: Tensor, kernel_shape: Sequence[int], stride: Sequence[int], groups: int) -> bool:
    """True if :func:`direct_dw_conv2d` computes this call: CUDA (Triton), a 2-D depthwise
    kernel ``(C, 1, kH, kW)`` with ``C == groups == C_in``, ``kW <= MAX_KW``, stride 1, a
    float32 / bfloat16 / float16 input."""
    return (
        len(kernel_shape) == 4
        and kernel_shape[1] == 1
        and kernel_shape[0] == groups
        and input.dim() in (3, 4)
        and input.shape[-3] == groups
        and all(int(s) == 1 for s in stride)
        and kernel_shape[3] <= MAX_KW
        and input.dtype in DTYPES
        and input.is_cuda
        and triton_available()
    )


def _rows_contiguous(t: Tensor) -> Tensor:
    """``t`` with contiguous rows: the programs read rows of one channel, which channels_last
    strides (a timm ConvNeXt block's permutes give them to the input and the output gradient)
    scatter over the memory; one copy costs less than those reads."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _dot_dtype(compute: torch.dtype) -> tuple[str, str]:
    """``(dtype name, input precision)`` of the tensor-core products for ``compute``."""
    if compute in (torch.bfloat16, torch.float16):
        return dtype_name(compute), "ieee"
    return "float32", "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"


def _tiles(w_out: int, kw: int) -> tuple[int, int]:
    """``(BW, BJ)``: output columns per block and the banded block's input columns."""
    bw = 32 if w_out > 16 else 16
    bj = max(16, 1 << (bw + kw - 2).bit_length())
    return bw, bj


def _rows_reaching(k: int, pad: int, size_in: int, size_out: int) -> tuple[int, int]:
    """Kernel rows ``[lo, hi)`` that meet the input for some output row."""
    return max(0, pad - size_out + 1), min(k, size_in + pad)


def _conv(
    x: Tensor,
    k: Tensor,
    bias: Optional[Tensor],
    pad: Sequence[int],
    out_hw: Sequence[int],
    out_dtype: torch.dtype,
    compute: torch.dtype,
    flip: bool,
) -> Tensor:
    """``(N, C, *out_hw)`` correlation of ``x (N, C, H, W)`` with ``k (C, 1, kH, kW)``
    (rotated by 180 degrees with ``flip``), zero padding ``pad``."""
    n, c, h_in, w_in = x.shape
    kh, kw = k.shape[-2:]
    h_out, w_out = out_hw
    y = torch.empty((n, c, h_out, w_out), device=x.device, dtype=out_dtype)
    if y.numel() == 0:
        return y.zero_()
    dot, precision = _dot_dtype(compute)
    bw, bj = _tiles(w_out, kw)
    lo, hi = _rows_reaching(kh, pad[0], h_in, h_out)
    m = n * h_out
    band = _banded(k, bw, bj, flip, compute)
    _programs().dw_conv2d[(-(-m // _BM), -(-w_out // bw), c)](
        x,
        band,
        bias if bias is not None else band,
        y,
        m,
        h_in,
        w_in,
        h_out,
        w_out,
        kh,
        kw,
        pad[0],
        pad[1],
        lo,
        hi,
        *x.stride(),
        *y.stride(),
        HAS_BIAS=bias is not None,
        DOT_DTYPE=_programs().language_dtype(dot),
        PRECISION=precision,
        BM=_BM,
        BW=bw,
        BJ=bj,
        num_warps=_NUM_WARPS,
        num_stages=_NUM_STAGES,
    )
    return y


def _banded(k: Tensor, bw: int, bj: int, flip: bool, compute: torch.dtype) -> Tensor:
    """``(C, kH, BJ, BW)`` banded matrices ``T_i[u, v] = k[c, i, u - v]`` (0 outside the band)
    of ``k (C, 1, kH, kW)`` (rotated by 180 degrees with ``flip``), in the products' dtype."""
    c, _, kh, kw = k.shape
    band = torch.empty((c, kh, bj, bw), device=k.device, dtype=compute)
    _programs().banded[(c * kh,)](k.contiguous(), band, kh, kw, FLIP=flip, BJ=bj, BW=bw)
    return band


def _kernel_grad(x: Tensor, dy: Tensor, kshape: Sequence[int], pad: Sequence[int], compute: torch.dtype) -> Tensor:
    """``dk (C, 1, kH, kW)`` float32 from ``x (N, C, H, W)`` and ``dy (N, C, H_out, W_out)``."""
    n, c, h_in, w_in = x.shape
    kh, kw = kshape[-2:]
    h_out, w_out = dy.shape[-2:]
    m = n * h_out
    if m == 0 or w_out == 0:
        return torch.zeros((c, 1, kh, kw), device=x.device, dtype=torch.float32)
    dot, precision = _dot_dtype(compute)
    bw, bj = _tiles(w_out, kw)
    col_blocks = -(-w_out // bw)
    row_groups = -(-kh // 4)
    programs = c * row_groups * col_blocks
    steps = -(-m // _BM_GRAD)
    splits = max(1, min(steps, -(-_MIN_GRAD_PROGRAMS // programs)))
    rows_per_split = -(-steps // splits) * _BM_GRAD
    splits = -(-m // rows_per_split)
    part = torch.empty((splits * col_blocks, c, kh, kw), device=x.device, dtype=torch.float32)
    lo, hi = _rows_reaching(kh, pad[0], h_in, h_out)
    args = (
        x,
        dy,
        part,
        m,
        c,
        h_in,
        w_in,
        h_out,
        w_out,
        kh,
        kw,
        pad[0],
        pad[1],
        lo,
        hi,
        rows_per_split,
        *x.stride(),
        *dy.stride(),
    )
    _programs().dw_conv2d_kernel_grad[(c * row_groups, col_blocks, splits)](
        *args,
        DOT_DTYPE=_programs().language_dtype(dot),
        PRECISION=precision,
        BM=_BM_GRAD,
        BW=bw,
        BJ=bj,
        BK=max(16, 1 << (kw - 1).bit_length()),
        num_warps=8 if dot == "float32" else 4,
        num_stages=_GRAD_NUM_STAGES,
    )
    return (part[0] if part.shape[0] == 1 else part.sum(0)).unsqueeze(1)


def _forward(x: Tensor, k: Tensor, bias: Optional[Tensor], padding: list[int], out_hw: list[int], dtype: str) -> Tensor:
    d = getattr(torch, dtype)
    return _conv(x, k, bias, padding, out_hw, d, d, flip=False)


def _forward_fake(x, k, bias, padding, out_hw, dtype):
    return x.new_empty((x.shape[0], x.shape[1], *out_hw), dtype=getattr(torch, dtype))


def _backward(
    dy: Tensor,
    x: Tensor,
    k: Tensor,
    bias: Optional[Tensor],
    padding: list[int],
    dtype: str,
    need_x: bool,
    need_k: bool,
    need_b: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    compute = getattr(torch, dtype)
    kh, kw = k.shape[-2:]
    dy_rows = _rows_contiguous(dy) if need_x or need_k else dy
    if need_x:
        flipped_pad = (kh - 1 - padding[0], kw - 1 - padding[1])
        dx = _conv(dy_rows, k, None, flipped_pad, x.shape[-2:], x.dtype, compute, flip=True)
    else:
        dx = x.new_empty(0)
    dk = _kernel_grad(x, dy_rows, k.shape, padding, compute).to(k.dtype) if need_k else k.new_empty(0)
    db = bias_grad(dy, 2, bias.dtype) if need_b and bias is not None else dy.new_empty(0)
    return dx, dk, db


def _backward_settings(padding, out_hw, dtype):
    return padding, dtype


_direct = register_op(
    "direct_dw_conv2d", _forward, _backward, _forward_fake, num_tensors=3, backward_settings=_backward_settings
)


def pays(input: Tensor, kernel_shape: Sequence[int], stride: Sequence[int], groups: int) -> bool:
    """The ``auto`` rule: large kernels (:func:`dcls_core.conv.cost.large_kernel`) whose products may
    run on the tensor cores (half precision, or float32 with ``torch.backends.cudnn.allow_tf32``,
    as ``nn.Conv2d`` does). Without the tensor cores the FFT is faster; with them this path needs
    no workspace."""
    if not large_kernel(input, kernel_shape, stride):
        return False
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else input.dtype
    return dtype != torch.float32 or torch.backends.cudnn.allow_tf32


def prepare(
    input: Tensor,
    kernel_shape: Sequence[int],
    bias: Optional[Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    padding_mode: str = "zeros",
) -> PreparedConv:
    """Check a call of :func:`direct_dw_conv2d` and lay it out for its op (the op's tensors besides
    the kernel, its settings, the output's last step); taken under the caller's autocast state."""
    if not supports(input, kernel_shape, stride, groups):
        raise ValueError(
            f"direct_dw_conv2d: needs a CUDA (N, C, H, W) input and a (C, 1, kH, kW) kernel with groups == C, "
            f"kW <= {MAX_KW}, stride 1; got input {tuple(input.shape)} on {input.device}, kernel "
            f"{tuple(kernel_shape)}, groups {groups}, stride {tuple(stride)}"
        )
    geo = conv_geometry(input, kernel_shape, stride, padding, groups, padding_mode, "direct_dw_conv2d")
    # products and result in the output dtype: autocast on CUDA is half precision, else the input's dtype
    settings = (list(geo.padding), geo.out_full, dtype_name(geo.out_dtype))
    bias = bias if bias is None else bias.contiguous()
    return PreparedConv(_direct, _rows_contiguous(geo.input), bias, settings, geo.unbatched)


def direct_dw_conv2d(
    input: Tensor,
    kernel: Tensor,
    bias: Optional[Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    padding_mode: str = "zeros",
) -> Tensor:
    """``F.conv2d(input, kernel, bias, stride=1, padding, groups=C)`` for a depthwise kernel.

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``, any strides.
        kernel: ``(C, 1, kH, kW)``; ``groups`` must be ``C`` and ``stride`` 1.
        bias: ``(C,)`` or None.
        padding: two ints; ``padding_mode`` as in ``nn.Conv2d``.

    Returns:
        ``(N, C, H_out, W_out)`` (unbatched if the input was) in the input's dtype (under
        autocast: the autocast dtype).
    """
    call = prepare(input, kernel.shape, bias, stride, padding, groups, padding_mode)
    with torch.autocast(input.device.type, enabled=False):
        return call.finish(call.op(call.input, kernel, call.bias, *call.settings))
