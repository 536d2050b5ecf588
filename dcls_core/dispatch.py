"""Choice between the reference DCLS path and the fast GPU paths.

``DCLS_IMPL=reference`` forces the plain-torch reference, ``DCLS_IMPL=fast`` forces a fast
path where one exists for the call (and raises where none does), ``auto`` (default) lets the
dispatcher pick per device, dtype and shape.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

from torch import Tensor

IMPLS = ("auto", "reference", "fast")
ENV_VAR = "DCLS_IMPL"


def current_impl() -> str:
    """The implementation forced by ``$DCLS_IMPL`` (``auto`` if unset)."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in IMPLS:
        raise ValueError(f"{ENV_VAR} must be one of {IMPLS}, got {value!r}")
    return value


def _fast_conv(
    input: Tensor,
    dilated_kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    padding_mode: str,
    version: str,
) -> Optional[Callable]:
    """A fast implementation for this call, or None if none applies."""
    return None


def select_conv(
    input: Tensor,
    weight: Tensor,
    dilated_kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    padding_mode: str,
    version: str,
) -> Callable:
    """Return the DCLS convolution implementation to use for this call."""
    from .functional import reference_dcls_conv

    impl = current_impl()
    if impl == "reference":
        return reference_dcls_conv
    fast = _fast_conv(input, dilated_kernel_size, stride, padding, groups, padding_mode, version)
    if fast is not None:
        return fast
    if impl == "fast":
        raise RuntimeError(
            f"{ENV_VAR}=fast but no fast DCLS path applies to device={input.device.type}, "
            f"dtype={input.dtype}, kernel={tuple(dilated_kernel_size)}, groups={groups}"
        )
    return reference_dcls_conv
