"""Batches to a CUDA device on a side stream, so the copy overlaps the previous step's compute.

:class:`SideStreamCopier` copies each tensor of a batch (dicts, lists and tuples are walked;
other values pass through) with a ``non_blocking`` copy issued on a second CUDA stream of the
device. The compute stream then waits for that stream (an event, no host wait), and each copied
tensor is marked as used by the compute stream (``record_stream``), so the caching allocator
reuses its memory only once the step that read it has run. CPU tensors that are not in pinned
memory (a loader without ``pin_memory``) are first copied into pinned memory on the host (from
torch's pinned-block cache): a copy from pageable memory is staged by the driver and the host
waits for it, so every tensor, however small, goes through pinned memory. Other devices: the
tensors' ``.to(device)``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

__all__ = ["SideStreamCopier"]


class SideStreamCopier:
    """``copier(batch, device)`` -> the batch on ``device`` (see the module docstring)."""

    def __init__(self) -> None:
        self._streams: dict[torch.device, torch.cuda.Stream] = {}

    def __call__(self, batch: Any, device: torch.device | str) -> Any:
        device = torch.device(device)
        if device.type != "cuda":
            return _walk(batch, lambda t: t.to(device))
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        side = self._streams.get(device)
        if side is None:
            side = self._streams[device] = torch.cuda.Stream(device)
        compute = torch.cuda.current_stream(device)
        copied: list[Tensor] = []

        def copy(tensor: Tensor) -> Tensor:
            if tensor.device.type == "cpu" and not tensor.is_pinned():
                tensor = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True).copy_(tensor)
            out = tensor.to(device, non_blocking=True)
            copied.append(out)
            return out

        with torch.cuda.stream(side):
            moved = _walk(batch, copy)
        compute.wait_stream(side)
        for tensor in copied:
            tensor.record_stream(compute)
        return moved


def _walk(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``value`` with ``fn`` applied to every tensor inside dicts, lists and (named) tuples."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {key: _walk(item, fn) for key, item in value.items()}
    if isinstance(value, list):
        return [_walk(item, fn) for item in value]
    if isinstance(value, tuple):
        items = [_walk(item, fn) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return value
