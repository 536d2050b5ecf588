"""Depthwise convolution of a small input as one matrix product per channel.

When the input is small next to the kernel (a 23x23 kernel on the 16x15 and 8x7 inputs of the
last ConvNeXt stages), every output depends on most of the input, and the convolution of one
channel is a dense ``(S_in, S_out)`` matrix ``T`` with ``T[r, o] = k[r - o * stride + pad]``
(0 where that tap does not exist), ``S`` the flattened spatial sizes:

    y[:, c, :] = x[:, c, :] @ T_c            (batched over channels: one cuBLAS batched GEMM)
    dx[:, c, :] = dy[:, c, :] @ T_c^T
    dk[c, t] = sum of (x[:, c, :]^T @ dy[:, c, :])[r, o] over the pairs (r, o) of tap t

``T`` is gathered from the kernel through an index table built once per shape, or on CUDA
written from the kernel's taps by one Triton pass; the kernel gradient sums the entries of each
tap in a fixed order (a segment sum over entries sorted by tap, or on CUDA one Triton pass over
them: deterministic, no atomics). The product has ``S_in x S_out`` terms per channel and row
against ``taps x S_out`` for a direct convolution, so it pays where ``S_in <= taps`` (the cost
rule). The products run in the autocast dtype (or the input's), with float32 accumulation; the
kernel gradient is summed in float32. ``T`` is not kept for the backward pass (it is built
again). No pass reads anything on the host (no device wait).

The op itself works on channels-first ``(C, N, S)`` tensors in the products' dtype: the input is
copied into that layout once, by a differentiable copy outside the op, so the input gradient
returns to the input's dtype and layout through the copy's backward (as under autocast for
``F.conv``), and that copy is what the kernel gradient reads. The output is an ``(N, C, *S)``
view of the GEMM's ``(C, N, S)`` result. Any device: plain torch operations, except that on CUDA,
for one- and two-axis calls, ``T`` and the kernel gradient's tap sums are Triton passes
(:mod:`.programs`; the torch gathers with ``DCLS_MATRIX_BUILD=torch`` and
``DCLS_MATRIX_TAP_SUMS=segments``). Under ``torch.compile`` the passes are ``torch.library``
custom ops (:func:`dcls_core._custom_op.register_op`).
"""

from __future__ import annotations

import math
import os
import threading
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..._custom_op import register_op
from ..._triton import launch, next_power_of_2, triton_available
from ..common import PreparedConv, bias_grad, conv_geometry
from ..cost import large_kernel

__all__ = ["MAX_MATRIX_BYTES", "matrix_dw_conv", "pays", "prepare", "supports", "tap_tables"]

#: the matrices T of one call (all channels, in the products' dtype) at most; the kernel
#: gradient's float32 entries and their sorted copy take up to 4x that again (half precision)
MAX_MATRIX_BYTES = 256 << 20
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class TapTables(NamedTuple):
    """Index tables of one shape (on one device).

    ``gather``: ``(S_in * S_out,)`` tap index of each matrix entry (``taps`` where none);
    ``order``: the entries that hold a tap, sorted by tap (both int32 where the sizes allow,
    else int64); ``lengths``: entries per tap ``(taps,)``, int64.
    """

    gather: Tensor
    order: Tensor
    lengths: Tensor


_TABLES: dict[tuple, TapTables] = {}
_LOCK = threading.Lock()


