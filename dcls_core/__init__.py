"""dcls_core: Dilated Convolution with Learnable Spacings layers (CPU and CUDA).

Modules with the parameter layout of ``dcls`` 0.1.1, a functional ``construct_kernel`` and
``dcls_conv{1,2,3}d``; a dispatcher chooses the reference or a fast GPU path
(``DCLS_IMPL=reference|fast|auto``, ``DCLS_CONV``, :func:`dcls_core.dispatch.forced`).

Folders: :mod:`.construction` (the dense kernel: reference, fused Triton, cache), :mod:`.conv`
(the convolution paths: reference, FFT, direct, matrix). Public modules: :mod:`.modules`,
:mod:`.functional`, :mod:`.dispatch`.
"""

from __future__ import annotations

from .construction.reference import VERSIONS, axis_factor, construct_kernel, position_axes
from .dispatch import current_impl
from .functional import conv_nd, dcls_conv, dcls_conv1d, dcls_conv2d, dcls_conv3d
from .modules import Dcls1d, Dcls2_1d, Dcls2d, Dcls2dK1d, Dcls3_1d, Dcls3d

__all__ = [
    "Dcls1d",
    "Dcls2d",
    "Dcls3d",
    "Dcls2_1d",
    "Dcls3_1d",
    "Dcls2dK1d",
    "construct_kernel",
    "axis_factor",
    "position_axes",
    "VERSIONS",
    "dcls_conv",
    "dcls_conv1d",
    "dcls_conv2d",
    "dcls_conv3d",
    "conv_nd",
    "current_impl",
]
