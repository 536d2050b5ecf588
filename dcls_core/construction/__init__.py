"""Construction of the dense DCLS kernel from its weights, positions and sigmas.

* :mod:`.reference`: ``construct_kernel`` in plain torch, any device and dtype (the definition);
* :mod:`.fused`: the same in one Triton launch each way (CUDA, float32), with its GPU programs in
  :mod:`.programs`;
* :mod:`.cache`: reuse of a built kernel while the parameters are unchanged.

:mod:`dcls_core.dispatch` chooses between the reference and the fused construction.
"""

from __future__ import annotations

from .cache import KernelCache, parameter_key
from .reference import (
    GAUSS_SIGMA_OFFSET,
    NORM_EPS,
    NORMALISED_VERSIONS,
    SIGMA_VERSIONS,
    VERSIONS,
    axis_factor,
    construct_kernel,
    position_axes,
)

__all__ = [
    "KernelCache",
    "parameter_key",
    "GAUSS_SIGMA_OFFSET",
    "NORM_EPS",
    "NORMALISED_VERSIONS",
    "SIGMA_VERSIONS",
    "VERSIONS",
    "axis_factor",
    "construct_kernel",
    "position_axes",
]
