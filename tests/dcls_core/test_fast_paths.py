"""The layers on the fast paths (as the dispatcher sends them) against their float64 reference
copies: the FFT on the CPU (``DCLS_IMPL=fast``), the fused construction and the FFT on CUDA, and
torch.compile.

Errors are relative by norm, ``||got - want|| / ||want||``, with one tolerance per dtype.
"""

from __future__ import annotations

import pytest
import torch

import dcls_core
from dcls_core import dispatch
from dcls_core.conv import direct, matrix

from dcls_testing import AUTOCAST, TOL, compare_to_fp64, compile_matches_eager, randomise, rel_err

LAYERS = [
    ("Dcls1d", dict(dilated_kernel_size=9, padding=4), 1, ("v0", "v1", "max", "gauss")),
    ("Dcls2d", dict(dilated_kernel_size=(7, 5), padding=(3, 1)), 2, ("v0", "v1", "max", "gauss")),
    ("Dcls3d", dict(dilated_kernel_size=5, padding=2, stride=(1, 2, 1)), 3, ("v0", "gauss")),
    ("Dcls2_1d", dict(dense_kernel_size=3, dilated_kernel_size=7, padding=(1, 3)), 2, ("v1", "gauss")),
    ("Dcls3_1d", dict(dense_kernel_size=(2, 3), dilated_kernel_size=7, padding=(0, 1, 3)), 3, ("max", "gauss")),
    ("Dcls2dK1d", dict(dilated_kernel_size=7, padding=(0, 3), flat_dim=1), 2, ("v0", "v1")),
]


SPATIAL = {1: (23,), 2: (9, 11), 3: (5, 6, 7)}


@pytest.mark.parametrize(
    "name,kwargs,dims,version,groups",
    [(n, kw, d, v, g) for n, kw, d, vs in LAYERS for v in vs for g in (1, "dw")],
)
def test_fast_path_equals_float64_reference_cpu(monkeypatch, name, kwargs, dims, version, groups):
    """``DCLS_IMPL=fast`` on the CPU (FFT convolution) against the float64 reference."""
    torch.manual_seed(0)
    cin, cout, grp = (4, 6, 2) if groups == 1 else (4, 4, 4)
    layer = randomise(getattr(dcls_core, name)(cin, cout, kernel_count=3, groups=grp, version=version, **kwargs))
    x = torch.randn(2, cin, *SPATIAL[dims])
    compare_to_fp64(monkeypatch, layer, x, "fast", TOL["fp32"])


def test_fold_equals_layer_under_fast_path(monkeypatch):
    monkeypatch.setenv("DCLS_IMPL", "fast")
    torch.manual_seed(2)
    layer = randomise(dcls_core.Dcls2d(6, 6, kernel_count=5, dilated_kernel_size=11, padding=5, groups=6))
    x = torch.randn(2, 6, 13, 12)
    conv = layer.fold()
    assert isinstance(conv, torch.nn.Conv2d)
    assert rel_err(conv(x), layer(x)) < TOL["fp32"]


@pytest.mark.parametrize("impl", ["auto", "fast"])
def test_torch_compile_matches_eager_cpu(monkeypatch, impl):
    monkeypatch.setenv("DCLS_IMPL", impl)  # fast: the FFT custom ops inside the compiled graph
    torch._dynamo.reset()
    compile_matches_eager("cpu", "aot_eager")


@pytest.mark.cuda
@pytest.mark.parametrize("version", ["v0", "v1", "max", "gauss"])
@pytest.mark.parametrize("mode", ["fp32", "bf16", "fp16"])
def test_dcls2d_depthwise_fast_equals_float64(monkeypatch, version, mode):
    """The ConvNeXt DCLS layer (depthwise 23x23, 26 elements) on the auto path with the direct
    convolution ruled out (strict float32 takes the FFT anyway) and the matrix one too (the 24x21
    input has fewer positions than the kernel has taps), every gradient."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(direct, "pays", lambda *args: False)
    monkeypatch.setattr(matrix, "pays", lambda *args: False)
    torch.manual_seed(0)
    layer = randomise(
        dcls_core.Dcls2d(32, 32, kernel_count=26, dilated_kernel_size=23, padding=11, groups=32, version=version)
    )
    x = torch.randn(8, 32, 24, 21)
    with torch.autocast("cuda", dtype=AUTOCAST.get(mode, torch.float32), enabled=mode in AUTOCAST):
        kernel = layer.cuda().construct_kernel()
        names = (
            dispatch.select_construct(layer.weight, layer.P, layer.SIG, (23, 23), version)[0],
            dispatch.select_conv(x.cuda(), kernel, (1, 1), (11, 11), 32, "zeros")[0],
        )
    assert names == ("triton", "fft")
    compare_to_fp64(monkeypatch, layer.cpu(), x, "auto", TOL[mode], AUTOCAST.get(mode), device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize(
    "name,kwargs,dims,version,groups", [(n, kw, d, v, g) for n, kw, d, vs in LAYERS for v in vs[-1:] for g in (1, "dw")]
)
def test_other_layers_fast_equal_float64_cuda(monkeypatch, name, kwargs, dims, version, groups):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    cin, cout, grp = (4, 6, 2) if groups == 1 else (4, 4, 4)
    layer = randomise(getattr(dcls_core, name)(cin, cout, kernel_count=3, groups=grp, version=version, **kwargs))
    x = torch.randn(2, cin, *SPATIAL[dims])
    compare_to_fp64(monkeypatch, layer, x, "fast", TOL["fp32"], device="cuda")


@pytest.mark.cuda
def test_torch_compile_matches_eager_cuda(monkeypatch):
    """Inductor with the fused construction and FFT custom ops (9x9 depthwise -> FFT)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setenv("DCLS_IMPL", "auto")
    torch._dynamo.reset()
    compile_matches_eager("cuda", "inductor")
