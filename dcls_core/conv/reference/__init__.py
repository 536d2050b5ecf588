"""The reference convolution path: ``F.conv{1,2,3}d`` (cuDNN on CUDA), any device, dtype and call.

It supports every call and is the fallback of the ``auto`` rules (its cost rule always pays).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from .conv import conv_nd

__all__ = ["NAME", "conv_nd", "convolve", "pays", "supports"]

NAME = "reference"
convolve = conv_nd


def supports(input: Tensor, kernel_shape: Sequence[int], stride: Sequence[int], groups: int) -> bool:
    """Every call."""
    return True


def pays(input: Tensor, kernel_shape: Sequence[int], stride: Sequence[int], groups: int) -> bool:
    """Always: the path ``auto`` takes where no faster one pays."""
    return True
