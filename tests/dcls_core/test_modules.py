"""The DCLS layers: gradcheck, functional API, fold, device and dtype moves, argument errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dcls_core
from dcls_core import construct_kernel

LAYERS = [
    ("Dcls1d", dict(), 1, ("v0", "v1", "max", "gauss")),
    ("Dcls2d", dict(), 2, ("v0", "v1", "max", "gauss")),
    ("Dcls3d", dict(), 3, ("v0", "v1", "max", "gauss")),
    ("Dcls2_1d", dict(dense_kernel_size=2), 2, ("v1", "max", "gauss")),
    ("Dcls3_1d", dict(dense_kernel_size=(2, 1)), 3, ("v1", "max", "gauss")),
    ("Dcls2dK1d", dict(flat_dim=1), 2, ("v0", "v1", "max", "gauss")),
]


@pytest.mark.parametrize(
    "name,extra,dims,version",
    [(n, e, d, v) for n, e, d, vs in LAYERS for v in vs],
)
def test_gradcheck_float64(name, extra, dims, version):
    torch.manual_seed(0)
    layer = getattr(dcls_core, name)(
        2, 2, kernel_count=2, dilated_kernel_size=4, padding=1, version=version, **extra
    ).double()
    with torch.no_grad():
        layer.P.uniform_(-1.7, 1.7)  # fractional positions: away from the interpolation kinks
        if layer.SIG is not None:
            layer.SIG.uniform_(0.1, 0.6)
    x = torch.randn(1, 2, *([5] * dims), dtype=torch.float64, requires_grad=True)
    params = [layer.weight, layer.P] + ([layer.SIG] if layer.SIG is not None else []) + [layer.bias]

    def fn(x, *ps):
        names = ["weight", "P"] + (["SIG"] if layer.SIG is not None else []) + ["bias"]
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)


def test_functional_matches_module():
    torch.manual_seed(0)
    layer = dcls_core.Dcls2d(4, 4, kernel_count=5, dilated_kernel_size=7, padding=3, groups=4, stride=2)
    x = torch.randn(2, 4, 12, 13)
    out = dcls_core.dcls_conv2d(
        x, layer.weight, layer.P, layer.SIG, layer.bias, dilated_kernel_size=7, stride=2, padding=3, groups=4
    )
    dense = construct_kernel(layer.weight, layer.P, layer.SIG, (7, 7), "gauss")
    assert torch.allclose(out, layer(x))
    assert torch.allclose(out, F.conv2d(x, dense, layer.bias, stride=2, padding=3, groups=4))


@pytest.mark.parametrize("name,extra,dims,versions", LAYERS)
def test_fold_gives_equal_plain_conv(name, extra, dims, versions):
    torch.manual_seed(1)
    layer = getattr(dcls_core, name)(
        4,
        4,
        kernel_count=3,
        dilated_kernel_size=5,
        padding=2,
        groups=2,
        padding_mode="reflect",
        version=versions[-1],
        **extra,
    )
    conv = layer.fold()
    assert type(conv).__name__ == f"Conv{dims}d"
    x = torch.randn(2, 4, *([7] * dims))
    assert torch.allclose(conv(x), layer(x), atol=1e-6)


def test_module_moves_between_dtypes_after_running():
    torch.manual_seed(0)
    layer = dcls_core.Dcls2d(3, 3, kernel_count=4, dilated_kernel_size=5, padding=2, groups=3)
    x = torch.randn(1, 3, 8, 8)
    out32 = layer(x)
    layer = layer.double()
    out64 = layer(x.double())
    assert out64.dtype == torch.float64
    assert torch.allclose(out64.float(), out32, atol=1e-5)


@pytest.mark.cuda
def test_module_moves_between_devices_after_running():
    torch.manual_seed(0)
    layer = dcls_core.Dcls2d(3, 3, kernel_count=4, dilated_kernel_size=5, padding=2, groups=3)
    x = torch.randn(1, 3, 8, 8)
    out_cpu = layer(x)
    out_gpu = layer.cuda()(x.cuda())
    out_back = layer.cpu()(x)
    assert torch.allclose(out_gpu.cpu(), out_cpu, atol=1e-5)
    assert torch.allclose(out_back, out_cpu)


def test_unbatched_input():
    layer = dcls_core.Dcls1d(2, 3, kernel_count=2, dilated_kernel_size=5, padding=2)
    x = torch.randn(2, 11)
    assert torch.allclose(layer(x), layer(x.unsqueeze(0))[0], atol=1e-6)


def test_clamp_parameters_uses_own_axis_half_size():
    layer = dcls_core.Dcls2d(1, 1, kernel_count=4, dilated_kernel_size=(9, 3), version="gauss")
    with torch.no_grad():
        layer.P.fill_(10.0)
    layer.clamp_parameters()
    assert layer.P[0].max() == 1  # width (size 3)
    assert layer.P[1].max() == 4  # height (size 9)


def test_autocast_keeps_positions_fp32():
    layer = dcls_core.Dcls2d(4, 4, kernel_count=5, dilated_kernel_size=7, padding=3, groups=4)
    x = torch.randn(2, 4, 10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kernel = layer.construct_kernel()
        out = layer(x)
    assert kernel.dtype == torch.float32
    assert out.dtype == torch.bfloat16
    ref = layer(x)
    assert (out.float() - ref).abs().max() <= 3e-2 * ref.abs().max()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_channels=3, groups=2), "in_channels .* divisible by groups"),
        (dict(out_channels=5, groups=2, in_channels=4), "out_channels .* divisible by groups"),
        (dict(version="cubic"), "version must be one of"),
        (dict(kernel_count=0), "kernel_count must be"),
        (dict(dilated_kernel_size=0), "dilated_kernel_size must be >= 1"),
        (dict(padding_mode="mirror"), "padding_mode must be one of"),
        (dict(stride=(1, 2, 3)), "stride must be"),
    ],
)
def test_argument_errors_name_the_argument(kwargs, match):
    args = dict(in_channels=4, out_channels=4, kernel_count=3, dilated_kernel_size=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        dcls_core.Dcls2d(**args)


def test_version_unsupported_by_class():
    with pytest.raises(ValueError, match="Dcls3_1d: version must be one of"):
        dcls_core.Dcls3_1d(2, 2, kernel_count=2, dilated_kernel_size=5, version="v0")
    with pytest.raises(ValueError, match="flat_dim"):
        dcls_core.Dcls2dK1d(2, 2, kernel_count=2, flat_dim=2)


def test_input_shape_errors_say_expected_shape():
    layer = dcls_core.Dcls2d(4, 4, kernel_count=3, dilated_kernel_size=5, padding=2)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 4, H, W\).*got \(2, 3, 8, 8\)"):
        layer(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"got \(8, 8\)"):
        layer(torch.randn(8, 8))
