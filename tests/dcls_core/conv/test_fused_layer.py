"""The fused layer path (placed construction + FFT in one autograd node) against the float64
reference (CUDA; on the CPU under Triton's interpreter in ``tests/dcls_core/interpreter/``)."""

from __future__ import annotations

import copy

import pytest
import torch

import dcls_core
from dcls_core import dispatch
from dcls_core.conv import direct, matrix

from dcls_testing import AUTOCAST, TOL, compare_to_fp64, randomise


@pytest.mark.cuda
@pytest.mark.parametrize("version", ["v0", "gauss"])
@pytest.mark.parametrize("mode", ["fp32", "bf16"])
@pytest.mark.parametrize(
    "name,channels,spatial,impl",
    [
        ("Dcls2d", 32, (24, 21), "auto"),
        ("Dcls2d", 16, (6, 5), "fast"),  # transform smaller than the 23x23 kernel (taps share slots)
        ("Dcls1d", 16, (40,), "fast"),
    ],
)
def test_fused_layer_equals_float64_cuda(monkeypatch, version, mode, name, channels, spatial, impl):
    """The fused layer path (placed construction + FFT in one autograd node) is selected (the
    direct and matrix convolutions ruled out) and equals the float64 reference, every gradient."""
    monkeypatch.setattr(direct, "pays", lambda *args: False)
    monkeypatch.setattr(matrix, "pays", lambda *args: False)
    torch.manual_seed(0)
    ndim = len(spatial)
    layer = randomise(
        getattr(dcls_core, name)(
            channels, channels, kernel_count=26, dilated_kernel_size=23, padding=11, groups=channels, version=version
        )
    )
    x = torch.randn(8, channels, *spatial)
    monkeypatch.setenv("DCLS_IMPL", impl)
    lc = copy.deepcopy(layer).cuda()
    assert dispatch.select_fused(
        x.cuda(), lc.weight, lc.P, lc.SIG, (23,) * ndim, (1,) * ndim, (11,) * ndim, "zeros", version
    )
    compare_to_fp64(monkeypatch, layer, x, impl, TOL[mode], AUTOCAST.get(mode), device="cuda")
