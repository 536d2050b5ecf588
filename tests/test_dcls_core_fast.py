"""dcls_core fast paths against the float64 reference: FFT convolution, fused Triton
construction, dispatcher, kernel cache, torch.compile.

Errors are relative by norm, ``||got - want|| / ||want||``, against a float64 reference, with
one tolerance per dtype. CPU tests (FFT path, dispatcher, fold, cache, compile, and the
Triton kernels under Triton's interpreter) run in CI; ``cuda`` tests run on a GPU.
"""
from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F

import dcls_core
from dcls_core import dispatch
from dcls_core.fft_conv import fft_conv_nd
from dcls_core.fft_sizes import fast_fft_size
from dcls_core.functional import conv_nd
from dcls_core.kernel import construct_kernel
from dcls_testing import (
    AUTOCAST, TOL, check_depthwise_against_float64, compare_to_fp64, compile_matches_eager, randomise,
    rel_err, worst_error_under_interpreter,
)


# -- FFT convolution (CPU, float64 exact) ----------------------------------------------------
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
    from dcls_core import fft_conv, fft_sizes

    assert fft_sizes.transform_sizes([75, 73], "cpu") == [75, 75]
    assert fft_sizes.transform_sizes([75, 73], "cuda") == [81, 81]
    for minimal in ([19, 18], [43, 42], [27, 26], [75, 73], [9], [2011], [16, 16, 16]):
        chosen = fft_sizes.transform_sizes(minimal, "cuda")
        assert all(m <= L <= fft_sizes.MAX_GROWTH * m or L == fft_sizes.fast_fft_size(m) for m, L in zip(minimal, chosen))
        assert all(fft_sizes.fast_fft_size(L) == L for L in chosen)
        smallest = [fft_sizes.fast_fft_size(m) for m in minimal]
        assert fft_sizes.modelled_cost(chosen) <= fft_sizes.modelled_cost(smallest)
    monkeypatch.setattr(fft_conv, "transform_sizes", lambda minimal, device_type: fft_sizes.transform_sizes(minimal, "cuda"))
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
    (1, 3, 3, 1, (5,), (9,), (1,), "zeros"),            # padding > kernel - 1
    (2, 4, 4, 4, (23, 23), (11, 11), (1, 1), "zeros"),  # depthwise, large kernel > input
    (2, 4, 8, 2, (5, 3), (1, 2), (2, 1), "zeros"),      # non-square, per-axis padding/stride
    (2, 4, 8, 4, (3, 7), (0, 3), (1, 1), "zeros"),      # channel multiplier
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
    from dcls_core.fft_conv import _chunk_size

    x_shape = torch.zeros(64, 96, 64, 62)
    assert _chunk_size(x_shape, torch.zeros(96, 1, 81, 41, dtype=torch.complex64)) == 32  # 163 MB spectrum: 2 chunks
    assert _chunk_size(x_shape[:, :, :8, :8], torch.zeros(96, 1, 27, 14, dtype=torch.complex64)) == 64  # 19 MB: one
    assert _chunk_size(torch.zeros(1, 96, 64, 62).expand(256, -1, -1, -1), torch.zeros(96, 1, 81, 41, dtype=torch.complex64)) == 52  # 5 even
    assert _chunk_size(x_shape, torch.zeros(96, 2, 81, 41, dtype=torch.complex64)) == 64  # mixing: one pass
    monkeypatch.setenv("DCLS_FFT_CHUNKS", "8")
    assert _chunk_size(x_shape, torch.zeros(96, 1, 81, 41, dtype=torch.complex64)) == 8
    monkeypatch.setenv("DCLS_FFT_CHUNKS", "zero")
    with pytest.raises(ValueError, match="DCLS_FFT_CHUNKS must be a positive integer"):
        _chunk_size(x_shape, torch.zeros(96, 1, 81, 41, dtype=torch.complex64))
    monkeypatch.delenv("DCLS_FFT_CHUNKS")
    from dcls_core import fft_conv

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


