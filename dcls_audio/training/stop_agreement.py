"""Every rank of a multi-process run stops at the same training step, with no host sync.

Lightning 2.6 under DDP broadcasts rank 0's SIGTERM flag on the device before every training
batch and reads it back with ``.item()`` (a host wait on the device stream every step), and its
SIGTERM handler runs a broadcast from inside the signal handler (a collective the other ranks do
not join at that moment). Here instead each rank's stop request is all-reduced (MAX) over a CPU
(gloo) process group: started after training batch ``n``, read after batch ``n + 1``. The
network round trip hides behind a step, no device stream is waited on, and because every rank
reads the result after the same batch, all ranks stop after the same step. A stop requested on
any rank (not only rank 0) stops them all.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = ["StopAgreement"]


class StopAgreement:
    """A lagged all-reduce of per-rank stop requests; one :meth:`step` per training batch on every rank."""

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self._flag: torch.Tensor | None = None
        self._work: Any = None

    @classmethod
    def create(cls) -> StopAgreement | None:
        """An agreement over all ranks of the initialised default process group (a collective:
        every rank calls it at the same point), or None for a single process. The reduction
        runs on a gloo group: a CPU tensor, so no device stream is involved."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return None
        group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        return cls(group)

    def step(self, requested: bool) -> bool:
        """Start the reduction of this rank's ``requested`` and return the agreed result of the
        previous call's: True means every rank stops after this batch."""
        agreed = self._finish()
        self._flag = torch.tensor([1 if requested else 0], dtype=torch.int32)
        self._work = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        return agreed

    def close(self) -> None:
        """Wait for the reduction in flight (every rank started it, so it completes)."""
        self._finish()

    def _finish(self) -> bool:
        if self._work is None:
            return False
        self._work.wait()
        self._work = None
        return bool(self._flag is not None and int(self._flag[0]) > 0)
