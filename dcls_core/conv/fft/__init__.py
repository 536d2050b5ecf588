"""The FFT convolution path: any device, dtype, ``groups``, stride and ``padding_mode``; a cost that
does not grow with the kernel size.

* :mod:`.conv`: ``fft_conv_nd`` (the path's function) and its passes;
* :mod:`.sizes`: transform sizes, exact and cheap for cuFFT;
* :mod:`.passes`: the element-wise passes, Triton programs (:mod:`.programs`) on CUDA and torch
  operations elsewhere;
* :mod:`.fused_layer`: a whole 1-D/2-D DCLS layer (fused construction + FFT) as one autograd node.
"""

from __future__ import annotations

from .conv import fft_conv_nd, pays, supports

__all__ = ["NAME", "convolve", "fft_conv_nd", "pays", "supports"]

NAME = "fft"
convolve = fft_conv_nd
