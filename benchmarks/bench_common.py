"""What the benchmark scripts share: device synchronisation and a clean slate between runs."""

from __future__ import annotations

import contextlib
import gc
import os

import torch

__all__ = ["env_var", "fresh", "is_kernel", "sync"]


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


@contextlib.contextmanager
def env_var(name: str, value: str | None):
    """The environment variable ``name`` set to ``value`` (None: unset) for the block."""
    saved = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved
