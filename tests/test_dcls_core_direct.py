"""The direct depthwise convolution (Triton, tensor cores) against float64 ``F.conv2d``.

The kernels run on the CPU under Triton's interpreter in CI (float32 products); ``cuda``
tests cover TF32, full float32, bf16 and fp16, the dispatcher and torch.compile on a GPU.
"""
from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F

import dcls_core
from dcls_core import direct_conv, dispatch
from dcls_testing import (
    AUTOCAST, TOL, check_depthwise_against_float64, compare_to_fp64, compile_matches_eager, float64_depthwise_case,
    randomise, rel_err, worst_error_under_interpreter,
)

# TF32 keeps 10 mantissa bits of each factor: relative errors of a few 1e-4
TOL_DIRECT = {**TOL, "tf32": 3e-3}

DIRECT_SCRIPT = """
    import torch
    import torch.nn.functional as F
    from dcls_core import direct_conv as dc
    import dcls_core.triton_direct_kernels as kernels
    dc.supports = lambda *args: True       # the interpreter runs on the CPU
    dc._MIN_GRAD_PROGRAMS = 64             # split the kernel gradient's rows in small cases too
    launched = set()
    for name in ("dw_conv2d", "dw_conv2d_kernel_grad"):
        real = getattr(kernels, name)
        class Spy:
            def __init__(self, real, name):
                self.real, self.name = real, name
            def __getitem__(self, grid):
                launched.add(self.name)
                return self.real[grid]
        setattr(kernels, name, Spy(real, name))

    cases = [  # N, C, H, W, kH, kW, pH, pW, padding mode, channels_last
        (2, 3, 9, 40, 7, 5, 3, 2, "zeros", False),     # two column blocks
        (3, 2, 5, 6, 9, 9, 4, 4, "zeros", False),      # kernel larger than the image
        (1, 2, 7, 17, 3, 23, 1, 11, "zeros", True),    # wide kernel row, channels_last input and gradient
        (2, 2, 6, 5, 5, 3, 2, 1, "circular", False),
        (2, 3, 4, 9, 3, 3, 0, 0, "zeros", False),      # no padding
        (1, 2, 4, 5, 3, 3, 3, 2, "zeros", False),      # padding beyond kernel - 1
        (5, 2, 40, 7, 5, 5, 2, 2, "zeros", False),     # 200 rows: several row blocks and splits
    ]
    for N, C, H, W, kh, kw, ph, pw, mode, cl in cases:
        x = torch.randn(N, C, H, W, dtype=torch.float64)
        k = torch.randn(C, 1, kh, kw, dtype=torch.float64)
        b = torch.randn(C, dtype=torch.float64)
        leaves = [t.requires_grad_() for t in (x, k, b)]
        xp = F.pad(x, (pw, pw, ph, ph), mode=mode) if mode != "zeros" else x
        want = F.conv2d(xp, k, b, 1, (0, 0) if mode != "zeros" else (ph, pw), 1, C)
        dy = torch.randn_like(want)
        want_grads = torch.autograd.grad(want, leaves, dy)
        x32, k32, b32 = (t.detach().float().requires_grad_() for t in leaves)
        xin = x32.to(memory_format=torch.channels_last) if cl else x32
        got = dc.direct_dw_conv2d(xin, k32, b32, (1, 1), (ph, pw), C, mode)
        g = dy.float().to(memory_format=torch.channels_last) if cl else dy.float()  # as after a permute
        grads = torch.autograd.grad(got, (x32, k32, b32), g)
        worst = max([worst, rel(got, want)] + [rel(a, r) for a, r in zip(grads, want_grads)])
    # under torch.compile the custom ops (and their registered autograd) give the eager gradients
    x, k, b = torch.randn(2, 3, 9, 20), torch.randn(3, 1, 5, 7), torch.randn(3)
    leaves = [t.requires_grad_() for t in (x, k, b)]
    loss = lambda x, k, b: dc.direct_dw_conv2d(x, k, b, (1, 1), (2, 3), 3).square().sum()
    eager = torch.autograd.grad(loss(*leaves), leaves)
    compiled = torch.autograd.grad(torch.compile(loss, backend="aot_eager", fullgraph=True)(*leaves), leaves)
    worst = max([worst] + [rel(c, e) for c, e in zip(compiled, eager)])
    x = torch.zeros(0, 3, 6, 5, requires_grad=True)   # an empty batch: empty output, zero kernel gradient
    k = torch.randn(3, 1, 5, 5, requires_grad=True)
    y = dc.direct_dw_conv2d(x, k, None, (1, 1), (2, 2), 3)
    gx, gk = torch.autograd.grad(y, (x, k), torch.zeros_like(y))
    assert y.shape == (0, 3, 6, 5) and gx.shape == x.shape and gk.shape == k.shape and not gk.any()
    x = torch.randn(2, 3, 6, 5, requires_grad=True)   # only the input gradient: no kernel-gradient launch
    launched.clear()
    y = dc.direct_dw_conv2d(x, torch.randn(3, 1, 5, 5), None, (1, 1), (2, 2), 3)
    y.sum().backward()
    assert launched == {"dw_conv2d"}, launched
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_direct_kernels_under_interpreter():
    """Forward, input and kernel gradient (and the bias gradient) of the direct kernels on the
    CPU under Triton's interpreter equal float64 F.conv2d: column and row blocks, kernels
    larger than the image, padding modes, channels_last, split kernel-gradient rows, the
    custom ops under torch.compile."""
    assert worst_error_under_interpreter(DIRECT_SCRIPT) < 2e-6


def test_direct_supports_only_what_it_computes():
    x = torch.randn(2, 8, 10, 10)
    assert not direct_conv.supports(x, (8, 1, 5, 5), (1, 1), 8)  # CPU
    with pytest.raises(ValueError, match="direct_dw_conv2d: needs a CUDA"):
        direct_conv.direct_dw_conv2d(x, torch.randn(8, 1, 5, 5), None, (1, 1), (2, 2), 8)


# -- CUDA ------------------------------------------------------------------------------------------
SHAPES = [
    # N, C, H, W, kH, kW, pH, pW
    (4, 96, 64, 62, 23, 23, 11, 11),    # ConvNeXt-T stage 1 (4 clips)
    (3, 16, 16, 15, 23, 23, 11, 11),
    (2, 8, 8, 7, 23, 23, 11, 11),       # kernel larger than the image
    (3, 4, 9, 70, 5, 9, 2, 4),          # three column blocks
]
MODES = ["fp32", "tf32", "bf16", "fp16"]


@pytest.mark.cuda
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
def test_direct_equals_float64_cuda(shape, mode, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", mode == "tf32")
    errors = check_depthwise_against_float64(direct_conv.direct_dw_conv2d, shape, "fp32" if mode == "tf32" else mode,
                                             TOL_DIRECT[mode])
    if mode == "tf32":  # the products did run in TF32: not as exact as full float32
        assert errors["output"] > TOL["fp32"], errors


@pytest.mark.cuda
def test_direct_half_inputs_and_non_contiguous_cuda(monkeypatch):
    """bf16 tensors without autocast, a channels_last input and an expanded (stride 0) output
    gradient."""
    (x, k, b), dy, want, want_grads = float64_depthwise_case(SHAPES[1])
    xc = x.to(torch.bfloat16).cuda().to(memory_format=torch.channels_last).requires_grad_()
    kc = k.to(torch.bfloat16).cuda().requires_grad_()
    got = direct_conv.direct_dw_conv2d(xc, kc, None, (1, 1), (11, 11), 16)
    assert got.dtype == torch.bfloat16
    assert rel_err(got.cpu(), want - b.reshape(-1, 1, 1)) < TOL["bf16"]
    ones = torch.ones((), device="cuda", dtype=torch.bfloat16).expand_as(got)
    gx, gk = torch.autograd.grad(got, (xc, kc), ones)
    want_gx, want_gk = torch.autograd.grad(
        F.conv2d(x.requires_grad_(), k.requires_grad_(), None, padding=11, groups=16), (x, k), torch.ones_like(want))
    assert rel_err(gx.cpu(), want_gx) < TOL["bf16"] and rel_err(gk.cpu(), want_gk) < TOL["bf16"]


@pytest.mark.cuda
@pytest.mark.parametrize("version", ["v0", "gauss"])
@pytest.mark.parametrize("mode", ["tf32", "bf16", "fp16"])
def test_dcls2d_on_direct_path_equals_float64_cuda(monkeypatch, version, mode):
    """The ConvNeXt DCLS layer (depthwise 23x23, 26 elements) goes to the Triton construction +
    the direct convolution on the auto path and equals the float64 reference, every gradient."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", mode == "tf32")
    torch.manual_seed(0)
    layer = randomise(dcls_core.Dcls2d(32, 32, kernel_count=26, dilated_kernel_size=23, padding=11, groups=32, version=version))
    x = torch.randn(8, 32, 24, 21)
    with torch.autocast("cuda", dtype=AUTOCAST.get(mode, torch.float32), enabled=mode in AUTOCAST):
        lc = copy.deepcopy(layer).cuda()
        assert dispatch.select_conv(x.cuda(), lc.construct_kernel(), (1, 1), (11, 11), 32, "zeros")[0] == "direct"
        assert not dispatch.select_fused(x.cuda(), lc.weight, lc.P, lc.SIG, (23, 23), (1, 1), (11, 11), "zeros", version)
    compare_to_fp64(monkeypatch, layer, x, "auto", TOL_DIRECT[mode], AUTOCAST.get(mode), device="cuda")


