"""CPU training threads: the cores left to the process after its loader workers."""

from __future__ import annotations

import torch

from dcls_audio.training import threads


def test_threads_leave_a_core_per_loader_worker():
    assert threads.cpu_training_threads(1, cores=2) == 1
    assert threads.cpu_training_threads(0, cores=2) == 2
    assert threads.cpu_training_threads(4, cores=16) == 12
    assert threads.cpu_training_threads(8, cores=4) == 1  # never fewer than one
    assert threads.cpu_training_threads(2, cores=16, processes=2) == 6  # CPU DDP: the node's cores shared


def test_set_threads_respects_the_users_omp_setting(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert threads.set_cpu_training_threads(1) is None
        assert torch.get_num_threads() == before
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(threads, "available_cores", lambda: 3)
        assert threads.set_cpu_training_threads(1) == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
