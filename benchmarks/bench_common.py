"""What the benchmark scripts share: device synchronisation and a clean slate between runs."""

from __future__ import annotations

import gc

import torch

__all__ = ["fresh", "sync"]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (nothing on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh(device: torch.device) -> None:
    """Before a measurement: collect garbage, drop compiled graphs, return cached device memory
    and reset the peak-memory counter."""
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def is_kernel(event) -> bool:
    """Whether a profiler event (or average) is device work: a kernel or a copy on the device, not
    a host operator and not a range annotated on the device timeline (``Optimizer.step#...``),
    whose time spans kernels already counted."""
    return event.device_type == torch.autograd.DeviceType.CUDA and not getattr(event, "is_user_annotation", False)