def _tables_numpy(
    in_sizes: Sequence[int], out_sizes: Sequence[int], k_sizes: Sequence[int], stride: Sequence[int], pad: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ndim = len(k_sizes)
    taps = math.prod(k_sizes)
    flat = np.zeros((), dtype=np.int64)
    valid = np.ones((), dtype=bool)
    tap_stride = 1
    per_axis = []
    for a in reversed(range(ndim)):  # last axis varies fastest in the flattened kernel
        r = np.arange(in_sizes[a])[:, None]
        o = np.arange(out_sizes[a])[None, :]
        tap = r - o * stride[a] + pad[a]  # (S_in_a, S_out_a)
        per_axis.append((a, tap, tap_stride))
        tap_stride *= k_sizes[a]
    for a, tap, step in per_axis:
        shape = [1] * (2 * ndim)
        shape[a], shape[ndim + a] = in_sizes[a], out_sizes[a]
        tap = tap.reshape(shape)
        flat = flat + tap * step
        valid = valid & (tap >= 0) & (tap < k_sizes[a])
    gather = np.where(valid, flat, taps).reshape(-1)
    order = np.argsort(gather, kind="stable")
    order = order[gather[order] < taps]
    lengths = np.bincount(gather[order], minlength=taps)
    # 32-bit indices where they fit: the gathers read one index per entry they write, so half
    # the index bytes is a large part of their traffic
    index = np.int32 if max(gather.size, taps + 1) < 2**31 else np.int64
    return gather.astype(index), order.astype(index), lengths


def _to_device_outside_graph_pools(arrays: Sequence[np.ndarray], device: torch.device) -> list[Tensor]:
    """``arrays`` as tensors on ``device`` in the caching allocator's ordinary pool.

    A call compiled with CUDA graphs (``torch.compile(mode="reduce-overhead")``) runs its first,
    warm-up pass with every allocation of the calling thread routed to the graphs' private pool;
    a cached tensor made there stays alive outside the graphs' outputs, which cudagraph trees
    reject ("tensor(s) in the cudagraph pool not tracked as outputs"). So CUDA tensors are made on
    a helper thread, whose allocations the routing leaves alone, and are complete when it ends.
    They cannot be made while a CUDA graph is being captured: warm up first."""
    if device.type != "cuda":
        return [torch.from_numpy(a).to(device) for a in arrays]
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            "matrix_dw_conv: the index tables of a new call shape cannot be built while a CUDA graph is "
            "captured; run the call once before capturing it (torch.compile's CUDA graphs warm up first)"
        )
    made: list[Tensor] = []
    failed: list[BaseException] = []

    def build() -> None:
        try:
            host = [torch.from_numpy(a) for a in arrays]
            with torch.cuda.device(device):
                made.extend(t.to(device) for t in host)
                torch.cuda.current_stream(device).synchronize()
        except BaseException as err:  # handed to the caller's thread
            failed.append(err)

    worker = threading.Thread(target=build, name="dcls-matrix-tables")
    worker.start()
    worker.join()
    if failed:
        raise failed[0]
    return made


def tap_tables(
    in_sizes: Sequence[int],
    out_sizes: Sequence[int],
    k_sizes: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    device: torch.device,
) -> TapTables:
    """The :class:`TapTables` of one shape on ``device`` (built once, then cached; on CUDA outside
    any CUDA-graph memory pool)."""
    key = (tuple(in_sizes), tuple(out_sizes), tuple(k_sizes), tuple(stride), tuple(pad), str(device))
    tables = _TABLES.get(key)
    if tables is None:
        arrays = _tables_numpy(in_sizes, out_sizes, k_sizes, stride, pad)
        tables = TapTables(*_to_device_outside_graph_pools(arrays, device))
        with _LOCK:
            tables = _TABLES.setdefault(key, tables)
    return tables


def supports(input: Tensor, kernel_shape: Sequence[int], stride: Sequence[int], groups: int) -> bool:
    """True if :func:`matrix_dw_conv` computes this call: a depthwise kernel ``(C, 1, *k)`` with
    ``C == groups == C_in``, one to three spatial axes, a floating input on any device."""
    ndim = len(kernel_shape) - 2
    return (
        1 <= ndim <= 3
        and kernel_shape[1] == 1
        and kernel_shape[0] == groups
        and input.dim() in (ndim + 1, ndim + 2)
        and input.shape[-ndim - 1] == groups
        and len(stride) == ndim
        and input.dtype in DTYPES
    )


