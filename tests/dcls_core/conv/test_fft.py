"""The FFT convolution against ``F.conv`` in float64 (CPU: exact to rounding) and against float64
depthwise convolutions in float32 / bf16 / fp16 on CUDA (both implementations of its passes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dcls_core.conv.fft import conv as fft_conv
from dcls_core.conv.fft import passes as fft_passes
from dcls_core.conv.fft import sizes as fft_sizes
from dcls_core.conv.fft.conv import fft_conv_nd
from dcls_core.conv.fft.sizes import fast_fft_size
from dcls_core.conv.reference import conv_nd

from dcls_testing import TOL, check_depthwise_against_float64, rel_err


def test_fast_fft_size_is_smallest_7_smooth():
    def smooth(m):
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        return m == 1

    for n in list(range(1, 200)) + [997, 1009, 2111]:
        m = fast_fft_size(n)
        assert m >= n and smooth(m) and not any(smooth(k) for k in range(n, m))
    with pytest.raises(ValueError, match="n must be >= 1"):
        fast_fft_size(0)


def test_transform_sizes_cost_model_and_exactness(monkeypatch):
    """On CUDA an axis may grow to a cheaper 7-smooth size (64x62 + 11: 75x75 -> 81x81, since
    cuFFT's 75 costs 1.8x); any size >= the minimum is exact, checked here in float64 by
    forcing the CUDA choice on the CPU."""
    assert fft_sizes.transform_sizes([75, 73], "cpu") == [75, 75]
    assert fft_sizes.transform_sizes([75, 73], "cuda") == [81, 81]
    for minimal in ([19, 18], [43, 42], [27, 26], [75, 73], [9], [2011], [16, 16, 16]):
        chosen = fft_sizes.transform_sizes(minimal, "cuda")
        assert all(
            m <= L <= fft_sizes.MAX_GROWTH * m or L == fft_sizes.fast_fft_size(m) for m, L in zip(minimal, chosen)
        )
        assert all(fft_sizes.fast_fft_size(L) == L for L in chosen)
        smallest = [fft_sizes.fast_fft_size(m) for m in minimal]
        assert fft_sizes.modelled_cost(chosen) <= fft_sizes.modelled_cost(smallest)
    monkeypatch.setattr(
        fft_conv, "transform_sizes", lambda minimal, device_type: fft_sizes.transform_sizes(minimal, "cuda")
    )
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 64, 62, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(3, 1, 23, 23, dtype=torch.float64, generator=g, requires_grad=True)
    want = F.conv2d(x, k, padding=11, groups=3)
    got = fft_conv.fft_conv_nd(x, k, None, (1, 1), (11, 11), 3)
    dy = torch.randn(want.shape, dtype=torch.float64, generator=g)
    for a, b in zip(torch.autograd.grad(got, (x, k), dy), torch.autograd.grad(want, (x, k), dy)):
        assert rel_err(a, b) < 1e-12
    assert rel_err(got, want) < 1e-12


FFT_GRID = [
    # ndim, cin, cout, groups, kernel, padding, stride, padding_mode
    (1, 4, 6, 1, (7,), (3,), (1,), "zeros"),
    (1, 4, 4, 4, (25,), (12,), (2,), "zeros"),
    (1, 3, 3, 1, (5,), (9,), (1,), "zeros"),  # padding > kernel - 1
    (2, 4, 4, 4, (23, 23), (11, 11), (1, 1), "zeros"),  # depthwise, large kernel > input
    (2, 4, 8, 2, (5, 3), (1, 2), (2, 1), "zeros"),  # non-square, per-axis padding/stride
    (2, 4, 8, 4, (3, 7), (0, 3), (1, 1), "zeros"),  # channel multiplier
    (2, 4, 6, 2, (4, 5), (2, 2), (1, 2), "reflect"),
    (2, 2, 2, 1, (6, 6), (3, 1), (1, 1), "circular"),
    (3, 4, 4, 1, (3, 5, 2), (1, 2, 0), (1, 1, 1), "zeros"),
    (3, 4, 4, 4, (3, 3, 3), (1, 1, 1), (2, 1, 2), "replicate"),
]


@pytest.mark.parametrize("ndim,cin,cout,groups,ksize,padding,stride,mode", FFT_GRID)
def test_fft_conv_equals_conv_float64(ndim, cin, cout, groups, ksize, padding, stride, mode):
    g = torch.Generator().manual_seed(0)
    spatial = {1: (19,), 2: (9, 10), 3: (6, 7, 8)}[ndim]
    x = torch.randn(2, cin, *spatial, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(cout, cin // groups, *ksize, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(cout, dtype=torch.float64, generator=g, requires_grad=True)
    want = conv_nd(x, k, b, stride, padding, groups, mode)
    got = fft_conv_nd(x, k, b, stride, padding, groups, mode)
    assert rel_err(got, want) < 1e-12
    dy = torch.randn(want.shape, dtype=torch.float64, generator=g)
    gw = torch.autograd.grad(want, (x, k, b), dy)
    gg = torch.autograd.grad(got, (x, k, b), dy)
    for name, a, r in zip(("input", "kernel", "bias"), gg, gw):
        assert rel_err(a, r) < 1e-12, name


def test_fft_conv_float32_unbatched_and_autocast():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 30, 29, generator=g)
    k = torch.randn(8, 1, 23, 23, generator=g) * 0.05
    want = F.conv2d(x.double().unsqueeze(0), k.double(), padding=11, groups=8)[0]
    got = fft_conv_nd(x, k, None, (1, 1), (11, 11), 8)
    assert got.dtype == torch.float32 and rel_err(got, want) < TOL["fp32"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = fft_conv_nd(x, k, None, (1, 1), (11, 11), 8)
    assert low.dtype == torch.bfloat16 and rel_err(low, want) < TOL["bf16"]


def test_fft_conv_argument_errors():
    with pytest.raises(ValueError, match="do not match"):
        fft_conv_nd(torch.randn(1, 4, 8), torch.randn(4, 3, 3), None, (1,), (1,), 1)
    with pytest.raises(ValueError, match="larger than padded input"):
        fft_conv_nd(torch.randn(1, 1, 4), torch.randn(1, 1, 9), None, (1,), (0,), 1)


@pytest.mark.parametrize("groups", [1, 3])
def test_fft_conv_empty_batch_and_no_double_backward(groups):
    """An empty batch gives F.conv's empty output and zero kernel gradient; a second
    derivative raises instead of silently returning a wrong one."""
    k = torch.randn(3, 3 // groups, 5, 5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(0, 3, 8, 9, dtype=torch.float64, requires_grad=True)
    got = fft_conv_nd(x, k, None, (1, 1), (2, 2), groups)
    want = F.conv2d(x, k, None, padding=(2, 2), groups=groups)
    assert got.shape == want.shape
    (gk,) = torch.autograd.grad(got.sum(), k)
    assert torch.equal(gk, torch.zeros_like(k))
    x = torch.randn(2, 3, 8, 9, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(fft_conv_nd(x, k, None, (1, 1), (2, 2), groups).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()


@pytest.mark.parametrize("index", [1, 4, 6, 9])
def test_fft_conv_in_batch_chunks_equals_conv(monkeypatch, index):
    """One sample per chunk (forward and backward loops) gives the same result."""
    x_shape = torch.zeros(64, 96, 64, 62)
    assert (
        fft_conv._chunk_size(x_shape, torch.zeros(96, 1, 81, 41, dtype=torch.complex64)) == 32
    )  # 163 MB spectrum: 2 chunks
    assert (
        fft_conv._chunk_size(x_shape[:, :, :8, :8], torch.zeros(96, 1, 27, 14, dtype=torch.complex64)) == 64
    )  # 19 MB: one
    assert (
        fft_conv._chunk_size(
            torch.zeros(1, 96, 64, 62).expand(256, -1, -1, -1), torch.zeros(96, 1, 81, 41, dtype=torch.complex64)
        )
        == 52
    )  # 5 even
    assert fft_conv._chunk_size(x_shape, torch.zeros(96, 2, 81, 41, dtype=torch.complex64)) == 64  # mixing: one pass
    monkeypatch.setenv("DCLS_FFT_CHUNKS", "8")
    assert fft_conv._chunk_size(x_shape, torch.zeros(96, 1, 81, 41, dtype=torch.complex64)) == 8
    monkeypatch.setenv("DCLS_FFT_CHUNKS", "zero")
    with pytest.raises(ValueError, match="DCLS_FFT_CHUNKS must be a positive integer"):
        fft_conv._chunk_size(x_shape, torch.zeros(96, 1, 81, 41, dtype=torch.complex64))
    monkeypatch.delenv("DCLS_FFT_CHUNKS")
    monkeypatch.setattr(fft_conv, "FORCE_CHUNKS", 3)
    ndim, cin, cout, groups, ksize, padding, stride, mode = FFT_GRID[index]
    g = torch.Generator().manual_seed(5)
    spatial = {1: (19,), 2: (9, 10), 3: (6, 7, 8)}[ndim]
    x = torch.randn(3, cin, *spatial, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(cout, cin // groups, *ksize, dtype=torch.float64, generator=g, requires_grad=True)
    want = conv_nd(x, k, None, stride, padding, groups, mode)
    got = fft_conv_nd(x, k, None, stride, padding, groups, mode)
    assert rel_err(got, want) < 1e-12
    dy = torch.randn(want.shape, dtype=torch.float64, generator=g)
    for a, r in zip(torch.autograd.grad(got, (x, k), dy), torch.autograd.grad(want, (x, k), dy)):
        assert rel_err(a, r) < 1e-12


FFT_SHAPES = [
    # N, C, H, W, kH, kW, ph, pw
    (2, 8, 17, 19, 23, 23, 11, 11),
    (3, 4, 9, 7, 5, 9, 2, 4),
    (2, 3, 8, 7, 23, 23, 11, 11),  # kernel larger than the image
    (8, 96, 64, 62, 23, 23, 11, 11),
]


@pytest.mark.cuda
@pytest.mark.parametrize("shape", FFT_SHAPES)
@pytest.mark.parametrize("mode", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("passes", ["triton", "torch"])
def test_fft_depthwise_equals_float64_cuda(shape, mode, passes, monkeypatch):
    """Both implementations of the element-wise passes (Triton kernels, torch operations)."""
    monkeypatch.setattr(fft_passes, "FORCE_TORCH", passes == "torch")
    check_depthwise_against_float64(fft_conv_nd, shape, mode, TOL[mode])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fft_custom_ops_pass_opcheck(monkeypatch, layout):
    """The ops' fake implementations give the real outputs' shapes, dtypes and strides (what
    torch.compile relies on), forward and backward; a channels-last input gives a channels-last
    output and input gradient, as ``F.conv2d``'s. opcheck's AOT-dispatch comparison runs the
    backward's torch passes inside a compiled graph, where a lazy ``conj()`` view read as the
    plain tensor (wrong input and kernel gradients, now ``conj_physical``)."""
    x = torch.randn(2, 6, 9, 8)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    captured = []
    real = fft_conv._fft_conv
    monkeypatch.setattr(fft_conv, "_fft_conv", lambda *args: captured.append(args) or real(*args))
    y = fft_conv_nd(x, torch.randn(6, 1, 7, 5), torch.randn(6), (1, 1), (3, 2), 6)
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    (args,) = captured
    xs, g, b, *settings = args
    forward = torch.ops.dcls_core.fft_conv.default
    backward = torch.ops.dcls_core.fft_conv_backward.default
    dy = torch.randn_like(y)
    for result in (
        torch.library.opcheck(forward, (xs.requires_grad_(), g.requires_grad_(), b, *settings)),
        torch.library.opcheck(backward, (dy, xs.detach(), g.detach(), b, *settings[:-1], True, True, True)),
    ):
        assert set(result.values()) == {"SUCCESS"}, result
    # opcheck compares shapes and dtypes; the strides, which inductor takes from the fake, here
    from torch._subclasses.fake_tensor import FakeTensorMode

    real_dx = backward(dy, xs.detach(), g.detach(), None, *settings[:-1], True, False, False)[0]
    with FakeTensorMode() as mode:
        fake_y = forward(mode.from_tensor(xs), mode.from_tensor(g), mode.from_tensor(b), *settings)
        fake_dx = backward(
            mode.from_tensor(dy), mode.from_tensor(xs), mode.from_tensor(g), None, *settings[:-1], True, False, False
        )[0]
    assert fake_y.stride() == y.stride() and fake_dx.stride() == real_dx.stride()
    assert real_dx.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
