"""The matrix convolution path: a depthwise kernel on a small input as one matrix product per
channel (batched GEMM), any number of spatial axes, any device.

* :mod:`.conv`: ``matrix_dw_conv`` (the path's function), its index tables and cost rule;
* :mod:`.programs`: Triton programs (CUDA, the default there): the kernel gradient's tap sums and
  the matrices built from the kernel.
"""

from __future__ import annotations

from .conv import matrix_dw_conv, pays, prepare, supports

__all__ = ["NAME", "convolve", "matrix_dw_conv", "pays", "prepare", "supports"]

NAME = "matrix"
convolve = matrix_dw_conv
