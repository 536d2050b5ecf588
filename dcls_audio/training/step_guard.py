"""Non-finite loss guard decided on the device: bad updates never reach the weights.

Each training step, :meth:`NonFiniteGuard.update` turns the step's loss into a sticky device
state ``[any rank bad so far, first bad step, this rank bad then, its loss]`` (the "bad" flag is
all-reduced over DDP ranks with a MAX, a collective on the device stream, no host wait) and
returns it as a 0-d float32 ``found_inf`` flag. An optimizer that honours ``found_inf`` (torch's
fused Adam/AdamW, as GradScaler uses them) skips its whole update on device while the flag is
set, so from the first bad step on the weights stay those of the last good step.

The host reads the state ``lag`` steps later: ``lag=1`` copies it into pinned memory without
blocking and, at the next step, waits for that copy only (the device is then already a step
ahead). ``lag=0`` reads it at once (the CPU, where reading costs nothing, and optimizers without
``found_inf``, which must stop before their update). Every rank reads the same all-reduced state
at the same step, so all ranks stop together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

__all__ = ["NonFiniteGuard", "NonFiniteStep", "supports_found_inf"]


@dataclass
class NonFiniteStep:
    """What the host learnt: the first step whose loss was non-finite on some rank."""

    step: int
    here: bool  # on this rank
    loss: float  # this rank's loss at that step (nan when it was only another rank's)


def supports_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """True for torch optimizers whose fused step skips its update when ``found_inf`` is set."""
    fused_kinds = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)
    return isinstance(optimizer, fused_kinds) and bool(optimizer.defaults.get("fused"))


def _all_ranks_max(flag: Tensor) -> Tensor:
    """MAX of ``flag`` over the default process group (itself without one); no host wait."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag


class NonFiniteGuard:
    """See the module docstring. ``reduce`` combines the per-rank flag (replaceable in tests)."""

    def __init__(self, lag: int = 1, reduce: Callable[[Tensor], Tensor] = _all_ranks_max) -> None:
        if lag not in (0, 1):
            raise ValueError(f"NonFiniteGuard: lag must be 0 or 1, got {lag}")
        self.lag = lag
        self.reduce = reduce
        self.state: Tensor | None = None
        self._pending: tuple[Tensor, torch.cuda.Event | None] | None = None

    def reset(self) -> None:
        self.state = None
        self._pending = None

    def update(self, loss: Tensor, step: int) -> Tensor:
        """Fold this step's (detached, scalar) ``loss`` into the state; returns ``found_inf``
        (0-d float32 on the loss's device, 1.0 from the first bad step on)."""
        loss = loss.detach().reshape(()).to(torch.float64)
        here = (~torch.isfinite(loss)).to(torch.float64)
        anywhere = self.reduce(here.clone())
        if self.state is None:
            self.state = torch.zeros(4, dtype=torch.float64, device=loss.device)
        fresh = (anywhere > 0) & (self.state[0] == 0)
        now = torch.stack([torch.ones_like(here), torch.full_like(here, float(step)), here, loss])
        self.state = torch.where(fresh, now, self.state)
        return self.state[0].to(torch.float32)

    def publish(self) -> None:
        """Start the host copy of the state read by the next :meth:`poll` (lag 1)."""
        if self.state is None or self.lag == 0:
            return
        if self.state.device.type == "cuda":
            host = torch.empty(self.state.shape, dtype=self.state.dtype, pin_memory=True)
            host.copy_(self.state, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending = (host, event)
        else:
            self._pending = (self.state.clone(), None)

    def poll(self, now: bool = False) -> NonFiniteStep | None:
        """The first bad step if the host knows of one: with ``now`` (or lag 0) from the current
        state (waits for the device), else from the copy :meth:`publish` started a step ago."""
        if now or self.lag == 0:
            values = None if self.state is None else self.state.tolist()
        elif self._pending is not None:
            host, event = self._pending
            if event is not None:
                event.synchronize()
            values = host.tolist()
        else:
            values = None
        if not values or values[0] == 0:
            return None
        return NonFiniteStep(step=int(values[1]), here=bool(values[2]), loss=float(values[3]))
