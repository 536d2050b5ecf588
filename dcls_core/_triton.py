"""Whether the Triton GPU programs can run here: Triton imports and a CUDA device is present.

Only the ``programs.py`` modules import Triton at module level, and only when a launcher first
needs them; everything else asks :func:`triton_available` first (as do the log-mel front end's
fused passes in ``dcls_audio.features.logmel_passes``).
"""

from __future__ import annotations

import torch

__all__ = ["triton_available"]

_AVAILABLE: list[bool] = []


def triton_available() -> bool:
    """True if ``triton`` and ``triton.language`` import and CUDA is available (checked once)."""
    if not _AVAILABLE:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401

            _AVAILABLE.append(torch.cuda.is_available())
        except Exception:
            _AVAILABLE.append(False)
    return _AVAILABLE[0]
