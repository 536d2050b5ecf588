"""The DCLS layers against the reference package ``dcls`` 0.1.1 (forward and every gradient)."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch

import dcls_core

ref = pytest.importorskip("DCLS.construct.modules")
logging.getLogger().setLevel(logging.ERROR)  # 0.1.1's Dcls2d logs on every construction


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


CLASSES = {  # name: (spatial dims of the input, versions)
    "Dcls1d": (1, ("v0", "v1", "max", "gauss")),
    "Dcls2d": (2, ("v0", "v1", "max", "gauss")),
    "Dcls3d": (3, ("v0", "v1", "max", "gauss")),
    "Dcls3_1d": (3, ("v1", "max", "gauss")),
    "Dcls2dK1d": (2, ("v0", "v1", "max", "gauss")),
}


SPATIAL = {1: (19,), 2: (9, 10), 3: (6, 7, 8)}


def _make_pair(name, version, dks, groups, bias, device, padding_mode="zeros", stride=1, extra=None, seed=0):
    """A 0.1.1 module and ours with the same (randomised) parameters."""
    extra = dict(extra or {})
    cin, cout = 4, 6
    if groups == "dw":
        groups, cout = cin, cin
    kwargs = dict(
        kernel_count=3,
        stride=stride,
        dilated_kernel_size=dks,
        groups=groups,
        bias=bias,
        padding_mode=padding_mode,
        version=version,
        **extra,
    )
    dims = CLASSES[name][0]
    kwargs["padding"] = (
        dks // 2 if name != "Dcls2dK1d" else (dks // 2, 0) if extra.get("flat_dim", 0) == 0 else (0, dks // 2)
    )
    if name == "Dcls3_1d":
        kwargs["padding"] = (1, 1, dks // 2)
        kwargs["dense_kernel_size"] = (3, 2)
    if name == "Dcls2d":
        kwargs_ref = dict(kwargs, use_implicit_gemm=False)
    else:
        kwargs_ref = kwargs
    torch.manual_seed(seed)
    theirs = getattr(ref, name)(cin, cout, **kwargs_ref)
    with torch.no_grad():
        half = dks / 2
        theirs.P.uniform_(-half, half)
        if theirs.SIG is not None:
            theirs.SIG.uniform_(-0.8, 0.8)
        if theirs.bias is not None:
            theirs.bias.uniform_(-1, 1)
    ours = getattr(dcls_core, name)(cin, cout, **kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, cin, *SPATIAL[dims])
    return theirs.to(device), ours.to(device), x.to(device)


def _grads(module, x):
    x = x.clone().requires_grad_(True)
    out = module(x)
    g = torch.randn_like(out, generator=torch.Generator(out.device).manual_seed(1))
    out.backward(g)
    grads = {"input": x.grad}
    for pname, p in module.named_parameters():
        grads[pname] = p.grad
    return out.detach(), grads


def _assert_close(got, want, what, rel=1e-5):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    scale = want.abs().max().item()
    err = (got - want).abs().max().item()
    assert err <= rel * max(scale, 1e-30), f"{what}: max abs err {err:.3g} > {rel} x {scale:.3g}"


def _compare(theirs, ours, x):
    out_t, g_t = _grads(theirs, x)
    out_o, g_o = _grads(ours, x)
    _assert_close(out_o, out_t, "output")
    assert g_t.keys() == g_o.keys()
    for key in g_t:
        _assert_close(g_o[key], g_t[key], f"grad {key}")


GRID = [
    (name, version, dks, groups, bias)
    for name, (_, versions) in CLASSES.items()
    for version in versions
    for dks, groups, bias in [(5, 1, True), (4, 2, False), (5, "dw", True), (6, "dw", False)]
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,version,dks,groups,bias", GRID)
def test_matches_reference_package(name, version, dks, groups, bias, device):
    extra = {"flat_dim": 1} if name == "Dcls2dK1d" and groups == 2 else None
    theirs, ours, x = _make_pair(name, version, dks, groups, bias, device, extra=extra)
    _compare(theirs, ours, x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "name,version,padding_mode,stride",
    [
        (name, version, mode, stride)
        for (name, version), mode, stride in itertools.product(
            [
                ("Dcls1d", "gauss"),
                ("Dcls2d", "v1"),
                ("Dcls2d", "gauss"),
                ("Dcls3d", "max"),
                ("Dcls2dK1d", "v0"),
                ("Dcls3_1d", "v1"),
            ],
            ["reflect", "replicate", "circular"],
            [1, 2],
        )
    ],
)
def test_padding_modes_and_strides(name, version, padding_mode, stride, device):
    theirs, ours, x = _make_pair(name, version, 5, 2, True, device, padding_mode=padding_mode, stride=stride)
    _compare(theirs, ours, x)


@pytest.mark.parametrize("name", ["Dcls1d", "Dcls2d", "Dcls3d", "Dcls3_1d", "Dcls2dK1d"])
def test_same_initialisation_as_reference(name):
    version = "gauss" if name != "Dcls2dK1d" else "v1"
    kw = dict(kernel_count=5, dilated_kernel_size=7, version=version)
    if name == "Dcls3_1d":
        kw["dense_kernel_size"] = 3
    torch.manual_seed(3)
    theirs = getattr(ref, name)(4, 8, **kw)
    torch.manual_seed(3)
    ours = getattr(dcls_core, name)(4, 8, **kw)
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    assert set(ours.state_dict()) == set(theirs.state_dict())


@pytest.mark.parametrize("name", ["Dcls1d", "Dcls2d", "Dcls3d", "Dcls3_1d", "Dcls2dK1d"])
def test_state_dict_round_trip_both_ways(name):
    theirs, ours, _ = _make_pair(name, "gauss" if name != "Dcls2dK1d" else "v1", 5, 1, True, "cpu")
    fresh_ref = type(theirs)(
        **{k: getattr(theirs, k) for k in ("in_channels", "out_channels", "kernel_count")},
        **({"dense_kernel_size": theirs.dense_kernel_size} if name == "Dcls3_1d" else {}),
        dilated_kernel_size=theirs.dilated_kernel_size,
        groups=theirs.groups,
        version=theirs.version,
    )
    fresh_ref.load_state_dict(ours.state_dict(), strict=True)
    for key, value in ours.state_dict().items():
        assert torch.equal(fresh_ref.state_dict()[key], value)


def test_non_square_kernel_is_a_crop_of_the_square_one():
    """A (7, 3) kernel with positions inside its range equals columns 2..4 of the (7, 7) one
    (0.1.1 is right for square kernels; for non-square ones it offsets P[0] wrongly)."""
    torch.manual_seed(0)
    for version in ("v1", "max", "gauss"):
        square = ref.Dcls2d(
            3, 3, kernel_count=4, dilated_kernel_size=7, groups=3, version=version, use_implicit_gemm=False
        )
        with torch.no_grad():
            # width: all interpolation mass stays within the 3 central columns
            square.P[0].uniform_(-0.9, 0.9) if version != "gauss" else square.P[0].uniform_(-0.3, 0.3)
            square.P[1].uniform_(-3, 3)
            if square.SIG is not None:
                square.SIG.fill_(0.0)
        ours = dcls_core.Dcls2d(3, 3, kernel_count=4, dilated_kernel_size=(7, 3), groups=3, version=version)
        ours.load_state_dict(square.state_dict())
        want = square.DCK(square.weight, square.P, square.SIG)[..., 2:5]
        got = ours.construct_kernel()
        _assert_close(got, want, f"{version} crop")


@pytest.mark.parametrize("version", ["v1", "max", "gauss"])
def test_non_square_centre_and_normalisation(version):
    layer = dcls_core.Dcls2d(1, 1, kernel_count=1, dilated_kernel_size=(7, 3), version=version)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.P.zero_()
    kernel = layer.construct_kernel()[0, 0]
    assert kernel.shape == (7, 3)
    assert torch.isclose(kernel.sum(), torch.tensor(1.0), atol=1e-6)
    assert divmod(int(kernel.argmax()), 3) == (3, 1)
    if version == "v1":  # the 0.1.1 defect this library fixes
        theirs = ref.Dcls2d(1, 1, kernel_count=1, dilated_kernel_size=(7, 3), version=version, use_implicit_gemm=False)
        theirs.load_state_dict(layer.state_dict())
        assert theirs.DCK(theirs.weight, theirs.P, theirs.SIG).abs().max() == 0


def test_dcls2_1d_equals_dcls3_1d_on_singleton_depth():
    torch.manual_seed(0)
    for version in ("v1", "max", "gauss"):
        two = dcls_core.Dcls2_1d(
            4, 6, kernel_count=3, dense_kernel_size=3, dilated_kernel_size=7, padding=(1, 3), groups=2, version=version
        )
        three = dcls_core.Dcls3_1d(
            4,
            6,
            kernel_count=3,
            dense_kernel_size=(1, 3),
            dilated_kernel_size=7,
            padding=(0, 1, 3),
            groups=2,
            version=version,
        )
        with torch.no_grad():
            three.weight.copy_(two.weight.unsqueeze(2))
            three.P.copy_(two.P.unsqueeze(3))
            if two.SIG is not None:
                two.SIG.uniform_(-0.5, 0.5)
                three.SIG.copy_(two.SIG.unsqueeze(3))
            three.bias.copy_(two.bias)
        x = torch.randn(2, 4, 9, 11)
        _assert_close(two(x), three(x.unsqueeze(2)).squeeze(2), f"Dcls2_1d {version}")


def test_dcls2_1d_loads_state_dict_with_index_buffers():
    layer = dcls_core.Dcls2_1d(4, 4, kernel_count=3, dense_kernel_size=3, dilated_kernel_size=7)
    state = dict(layer.state_dict())
    state["DCK.IDX"] = torch.zeros(7, 1)
    state["DCK.lim"] = torch.tensor([7])
    fresh = dcls_core.Dcls2_1d(4, 4, kernel_count=3, dense_kernel_size=3, dilated_kernel_size=7)
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.P, layer.P)
    with pytest.raises(RuntimeError, match="Unexpected"):
        fresh.load_state_dict(dict(state, other=torch.zeros(1)), strict=True)


def test_dcls2dk1d_learned_axis_follows_flat_dim():
    for flat_dim, shape in ((0, (7, 1)), (1, (1, 7))):
        layer = dcls_core.Dcls2dK1d(2, 2, kernel_count=2, dilated_kernel_size=7, flat_dim=flat_dim)
        theirs = ref.Dcls2dK1d(2, 2, kernel_count=2, dilated_kernel_size=7, flat_dim=flat_dim)
        theirs.load_state_dict(layer.state_dict())
        kernel = layer.construct_kernel()
        assert kernel.shape[2:] == shape
        # 0.1.1 builds the 1-D kernel and inserts the unlearned axis at -1 - flat_dim in forward
        _assert_close(
            kernel, theirs.DCK(theirs.weight, theirs.P, theirs.SIG).unsqueeze(-1 - flat_dim), f"flat_dim {flat_dim}"
        )