# -- dispatcher ---------------------------------------------------------------------------------
def test_dispatcher_choices_on_cpu(monkeypatch):
    x = torch.randn(2, 4, 16, 16)
    k = torch.randn(4, 1, 23, 23)
    w, P = torch.randn(4, 1, 3), torch.randn(2, 4, 1, 3)
    for impl, conv in (("auto", "reference"), ("reference", "reference"), ("fast", "fft")):
        monkeypatch.setenv("DCLS_IMPL", impl)
        assert dispatch.select_conv(x, k, (1, 1), (11, 11), 4, "zeros")[0] == conv
        assert dispatch.select_construct(w, P, None, (5, 5), "v1")[0] == "reference"  # Triton needs CUDA
        assert not dispatch.select_fused(x, w, P, None, (5, 5), (1, 1), (2, 2), "zeros", "v1")
    monkeypatch.setenv("DCLS_IMPL", "reference")
    with dispatch.forced(conv="fft"):
        assert dispatch.select_conv(x, k, (1, 1), (11, 11), 4, "zeros")[0] == "fft"
    assert dispatch.select_conv(x, k, (1, 1), (11, 11), 4, "zeros")[0] == "reference"
    with dispatch.forced(conv="fft"), dispatch.forced(construct="reference"):  # nested: the outer choice stays
        assert dispatch.select_conv(x, k, (1, 1), (11, 11), 4, "zeros")[0] == "fft"
    with pytest.raises(ValueError, match="conv must be one of"):
        with dispatch.forced(conv="winograd"):
            pass


def test_conv_environment_variable(monkeypatch):
    """DCLS_CONV picks the convolution over DCLS_IMPL; forced() blocks win over it; where a direct
    convolution does not apply (the CPU) the DCLS_IMPL / auto rules choose; bad values are named."""
    x = torch.randn(2, 4, 16, 16)
    k = torch.randn(4, 1, 23, 23)

    def conv():
        return dispatch.select_conv(x, k, (1, 1), (11, 11), 4, "zeros")[0]

    monkeypatch.setenv("DCLS_IMPL", "reference")
    monkeypatch.setenv("DCLS_CONV", "fft")
    assert conv() == "fft"
    with dispatch.forced(conv="reference"):
        assert conv() == "reference"
    monkeypatch.setenv("DCLS_CONV", "direct")
    assert conv() == "reference"
    monkeypatch.setenv("DCLS_CONV", "auto")
    assert conv() == "reference"
    monkeypatch.setenv("DCLS_IMPL", "fast")
    assert conv() == "fft"
    monkeypatch.setenv("DCLS_CONV", "direct")   # does not apply on the CPU: the auto rules choose
    assert conv() == "fft"
    monkeypatch.setenv("DCLS_CONV", "winograd")
    with pytest.raises(ValueError, match="DCLS_CONV must be one of"):
        conv()


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


# -- kernel cache ---------------------------------------------------------------------------------
def _fresh_output(layer, x):
    kernel = construct_kernel(layer.weight, layer.P, layer.SIG, layer.dilated_kernel_size, layer.version)
    return conv_nd(x, kernel, layer.bias, layer.stride, layer.padding, layer.groups, layer.padding_mode)


def test_eval_no_grad_builds_kernel_once_and_rebuilds_after_optimizer_step():
    torch.manual_seed(0)
    layer = randomise(dcls_core.Dcls2d(4, 4, kernel_count=3, dilated_kernel_size=7, padding=3, groups=4))
    x = torch.randn(2, 4, 10, 10)
    cache = layer._kernel_cache
    layer.eval()
    with torch.no_grad():
        first = layer(x)
        for _ in range(3):
            assert torch.equal(layer(x), first)
    assert cache.builds == 1
    with torch.no_grad():
        assert rel_err(first, _fresh_output(layer, x)) < 1e-6

    # a training step changes every parameter in place: the cache must not serve the old kernel
    layer.train()
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    loss = layer(x).square().mean()
    loss.backward()
    opt.step()
    assert cache.builds == 1  # training mode never uses the cache
    layer.eval()
    with torch.no_grad():
        after = layer(x)
        assert cache.builds == 2
        assert rel_err(after, _fresh_output(layer, x)) < 1e-6
        assert rel_err(after, first) > 1e-3

    # only P changes (in place, as clamp_parameters does), then a state_dict load
    with torch.no_grad():
        layer.P.mul_(0.5)
        assert rel_err(layer(x), _fresh_output(layer, x)) < 1e-6
        assert cache.builds == 3
        other = randomise(dcls_core.Dcls2d(4, 4, kernel_count=3, dilated_kernel_size=7, padding=3, groups=4), seed=5)
        layer.load_state_dict(other.state_dict())
        assert rel_err(layer(x), _fresh_output(other, x)) < 1e-6
        assert cache.builds == 4


