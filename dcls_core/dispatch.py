"""Choice between the reference DCLS path and the fast paths.

Two choices are made per call, by device, dtype and shape:

* construction of the dense kernel: the fused Triton kernels (:mod:`dcls_core.triton_construct`:
  CUDA, one to three learned axes, float32 parameters, ``kernel_count >= 2``) or the reference
  einsum (:mod:`dcls_core.kernel`);
* the convolution with that kernel: the direct depthwise convolution on the tensor cores
  (:mod:`dcls_core.direct_conv`, CUDA, 2-D), the FFT convolution (:mod:`dcls_core.fft_conv`,
  any device) or the plain ``F.conv{n}d`` (``reference``).

``DCLS_CONV=fft|direct|reference`` forces the convolution alone where it applies (where
``direct`` does not, the rules below choose), for instance the FFT, faster than the direct convolution
at the ConvNeXt-T shapes but with more memory (``benchmarks/NOTES_layers.md``, run 6);
:func:`forced` does the same within a block and takes precedence.
``DCLS_IMPL=reference`` forces the reference construction and ``F.conv``; ``DCLS_IMPL=fast``
forces the fast paths wherever they apply (the direct convolution where the ``auto`` rule
would take it, the FFT convolution for every other call, also on the CPU); ``auto`` (default)
takes what measured best on an H100 (``benchmarks/NOTES_layers.md``): on CUDA the fused
construction, and for stride-1 convolutions with

* a depthwise-like kernel (one input channel per group) of at least ``FFT_MIN_TAPS_DEPTHWISE``
  taps (cuDNN's large depthwise kernels run at a few TFLOP/s): the direct convolution if it
  applies (2-D, one channel per group) and may use the tensor cores (half precision, or
  float32 with ``torch.backends.cudnn.allow_tf32``, PyTorch's default, as ``nn.Conv2d``
  does), the FFT otherwise (strict float32, 1-D and 3-D). The direct convolution takes
  1.4-1.6x the FFT's time at the ConvNeXt-T stage shapes but needs no workspace: its peak
  memory stays below ``dcls`` 0.1.1's, the FFT's reaches 1.8x it;
* a 1-D or 2-D channel-mixing kernel of at least ``FFT_MIN_TAPS_DENSE`` taps (for 3-D ones
  cuDNN's implicit GEMM measured as fast or faster): the FFT;

and the reference everywhere else (small kernels, strides, tiny problems, the CPU).

Where the fused construction and the FFT apply to a 1-D or 2-D DCLS layer while gradients are
recorded (eager training), :func:`select_fused` sends the whole layer through
:mod:`dcls_core.fused_fft` (one autograd node, fewer launches); ``forced(fused=False)`` keeps
the two steps apart.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from . import triton_construct
from .kernel import construct_kernel

IMPLS = ("auto", "reference", "fast")
ENV_VAR = "DCLS_IMPL"
CONV_ENV_VAR = "DCLS_CONV"   # auto | reference | fft | direct: the convolution, over DCLS_IMPL

FFT_MIN_TAPS_DEPTHWISE = 81   # 9x9 and up (cuDNN 7x7 depthwise still beats the FFT)
FFT_MIN_TAPS_DENSE = 240      # 1-D 250 taps: FFT 4x faster; 3x3x23 (207): cuDNN faster
FFT_MIN_OUTPUTS = 1 << 16     # N x C_out x output size below which launches dominate
FUSED_MIN_COUNT = 2           # fused construction from this kernel_count up

CONSTRUCTIONS = ("reference", "triton")
CONVS = ("reference", "fft", "direct")
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
    direct convolution that does not apply to the ``auto`` rules);
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
        # kernel_count 1 (learnable delays): one tiny program per (out, in) pair loses to einsum
        if triton_construct.supports(weight, P, SIG, dilated_kernel_size, version) and (
            weight.shape[-1] >= FUSED_MIN_COUNT or wanted == "triton"
        ):
            return "triton", triton_construct.construct_kernel_fused
    return "reference", construct_kernel


def build_kernel(weight: Tensor, P: Tensor, SIG: Optional[Tensor], dilated_kernel_size: Sequence[int], version: str) -> Tensor:
    """The dense kernel through the selected construction."""
    _, fn = select_construct(weight, P, SIG, dilated_kernel_size, version)
    return fn(weight, P, SIG, tuple(dilated_kernel_size), version)


# -- convolution -------------------------------------------------------------------------
def _fft(input, kernel, bias, stride, padding, groups, padding_mode):
    from .fft_conv import fft_conv_nd

    return fft_conv_nd(input, kernel, bias, stride, padding, groups, padding_mode)


def _direct(input, kernel, bias, stride, padding, groups, padding_mode):
    from .direct_conv import direct_dw_conv2d

    return direct_dw_conv2d(input, kernel, bias, stride, padding, groups, padding_mode)


def _reference(input, kernel, bias, stride, padding, groups, padding_mode):
    from .functional import conv_nd

    return conv_nd(input, kernel, bias, stride, padding, groups, padding_mode)


def fft_pays(input: Tensor, kernel_shape: Sequence[int], stride: Sequence[int]) -> bool:
    """The ``auto`` rule for the FFT on CUDA (see the module docstring)."""
    ndim = len(kernel_shape) - 2
    if any(s != 1 for s in stride):
        return False
    taps = math.prod(kernel_shape[2:])
    outputs = (input.numel() // max(1, input.shape[-ndim - 1])) * kernel_shape[0]
    if outputs < FFT_MIN_OUTPUTS:
        return False
    if kernel_shape[1] == 1:
        return taps >= FFT_MIN_TAPS_DEPTHWISE
    return taps >= FFT_MIN_TAPS_DENSE and ndim < 3


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
    return name, {"fft": _fft, "direct": _direct}.get(name, _reference)


def direct_pays(input: Tensor, kernel_shape: Sequence[int], stride: Sequence[int], groups: int) -> bool:
    """The ``auto`` rule for the direct depthwise convolution on CUDA: where it applies, the FFT
    would pay, and the products may run on the tensor cores (half precision, or float32 with
    ``torch.backends.cudnn.allow_tf32``, as ``nn.Conv2d`` does)."""
    from . import direct_conv

    if not direct_conv.supports(input, kernel_shape, stride, groups) or not fft_pays(input, kernel_shape, stride):
        return False
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else input.dtype
    return dtype != torch.float32 or torch.backends.cudnn.allow_tf32


def _conv_name(input: Tensor, kernel_shape: Sequence[int], stride: Sequence[int], groups: int) -> str:
    wanted = _forced["conv"] or _conv_from_env()
    if wanted == "direct":
        from . import direct_conv

        if direct_conv.supports(input, kernel_shape, stride, groups):
            return "direct"
    elif wanted is not None:
        return wanted
    impl = current_impl()
    if impl == "reference":
        return "reference"
    if input.is_cuda and direct_pays(input, kernel_shape, stride, groups):
        return "direct"
    if impl == "fast" or (input.is_cuda and fft_pays(input, kernel_shape, stride)):
        return "fft"
    return "reference"


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
    """True if :func:`dcls_core.fused_fft.fused_dcls_fft` runs this layer call: gradients are
    recorded, not compiling, stride 1, the fused construction and the FFT are selected, and
    the transform planes fit the construction's register block."""
    if _forced["fused"] == "off" or not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    ndim = len(dilated_kernel_size)
    if ndim > 2 or any(s != 1 for s in stride) or input.dim() < ndim + 1:
        return False
    if select_construct(weight, P, SIG, dilated_kernel_size, version)[0] != "triton":
        return False
    groups = input.shape[-ndim - 1] // weight.shape[1]
    if _conv_name(input, (*weight.shape[:2], *dilated_kernel_size), stride, groups) != "fft":
        return False
    from .fft_conv import transform_sizes_for

    sizes = transform_sizes_for(input.shape[-ndim:], padding, dilated_kernel_size, padding_mode, input.device.type)
    return triton_construct.places(sizes)
