"""The fused layer path (:mod:`dcls_core.conv.fft.fused_layer`: placed construction + FFT in one
autograd node, saved kernel spectrum) on the CPU under Triton's interpreter equals construction +
``F.conv`` in float64: forward and the gradients of input, weight, positions, sigmas and bias, 1-D
and 2-D, every version, transforms smaller than the kernel, padding modes, batch chunks (see
``conftest.py``)."""

from __future__ import annotations

import pytest
import torch

from dcls_core.construction import fused as fused_construction
from dcls_core.conv.fft import conv as fft_conv
from dcls_core.conv.fft import passes
from dcls_core.conv.fft.fused_layer import fused_dcls_fft
from dcls_core.functional import dcls_conv

from dcls_testing import rel_err

TOL = 5e-6
CASES = [  # input shape, dilated size, padding, groups, padding mode, chunks
    ((3, 4, 10, 9), (7, 5), (3, 2), 4, "zeros", None),
    ((2, 4, 6, 5), (9, 9), (4, 4), 4, "zeros", 2),  # transform smaller than the kernel
    ((2, 4, 7, 8), (5, 3), (2, 1), 2, "circular", None),  # two input channels per group
    ((4, 11), (9,), (4,), 4, "zeros", None),  # unbatched 1-D
    ((3, 6, 17), (7,), (3,), 3, "reflect", 3),
]


@pytest.fixture
def construction_runs(monkeypatch) -> list:
    """Sends the FFT passes to the programs on the CPU and records the construction's launches."""
    monkeypatch.setattr(passes, "_triton_ok", lambda t: not passes.FORCE_TORCH)
    ran: list = []
    real = fused_construction._programs
    monkeypatch.setattr(fused_construction, "_programs", lambda: (ran.append(1), real())[1])
    return ran


@pytest.mark.parametrize("version", ["v0", "v1", "max", "gauss"])
@pytest.mark.parametrize("shape,dks,pad,groups,mode,chunks", CASES)
def test_fused_layer_equals_float64_reference(
    monkeypatch, construction_runs, version, shape, dks, pad, groups, mode, chunks
):
    monkeypatch.setattr(fft_conv, "FORCE_CHUNKS", chunks)
    torch.manual_seed(0)
    n = len(dks)
    cin = cout = shape[-n - 1]
    w = torch.randn(cout, cin // groups, 4, dtype=torch.float64)
    P = (torch.rand(n, cout, cin // groups, 4, dtype=torch.float64) - 0.5) * (min(dks) - 1)
    S = torch.rand(n, cout, cin // groups, 4, dtype=torch.float64) - 0.5 if version in ("max", "gauss") else None
    b = torch.randn(cout, dtype=torch.float64)
    x = torch.randn(*shape, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (x, w, P, S, b) if t is not None]
    want = dcls_conv(x, w, P, S, b, dks, (1,) * n, pad, groups, mode, version)
    dy = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, leaves, dy)
    f32 = [t.detach().float().requires_grad_() for t in leaves]
    x32, w32, P32 = f32[:3]
    S32 = f32[3] if S is not None else None
    got = fused_dcls_fft(x32, w32, P32, S32, f32[-1], dks, pad, groups, mode, version)
    grads = torch.autograd.grad(got, f32, dy.float())
    assert rel_err(got, want) < TOL
    for a, r in zip(grads, want_grads):
        assert rel_err(a, r) < TOL
    assert construction_runs, "the Triton construction did not run"
