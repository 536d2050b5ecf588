"""The direct depthwise convolution (Triton, tensor cores) against float64 ``F.conv2d``.

``cuda`` tests cover TF32, full float32, bf16 and fp16, the layer on the direct path and
torch.compile on a GPU; its programs run on the CPU under Triton's interpreter in
``tests/dcls_core/interpreter/test_direct_programs.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import dcls_core
from dcls_core import dispatch
from dcls_core.conv import direct, matrix

from dcls_testing import (
    AUTOCAST,
    TOL,
    check_depthwise_against_float64,
    compare_to_fp64,
    compile_matches_eager,
    float64_depthwise_case,
    randomise,
    rel_err,
)

# TF32 keeps 10 mantissa bits of each factor: relative errors of a few 1e-4
TOL_DIRECT = {**TOL, "tf32": 3e-3}


def test_direct_supports_only_what_it_computes():
    x = torch.randn(2, 8, 10, 10)
    assert not direct.supports(x, (8, 1, 5, 5), (1, 1), 8)  # CPU
    with pytest.raises(ValueError, match="direct_dw_conv2d: needs a CUDA"):
        direct.direct_dw_conv2d(x, torch.randn(8, 1, 5, 5), None, (1, 1), (2, 2), 8)


def test_direct_supports_at_most_max_channels(monkeypatch):
    """The forward launches one program column per channel: CUDA allows 65535."""
    from dcls_core.conv.direct import conv as direct_conv

    monkeypatch.setattr(direct_conv, "triton_available", lambda: True)
    limit = direct.MAX_CHANNELS

    class OnCuda:  # what supports() reads of an input, without a GPU
        def __init__(self, channels):
            self.shape, self.dtype, self.is_cuda = (1, channels, 4, 4), torch.float32, True

        def dim(self):
            return 4

    assert direct.supports(OnCuda(limit), (limit, 1, 5, 5), (1, 1), limit)
    assert not direct.supports(OnCuda(limit + 1), (limit + 1, 1, 5, 5), (1, 1), limit + 1)


SHAPES = [
    # N, C, H, W, kH, kW, pH, pW
    (4, 96, 64, 62, 23, 23, 11, 11),  # ConvNeXt-T stage 1 (4 clips)
    (3, 16, 16, 15, 23, 23, 11, 11),
    (2, 8, 8, 7, 23, 23, 11, 11),  # kernel larger than the image
    (3, 4, 9, 70, 5, 9, 2, 4),  # three column blocks
]


MODES = ["fp32", "tf32", "bf16", "fp16"]


@pytest.mark.cuda
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
def test_direct_equals_float64_cuda(shape, mode, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", mode == "tf32")
    errors = check_depthwise_against_float64(
        direct.direct_dw_conv2d, shape, "fp32" if mode == "tf32" else mode, TOL_DIRECT[mode]
    )
    if mode == "tf32":  # the products did run in TF32: not as exact as full float32
        assert errors["output"] > TOL["fp32"], errors


@pytest.mark.cuda
def test_direct_half_inputs_and_non_contiguous_cuda(monkeypatch):
    """bf16 tensors without autocast, a channels_last input and an expanded (stride 0) output
    gradient."""
    (x, k, b), dy, want, want_grads = float64_depthwise_case(SHAPES[1])
    xc = x.to(torch.bfloat16).cuda().to(memory_format=torch.channels_last).requires_grad_()
    kc = k.to(torch.bfloat16).cuda().requires_grad_()
    got = direct.direct_dw_conv2d(xc, kc, None, (1, 1), (11, 11), 16)
    assert got.dtype == torch.bfloat16
    assert rel_err(got.cpu(), want - b.reshape(-1, 1, 1)) < TOL["bf16"]
    ones = torch.ones((), device="cuda", dtype=torch.bfloat16).expand_as(got)
    gx, gk = torch.autograd.grad(got, (xc, kc), ones)
    want_gx, want_gk = torch.autograd.grad(
        F.conv2d(x.requires_grad_(), k.requires_grad_(), None, padding=11, groups=16), (x, k), torch.ones_like(want)
    )
    assert rel_err(gx.cpu(), want_gx) < TOL["bf16"] and rel_err(gk.cpu(), want_gk) < TOL["bf16"]


@pytest.mark.cuda
@pytest.mark.parametrize("version", ["v0", "gauss"])
@pytest.mark.parametrize("mode", ["tf32", "bf16", "fp16"])
def test_dcls2d_on_direct_path_equals_float64_cuda(monkeypatch, version, mode):
    """The ConvNeXt DCLS layer (depthwise 23x23, 26 elements) goes to the Triton construction +
    the direct convolution on the auto path and equals the float64 reference, every gradient
    (the matrix path, which the rules give this small 24x21 input, ruled out)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", mode == "tf32")
    monkeypatch.setattr(matrix, "pays", lambda *args: False)
    torch.manual_seed(0)
    layer = randomise(
        dcls_core.Dcls2d(32, 32, kernel_count=26, dilated_kernel_size=23, padding=11, groups=32, version=version)
    )
    x = torch.randn(8, 32, 24, 21)
    with torch.autocast("cuda", dtype=AUTOCAST.get(mode, torch.float32), enabled=mode in AUTOCAST):
        lc = copy.deepcopy(layer).cuda()
        assert dispatch.select_conv(x.cuda(), lc.construct_kernel(), (1, 1), (11, 11), 32, "zeros")[0] == "direct"
        assert not dispatch.select_fused(
            x.cuda(), lc.weight, lc.P, lc.SIG, (23, 23), (1, 1), (11, 11), "zeros", version
        )
    compare_to_fp64(monkeypatch, layer, x, "auto", TOL_DIRECT[mode], AUTOCAST.get(mode), device="cuda")


@pytest.mark.cuda
def test_torch_compile_direct_matches_eager_cuda(monkeypatch):
    """Inductor with the direct convolution's custom ops (9x9 depthwise; strict float32, so that
    the compiled 1x1 convolution matches cuDNN's)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setenv("DCLS_IMPL", "auto")
    torch._dynamo.reset()
    with dispatch.forced(conv="direct"):
        x = torch.randn(4, 8, 48, 64, device="cuda")
        assert (
            dispatch.select_conv(x, torch.randn(8, 1, 9, 9, device="cuda"), (1, 1), (4, 4), 8, "zeros")[0] == "direct"
        )
        compile_matches_eager("cuda", "inductor")
