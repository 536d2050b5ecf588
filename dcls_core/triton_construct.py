"""Fused construction of DCLS kernels with one to three learned axes, one Triton launch each way.

Same function as :func:`dcls_core.kernel.construct_kernel`. Per kernel slot ``q`` (an
``(out, in/groups, *dense)`` index) the per-axis factors ``fy (count, kH)`` and ``fx (count,
kW)`` are computed in registers and ``kernel = (ws * fy)^T @ fx`` with ``ws = weight /
(sum fx * sum fy + 1e-7)`` (``v0``: ``ws = weight``); with one learned axis ``fy`` is a unit
row; with three, each ``(kH, kW)`` plane ``d`` is that product with ``ws * fz[:, d]``. The backward launch recomputes the factors and writes the gradients of ``weight``, ``P``
and ``SIG``, replacing the dozens of small kernels (and launches) of the autograd graph and
their intermediates. float32 parameters on CUDA; Triton is imported on first use. Eagerly this is an
``autograd.Function``; under ``torch.compile`` the kernels run as ``torch.library`` custom ops.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .kernel import SIGMA_VERSIONS, VERSIONS, position_axes

VERSION_CODES = {"v0": 0, "v1": 1, "max": 2, "gauss": 3}
MAX_COUNT = 256
MAX_SIZE = 128


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _kernels():
    from . import triton_construct_kernels as k

    return k.construct_fwd, k.construct_bwd


def _axis_rows(n: int, version: str) -> Tuple[int, int, int]:
    """Rows of ``P`` that move along the (height, width, depth) kernel axes; with one axis
    the same row for height and width, with fewer than three the height row for depth."""
    axes = position_axes(n, version)
    if n == 3:
        return axes.index(1), axes.index(2), axes.index(0)
    return axes.index(0), axes.index(n - 1), axes.index(0)


Placement = Tuple[Sequence[int], Sequence[int]]  # (transform sizes, paddings) per learned axis


def _meta(count: int, sizes: Sequence[int], version: str, has_sig: bool, placement: Optional[Placement] = None) -> dict:
    KD = int(sizes[0]) if len(sizes) == 3 else 1
    KH, KW = _pair(sizes[-2:], 1)
    meta = dict(
        KD=KD, BKD=max(16, _next_pow2(KD)),
        KH=KH, KW=KW, BMC=max(16, _next_pow2(count)), BKH=max(16, _next_pow2(KH)), BKW=max(16, _next_pow2(KW)),
        VERSION=VERSION_CODES[version], HAS_SIG=has_sig, NAX=len(sizes), PLACED=placement is not None,
        LH=1, LW=1, BLH=16, BLW=16, num_warps=2,
    )
    if placement is not None:
        if len(sizes) > 2:
            raise ValueError("placement: one or two learned axes only")
        LH, LW = _pair(placement[0], 1)
        meta.update(LH=LH, LW=LW, BLH=max(16, _next_pow2(LH)), BLW=max(16, _next_pow2(LW)))
        meta["num_warps"] = 8 if meta["BLH"] * meta["BLW"] >= 4096 else 4
    return meta


def _pair(values: Sequence[int], unit: int) -> Tuple[int, int]:
    """(height, width) values of one or two axes; one axis: ``unit`` for the height."""
    return (unit, int(values[0])) if len(values) == 1 else (int(values[0]), int(values[1]))


def _pads(placement: Optional[Placement]) -> Tuple[int, int]:
    return (0, 0) if placement is None else _pair(placement[1], 0)


def _flat_params(weight: Tensor, P: Tensor, SIG: Optional[Tensor], n: int, version: str):
    """``(count, Q, weight, P (n, Q, count), SIG (n, Q, count) or P, row_h, row_w, row_d)`` as
    the kernels read them (``Q`` kernel slots of ``count`` elements)."""
    count = weight.shape[-1]
    Q = weight.numel() // count
    p = P.contiguous().reshape(n, Q, count)
    s = SIG.contiguous().reshape(n, Q, count) if SIG is not None else p
    return (count, Q, weight.contiguous(), p, s, *_axis_rows(n, version))


def launch_forward(
    weight: Tensor, P: Tensor, SIG: Optional[Tensor], sizes: Sequence[int], version: str,
    placement: Optional[Placement] = None,
) -> Tensor:
    """Run the forward kernel: the ``(*prefix, *sizes)`` float32 kernel or, with ``placement =
    (L, padding)``, its circular ``(*prefix, *L)`` plane for the FFT convolution (tap ``i`` at
    ``(padding - i) mod L`` per axis, as :func:`dcls_core.fft_conv.placed_kernel`)."""
    fwd, _ = _kernels()
    count, Q, w, p, s, rh, rw, rd = _flat_params(weight, P, SIG, len(sizes), version)
    shape = sizes if placement is None else placement[0]
    kernel = torch.empty((*weight.shape[:-1], *shape), device=weight.device, dtype=torch.float32)
    fwd[(Q,)](
        w, p[rh], p[rw], s[rh], s[rw], p[rd], s[rd], kernel, count, *_pads(placement),
        **_meta(count, sizes, version, SIG is not None, placement),
    )
    return kernel


def launch_backward(
    grad: Tensor, weight: Tensor, P: Tensor, SIG: Optional[Tensor], sizes: Sequence[int], version: str,
    placement: Optional[Placement] = None,
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Run the backward kernel: gradients of ``weight``, ``P`` and ``SIG`` (None without SIG);
    ``grad`` is that of the kernel, or of its placed plane with ``placement``."""
    _, bwd = _kernels()
    n = len(sizes)
    count, Q, w, p, s, rh, rw, rd = _flat_params(weight, P, SIG, n, version)
    dw = torch.empty(weight.shape, device=w.device, dtype=torch.float32)
    dP = torch.empty((n, Q, count), device=w.device, dtype=torch.float32)
    dS = torch.empty((n, Q, count), device=w.device, dtype=torch.float32) if SIG is not None else dP
    bwd[(Q,)](
        w, p[rh], p[rw], s[rh], s[rw], p[rd], s[rd], grad.contiguous().float(),
        dw, dP[rh], dP[rw], dS[rh], dS[rw], dP[rd], dS[rd], count, *_pads(placement),
        **_meta(count, sizes, version, SIG is not None, placement),
    )
    return dw, dP.reshape(P.shape), (dS.reshape(P.shape) if SIG is not None else None)