@pytest.mark.cuda
def test_dispatcher_direct_rule_cuda(monkeypatch):
    """Direct for large depthwise 2-D kernels where the tensor cores may be used (TF32 allowed,
    or half precision); the FFT for strict float32; neither for strides or channel mixing."""
    monkeypatch.setenv("DCLS_IMPL", "auto")
    x = torch.randn(8, 96, 64, 62, device="cuda")
    k = torch.randn(96, 1, 23, 23, device="cuda")

    def conv(inp=x, kernel=k, stride=(1, 1), groups=96):
        return dispatch.select_conv(inp, kernel, stride, (11, 11), groups, "zeros")[0]

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert conv() == "direct"
    assert conv(stride=(2, 2)) == "reference"
    assert conv(kernel=torch.randn(96, 96, 23, 23, device="cuda"), groups=1) == "fft"
    assert conv(inp=x.double(), kernel=k.double()) == "fft"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert conv() == "fft"
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert conv() == "direct"
    with dispatch.forced(conv="direct"):
        assert conv() == "direct"
        assert conv(stride=(2, 2)) == "reference"   # forced where it does not apply: the reference
    monkeypatch.setenv("DCLS_IMPL", "fast")
    assert conv() == "fft"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert conv() == "direct"


@pytest.mark.cuda
def test_torch_compile_direct_matches_eager_cuda(monkeypatch):
    """Inductor with the direct convolution's custom ops (9x9 depthwise; strict float32, so that
    the compiled 1x1 convolution matches cuDNN's)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setenv("DCLS_IMPL", "auto")
    torch._dynamo.reset()
    with dispatch.forced(conv="direct"):
        x = torch.randn(4, 8, 48, 64, device="cuda")
        assert dispatch.select_conv(x, torch.randn(8, 1, 9, 9, device="cuda"), (1, 1), (4, 4), 8, "zeros")[0] == "direct"
        compile_matches_eager("cuda", "inductor")
