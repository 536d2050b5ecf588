"""Reuse of a built dense kernel while the parameters it was built from are unchanged (the layers' cache
in eval mode under ``no_grad``)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from torch import Tensor

__all__ = ["KernelCache", "parameter_key"]


def parameter_key(params: Sequence[Optional[Tensor]]) -> tuple:
    """Identity of the parameters' current values.

    Each tensor contributes its object id, storage address, in-place version counter
    (bumped by optimizer steps, ``copy_``, ``load_state_dict``), device, dtype and shape.
    """
    return tuple(
        None if p is None else (id(p), p.data_ptr(), p._version, p.device, p.dtype, tuple(p.shape)) for p in params
    )


class KernelCache:
    """One cached kernel, rebuilt whenever :func:`parameter_key` of its parameters changes."""

    def __init__(self) -> None:
        self.key: Optional[tuple] = None
        self.kernel: Optional[Tensor] = None
        self.builds = 0

    def get(self, params: Sequence[Optional[Tensor]], build: Callable[[], Tensor]) -> Tensor:
        """The cached kernel, or ``build()`` (then cached) if the parameters changed."""
        key = parameter_key(params)
        if self.kernel is None or key != self.key:
            self.kernel = build()
            self.key = key
            self.builds += 1
        return self.kernel