def _save_context(ctx, weight, P, SIG, sizes, version) -> None:
    ctx.save_for_backward(weight, P, SIG)
    ctx.sizes, ctx.version = sizes, version


def _gradients(ctx, grad, backward_impl) -> tuple:
    """Gradients of (weight, P, SIG) through ``backward_impl`` (eager launch or custom op)."""
    weight, P, SIG = ctx.saved_tensors
    dw, dP, dS = backward_impl(grad, weight, P, SIG, ctx.sizes, ctx.version)
    return dw, dP, (dS if SIG is not None else None), None, None


class _Construct(torch.autograd.Function):
    """Eager path: an autograd.Function (cheaper to call than the custom ops below)."""

    @staticmethod
    def forward(ctx, weight, P, SIG, sizes, version):
        _save_context(ctx, weight, P, SIG, sizes, version)
        return launch_forward(weight, P, SIG, sizes, version)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return _gradients(ctx, grad, launch_backward)


# Under torch.compile the same kernels run as custom ops, opaque to the compiler.
@torch.library.custom_op("dcls_core::fused_construct", mutates_args=(), device_types="cuda")
def _construct_op(weight: Tensor, P: Tensor, SIG: Optional[Tensor], sizes: List[int], version: str) -> Tensor:
    return launch_forward(weight, P, SIG, sizes, version)


@_construct_op.register_fake
def _(weight, P, SIG, sizes, version):
    return weight.new_empty((*weight.shape[:-1], *sizes))


@torch.library.custom_op("dcls_core::fused_construct_backward", mutates_args=(), device_types="cuda")
def _construct_backward_op(
    grad: Tensor, weight: Tensor, P: Tensor, SIG: Optional[Tensor], sizes: List[int], version: str
) -> Tuple[Tensor, Tensor, Tensor]:
    dw, dP, dS = launch_backward(grad, weight, P, SIG, sizes, version)
    return dw, dP, (dS if dS is not None else weight.new_empty(0))


@_construct_backward_op.register_fake
def _(grad, weight, P, SIG, sizes, version):
    return torch.empty_like(weight), torch.empty_like(P), (torch.empty_like(SIG) if SIG is not None else weight.new_empty(0))


def _setup_context(ctx, inputs, output):
    _save_context(ctx, *inputs)


def _backward(ctx, grad):
    return _gradients(ctx, grad, _construct_backward_op)


_construct_op.register_autograd(_backward, setup_context=_setup_context)


def places(sizes: Sequence[int]) -> bool:
    """True if the kernels can write the placed plane of these transform sizes (one register block)."""
    return max(sizes) <= MAX_SIZE


def supports(weight: Tensor, P: Tensor, SIG: Optional[Tensor], dilated_kernel_size: Sequence[int], version: str) -> bool:
    """True if :func:`construct_kernel_fused` builds this kernel (1 to 3 learned axes, float32, CUDA)."""
    sizes = tuple(dilated_kernel_size)
    return (
        len(sizes) in (1, 2, 3)
        and version in VERSIONS
        and weight.is_cuda
        and weight.dtype == P.dtype == torch.float32
        and (SIG.dtype == torch.float32 if SIG is not None else version not in SIGMA_VERSIONS)
        and P.shape[0] == len(sizes) and P.shape[1:] == weight.shape
        and weight.shape[-1] <= MAX_COUNT
        and max(sizes) <= MAX_SIZE
        and _triton_importable()
    )


_TRITON_OK: List[bool] = []


def _triton_importable() -> bool:
    if not _TRITON_OK:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401

            _TRITON_OK.append(torch.cuda.is_available())
        except Exception:
            _TRITON_OK.append(False)
    return _TRITON_OK[0]


def construct_kernel_fused(weight: Tensor, P: Tensor, SIG: Optional[Tensor], dilated_kernel_size: Sequence[int], version: str) -> Tensor:
    """:func:`dcls_core.kernel.construct_kernel` for one to three learned axes, fused (float32)."""
    if version in SIGMA_VERSIONS and SIG is None:
        raise ValueError(f"version {version!r} needs SIG")
    args = (weight, P, SIG if version in SIGMA_VERSIONS else None, [int(s) for s in dilated_kernel_size], version)
    with torch.autocast(weight.device.type, enabled=False):
        return _construct_op(*args) if torch.compiler.is_compiling() else _Construct.apply(*args)
