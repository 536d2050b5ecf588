"""One autograd node per layer call (:mod:`dcls_core.conv.layer_node`: fused construction + the
direct or matrix path's op) on the CPU under Triton's interpreter: through ``dcls_conv`` it is
what the dispatcher runs for a training call on those paths, and it equals the same layer built
as two nodes (construction, then convolution) exactly, and the float64 reference (reference
construction + ``F.conv``) within float32 rounding: forward and the gradients of input, weight,
positions, sigmas and bias; kernels cut to the input's reach, channels_last inputs, a layer
whose positions are frozen (see ``conftest.py``)."""

from __future__ import annotations

import pytest
import torch

from dcls_core import dispatch
from dcls_core.construction import fused as fused_construction
from dcls_core.conv import direct, layer_node
from dcls_core.conv.direct import conv as direct_conv
from dcls_core.functional import dcls_conv

from dcls_testing import rel_err

TOL = 5e-6
CASES = [  # path, input shape, dilated size, padding, channels_last
    ("direct", (2, 4, 9, 11), (7, 5), (3, 2), False),
    ("direct", (2, 4, 6, 5), (13, 13), (6, 6), True),  # cut to 11x9: the input's reach
    ("matrix", (3, 4, 5, 6), (7, 7), (3, 3), True),
    ("matrix", (2, 4, 4, 3), (9, 9), (4, 4), False),  # cut to 7x5
]


@pytest.fixture
def node_runs(monkeypatch) -> list:
    """Lets the direct path and the fused construction run on CPU tensors; records the node's runs."""
    monkeypatch.setattr(direct_conv, "supports", lambda *args: True)
    monkeypatch.setattr(direct, "supports", lambda *args: True)
    real_select = dispatch.select_construct

    def select_construct(*args):  # the fused construction as on CUDA, unless the reference is forced
        if dispatch._forced["construct"] == "reference":
            return real_select(*args)
        return "triton", fused_construction.construct_kernel_fused

    monkeypatch.setattr(dispatch, "select_construct", select_construct)
    runs: list = []
    real = layer_node._ConstructAndConvolve.forward
    monkeypatch.setattr(layer_node._ConstructAndConvolve, "forward", lambda *a: (runs.append(1), real(*a))[1])
    return runs


def _leaves(shape, dks, version, channels_last):
    torch.manual_seed(0)
    c, n = shape[1], len(dks)
    x = torch.randn(*shape, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(c, 1, 4, dtype=torch.float64)
    P = (torch.rand(n, c, 1, 4, dtype=torch.float64) - 0.5) * (min(dks) - 1)
    S = torch.rand(n, c, 1, 4, dtype=torch.float64) - 0.5 if version == "gauss" else None
    b = torch.randn(c, dtype=torch.float64)
    return [t.requires_grad_() for t in (x, w, P, S, b) if t is not None]


def _run(leaves, dks, pad, version, dtype=torch.float32):
    ts = [t.detach().to(dtype).requires_grad_(t.requires_grad) for t in leaves]
    x, w, P = ts[:3]
    S = ts[3] if len(ts) == 5 else None
    y = dcls_conv(x, w, P, S, ts[-1], dks, (1,) * len(dks), pad, x.shape[1], "zeros", version)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    wanted = [t for t in ts if t.requires_grad]
    return y, torch.autograd.grad(y, wanted, dy)


@pytest.mark.parametrize("version", ["v1", "gauss"])
@pytest.mark.parametrize("path,shape,dks,pad,channels_last", CASES)
def test_one_node_equals_two_nodes_and_float64_reference(node_runs, version, path, shape, dks, pad, channels_last):
    leaves = _leaves(shape, dks, version, channels_last)
    with dispatch.forced(conv=path):
        got, got_grads = _run(leaves, dks, pad, version)
        assert node_runs, "the layer did not run as one node"
        with dispatch.forced(fused=False):
            two, two_grads = _run(leaves, dks, pad, version)
    with dispatch.forced(construct="reference", conv="reference"):
        want, want_grads = _run(leaves, dks, pad, version, torch.float64)
    assert len(node_runs) == 1  # neither forced(fused=False) nor the reference took the node
    assert torch.equal(got, two) and got.stride() == two.stride()
    for a, b, r in zip(got_grads, two_grads, want_grads):
        assert torch.equal(a, b)
        assert rel_err(a, r) < TOL
    assert rel_err(got, want) < TOL


def test_frozen_positions_get_no_gradient_and_weights_still_learn(node_runs):
    leaves = _leaves((2, 4, 6, 7), (5, 5), "gauss", False)
    leaves[2].requires_grad_(False)  # P frozen
    leaves[3].requires_grad_(False)  # SIG frozen
    with dispatch.forced(conv="direct"):
        _, grads = _run(leaves, (5, 5), (2, 2), "gauss")
    with dispatch.forced(construct="reference", conv="reference"):
        _, want = _run(leaves, (5, 5), (2, 2), "gauss", torch.float64)
    assert node_runs and len(grads) == len(want) == 3  # input, weight, bias
    for a, r in zip(grads, want):
        assert rel_err(a, r) < TOL
