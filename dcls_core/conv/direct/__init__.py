"""The direct convolution path: 2-D depthwise kernels on the tensor cores (CUDA, Triton), no
transform; its workspace is a zero-padded copy of the input and one matrix per channel.

* :mod:`.conv`: ``direct_dw_conv2d`` (the path's function), its launchers and cost rule;
* :mod:`.programs`: its Triton GPU programs.
"""

from __future__ import annotations

from .conv import MAX_CHANNELS, MAX_KW, direct_dw_conv2d, pays, prepare, supports

__all__ = ["MAX_CHANNELS", "MAX_KW", "NAME", "convolve", "direct_dw_conv2d", "pays", "prepare", "supports"]

NAME = "direct"
convolve = direct_dw_conv2d
