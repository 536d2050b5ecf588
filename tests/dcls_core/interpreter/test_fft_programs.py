"""The FFT convolution's GPU programs (:mod:`dcls_core.conv.fft.programs`: pad+cast, crop+cast+bias,
spectrum product, fused depthwise backward) on the CPU under Triton's interpreter: each equals its
torch implementation in :mod:`dcls_core.conv.fft.passes` and is checked to have run; the whole
depthwise convolution through them equals ``F.conv2d`` in float64 (see ``conftest.py``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dcls_core.conv.fft import passes
from dcls_core.conv.fft.conv import fft_conv_nd

from dcls_testing import record_programs, rel_err

TOL = 2e-6


@pytest.fixture
def launched(monkeypatch) -> set:
    """Sends the passes to the programs on the CPU and records which programs they launch."""
    monkeypatch.setattr(passes, "_triton_ok", lambda t: not passes.FORCE_TORCH)
    return record_programs(monkeypatch, passes)


def test_pad_cast_any_strides_and_dtype(launched):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 9, 13).to(torch.bfloat16).transpose(2, 3)  # strided, bf16
    got = passes.padded(x, (17, 12), torch.float32)
    with passes.torch_only():
        want = passes.padded(x, (17, 12), torch.float32)
    assert rel_err(got, want) < TOL
    x1 = torch.randn(2, 4, 11)
    got = passes.padded(x1, (16,), torch.float32)
    with passes.torch_only():
        assert rel_err(got, passes.padded(x1, (16,), torch.float32)) < TOL
    assert launched == {"pad_cast"}


def test_pad_cast_reads_channels_last_by_channel_blocks(launched):
    """A channels-last input (40 channels: one full block of 32 and a part) is read by the
    channels-last program and equals the torch padding, zero rows and columns included."""
    torch.manual_seed(0)
    x = torch.randn(2, 40, 9, 13).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    assert passes.channels_last(x) and not passes.channels_last(x.contiguous())
    got = passes.padded(x, (12, 40), torch.float32)
    assert got.is_contiguous() and got.shape == (2, 40, 12, 40)
    with passes.torch_only():
        want = passes.padded(x, (12, 40), torch.float32)
    assert torch.equal(got, want)
    assert launched == {"pad_cast_cl"}


@pytest.mark.parametrize("with_bias", [False, True])
def test_crop_cast_writes_channels_last_by_channel_blocks(launched, with_bias):
    torch.manual_seed(0)
    full = torch.randn(2, 40, 12, 40)
    bias = torch.randn(40) if with_bias else None
    got = torch.full((2, 40, 9, 35), float("nan"), dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    want = torch.empty(2, 40, 9, 35, dtype=torch.float16)
    passes.crop_into(got, full, bias)
    with passes.torch_only():
        passes.crop_into(want, full, bias)
    assert not got.isnan().any() and rel_err(got, want) < TOL  # every element written
    assert launched == {"crop_cast_cl"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_crop_cast_with_and_without_bias(launched, dtype, with_bias):
    torch.manual_seed(0)
    full = torch.randn(3, 5, 17, 12)
    bias = torch.randn(5) if with_bias else None
    got = torch.empty(3, 5, 13, 9, dtype=dtype)
    want = torch.empty_like(got)
    passes.crop_into(got, full, bias)
    with passes.torch_only():
        passes.crop_into(want, full, bias)
    assert rel_err(got, want) < TOL
    assert launched == {"crop_cast"}


def test_spectral_mul(launched):
    torch.manual_seed(0)
    a = torch.randn(4, 5, 6, 7, dtype=torch.complex64)
    g = torch.randn(5, 6, 7, dtype=torch.complex64)
    got = passes.spectral_mul_(a.clone(), g)
    with passes.torch_only():
        want = passes.spectral_mul_(a.clone(), g)
    assert rel_err(torch.view_as_real(got), torch.view_as_real(want)) < TOL
    assert launched == {"spectral_mul"}


@pytest.mark.parametrize(
    "need_x,need_g,accumulate,scale",
    [
        (True, True, True, 1.0),
        (True, False, True, 1.0),
        (False, True, True, 0.3),
        (True, True, False, 0.25),
    ],
)
def test_backward_mix(launched, need_x, need_g, accumulate, scale):
    torch.manual_seed(0)
    a = torch.randn(4, 5, 6, 7, dtype=torch.complex64)
    xf = torch.randn(4, 5, 6, 7, dtype=torch.complex64)
    gf = torch.randn(5, 1, 6, 7, dtype=torch.complex64)
    dg1 = torch.randn(5, 1, 6, 7, dtype=torch.complex64)
    dg2 = dg1.clone()
    d1 = passes.backward_mix_(
        a.clone(), xf if need_g else None, gf, dg1 if need_g else None, need_x, need_g, accumulate, scale
    )
    with passes.torch_only():
        d2 = passes.backward_mix_(
            a.clone(), xf if need_g else None, gf, dg2 if need_g else None, need_x, need_g, accumulate, scale
        )
    assert rel_err(torch.view_as_real(d1), torch.view_as_real(d2)) < TOL
    assert rel_err(torch.view_as_real(dg1), torch.view_as_real(dg2)) < TOL
    assert launched == {"backward_mix"}


def test_backward_mix_without_accumulate_does_not_read_the_old_value(launched):
    torch.manual_seed(0)
    a = torch.randn(4, 5, 6, 7, dtype=torch.complex64)
    xf = torch.randn(4, 5, 6, 7, dtype=torch.complex64)
    gf = torch.randn(5, 1, 6, 7, dtype=torch.complex64)
    dg1 = torch.randn(5, 1, 6, 7, dtype=torch.complex64)
    passes.backward_mix_(a.clone(), xf, gf, dg1, True, True, False, 0.5)
    dg2 = torch.full_like(dg1, float("nan"))
    passes.backward_mix_(a.clone(), xf, gf, dg2, True, True, False, 0.5)
    assert rel_err(torch.view_as_real(dg2), torch.view_as_real(dg1)) < TOL


def test_depthwise_convolution_through_the_programs_equals_float64(launched):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 10, 9, dtype=torch.float64)
    k = torch.randn(4, 1, 7, 5, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    xr, kr, br = (t.clone().requires_grad_() for t in (x, k, b))
    want = F.conv2d(xr, kr, br, padding=(3, 2), groups=4)
    dy = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, (xr, kr, br), dy)
    x32, k32, b32 = (t.float().requires_grad_() for t in (x, k, b))
    got = fft_conv_nd(x32, k32, b32, (1, 1), (3, 2), 4)
    grads = torch.autograd.grad(got, (x32, k32, b32), dy.float())
    assert rel_err(got, want) < TOL
    for name, a, r in zip(("input", "kernel", "bias"), grads, want_grads):
        assert rel_err(a, r) < TOL, name
    assert launched == {"pad_cast", "crop_cast", "spectral_mul", "backward_mix"}


def test_channels_last_convolution_keeps_its_layout_and_equals_float64(launched):
    """A channels-last input gives a channels-last output and input gradient (as ``F.conv2d``),
    through the channels-last pad and crop programs, and the float64 result."""
    torch.manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(2, 36, 10, 9, dtype=torch.float64).contiguous(memory_format=cl)
    k = torch.randn(36, 1, 7, 5, dtype=torch.float64)
    b = torch.randn(36, dtype=torch.float64)
    xr, kr, br = (t.clone().requires_grad_() for t in (x, k, b))
    want = F.conv2d(xr, kr, br, padding=(3, 2), groups=36)
    dy = torch.randn_like(want).contiguous(memory_format=cl)
    want_grads = torch.autograd.grad(want, (xr, kr, br), dy)
    x32 = x.float().contiguous(memory_format=cl).requires_grad_()
    k32, b32 = (t.float().requires_grad_() for t in (k, b))
    got = fft_conv_nd(x32, k32, b32, (1, 1), (3, 2), 36)
    assert got.is_contiguous(memory_format=cl) and not got.is_contiguous()
    grads = torch.autograd.grad(got, (x32, k32, b32), dy.float())
    assert grads[0].is_contiguous(memory_format=cl)
    assert rel_err(got, want) < TOL
    for name, a, r in zip(("input", "kernel", "bias"), grads, want_grads):
        assert rel_err(a, r) < TOL, name
    assert launched == {"pad_cast_cl", "crop_cast_cl", "spectral_mul", "backward_mix"}
