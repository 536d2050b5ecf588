"""Where the reference convolution (``F.conv``, cuDNN on CUDA) is slow enough for a fast path to
pay: the shared part of the FFT's and the direct path's cost rules.

The thresholds were measured on an H100 (``benchmarks/NOTES_layers.md``): cuDNN runs large
depthwise kernels at a few TFLOP/s, while 7x7 depthwise kernels and 3-D channel-mixing kernels stay
fast; below ``MIN_OUTPUTS`` outputs the launches dominate.
"""

from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor

__all__ = ["MIN_OUTPUTS", "MIN_TAPS_DENSE", "MIN_TAPS_DEPTHWISE", "large_kernel"]

MIN_TAPS_DEPTHWISE = 81  # 9x9 and up (cuDNN 7x7 depthwise still beats the FFT)
MIN_TAPS_DENSE = 240  # 1-D 250 taps: the FFT wins; 3x3x23 (207): cuDNN wins
MIN_OUTPUTS = 1 << 16  # N x C_out x output size below which launches dominate


def large_kernel(input: Tensor, kernel_shape: Sequence[int], stride: Sequence[int]) -> bool:
    """True for a stride-1 convolution of at least ``MIN_OUTPUTS`` outputs with a depthwise-like
    kernel (one input channel per group) of at least ``MIN_TAPS_DEPTHWISE`` taps, or a 1-D or 2-D
    channel-mixing kernel of at least ``MIN_TAPS_DENSE`` taps (``input (N, C_in, *spatial)``,
    ``kernel_shape (C_out, C_in/groups, *kernel)``)."""
    ndim = len(kernel_shape) - 2
    if any(s != 1 for s in stride):
        return False
    taps = math.prod(kernel_shape[2:])
    outputs = (input.numel() // max(1, input.shape[-ndim - 1])) * kernel_shape[0]
    if outputs < MIN_OUTPUTS:
        return False
    if kernel_shape[1] == 1:
        return taps >= MIN_TAPS_DEPTHWISE
    return taps >= MIN_TAPS_DENSE and ndim < 3