def test_cache_not_used_with_grad_or_in_training_and_follows_dtype():
    torch.manual_seed(0)
    layer = dcls_core.Dcls1d(3, 3, kernel_count=2, dilated_kernel_size=5, padding=2).eval()
    x = torch.randn(2, 3, 12)
    out = layer(x)  # eval but grad enabled: gradients must flow, no cache
    out.sum().backward()
    assert layer.P.grad is not None and layer._kernel_cache.builds == 0
    layer.train()
    with torch.no_grad():
        layer(x)
    assert layer._kernel_cache.builds == 0
    layer.eval()
    with torch.no_grad():
        layer(x)
        layer.double()
        out64 = layer(x.double())
    assert out64.dtype == torch.float64 and layer._kernel_cache.builds == 2


def test_shared_positions_invalidate_every_layer():
    """Layers that share ``P``/``SIG`` (as the DCLS backbones do) all see an update."""
    torch.manual_seed(0)
    a = dcls_core.Dcls2d(4, 4, kernel_count=3, dilated_kernel_size=5, padding=2, groups=4).eval()
    b = dcls_core.Dcls2d(4, 4, kernel_count=3, dilated_kernel_size=5, padding=2, groups=4).eval()
    b.P, b.SIG = a.P, a.SIG
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        a(x), b(x)
        a.P.add_(0.3)
        assert rel_err(b(x), _fresh_output(b, x)) < 1e-6
    assert b._kernel_cache.builds == 2


# -- torch.compile ---------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["auto", "fast"])
def test_torch_compile_matches_eager_cpu(monkeypatch, impl):
    monkeypatch.setenv("DCLS_IMPL", impl)  # fast: the FFT custom ops inside the compiled graph
    torch._dynamo.reset()
    compile_matches_eager("cpu", "aot_eager")


# -- Triton kernels under Triton's interpreter (CPU) -------------------------------------------
CONSTRUCTION_SCRIPT = """
    import torch
    from dcls_core import triton_construct as tc
    from dcls_core.kernel import construct_kernel

    torch.manual_seed(0)
    worst = 0.0
    for version in ("v0", "v1", "max", "gauss"):
        for prefix, sizes in (((3, 2), (7, 6)), ((2, 2, 3), (9,)), ((3, 2), (5, 7, 6)), ((2, 1), (9, 4, 17))):
            n = len(sizes)
            w = torch.randn(*prefix, 5, dtype=torch.float64)
            P = (torch.rand(n, *prefix, 5, dtype=torch.float64) - 0.5) * (min(sizes) - 1)
            S = torch.rand(n, *prefix, 5, dtype=torch.float64) - 0.5 if version in ("max", "gauss") else None
            params = [t.requires_grad_() for t in (w, P, S) if t is not None]
            want = construct_kernel(w, P, S, sizes, version)
            G = torch.randn_like(want)
            gw = torch.autograd.grad(want, params, G)
            pf = [t.detach().float() for t in params]
            S32 = pf[2] if S is not None else None
            got = tc.launch_forward(pf[0], pf[1], S32, sizes, version)
            gg = [t for t in tc.launch_backward(G.float(), pf[0], pf[1], S32, sizes, version) if t is not None]
            worst = max([worst, rel(got, want.detach())] + [rel(a, r) for a, r in zip(gg, gw)])
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_construction_under_interpreter():
    """The fused construction kernels (1 and 2 learned axes, every version, forward and
    backward), run on the CPU by Triton's interpreter against the float64 reference."""
    assert worst_error_under_interpreter(CONSTRUCTION_SCRIPT) < 2e-6


