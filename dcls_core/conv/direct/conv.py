"""Direct depthwise 2-D convolution on the tensor cores: no transform, little workspace.

``direct_dw_conv2d`` computes what ``F.conv2d(x, k, b, 1, padding, groups=C)`` computes for a
depthwise kernel ``k (C, 1, kH, kW)`` with Triton programs (:mod:`.programs`, imported on first
use): each 8x8 patch of a channel's output is the input window it reads times one matrix
built from the kernel, the same for every patch, so the samples and patches of a channel are the
rows of one product on the tensor cores. The windows are read from a zero-padded contiguous copy
(one pass; it also reads channels-last inputs at full width). The programs write contiguous
planes; where the input is channels-last, one more pass gives the output (and the input
gradient) that layout, as ``F.conv2d`` does, so that the ops after it (a ConvNeXt block's
permute and LayerNorm) read it without a copy. Forward and input gradient take
the copy, the patch matrix and the products; the kernel gradient takes the transposed products
summed over the rows and then along their diagonals, in a fixed order (deterministic). Beyond
its outputs the path needs the padded copies and the patch matrices (``C x 30 x 32 x 64``
values for a 23x23 kernel), and it saves only its input for the backward, where the FFT
convolution keeps several transforms of batch chunks.

Precision follows ``nn.Conv2d``: float32 inputs run as TF32 on the tensor cores when
``torch.backends.cudnn.allow_tf32`` is set (PyTorch's default) and in full float32
otherwise; half-precision inputs or autocast multiply in that dtype. Accumulation is float32.
Under ``torch.compile`` the passes run as ``torch.library`` custom ops
(:func:`dcls_core._custom_op.register_op`).
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ..._custom_op import register_op
from ..._triton import launch, next_power_of_2, triton_available
from ..common import PreparedConv, bias_grad, conv_geometry, dtype_name
from ..cost import large_kernel

__all__ = ["DTYPES", "MAX_CHANNELS", "MAX_KW", "OUTPUT_ENV_VAR", "direct_dw_conv2d", "pays", "prepare", "supports"]

# tile settings: benchmarks/NOTES_layers.md, run 13 (the sweep moved stage times by a few %)
_PATCH = (8, 8)  # output rows x columns per patch
_BM = 64  # product rows (patch, sample) per program
_NUM_WARPS = 4
_NUM_STAGES = 3
_MIN_GRAD_PROGRAMS = 1024  # the kernel gradient splits its rows until this many programs run
# kernel gradient: window positions per program (its output tile is this many by one patch),
# and warps; each program loads an output-gradient tile once per step of rows, so wider
# programs load it fewer times (tile sweep: benchmarks/bench_stage_paths.py --sweep)
_GRAD_BK = 128
_GRAD_WARPS = 4
# "contiguous": outputs in the programs' layout (eager benchmarks; under torch.compile Inductor
# expects the input's layout and stops: NOTES run 16)
OUTPUT_ENV_VAR = "DCLS_DIRECT_OUTPUT"
_CONTIGUOUS_OUTPUT = os.environ.get(OUTPUT_ENV_VAR) == "contiguous"  # read once, at import
MAX_KW = 64  # widest kernel row (a window row is at most 128 columns)
MAX_CHANNELS = 65535  # the forward's grid has one program column per channel (CUDA's limit)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_PROGRAMS: list = []  # the GPU program module, imported on first use


def _programs():
    if not _PROGRAMS:
        from . import programs

        _PROGRAMS.append(programs)
    return _PROGRAMS[0]


def supports(input: Tensor, kernel_shape: Sequence[int], stride: Sequence[int], groups: int) -> bool:
    """True if :func:`direct_dw_conv2d` computes this call: CUDA (Triton), a 2-D depthwise
    kernel ``(C, 1, kH, kW)`` with ``C == groups == C_in <= MAX_CHANNELS``, ``kW <= MAX_KW``,
    stride 1, a float32 / bfloat16 / float16 input."""
    return (
        len(kernel_shape) == 4
        and kernel_shape[1] == 1
        and kernel_shape[0] == groups <= MAX_CHANNELS
        and input.dim() in (3, 4)
        and input.shape[-3] == groups
        and all(int(s) == 1 for s in stride)
        and kernel_shape[3] <= MAX_KW
        and input.dtype in DTYPES
        and input.is_cuda
        and triton_available()
    )


def _precision(compute: torch.dtype) -> str:
    """Triton's ``input_precision`` of the tensor-core products in ``compute``: TF32 for float32
    where ``torch.backends.cudnn.allow_tf32`` allows it (as ``nn.Conv2d``), else exact."""
    if compute == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


class _PatchPlan(NamedTuple):
    """Tiles of the patch products for an output plane: patches of ``ph x pw`` positions,
    ``nph x npw`` of them, windows of ``rows`` rows read ``bk / u`` rows of ``u`` columns at a
    time (``u`` a power of two, at least ``pw + kW - 1``)."""

    ph: int
    pw: int
    nph: int
    npw: int
    u: int
    bk: int
    rows: int

    @property
    def step_rows(self) -> int:
        return self.bk // self.u

    def launch_settings(self) -> dict:
        """The tile and launch settings the patch programs share."""
        tiles = dict(PH=self.ph, PW=self.pw, U=self.u, BM=_BM, BK=self.bk)
        return dict(tiles, num_warps=_NUM_WARPS, num_stages=_NUM_STAGES)

    def extent(self) -> tuple[int, int]:
        """Rows and columns of the padded input that the windows read (the last step may read
        ``step_rows - 1`` rows past a window: zeros there)."""
        return (self.nph - 1) * self.ph + self.rows + self.step_rows - 1, (self.npw - 1) * self.pw + self.u


def _patch_plan(h_out: int, w_out: int, kh: int, kw: int, col_shift: int = 0) -> _PatchPlan:
    """Patches over an ``h_out x w_out`` output whose first patch column starts ``col_shift``
    columns left of the output."""
    ph, pw = _PATCH
    u = max(16, next_power_of_2(pw + kw - 1))
    return _PatchPlan(ph, pw, -(-h_out // ph), -(-(w_out + col_shift) // pw), u, max(64, u), ph + kh - 1)


def _padded(x: Tensor, top: int, left: int, rows: int, cols: int, dtype: torch.dtype) -> Tensor:
    """``(N, C, LH, LW)`` contiguous ``dtype`` copy of ``x (N, C, H, W)`` (any strides) at row
    ``top`` and column ``left`` (negative: cut), zeros elsewhere; ``LH >= rows``, ``LW >= cols``,
    both large enough for the input, ``LW`` a multiple of 16 (aligned rows)."""
    n, c, h, w = x.shape
    lh = max(rows, top + h)
    lw = -(-max(cols, left + w) // 16) * 16
    out = torch.empty((n, c, lh, lw), device=x.device, dtype=dtype)
    return _copy_planes(x, out, top, left)


def _copy_planes(src: Tensor, dst: Tensor, top: int = 0, left: int = 0) -> Tensor:
    """``dst (N, C, LH, LW)`` (any strides) = ``src (N, C, H, W)`` (any strides) placed at row
    ``top`` and column ``left``, zeros around it, in dst's dtype: one pass that moves blocks of
    32 channels by 32 columns, coalesced in both NCHW and channels-last layouts."""
    n, c, h, w = src.shape
    lh, lw = dst.shape[2:]
    launch(
        _programs().pad_planes,
        (n * lh, -(-c // 32)),
        (src, dst),
        c,
        h,
        w,
        top,
        left,
        lh,
        lw,
        *src.stride(),
        *dst.stride(),
        BC=32,
        BW=32,
    )
    return dst


def _output_format(x: Tensor) -> torch.memory_format:
    """The layout of the output for an input ``x (N, C, H, W)``: channels-last where ``x`` is
    channels-last and not also contiguous (as ``F.conv2d``'s output follows its input), else
    contiguous; ``$DCLS_DIRECT_OUTPUT=contiguous`` (read at import) keeps every output
    contiguous (the layout the programs write, saving one pass; for benchmarks)."""
    if _CONTIGUOUS_OUTPUT:
        return torch.contiguous_format
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def _patch_products(
    xp: Tensor,
    k: Tensor,
    bias: Optional[Tensor],
    plan: _PatchPlan,
    rows_with_input: tuple[int, int],
    y: Tensor,
    flip: bool,
    col_shift: int = 0,
) -> Tensor:
    """``y (N, C, H_out, W_out)`` (any strides) = the correlation of the padded input ``xp``
    (:func:`_padded`, the products' dtype; its rows ``rows_with_input = [lo, hi)`` hold the
    input) with ``k (C, 1, kH, kW)`` (rotated by 180 degrees with ``flip``): each patch is its
    window times the patch matrix; the windows of patch column ``j`` start at ``xp`` column ``j *
    PW`` and its outputs at column ``j * PW - col_shift``."""
    n, c = xp.shape[:2]
    kh, kw = k.shape[-2:]
    bn = plan.ph * plan.pw
    b = torch.empty((c, plan.rows, plan.u, bn), device=xp.device, dtype=xp.dtype)
    prog = _programs()
    launch(
        prog.patch_matrix,
        (c * plan.rows,),
        (k.contiguous(), b),
        kh,
        kw,
        plan.rows,
        FLIP=flip,
        PW=plan.pw,
        U=plan.u,
        BN=bn,
    )
    m = n * plan.nph * plan.npw
    launch(
        prog.dw_conv2d_patches,
        (-(-m // _BM), c),
        (xp, b, bias if bias is not None else b, y),
        n,
        m,
        plan.npw,
        y.shape[2],
        y.shape[3],
        rows_with_input[0],
        rows_with_input[1],
        col_shift,
        plan.rows,
        *xp.stride()[:3],
        *y.stride(),
        HAS_BIAS=bias is not None,
        PRECISION=_precision(xp.dtype),
        **plan.launch_settings(),
    )
    return y


def _patch_forward(
    x: Tensor, k: Tensor, bias: Optional[Tensor], pad: Sequence[int], out_hw: Sequence[int], dtype: torch.dtype
) -> Tensor:
    """The forward through the patch products (``dtype``: products and output)."""
    n, c, h_in, _ = x.shape
    if n * c * out_hw[0] * out_hw[1] == 0:
        return torch.empty((n, c, *out_hw), device=x.device, dtype=dtype, memory_format=_output_format(x)).zero_()
    plan = _patch_plan(*out_hw, *k.shape[-2:])
    xp = _padded(x, pad[0], pad[1], *plan.extent(), dtype)
    y = torch.empty((n, c, *out_hw), device=x.device, dtype=dtype)
    y = _patch_products(xp, k, bias, plan, (pad[0], pad[0] + h_in), y, False)
    layout = _output_format(x)
    # the programs write contiguous planes (a channels-last store from them is slower, NOTES run 13)
    return y if layout == torch.contiguous_format else _copy_planes(y, torch.empty_like(y, memory_format=layout))


def _patch_backward(
    dy: Tensor, x: Tensor, k: Tensor, pad: Sequence[int], compute: torch.dtype, need_x: bool, need_k: bool
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """``(dx, dk)`` through the patch products: the input gradient convolves the padded output
    gradient with the rotated kernel; the kernel gradient sums window-by-patch products over the
    rows, then along their diagonals (a fixed-order sum: deterministic). ``dk`` is float32."""
    n, c, h_in, w_in = x.shape
    kh, kw = k.shape[-2:]
    h_out, w_out = dy.shape[-2:]
    if n * c * h_out * w_out == 0:
        dx = torch.zeros_like(x) if need_x else None
        return dx, (torch.zeros((c, 1, kh, kw), device=x.device, dtype=torch.float32) if need_k else None)
    forward = _patch_plan(h_out, w_out, kh, kw)
    # dy sits at column ``left`` (a multiple of the patch width: the kernel gradient's patch
    # loads are aligned); the input gradient's patch grid starts ``shift`` columns left of its
    # output, so its windows start at multiples of the patch width too
    top, reach = kh - 1 - pad[0], kw - 1 - pad[1]
    left = -(-max(reach, 0) // forward.pw) * forward.pw
    shift = left - reach
    backward = _patch_plan(h_in, w_in, kh, kw, shift)
    rows, cols = backward.extent() if need_x else (0, 0)
    if need_k:  # the kernel gradient reads whole output patches
        rows, cols = max(rows, top + forward.nph * forward.ph), max(cols, left + forward.npw * forward.pw)
    dyp = _padded(dy, top, left, rows, cols, compute)
    dx = None
    if need_x:
        dx = torch.empty((n, c, h_in, w_in), device=x.device, dtype=x.dtype)
        dx = _patch_products(dyp, k, None, backward, (top, top + h_out), dx, True, shift)
        if dx.stride() != x.stride():  # the op returns gradients in its inputs' layouts
            dx = _copy_planes(dx, torch.empty_like(x))
    if not need_k:
        return dx, None
    xp = _padded(x, pad[0], pad[1], *forward.extent(), compute)
    m = n * forward.nph * forward.npw
    grad_bk = max(_GRAD_BK, forward.u)
    k_steps = -(-forward.rows // (grad_bk // forward.u))
    programs = c * k_steps
    steps = -(-m // _BM)
    splits = max(1, min(steps, -(-_MIN_GRAD_PROGRAMS // programs)))
    rows_per_split = -(-steps // splits) * _BM
    splits = -(-m // rows_per_split)
    bn = forward.ph * forward.pw
    part = torch.empty((splits, c, forward.rows, forward.u, bn), device=x.device, dtype=torch.float32)
    launch(
        _programs().dw_conv2d_patches_kernel_grad,
        (programs, splits),
        (xp, dyp, part),
        n,
        m,
        forward.npw,
        c,
        forward.rows,
        top,
        left,
        rows_per_split,
        *xp.stride()[:3],
        *dyp.stride()[:3],
        PRECISION=_precision(compute),
        **dict(forward.launch_settings(), BK=grad_bk, num_warps=_GRAD_WARPS),
    )
    # tap (i, j) gathers part[s, c, i + vh, j + vw, vh * PW + vw] over s, vh, vw
    ss, sc, sr, su, _ = part.stride()
    diagonals = part.as_strided((splits, c, kh, kw, forward.ph, forward.pw), (ss, sc, sr, su, sr + forward.pw, su + 1))
    return dx, diagonals.sum((0, 4, 5)).unsqueeze(1)


def _forward(x: Tensor, k: Tensor, bias: Optional[Tensor], padding: list[int], out_hw: list[int], dtype: str) -> Tensor:
    d = getattr(torch, dtype)
    return _patch_forward(x, k, bias, padding, out_hw, d)


def _forward_fake(x, k, bias, padding, out_hw, dtype):
    shape = (x.shape[0], x.shape[1], *out_hw)
    return torch.empty(shape, device=x.device, dtype=getattr(torch, dtype), memory_format=_output_format(x))


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
    dx, dk = _patch_backward(dy, x, k, padding, compute, need_x, need_k)
    dx = x.new_empty(0) if dx is None else dx
    if dk is None:
        dk = k.new_empty(0)
    else:  # in the kernel's dtype and layout, as the op's fake says
        dk = dk.to(k.dtype) if k.is_contiguous() else torch.empty_like(k).copy_(dk)
    if bias is None:
        db = dy.new_empty(0)
    else:
        db = bias_grad(dy, 2, bias.dtype) if need_b else bias.new_empty(0)
    return dx, dk, db


def _backward_settings(padding, out_hw, dtype):
    return padding, dtype


_direct = register_op(
    "direct_dw_conv2d", _forward, _backward, _forward_fake, num_tensors=3, backward_settings=_backward_settings
)


def pays(input: Tensor, kernel_shape: Sequence[int], stride: Sequence[int], groups: int) -> bool:
    """The ``auto`` rule: large kernels (:func:`dcls_core.conv.cost.large_kernel`) whose products may
    run on the tensor cores (half precision, or float32 with ``torch.backends.cudnn.allow_tf32``,
    as ``nn.Conv2d`` does). Without the tensor cores the FFT is faster; with them this path is
    faster at every ConvNeXt-T stage and needs less workspace (NOTES run 13)."""
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
    return PreparedConv(_direct, geo.input, bias, settings, geo.unbatched)


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
        autocast: the autocast dtype), channels-last where the input is (as ``F.conv2d``).
    """
    call = prepare(input, kernel.shape, bias, stride, padding, groups, padding_mode)
    with torch.autocast(input.device.type, enabled=False):
        return call.finish(call.op(call.input, kernel, call.bias, *call.settings))
