"""The reference convolution: ``F.conv{1,2,3}d`` with the ``padding_mode`` handling of ``nn.ConvNd``."""

from __future__ import annotations

from typing import Optional, Sequence

import torch.nn.functional as F
from torch import Tensor

from ..common import apply_padding_mode

__all__ = ["conv_nd"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def conv_nd(
    input: Tensor,
    kernel: Tensor,
    bias: Optional[Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    padding_mode: str = "zeros",
) -> Tensor:
    """Plain dense convolution with the ``padding_mode`` handling of ``nn.ConvNd``.

    ``input`` is ``(N, C_in, *spatial)`` or unbatched; ``kernel`` is
    ``(C_out, C_in/groups, *kernel)``; the number of kernel axes picks conv1d/2d/3d.
    """
    input, padding = apply_padding_mode(input, padding, padding_mode)
    return _CONV[kernel.dim() - 2](input, kernel, bias, tuple(stride), padding, 1, groups)