def _matrix_sizes(input: Tensor, kernel_shape: Sequence[int], stride: Sequence[int]) -> tuple[int, int]:
    """``(S_in, S_out)`` with the padding that makes the output as large as the input (the cost
    rule sees no padding; this is the size a ``same`` convolution has)."""
    ndim = len(kernel_shape) - 2
    spatial = input.shape[-ndim:]
    # a list, not a generator: torch.compile cannot hand a generator to math.prod (a graph break
    # at every layer of a compiled model)
    s_out = math.prod([-(-s // max(1, int(st))) for s, st in zip(spatial, stride)])
    return math.prod(spatial), s_out


def pays(input: Tensor, kernel_shape: Sequence[int], stride: Sequence[int], groups: int) -> bool:
    """The ``auto`` rule: CUDA, a large kernel (:func:`dcls_core.conv.cost.large_kernel`) on an
    input of no more positions than the kernel has taps (the matrix product then does no more
    multiply-adds than a direct convolution, on cuBLAS), and matrices under
    :data:`MAX_MATRIX_BYTES` in the products' dtype (the autocast dtype, else the input's)."""
    if not input.is_cuda or not large_kernel(input, kernel_shape, stride):
        return False
    s_in, s_out = _matrix_sizes(input, kernel_shape, stride)
    taps = math.prod(kernel_shape[2:])
    autocast = torch.is_autocast_enabled(input.device.type)
    dtype = torch.get_autocast_dtype(input.device.type) if autocast else input.dtype
    return s_in <= taps and kernel_shape[0] * s_in * s_out * dtype.itemsize <= MAX_MATRIX_BYTES


# -- the passes --------------------------------------------------------------------------
def _channels_first(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``(N, C, *S)`` -> contiguous ``(C, N, prod S)`` in ``dtype`` (one copy)."""
    n, c = t.shape[:2]
    out = torch.empty((c, n, math.prod(t.shape[2:])), device=t.device, dtype=dtype)
    return out.copy_(t.reshape(n, c, -1).transpose(0, 1))


def _bmm(a: Tensor, b: Tensor, out_dtype: torch.dtype) -> Tensor:
    """``a @ b`` batched, accumulated in float32, the result in ``out_dtype`` (half-precision
    products write float32 directly on CUDA)."""
    if a.is_cuda and a.dtype in (torch.float16, torch.bfloat16) and out_dtype == torch.float32:
        return torch.bmm(a, b, out_dtype=torch.float32)
    return torch.bmm(a, b).to(out_dtype)


def _matrices(k: Tensor, tables: TapTables, s_in: int, s_out: int, dtype: torch.dtype) -> Tensor:
    """``T (C, S_in, S_out)`` in ``dtype`` gathered from ``k (C, 1, *k)`` (plain torch)."""
    c = k.shape[0]
    flat = torch.nn.functional.pad(k.reshape(c, -1).to(dtype), (0, 1))  # the last column: no tap
    return flat.index_select(1, tables.gather).view(c, s_in, s_out)


# program (default) | torch: how T is built on CUDA. The program writes T from the kernel's taps in
# one launch (no index table read, no cast and pad beforehand); ours because the compiled
# ConvNeXt-T measured faster with it (benchmarks/NOTES_layers.md, run 18)
BUILD_ENV_VAR = "DCLS_MATRIX_BUILD"
_BUILD_PROGRAM = os.environ.get(BUILD_ENV_VAR, "program").strip().lower() != "torch"  # read at import
_BUILD_ROWS = 16  # rows of T per program
_BUILD_COLUMNS = 128  # columns of T per store, at most


def _program_geometry(
    in_sizes: Sequence[int],
    out_sizes: Sequence[int],
    k_sizes: Sequence[int],
    padding: Sequence[int],
    stride: Sequence[int],
) -> tuple[int, ...]:
    """``(H_in, W_in, H_out, W_out, KH, KW, pad_h, pad_w, stride_h, stride_w)`` of a call of one or
    two axes, as the programs take them: a 1-D call is a 2-D one with a single row."""
    if len(k_sizes) == 1:
        in_sizes, out_sizes, k_sizes, padding, stride = (
            (1, *in_sizes), (1, *out_sizes), (1, *k_sizes), (0, *padding), (1, *stride)
        )  # fmt: skip
    pairs = (in_sizes, out_sizes, k_sizes, padding, stride)
    return tuple(int(v) for pair in pairs for v in pair)


def _use_build_program(k: Tensor, dtype: torch.dtype) -> bool:
    """True if ``T`` is built by :func:`_matrices_program`: ``$DCLS_MATRIX_BUILD`` not ``torch``, a CUDA
    kernel of one or two spatial axes, ``T`` in half precision or float32, Triton."""
    if not _BUILD_PROGRAM or not k.is_cuda or k.dim() > 4:
        return False
    return dtype in (torch.float16, torch.bfloat16, torch.float32) and triton_available()


def _matrices_program(
    k: Tensor,
    in_sizes: Sequence[int],
    out_sizes: Sequence[int],
    padding: Sequence[int],
    stride: Sequence[int],
    dtype: torch.dtype,
) -> Tensor:
    """``T (C, S_in, S_out)`` in ``dtype`` from ``k (C, 1, *k)`` (one or two axes, any strides),
    equal to :func:`_matrices`'s, in one pass (:func:`.programs.matrices`)."""
    from . import programs

    c = k.shape[0]
    s_in, s_out = math.prod(in_sizes), math.prod(out_sizes)
    t = torch.empty((c, s_in, s_out), device=k.device, dtype=dtype)
    row_blocks = -(-s_in // _BUILD_ROWS)
    launch(
        programs.matrices,
        (c * row_blocks,),
        (k, t),
        *_program_geometry(in_sizes, out_sizes, k.shape[2:], padding, stride),
        k.stride(0),
        k.stride(2) if k.dim() == 4 else 0,  # a 1-D kernel: one row
        k.stride(-1),
        row_blocks,
        BR=_BUILD_ROWS,
        BO=min(_BUILD_COLUMNS, next_power_of_2(s_out)),
    )
    return t


def _build_matrices(
    k: Tensor,
    in_sizes: Sequence[int],
    out_sizes: Sequence[int],
    padding: Sequence[int],
    stride: Sequence[int],
    dtype: torch.dtype,
) -> Tensor:
    """``T (C, S_in, S_out)`` in ``dtype`` from ``k (C, 1, *k)``: the program where
    :func:`_use_build_program` allows it, else the torch gather (through the shape's tables)."""
    if _use_build_program(k, dtype):
        return _matrices_program(k, in_sizes, out_sizes, padding, stride, dtype)
    tables = tap_tables(in_sizes, out_sizes, k.shape[2:], stride, padding, k.device)
    return _matrices(k, tables, math.prod(in_sizes), math.prod(out_sizes), dtype)


def _forward(
    xc: Tensor,
    k: Tensor,
    bias: Optional[Tensor],
    in_sizes: list[int],
    out_sizes: list[int],
    padding: list[int],
    stride: list[int],
) -> Tensor:
    """``xc (C, N, S_in)`` -> ``yc (C, N, S_out)``, both in the products' dtype (``xc``'s)."""
    c, n = xc.shape[:2]
    t = _build_matrices(k, in_sizes, out_sizes, padding, stride, xc.dtype)
    if bias is None:
        return torch.bmm(xc, t)
    return torch.baddbmm(bias.to(xc.dtype).view(c, 1, 1).expand(c, n, t.shape[2]), xc, t)


def _forward_fake(xc, k, bias, in_sizes, out_sizes, padding, stride):
    return xc.new_empty((xc.shape[0], xc.shape[1], math.prod(out_sizes)))


def _backward(
    dyc: Tensor,
    xc: Tensor,
    k: Tensor,
    bias: Optional[Tensor],
    in_sizes: list[int],
    out_sizes: list[int],
    padding: list[int],
    stride: list[int],
    need_x: bool,
    need_k: bool,
    need_b: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``xc`` (in its dtype), ``k`` and ``bias`` from ``dyc (C, N, S_out)``."""
    dyc = dyc.to(xc.dtype).contiguous()
    if need_x:
        t = _build_matrices(k, in_sizes, out_sizes, padding, stride, xc.dtype)
        dx = torch.bmm(dyc, t.transpose(1, 2))
    else:
        dx = xc.new_empty(0)
    if need_k:
        acc = torch.promote_types(xc.dtype, torch.float32)
        if _use_tap_sum_program(xc, acc, k.shape[2:]):
            entries = _bmm(dyc.transpose(1, 2), xc, acc)  # (C, S_out, S_in): the program's tiles are rows
            dk = _tap_sums_program(entries, in_sizes, out_sizes, k.shape[2:], padding, stride)
        else:
            tables = tap_tables(in_sizes, out_sizes, k.shape[2:], stride, padding, xc.device)
            dk = _tap_sums_segments(_bmm(xc.transpose(1, 2), dyc, acc), tables)
        dk = dk.view(k.shape).to(k.dtype)
    else:
        dk = k.new_empty(0)
    db = bias_grad(dyc.transpose(0, 1), 1, bias.dtype) if need_b and bias is not None else dyc.new_empty(0)
    return dx, dk, db


def _tap_sums_segments(entries: Tensor, tables: TapTables) -> Tensor:
    """Kernel gradient ``(C, taps)`` from ``entries = x^T @ dy (C, S_in, S_out)``: the entries
    gathered into tap order, then one segment sum per tap (plain torch, any device and dtype)."""
    c = entries.shape[0]
    sorted_entries = entries.view(c, -1).index_select(1, tables.order)
    lengths = tables.lengths.expand(c, -1)
    # unsafe: the lengths are ours (checking them would read them on the host: a device wait)
    return torch.segment_reduce(sorted_entries, "sum", lengths=lengths, axis=1, unsafe=True)


# program (default) | segments: the kernel gradient's sums as one Triton pass where it applies, or
# the torch gather and segment sum everywhere. Ours because the compiled ConvNeXt-T measured faster
# with it (benchmarks/NOTES_layers.md, runs 16 and 17)
TAP_SUMS_ENV_VAR = "DCLS_MATRIX_TAP_SUMS"
_TAP_SUMS_PROGRAM = os.environ.get(TAP_SUMS_ENV_VAR, "program").strip().lower() != "segments"  # read at import
_MAX_PROGRAM_KW = 1024  # a tile row holds a kernel row
_PROGRAM_BW_OUT = 16  # output columns per tile, at most
_PROGRAM_TILE = 4096  # values per tile, at most (registers of one program)


def _use_tap_sum_program(xc: Tensor, acc: torch.dtype, k_sizes: Sequence[int]) -> bool:
    """True if the kernel gradient's sums run as :func:`_tap_sums_program`: CUDA with Triton,
    float32 sums, one or two axes, kernel rows of at most :data:`_MAX_PROGRAM_KW` taps, and
    ``$DCLS_MATRIX_TAP_SUMS`` not ``segments``."""
    if not _TAP_SUMS_PROGRAM or not xc.is_cuda or acc != torch.float32 or len(k_sizes) > 2:
        return False
    return k_sizes[-1] <= _MAX_PROGRAM_KW and triton_available()


def _tap_sums_program(
    entries: Tensor,
    in_sizes: Sequence[int],
    out_sizes: Sequence[int],
    k_sizes: Sequence[int],
    padding: Sequence[int],
    stride: Sequence[int],
) -> Tensor:
    """Kernel gradient ``(C, taps)`` from ``entries = dy^T @ x (C, S_out, S_in)`` in one pass over
    them (:func:`.programs.tap_sums`), where :func:`_tap_sums_segments` moves its entries three
    times. One or two spatial axes; ``entries`` float32."""
    from . import programs

    geometry = _program_geometry(in_sizes, out_sizes, k_sizes, padding, stride)
    w_out, kh, kw = geometry[3:6]
    c = entries.shape[0]
    dk = torch.empty((c, kh * kw), device=entries.device, dtype=torch.float32)
    launch(
        programs.tap_sums,
        (c * kh,),
        (entries.contiguous(), dk),
        *geometry,
        BW_OUT=max(1, min(_PROGRAM_BW_OUT, next_power_of_2(w_out), _PROGRAM_TILE // next_power_of_2(kw))),
        BKW=next_power_of_2(kw),
    )
    return dk


_matrix = register_op("matrix_dw_conv", _forward, _backward, _forward_fake, num_tensors=3)


def prepare(
    input: Tensor,
    kernel_shape: Sequence[int],
    bias: Optional[Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    padding_mode: str = "zeros",
) -> PreparedConv:
    """Check a call of :func:`matrix_dw_conv` and lay it out for its op: the input as its
    channels-first copy in the products' dtype (a differentiable copy), the settings, and the
    ``(N, C, *S_out)`` view of the op's ``(C, N, S_out)`` output; taken under the caller's
    autocast state."""
    if not supports(input, kernel_shape, stride, groups):
        raise ValueError(
            f"matrix_dw_conv: needs an (N, C, *S) floating input and a (C, 1, *k) kernel with groups == C; got "
            f"input {tuple(input.shape)} ({input.dtype}), kernel {tuple(kernel_shape)}, groups {groups}"
        )
    geo = conv_geometry(input, kernel_shape, stride, padding, groups, padding_mode, "matrix_dw_conv")
    stride = [int(s) for s in stride]
    out_sizes = [(full - 1) // s + 1 for full, s in zip(geo.out_full, stride)]
    x = geo.input
    n, c = x.shape[:2]
    with torch.autocast(x.device.type, enabled=False):
        # the layout change and the cast are plain (differentiable) torch copies, outside the op:
        # the op keeps its channels-first input for the kernel gradient, and its input gradient
        # goes back to the input's dtype and layout through the copy's backward
        xc = _channels_first(x, geo.out_dtype)
    settings = (list(x.shape[2:]), out_sizes, list(geo.padding), stride)

    def view(yc: Tensor) -> Tensor:
        return yc.transpose(0, 1).view(n, c, *out_sizes)  # channels outermost in memory: no copy

    return PreparedConv(_matrix, xc, bias, settings, geo.unbatched, view)


def matrix_dw_conv(
    input: Tensor,
    kernel: Tensor,
    bias: Optional[Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    padding_mode: str = "zeros",
) -> Tensor:
    """``F.conv{1,2,3}d(input, kernel, bias, stride, padding, groups=C)`` for a depthwise kernel.

    Args:
        input: ``(N, C, *S)`` or unbatched ``(C, *S)``, one to three spatial axes, any strides.
        kernel: ``(C, 1, *k)``; ``groups`` must be ``C``.
        bias: ``(C,)`` or None.
        stride, padding: one int per axis; ``padding_mode`` as in ``nn.ConvNd``.

    Returns:
        ``(N, C, *S_out)`` (unbatched if the input was) in the input's dtype (under autocast:
        the autocast dtype).
    """
    call = prepare(input, kernel.shape, bias, stride, padding, groups, padding_mode)
    with torch.autocast(input.device.type, enabled=False):
        return call.finish(call.op(call.input, kernel, call.bias, *call.settings))