SPECTRAL_SCRIPT = """
    import torch
    from dcls_core import spectral_ops as so
    from dcls_core.fft_conv import fft_conv_nd
    import dcls_core.triton_spectral_kernels as kernels
    so._triton_ok = lambda t: not so.FORCE_TORCH   # the interpreter runs on the CPU
    launched = set()

    class _Counting:  # which kernels the Triton side really ran
        def __getattr__(self, name):
            launched.add(name)
            return getattr(kernels, name)

    so._kernels = _Counting

    torch.manual_seed(0)
    worst = 0.0
    # the passes one by one: any strides and dtypes in, 1-D and 2-D planes
    x = torch.randn(3, 5, 9, 13).to(torch.bfloat16).transpose(2, 3)          # strided, bf16
    got = so.padded(x, (17, 12), torch.float32)
    with so.torch_only():
        want = so.padded(x, (17, 12), torch.float32)
    worst = max(worst, rel(got, want))
    x1 = torch.randn(2, 4, 11)
    got = so.padded(x1, (16,), torch.float32)
    with so.torch_only():
        worst = max(worst, rel(got, so.padded(x1, (16,), torch.float32)))
    full = torch.randn(3, 5, 17, 12)
    bias = torch.randn(5)
    for b in (None, bias):
        for dtype in (torch.float32, torch.float16):
            d1 = torch.empty(3, 5, 13, 9, dtype=dtype)
            d2 = torch.empty_like(d1)
            so.crop_into(d1, full, b)
            with so.torch_only():
                so.crop_into(d2, full, b)
            worst = max(worst, rel(d1, d2))
    a = torch.randn(4, 5, 6, 7, dtype=torch.complex64)
    g = torch.randn(5, 6, 7, dtype=torch.complex64)
    got = so.spectral_mul_(a.clone(), g)
    with so.torch_only():
        worst = max(worst, rel(torch.view_as_real(got), torch.view_as_real(so.spectral_mul_(a.clone(), g))))
    xf = torch.randn(4, 5, 6, 7, dtype=torch.complex64)
    gf = torch.randn(5, 1, 6, 7, dtype=torch.complex64)
    for need_x, need_g, acc, scale in ((True, True, True, 1.0), (True, False, True, 1.0), (False, True, True, 0.3), (True, True, False, 0.25)):
        dg1 = torch.randn(5, 1, 6, 7, dtype=torch.complex64)
        dg2 = dg1.clone()
        d1 = so.backward_mix_(a.clone(), xf if need_g else None, gf, dg1 if need_g else None, need_x, need_g, acc, scale)
        with so.torch_only():
            d2 = so.backward_mix_(a.clone(), xf if need_g else None, gf, dg2 if need_g else None, need_x, need_g, acc, scale)
        worst = max(worst, rel(torch.view_as_real(d1), torch.view_as_real(d2)), rel(torch.view_as_real(dg1), torch.view_as_real(dg2)))
    dg1 = torch.randn(5, 1, 6, 7, dtype=torch.complex64)  # without accumulate the old value is not read
    so.backward_mix_(a.clone(), xf, gf, dg1, True, True, False, 0.5)
    dg2 = torch.full_like(dg1, float("nan"))
    so.backward_mix_(a.clone(), xf, gf, dg2, True, True, False, 0.5)
    worst = max(worst, rel(torch.view_as_real(dg2), torch.view_as_real(dg1)))
    # the whole convolution, forward and gradients, against F.conv2d in float64
    x = torch.randn(3, 4, 10, 9, dtype=torch.float64)
    k = torch.randn(4, 1, 7, 5, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    xr, kr, br = (t.clone().requires_grad_() for t in (x, k, b))
    ref = torch.nn.functional.conv2d(xr, kr, br, padding=(3, 2), groups=4)
    dy = torch.randn_like(ref)
    rg = torch.autograd.grad(ref, (xr, kr, br), dy)
    xf32, kf32, bf32 = (t.float().requires_grad_() for t in (x, k, b))
    out = fft_conv_nd(xf32, kf32, bf32, (1, 1), (3, 2), 4)
    og = torch.autograd.grad(out, (xf32, kf32, bf32), dy.float())
    worst = max([worst, rel(out, ref)] + [rel(a, r) for a, r in zip(og, rg)])
    assert launched == {"pad_cast", "crop_cast", "spectral_mul", "backward_mix"}, launched
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_spectral_kernels_under_interpreter():
    """The FFT convolution's Triton passes (pad+cast, crop+cast+bias, spectrum product, fused
    depthwise backward; each one checked to have run), on the CPU under Triton's interpreter,
    equal their torch versions; the whole depthwise convolution through them equals F.conv2d
    (float64)."""
    assert worst_error_under_interpreter(SPECTRAL_SCRIPT) < 2e-6


FUSED_SCRIPT = """
    import torch
    from dcls_core import spectral_ops as so
    from dcls_core import fused_fft, fft_conv
    from dcls_core.functional import dcls_conv
    import dcls_core.triton_construct as tc
    so._triton_ok = lambda t: not so.FORCE_TORCH   # the interpreter runs on the CPU
    ran = []
    real_kernels = tc._kernels
    tc._kernels = lambda: (ran.append(1), real_kernels())[1]

    torch.manual_seed(0)
    worst = 0.0
    cases = [  # input shape, dilated size, padding, groups, padding mode, chunks
        ((3, 4, 10, 9), (7, 5), (3, 2), 4, "zeros", None),
        ((2, 4, 6, 5), (9, 9), (4, 4), 4, "zeros", 2),          # transform smaller than the kernel
        ((2, 4, 7, 8), (5, 3), (2, 1), 2, "circular", None),    # two input channels per group
        ((4, 11), (9,), (4,), 4, "zeros", None),                # unbatched 1-D
        ((3, 6, 17), (7,), (3,), 3, "reflect", 3),
    ]
    for version in ("v0", "v1", "max", "gauss"):
        for shape, dks, pad, groups, mode, chunks in cases:
            fft_conv.FORCE_CHUNKS = chunks
            n = len(dks)
            cin = shape[-n - 1]
            cout = cin
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
            b32 = f32[-1]
            got = fused_fft.fused_dcls_fft(x32, w32, P32, S32, b32, dks, pad, groups, mode, version)
            grads = torch.autograd.grad(got, f32, dy.float())
            worst = max([worst, rel(got, want)] + [rel(a, r) for a, r in zip(grads, want_grads)])
    assert ran, "the Triton construction did not run"
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_fused_layer_under_interpreter():
    """The fused layer path (placed construction + FFT in one autograd node, saved kernel
    spectrum), run on the CPU under Triton's interpreter, equals construction + F.conv in
    float64: forward and the gradients of input, weight, positions, sigmas and bias, 1-D and
    2-D, every version, transforms smaller than the kernel, padding modes, batch chunks."""
    assert worst_error_under_interpreter(FUSED_SCRIPT) < 5e-6


