"""Choice between the reference DCLS path and the fast paths.

Two choices are made per call, each by device, dtype and shape:

* construction of the dense kernel: the fused Triton kernel (``triton_construct``, CUDA,
  two learned axes, float32 parameters) or the reference einsum (:mod:`dcls_core.kernel`);
* the convolution with that kernel: the Triton depthwise kernel (``triton_depthwise``,
  CUDA, depthwise, stride 1, large kernels), the FFT convolution (``fft_conv``, any device),
  or the plain ``F.conv{n}d`` (``reference``).

``DCLS_IMPL=reference`` forces the reference construction and ``F.conv``; ``DCLS_IMPL=fast``
forces a fast path for every call (the FFT convolution where no Triton kernel applies, also
on the CPU); ``auto`` (default) picks what measured fastest (``benchmarks/NOTES_layers.md``):
on CUDA the fused construction, the Triton depthwise kernel for depthwise kernels of at least
``DEPTHWISE_MIN_TAPS`` taps, the FFT for large dense kernels; on the CPU the reference.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor

IMPLS = ("auto", "reference", "fast")
ENV_VAR = "DCLS_IMPL"

# Thresholds of the ``auto`` choice on CUDA (measured, see benchmarks/NOTES_layers.md).
DEPTHWISE_MIN_TAPS = 81       # Triton depthwise beats cuDNN from 9x9 up
FFT_MIN_TAPS = 64             # FFT beats cuDNN for grouped/dense kernels of this many taps...
FFT_MIN_CHANNELS_PER_GROUP = 2  # ...that mix channels (depthwise goes to Triton or cuDNN)...
FFT_MIN_OUTPUTS = 1 << 20     # ...on outputs (N x C_out x spatial) large enough to pay its launches

CONSTRUCTIONS = ("reference", "triton")
CONVS = ("reference", "triton_depthwise", "fft")
_forced: dict[str, Optional[str]] = {"construct": None, "conv": None}

ConvFn = Callable[..., Tensor]


def current_impl() -> str:
    """The implementation forced by ``$DCLS_IMPL`` (``auto`` if unset)."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in IMPLS:
        raise ValueError(f"{ENV_VAR} must be one of {IMPLS}, got {value!r}")
    return value


@contextlib.contextmanager
def forced(construct: Optional[str] = None, conv: Optional[str] = None) -> Iterator[None]:
    """Within the block, use the named construction / convolution where it applies
    (benchmarks and tests; a path that does not apply to a call falls back as usual)."""
    if construct is not None and construct not in CONSTRUCTIONS:
        raise ValueError(f"construct must be one of {CONSTRUCTIONS}, got {construct!r}")
    if conv is not None and conv not in CONVS:
        raise ValueError(f"conv must be one of {CONVS}, got {conv!r}")
    saved = dict(_forced)
    _forced.update(construct=construct, conv=conv)
    try:
        yield
    finally:
        _forced.update(saved)


def compute_dtype(input: Tensor) -> torch.dtype:
    """Dtype the convolution runs in: the autocast dtype where autocast is on, else the input's."""
    if torch.is_autocast_enabled(input.device.type):
        return torch.get_autocast_dtype(input.device.type)
    return input.dtype


# -- construction ------------------------------------------------------------------------
def select_construct(
    weight: Tensor,
    P: Tensor,
    SIG: Optional[Tensor],
    dilated_kernel_size: Sequence[int],
    version: str,
) -> tuple[str, Callable[..., Tensor]]:
    """``(name, fn)``; ``fn(weight, P, SIG, dilated_kernel_size, version)`` builds the kernel."""
    from .kernel import construct_kernel

    wanted = _forced["construct"]
    if wanted != "reference" and (current_impl() != "reference" or wanted == "triton") and weight.is_cuda:
        from . import triton_construct

        if triton_construct.supports(weight, P, SIG, dilated_kernel_size, version):
            return "triton", triton_construct.construct_kernel_2d
    return "reference", construct_kernel


def build_kernel(weight: Tensor, P: Tensor, SIG: Optional[Tensor], dilated_kernel_size: Sequence[int], version: str) -> Tensor:
    """The dense kernel through the selected construction."""
    _, fn = select_construct(weight, P, SIG, dilated_kernel_size, version)
    return fn(weight, P, SIG, tuple(dilated_kernel_size), version)


# -- convolution -------------------------------------------------------------------------
def _triton_depthwise(input, kernel, bias, stride, padding, groups, padding_mode):
    from .triton_depthwise import depthwise_conv2d

    return depthwise_conv2d(input, kernel, bias, padding)


def _fft(input, kernel, bias, stride, padding, groups, padding_mode):
    from .fft_conv import fft_conv_nd

    return fft_conv_nd(input, kernel, bias, stride, padding, groups, padding_mode)


def _reference(input, kernel, bias, stride, padding, groups, padding_mode):
    from .functional import conv_nd

    return conv_nd(input, kernel, bias, stride, padding, groups, padding_mode)


def _fft_pays(input: Tensor, kernel: Tensor) -> bool:
    taps = math.prod(kernel.shape[2:])
    ndim = kernel.dim() - 2
    outputs = (input.numel() // max(1, input.shape[-ndim - 1])) * kernel.shape[0]
    return taps >= FFT_MIN_TAPS and kernel.shape[1] >= FFT_MIN_CHANNELS_PER_GROUP and outputs >= FFT_MIN_OUTPUTS


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
    wanted = _forced["conv"]
    if wanted == "reference":
        return "reference", _reference
    if wanted == "fft":
        return "fft", _fft
    impl = "fast" if wanted == "triton_depthwise" else current_impl()
    if impl == "reference":
        return "reference", _reference
    if input.is_cuda:
        from . import triton_depthwise

        taps = math.prod(kernel.shape[2:])
        if triton_depthwise.supports(input, kernel, stride, padding, groups, padding_mode, compute_dtype(input)) and (
            impl == "fast" or taps >= DEPTHWISE_MIN_TAPS
        ):
            return "triton_depthwise", _triton_depthwise
        if impl == "fast" or _fft_pays(input, kernel):
            return "fft", _fft
        return "reference", _reference
    if impl == "fast":
        return "fft", _fft
    return "reference", _reference
