"""Non-finite loss guard decided on the device: bad updates never reach the weights.

Each training step, :meth:`NonFiniteGuard.update` turns the step's loss into a sticky device
state ``[any rank bad so far, first bad step, this rank bad then, its loss]`` (the "bad" flag is
all-reduced over DDP ranks with a MAX, a collective on the device stream, no host wait) and
returns it as a 0-d float32 ``found_inf`` flag. An optimizer that honours ``found_inf`` (torch's
fused Adam/AdamW, as GradScaler uses them) skips its whole update on device while the flag is
set, so from the first bad step on the weights stay those of the last good step.

The host reads the state ``lag`` steps later: with ``lag >= 1`` each step's state is copied
into pinned memory without blocking (:meth:`NonFiniteGuard.publish`) and the copy made ``lag``
steps earlier is read (:meth:`NonFiniteGuard.poll`), waiting only for that copy, which the device
has long finished: the host never waits for the device's queue to drain. The state is sticky, so
a late read loses nothing: from the first bad step on, the fused optimizer skips every update.
``lag=0`` reads it at once (the CPU, where reading costs nothing, and optimizers without
``found_inf``, which must stop before their update). Every rank reads the same all-reduced state
at the same step, so all ranks stop together.

:class:`HostCopies` is the same non-blocking read for any device scalar that the host only
wants to see eventually (the loss shown by the progress bar): it never waits.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

__all__ = ["HostCopies", "NonFiniteGuard", "NonFiniteStep", "supports_found_inf"]


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


def _start_host_copy(value: Tensor) -> tuple[Tensor, torch.cuda.Event | None]:
    """A host copy of ``value`` that does not wait: pinned + ``non_blocking`` + an event on CUDA."""
    if value.device.type != "cuda":
        return value.detach().clone(), None
    host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
    host.copy_(value.detach(), non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


class HostCopies:
    """Host reads of a device tensor that never wait: :meth:`push` starts a copy, :meth:`latest`
    is the newest copy the device has finished (None before the first). At most ``keep`` copies
    are in flight; older unfinished ones are dropped."""

    def __init__(self, keep: int = 8) -> None:
        if keep < 1:
            raise ValueError(f"HostCopies: keep must be >= 1, got {keep}")
        self._pending: deque[tuple[Tensor, torch.cuda.Event | None]] = deque(maxlen=keep)
        self._latest: Tensor | None = None

    def push(self, value: Tensor) -> None:
        self._pending.append(_start_host_copy(value))

    def latest(self) -> Tensor | None:
        while self._pending and (self._pending[0][1] is None or self._pending[0][1].query()):
            self._latest = self._pending.popleft()[0]
        return self._latest

    def clear(self) -> None:
        self._pending.clear()
        self._latest = None


class NonFiniteGuard:
    """See the module docstring. ``reduce`` combines the per-rank flag (replaceable in tests)."""

    def __init__(self, lag: int = 1, reduce: Callable[[Tensor], Tensor] = _all_ranks_max) -> None:
        self.lag = lag
        self.reduce = reduce
        self.state: Tensor | None = None
        self._pending: deque[tuple[Tensor, torch.cuda.Event | None]] = deque()

    @property
    def lag(self) -> int:
        """Steps between a state and the host's read of it (0: at once)."""
        return self._lag

    @lag.setter
    def lag(self, value: int) -> None:
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"NonFiniteGuard: lag must be an integer >= 0, got {value!r}")
        self._lag = value

    def reset(self) -> None:
        self.state = None
        self._pending.clear()

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
        """Start the host copy of the state that :meth:`poll` reads ``lag`` steps later."""
        if self.state is None or self.lag == 0:
            return
        self._pending.append(_start_host_copy(self.state))

    def poll(self, now: bool = False) -> NonFiniteStep | None:
        """The first bad step if the host knows of one: with ``now`` (or lag 0) from the current
        state (waits for the device), else from the copy :meth:`publish` started ``lag`` steps
        ago (None while fewer copies were published; waits for that copy only)."""
        if now or self.lag == 0:
            values = None if self.state is None else self.state.tolist()
        elif len(self._pending) >= self.lag:
            host, event = self._pending.popleft()
            while len(self._pending) >= self.lag:  # the lag was lowered: newer copies know more
                host, event = self._pending.popleft()
            if event is not None:
                event.synchronize()
            values = host.tolist()
        else:
            values = None
        if not values or values[0] == 0:
            return None
        return NonFiniteStep(step=int(values[1]), here=bool(values[2]), loss=float(values[3]))
