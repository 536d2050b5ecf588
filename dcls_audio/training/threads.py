"""CPU threads of a training process.

PyTorch starts one intra-op thread per core. On the CPU accelerator the loader workers need
cores too, and on a machine that other processes also use, threads that wait for each other at
every parallel region slow training down several-fold. So CPU training takes the cores this
process may run on, less one per loader worker, and at least one; an ``OMP_NUM_THREADS`` set by
the user wins.
"""

from __future__ import annotations

import os

import torch

from ..data.datamodule import available_cores

__all__ = ["cpu_training_threads", "set_cpu_training_threads"]


def cpu_training_threads(num_workers: int, cores: int | None = None, processes: int = 1) -> int:
    """Intra-op threads of one of ``processes`` CPU training processes on this node, each next to
    ``num_workers`` loader processes."""
    cores = available_cores() if cores is None else cores
    return max(1, cores // max(1, processes) - max(0, num_workers))


def set_cpu_training_threads(num_workers: int, processes: int = 1) -> int | None:
    """Set torch's intra-op threads for CPU training; returns the count, or None where the
    user's ``OMP_NUM_THREADS`` decides."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    threads = cpu_training_threads(num_workers, processes=processes)
    torch.set_num_threads(threads)
    return threads
