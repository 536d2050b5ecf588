"""Cutting a kernel to the taps that meet the input: same output and gradients, exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dcls_core import Dcls2d
from dcls_core.conv.common import crop_to_reach
from dcls_core.functional import conv_with_kernel

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def test_a_23x23_kernel_on_the_last_convnext_stage_becomes_15x13():
    kernel = torch.randn(768, 1, 23, 23)
    cut, padding = crop_to_reach(kernel, (8, 7), (1, 1), (11, 11))
    assert tuple(cut.shape) == (768, 1, 15, 13)
    assert padding == (7, 6)
    assert torch.equal(cut, kernel[:, :, 4:19, 5:18])


def test_a_kernel_that_reaches_everywhere_is_kept_whole():
    kernel = torch.randn(4, 1, 23, 23)
    cut, padding = crop_to_reach(kernel, (64, 62), (1, 1), (11, 11))
    assert cut is kernel and padding == (11, 11)


@pytest.mark.parametrize(
    "spatial,kernel_size,stride,padding",
    [
        ((8, 7), (23, 23), (1, 1), (11, 11)),
        ((5, 9), (23, 17), (1, 1), (11, 8)),
        ((6, 3), (9, 11), (2, 1), (4, 5)),
        ((7, 7), (13, 13), (3, 2), (6, 4)),
        ((4,), (21,), (1,), (10,)),
        ((3, 4, 5), (9, 9, 7), (1, 2, 1), (4, 4, 3)),
        ((2, 2), (5, 5), (1, 1), (2, 2)),
        ((9, 9), (5, 5), (1, 1), (0, 0)),
    ],
)
def test_the_cut_kernel_gives_the_same_output_and_gradients(spatial, kernel_size, stride, padding):
    torch.manual_seed(0)
    ndim = len(spatial)
    conv = CONV[ndim]
    x = torch.randn(2, 3, *spatial, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 1, *kernel_size, dtype=torch.float64, requires_grad=True)
    full = conv(x, k, None, stride, padding, 1, 3)
    cut, cut_padding = crop_to_reach(k, spatial, stride, padding)
    part = conv(x, cut, None, stride, cut_padding, 1, 3)
    assert part.shape == full.shape
    torch.testing.assert_close(part, full, rtol=0, atol=1e-12)
    dy = torch.randn_like(full)
    gx_full, gk_full = torch.autograd.grad(full, (x, k), dy)
    gx_part, gk_part = torch.autograd.grad(part, (x, k), dy)
    torch.testing.assert_close(gx_part, gx_full, rtol=0, atol=1e-12)
    torch.testing.assert_close(gk_part, gk_full, rtol=0, atol=1e-12)


def test_conv_with_kernel_cuts_and_matches_the_plain_convolution():
    torch.manual_seed(1)
    x = torch.randn(2, 6, 8, 7, dtype=torch.float64, requires_grad=True)
    k = torch.randn(6, 1, 23, 23, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    y = conv_with_kernel(x, k, b, (1, 1), (11, 11), 6)
    ref = F.conv2d(x, k, b, 1, 11, 1, 6)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    dy = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(y, (x, k, b), dy), torch.autograd.grad(ref, (x, k, b), dy)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_a_dcls_layer_on_a_small_input_keeps_its_positions_gradient():
    torch.manual_seed(2)
    layer = Dcls2d(8, 8, kernel_count=6, dilated_kernel_size=23, padding=11, groups=8).double()
    x = torch.randn(3, 8, 8, 7, dtype=torch.float64)
    y = layer(x)
    kernel = layer.construct_kernel()
    torch.testing.assert_close(y, F.conv2d(x, kernel, layer.bias, 1, 11, 1, 8), rtol=0, atol=1e-12)
    grads = torch.autograd.grad(y.square().sum(), (layer.weight, layer.P, layer.SIG))
    ref = F.conv2d(x, layer.construct_kernel(), layer.bias, 1, 11, 1, 8)
    ref_grads = torch.autograd.grad(ref.square().sum(), (layer.weight, layer.P, layer.SIG))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
