"""The fused Triton construction against the float64 reference construction (CUDA; the same
programs run on the CPU under Triton's interpreter in ``tests/dcls_core/interpreter/``)."""

from __future__ import annotations

import pytest
import torch

import dcls_core
from dcls_core.construction.fused import construct_kernel_fused
from dcls_core.construction.reference import construct_kernel

from dcls_testing import TOL, rel_err


@pytest.mark.cuda
@pytest.mark.parametrize("version", ["v0", "v1", "max", "gauss"])
@pytest.mark.parametrize(
    "prefix,count,size",
    [
        ((96, 1), 26, (23, 23)),
        ((6, 4), 3, (7, 5)),
        ((2, 3), 40, (33, 17)),  # two learned axes
        ((8, 4), 1, (250,)),
        ((4, 2, 3, 3), 4, (23,)),  # one (Dcls1d, Dcls3_1d)
        ((8, 4), 8, (7, 7, 7)),
        ((16, 1), 16, (11, 9, 13)),  # three (Dcls3d)
    ],
)
def test_triton_construction_equals_float64(version, prefix, count, size):
    g = torch.Generator().manual_seed(4)
    w = torch.randn(*prefix, count, dtype=torch.float64, generator=g)
    n = len(size)
    P = (torch.rand(n, *prefix, count, dtype=torch.float64, generator=g) - 0.5) * (min(size) - 1.5)
    S = torch.rand(n, *prefix, count, dtype=torch.float64, generator=g) - 0.5 if version in ("max", "gauss") else None
    params = [t.requires_grad_() for t in (w, P, S) if t is not None]
    want = construct_kernel(w, P, S, size, version)
    G = torch.randn(want.shape, dtype=torch.float64, generator=g)
    want_grads = torch.autograd.grad(want, params, G)
    pc = [t.detach().float().cuda().requires_grad_() for t in params]
    got = construct_kernel_fused(pc[0], pc[1], pc[2] if S is not None else None, size, version)
    grads = torch.autograd.grad(got, pc, G.float().cuda())
    assert rel_err(got.cpu(), want.detach()) < TOL["fp32"]
    for a, r in zip(grads, want_grads):
        assert rel_err(a.cpu(), r) < TOL["fp32"]


@pytest.mark.cuda
def test_dense_construction_memory_near_kernel_size(monkeypatch):
    """Dcls2d(256, 256, 26 elements, 23x23): building the kernel and its backward need about
    the dense kernel's size, not (positions x out x in x count x kernel) as in dcls 0.1.1."""
    layer = dcls_core.Dcls2d(256, 256, kernel_count=26, dilated_kernel_size=23, padding=11).cuda()
    dense = 256 * 256 * 23 * 23 * 4
    for impl, bound in (("auto", 3.2), ("reference", 20)):
        monkeypatch.setenv("DCLS_IMPL", impl)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        kernel = layer.construct_kernel()
        torch.autograd.grad(kernel, [layer.weight, layer.P, layer.SIG], torch.ones_like(kernel))
        del kernel
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        assert peak < bound * dense, f"{impl}: peak {peak / 2**20:.0f} MiB vs dense kernel {dense / 2**20:.0f} MiB"
