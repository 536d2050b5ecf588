"""``register_op`` runs the ops' bodies with their tensors' GPU current (Triton launches on the
current device, whatever device its tensors live on)."""

from __future__ import annotations

import contextlib

import pytest
import torch

import dcls_core
from dcls_core import _custom_op

from dcls_testing import randomise, rel_err


class _OnGpu(torch.Tensor):
    """A CPU tensor that says it lives on ``cuda:1``: the guard's decision without a second GPU."""

    @property
    def is_cuda(self) -> bool:
        return True

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 1)


@pytest.fixture
def current(monkeypatch):
    """A fake current CUDA device, starting at 0, that ``torch.cuda.device`` switches."""
    state = {"index": 0, "entered": []}

    @contextlib.contextmanager
    def device(d):
        state["entered"].append(torch.device(d).index)
        before, state["index"] = state["index"], torch.device(d).index
        try:
            yield
        finally:
            state["index"] = before

    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["index"])
    monkeypatch.setattr(torch.cuda, "device", device)
    return state


def test_guard_makes_the_first_cuda_tensors_device_current(current):
    seen = []
    body = _custom_op.on_tensor_device(lambda *args: seen.append(torch.cuda.current_device()) or len(args))
    on_gpu = torch.Tensor._make_subclass(_OnGpu, torch.zeros(2))
    assert body(None, on_gpu, 3) == 3
    assert seen == [1] and current["entered"] == [1] and current["index"] == 0


def test_guard_leaves_cpu_calls_and_the_current_device_alone(current):
    seen = []
    body = _custom_op.on_tensor_device(lambda *args: seen.append(torch.cuda.current_device()))
    body(torch.zeros(2), None, "x")
    current["index"] = 1
    body(torch.Tensor._make_subclass(_OnGpu, torch.zeros(2)))
    assert seen == [0, 1] and current["entered"] == []


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_layer_on_second_gpu_runs_there_while_first_is_current(monkeypatch):
    """A 17x17 depthwise DCLS layer (fused construction, direct or FFT conv) on ``cuda:1`` called with
    ``cuda:0`` current equals the same layer on the CPU, forward and gradients."""
    monkeypatch.setenv("DCLS_IMPL", "fast")
    torch.manual_seed(0)
    layer = randomise(dcls_core.Dcls2d(8, 8, kernel_count=5, dilated_kernel_size=17, padding=8, groups=8))
    x = torch.randn(2, 8, 20, 24)
    want = layer(x)
    want_grads = torch.autograd.grad(want.square().sum(), (layer.weight, layer.P))
    layer = layer.to("cuda:1")
    torch.cuda.set_device(0)
    got = layer(x.to("cuda:1"))
    got_grads = torch.autograd.grad(got.square().sum(), (layer.weight, layer.P))
    assert rel_err(got.cpu(), want) < 1e-4
    for g, w in zip(got_grads, want_grads):
        assert rel_err(g.cpu(), w) < 1e-4
