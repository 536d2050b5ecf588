"""Choice between the reference DCLS path and the fast paths, made per call by device, dtype and shape.

* Construction of the dense kernel: the fused Triton construction
  (:mod:`dcls_core.construction.fused`: CUDA, one to three learned axes, float32 parameters, from
  ``MIN_COUNT`` elements per kernel) or the reference einsum (:mod:`dcls_core.construction.reference`).
* The convolution with that kernel: a registry of paths, :data:`CONV_PATHS`, in order of
  preference (:mod:`dcls_core.conv` states a path's contract). ``auto`` takes the first path that
  supports the call and whose cost rule pays: the matrix depthwise convolution (CUDA, large
  depthwise kernels on inputs of no more positions than the kernel has taps: one batched GEMM per
  call), the direct depthwise convolution on the tensor cores
  (CUDA, 2-D, large depthwise kernels where half precision or TF32 is allowed), then the FFT
  (CUDA, large kernels), then the reference ``F.conv`` (everything else: small kernels, strides,
  tiny problems, the CPU). The rules were measured on an H100 (``benchmarks/NOTES_layers.md``).
* The whole layer: where the fused construction and the FFT are both chosen for a 1-D or 2-D DCLS
  layer while gradients are recorded (eager training), :func:`select_fused` sends it through
  :mod:`dcls_core.conv.fft.fused_layer` (one autograd node, fewer launches).

Switches:

* ``DCLS_IMPL=auto|reference|fast``: ``reference`` forces the reference construction and
  ``F.conv``; ``fast`` forces the fast paths wherever they apply (a path whose rule pays, else the
  FFT, :data:`FAST_CONV`, also on the CPU); ``auto`` (default) follows the rules.
* ``DCLS_CONV=auto|matrix|direct|fft|reference``: forces the convolution alone where the named path
  supports the call (elsewhere the rules above choose), over ``DCLS_IMPL``.
* :func:`forced`: the same within a block, over both variables; ``forced(fused=False)`` keeps the
  construction and the convolution apart.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from .construction import fused as fused_construction
from .construction.reference import construct_kernel
from .conv import direct, fft, matrix, reference
from .conv.fft.conv import transform_sizes_for

__all__ = [
    "CONSTRUCTIONS",
    "CONVS",
    "CONV_ENV_VAR",
    "CONV_PATHS",
    "ENV_VAR",
    "FAST_CONV",
    "IMPLS",
    "build_kernel",
    "current_impl",
    "forced",
    "select_construct",
    "select_conv",
    "select_fused",
]

IMPLS = ("auto", "reference", "fast")
ENV_VAR = "DCLS_IMPL"
CONV_ENV_VAR = "DCLS_CONV"  # auto | reference | fft | direct | matrix: the convolution, over DCLS_IMPL

# The convolution paths in order of preference (a new path: its folder under conv/ and one entry here).
CONV_PATHS = {path.NAME: path for path in (matrix, direct, fft, reference)}
FAST_CONV = fft.NAME  # DCLS_IMPL=fast: the path of every call no other fast path's rule takes

CONSTRUCTIONS = ("reference", "triton")
CONVS = tuple(CONV_PATHS)
_forced: dict[str, Optional[str]] = {"construct": None, "conv": None, "fused": None}

ConvFn = Callable[..., Tensor]


def current_impl() -> str:
    """The implementation forced by ``$DCLS_IMPL`` (``auto`` if unset)."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in IMPLS:
        raise ValueError(f"{ENV_VAR} must be one of {IMPLS}, got {value!r}")
    return value


@contextlib.contextmanager
def forced(construct: Optional[str] = None, conv: Optional[str] = None, fused: Optional[bool] = None) -> Iterator[None]:
    """Within the block, use the named construction / convolution where it applies
    (benchmarks and tests; a construction that does not apply falls back to the reference, a
    convolution that does not apply to the ``auto`` rules);
    ``fused=False`` never takes the fused layer path. Choices an enclosing block forced and
    this one does not name stay forced."""
    if construct is not None and construct not in CONSTRUCTIONS:
        raise ValueError(f"construct must be one of {CONSTRUCTIONS}, got {construct!r}")
    if conv is not None and conv not in CONVS:
        raise ValueError(f"conv must be one of {CONVS}, got {conv!r}")
    saved = dict(_forced)
    wanted = {"construct": construct, "conv": conv, "fused": "off" if fused is False else None}
    _forced.update({k: v for k, v in wanted.items() if v is not None})  # nested blocks keep the rest
    try:
        yield
    finally:
        _forced.update(saved)