# -- CUDA ------------------------------------------------------------------------------------------
FFT_SHAPES = [
    # N, C, H, W, kH, kW, ph, pw
    (2, 8, 17, 19, 23, 23, 11, 11),
    (3, 4, 9, 7, 5, 9, 2, 4),
    (2, 3, 8, 7, 23, 23, 11, 11),   # kernel larger than the image
    (8, 96, 64, 62, 23, 23, 11, 11),
]


@pytest.mark.cuda
@pytest.mark.parametrize("shape", FFT_SHAPES)
@pytest.mark.parametrize("mode", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("passes", ["triton", "torch"])
def test_fft_depthwise_equals_float64_cuda(shape, mode, passes, monkeypatch):
    """Both implementations of the element-wise passes (Triton kernels, torch operations)."""
    from dcls_core import spectral_ops

    monkeypatch.setattr(spectral_ops, "FORCE_TORCH", passes == "torch")
    check_depthwise_against_float64(fft_conv_nd, shape, mode, TOL[mode])


@pytest.mark.cuda
@pytest.mark.parametrize("version", ["v0", "v1", "max", "gauss"])
@pytest.mark.parametrize("prefix,count,size", [
    ((96, 1), 26, (23, 23)), ((6, 4), 3, (7, 5)), ((2, 3), 40, (33, 17)),  # two learned axes
    ((8, 4), 1, (250,)), ((4, 2, 3, 3), 4, (23,)),                         # one (Dcls1d, Dcls3_1d)
    ((8, 4), 8, (7, 7, 7)), ((16, 1), 16, (11, 9, 13)),                    # three (Dcls3d)
])
def test_triton_construction_equals_float64(version, prefix, count, size):
    from dcls_core.triton_construct import construct_kernel_fused

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
@pytest.mark.parametrize("version", ["v0", "v1", "max", "gauss"])
@pytest.mark.parametrize("mode", ["fp32", "bf16", "fp16"])
def test_dcls2d_depthwise_fast_equals_float64(monkeypatch, version, mode):
    """The ConvNeXt DCLS layer (depthwise 23x23, 26 elements) on the auto path with the direct
    convolution ruled out (strict float32 takes the FFT anyway), every gradient."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(dispatch, "direct_pays", lambda *args: False)
    torch.manual_seed(0)
    layer = randomise(dcls_core.Dcls2d(32, 32, kernel_count=26, dilated_kernel_size=23, padding=11, groups=32, version=version))
    x = torch.randn(8, 32, 24, 21)
    with torch.autocast("cuda", dtype=AUTOCAST.get(mode, torch.float32), enabled=mode in AUTOCAST):
        kernel = layer.cuda().construct_kernel()
        names = (dispatch.select_construct(layer.weight, layer.P, layer.SIG, (23, 23), version)[0],
                 dispatch.select_conv(x.cuda(), kernel, (1, 1), (11, 11), 32, "zeros")[0])
    assert names == ("triton", "fft")
    compare_to_fp64(monkeypatch, layer.cpu(), x, "auto", TOL[mode], AUTOCAST.get(mode), device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("version", ["v0", "gauss"])
@pytest.mark.parametrize("mode", ["fp32", "bf16"])
@pytest.mark.parametrize("name,channels,spatial,impl", [
    ("Dcls2d", 32, (24, 21), "auto"),
    ("Dcls2d", 16, (6, 5), "fast"),     # transform smaller than the 23x23 kernel (taps share slots)
    ("Dcls1d", 16, (40,), "fast"),
])
def test_fused_layer_equals_float64_cuda(monkeypatch, version, mode, name, channels, spatial, impl):
    """The fused layer path (placed construction + FFT in one autograd node) is selected (the
    direct convolution ruled out) and equals the float64 reference, every gradient."""
    monkeypatch.setattr(dispatch, "direct_pays", lambda *args: False)
    torch.manual_seed(0)
    ndim = len(spatial)
    layer = randomise(getattr(dcls_core, name)(channels, channels, kernel_count=26, dilated_kernel_size=23, padding=11,
                                               groups=channels, version=version))
    x = torch.randn(8, channels, *spatial)
    monkeypatch.setenv("DCLS_IMPL", impl)
    lc = copy.deepcopy(layer).cuda()
    assert dispatch.select_fused(x.cuda(), lc.weight, lc.P, lc.SIG, (23,) * ndim, (1,) * ndim, (11,) * ndim, "zeros", version)
    compare_to_fp64(monkeypatch, layer, x, impl, TOL[mode], AUTOCAST.get(mode), device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("name,kwargs,dims,version,groups", [
    (n, kw, d, v, g) for n, kw, d, vs in LAYERS for v in vs[-1:] for g in (1, "dw")
])
def test_other_layers_fast_equal_float64_cuda(monkeypatch, name, kwargs, dims, version, groups):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    cin, cout, grp = (4, 6, 2) if groups == 1 else (4, 4, 4)
    layer = randomise(getattr(dcls_core, name)(cin, cout, kernel_count=3, groups=grp, version=version, **kwargs))
    x = torch.randn(2, cin, *SPATIAL[dims])
    compare_to_fp64(monkeypatch, layer, x, "fast", TOL["fp32"], device="cuda")


@pytest.mark.cuda
def test_dispatcher_choices_on_cuda(monkeypatch):
    """The FFT rules, in strict float32 (TF32 off: no direct convolution)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setenv("DCLS_IMPL", "auto")
    x = torch.randn(8, 96, 64, 62, device="cuda")

    def conv(kernel, stride=(1, 1), inp=x, padding=(11, 11), groups=96):
        return dispatch.select_conv(inp, kernel, stride, padding, groups, "zeros")[0]

    assert conv(torch.randn(96, 1, 23, 23, device="cuda")) == "fft"
    assert conv(torch.randn(96, 1, 7, 7, device="cuda"), padding=(3, 3)) == "reference"
    assert conv(torch.randn(96, 1, 23, 23, device="cuda"), stride=(2, 2)) == "reference"
    assert conv(torch.randn(96, 1, 23, 23, device="cuda"), inp=x[:1, :, :8, :8]) == "reference"  # tiny
    x1 = torch.randn(8, 64, 500, device="cuda")
    assert dispatch.select_conv(x1, torch.randn(64, 64, 250, device="cuda"), (1,), (125,), 1, "zeros")[0] == "fft"
    assert dispatch.select_conv(x1, torch.randn(64, 64, 25, device="cuda"), (1,), (12,), 1, "zeros")[0] == "reference"
    x3 = torch.randn(2, 16, 8, 16, 16, device="cuda")
    k3 = torch.randn(16, 16, 7, 7, 7, device="cuda")
    assert dispatch.select_conv(x3, k3, (1, 1, 1), (3, 3, 3), 1, "zeros")[0] == "reference"  # 3-D mixing: cuDNN
    assert dispatch.select_conv(x3, torch.randn(16, 1, 7, 7, 7, device="cuda"), (1, 1, 1), (3, 3, 3), 16, "zeros")[0] == "fft"
    w = torch.randn(96, 1, 26, device="cuda")
    assert dispatch.select_construct(w, torch.randn(2, 96, 1, 26, device="cuda"), None, (23, 23), "v1")[0] == "triton"
    assert dispatch.select_construct(w, torch.randn(1, 96, 1, 26, device="cuda"), None, (23,), "v1")[0] == "triton"
    assert dispatch.select_construct(w, torch.randn(3, 96, 1, 26, device="cuda"), None, (5, 5, 5), "v1")[0] == "triton"
    assert dispatch.select_construct(w, torch.randn(4, 96, 1, 26, device="cuda"), None, (5,) * 4, "v1")[0] == "reference"
    assert dispatch.select_construct(w.double(), torch.randn(2, 96, 1, 26, device="cuda").double(), None, (23, 23), "v1")[0] == "reference"
    # a sigma version without SIG is not the fused construction's (which would use a default):
    # the reference path raises
    assert dispatch.select_construct(w, torch.randn(2, 96, 1, 26, device="cuda"), None, (23, 23), "gauss")[0] == "reference"
    with pytest.raises(ValueError, match="SIG"):
        dcls_core.dcls_conv2d(x, w, torch.randn(2, 96, 1, 26, device="cuda"), None, None, 23, 1, 11, 96, version="gauss")
    wc, Pc = torch.randn(96, 1, 26, device="cuda"), torch.randn(2, 96, 1, 26, device="cuda")
    assert dispatch.select_fused(x, wc, Pc, None, (23, 23), (1, 1), (11, 11), "zeros", "v1")
    assert not dispatch.select_fused(x, wc, Pc, None, (23, 23), (2, 2), (11, 11), "zeros", "v1")  # stride
    assert not dispatch.select_fused(torch.randn(2, 96, 200, 200, device="cuda"), wc, Pc, None, (23, 23), (1, 1),
                                     (11, 11), "zeros", "v1")  # planes over one register block
    with torch.no_grad():
        assert not dispatch.select_fused(x, wc, Pc, None, (23, 23), (1, 1), (11, 11), "zeros", "v1")
    with dispatch.forced(fused=False):
        assert not dispatch.select_fused(x, wc, Pc, None, (23, 23), (1, 1), (11, 11), "zeros", "v1")
    monkeypatch.setenv("DCLS_IMPL", "reference")
    assert not dispatch.select_fused(x, wc, Pc, None, (23, 23), (1, 1), (11, 11), "zeros", "v1")
    assert conv(torch.randn(96, 1, 23, 23, device="cuda")) == "reference"
    assert dispatch.select_construct(w, torch.randn(2, 96, 1, 26, device="cuda"), None, (23, 23), "v1")[0] == "reference"


@pytest.mark.cuda
def test_torch_compile_matches_eager_cuda(monkeypatch):
    """Inductor with the fused construction and FFT custom ops (9x9 depthwise -> FFT)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setenv("DCLS_IMPL", "auto")
    torch._dynamo.reset()
    compile_matches_eager("cuda", "inductor")


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