def _conv_from_env() -> Optional[str]:
    """The convolution named by ``$DCLS_CONV`` (None if unset or ``auto``)."""
    value = os.environ.get(CONV_ENV_VAR, "auto").strip().lower() or "auto"
    if value == "auto":
        return None
    if value not in CONVS:
        raise ValueError(f"{CONV_ENV_VAR} must be one of {('auto', *CONVS)}, got {value!r}")
    return value


# -- construction ------------------------------------------------------------------------
def select_construct(
    weight: Tensor,
    P: Tensor,
    SIG: Optional[Tensor],
    dilated_kernel_size: Sequence[int],
    version: str,
) -> tuple[str, Callable[..., Tensor]]:
    """``(name, fn)``; ``fn(weight, P, SIG, dilated_kernel_size, version)`` builds the kernel."""
    wanted = _forced["construct"]
    if wanted != "reference" and (current_impl() != "reference" or wanted == "triton") and weight.is_cuda:
        if fused_construction.supports(weight, P, SIG, dilated_kernel_size, version) and (
            fused_construction.pays(weight) or wanted == "triton"
        ):
            return "triton", fused_construction.construct_kernel_fused
    return "reference", construct_kernel


def build_kernel(
    weight: Tensor, P: Tensor, SIG: Optional[Tensor], dilated_kernel_size: Sequence[int], version: str
) -> Tensor:
    """The dense kernel through the selected construction."""
    _, fn = select_construct(weight, P, SIG, dilated_kernel_size, version)
    return fn(weight, P, SIG, tuple(dilated_kernel_size), version)


# -- convolution -------------------------------------------------------------------------
def _conv_name(input: Tensor, kernel_shape: Sequence[int], stride: Sequence[int], groups: int) -> str:
    wanted = _forced["conv"] or _conv_from_env()
    if wanted is not None and CONV_PATHS[wanted].supports(input, kernel_shape, stride, groups):
        return wanted
    impl = current_impl()
    if impl == "reference":
        return reference.NAME
    for name, path in CONV_PATHS.items():
        if (
            name != reference.NAME
            and path.supports(input, kernel_shape, stride, groups)
            and path.pays(input, kernel_shape, stride, groups)
        ):
            return name
    return FAST_CONV if impl == "fast" else reference.NAME


def select_conv(
    input: Tensor,
    kernel: Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    padding_mode: str,
) -> tuple[str, ConvFn]:
    """``(name, fn)``: the convolution for this call; ``fn(input, kernel, bias, stride,
    padding, groups, padding_mode)`` equals :func:`dcls_core.functional.conv_nd`."""
    name = _conv_name(input, kernel.shape, stride, groups)
    return name, CONV_PATHS[name].convolve


# -- the whole layer ---------------------------------------------------------------------
def select_fused(
    input: Tensor,
    weight: Tensor,
    P: Tensor,
    SIG: Optional[Tensor],
    dilated_kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    padding_mode: str,
    version: str,
) -> bool:
    """True if :func:`dcls_core.conv.fft.fused_layer.fused_dcls_fft` runs this layer call: gradients
    are recorded, not compiling, stride 1, the fused construction and the FFT are selected, and
    the transform planes fit the construction's register block."""
    if _forced["fused"] == "off" or not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    ndim = len(dilated_kernel_size)
    if ndim > 2 or any(s != 1 for s in stride) or input.dim() < ndim + 1:
        return False
    if select_construct(weight, P, SIG, dilated_kernel_size, version)[0] != "triton":
        return False
    groups = input.shape[-ndim - 1] // weight.shape[1]
    if _conv_name(input, (*weight.shape[:2], *dilated_kernel_size), stride, groups) != fft.NAME:
        return False
    sizes = transform_sizes_for(input.shape[-ndim:], padding, dilated_kernel_size, padding_mode, input.device.type)
    return fused_construction.places(sizes)
