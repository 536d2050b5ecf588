"""The dispatcher: its switches (``DCLS_IMPL``, ``DCLS_CONV``, ``forced``), its rules on the CPU
and on CUDA, and the contract of every registered convolution path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dcls_core
from dcls_core import dispatch

from dcls_testing import rel_err


def test_every_registered_conv_path_keeps_the_contract():
    """Each path of the registry names itself and has a support test and a cost rule; where it
    supports a call its function equals ``F.conv2d`` in float64 (on CPU tensors: the matrix path,
    the FFT and the reference; the direct path needs CUDA); the reference comes last (the ``auto``
    fallback)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64, generator=g)
    k = torch.randn(4, 1, 5, 5, dtype=torch.float64, generator=g)
    b = torch.randn(4, dtype=torch.float64, generator=g)
    want = F.conv2d(x, k, b, padding=2, groups=4)
    assert list(dispatch.CONV_PATHS)[-1] == "reference" and dispatch.FAST_CONV in dispatch.CONV_PATHS
    checked = []
    for name, path in dispatch.CONV_PATHS.items():
        assert path.NAME == name and callable(path.pays)
        if path.supports(x, k.shape, (1, 1), 4):
            assert rel_err(path.convolve(x, k, b, (1, 1), (2, 2), 4, "zeros"), want) < 1e-12, name
            checked.append(name)
    assert checked == ["matrix", "fft", "reference"]


def test_dispatcher_env_switch(monkeypatch):
    layer = dcls_core.Dcls2d(2, 2, kernel_count=2, dilated_kernel_size=3, padding=1)
    x = torch.randn(1, 2, 6, 6)
    monkeypatch.setenv("DCLS_IMPL", "reference")
    want = layer(x)
    monkeypatch.setenv("DCLS_IMPL", "bogus")
    with pytest.raises(ValueError, match="DCLS_IMPL must be one of"):
        layer(x)
    monkeypatch.setenv("DCLS_IMPL", "fast")  # forces the FFT convolution, also on the CPU
    assert torch.allclose(layer(x), want, rtol=1e-5, atol=1e-6)


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
    monkeypatch.setenv("DCLS_CONV", "direct")  # does not apply on the CPU: the auto rules choose
    assert conv() == "fft"
    monkeypatch.setenv("DCLS_CONV", "matrix")  # plain torch: applies on the CPU too
    assert conv() == "matrix"
    monkeypatch.setenv("DCLS_CONV", "winograd")
    with pytest.raises(ValueError, match="DCLS_CONV must be one of"):
        conv()


def test_conv_order_variable(monkeypatch):
    """DCLS_CONV_ORDER orders the fast paths where several rules pay and nothing is measured; the
    paths it leaves out follow in the default order; bad values are named."""
    from dcls_core.conv import direct, fft, matrix

    for path in (matrix, direct, fft):  # every fast rule pays for this call
        monkeypatch.setattr(path, "supports", lambda *args: True)
        monkeypatch.setattr(path, "pays", lambda *args: True)
    x, k = torch.randn(2, 4, 16, 16), torch.randn(4, 1, 23, 23)

    def conv():
        return dispatch.select_conv(x, k, (1, 1), (11, 11), 4, "zeros")[0]

    monkeypatch.delenv("DCLS_CONV_ORDER", raising=False)
    assert dispatch.conv_order() == ("matrix", "direct", "fft") and conv() == "matrix"
    monkeypatch.setenv("DCLS_CONV_ORDER", "fft, Direct")
    assert dispatch.conv_order() == ("fft", "direct", "matrix") and conv() == "fft"
    monkeypatch.setenv("DCLS_CONV_ORDER", "direct")
    assert dispatch.conv_order() == ("direct", "matrix", "fft") and conv() == "direct"
    for bad in ("fft,fft", "winograd", "reference", "fft,,direct"):
        monkeypatch.setenv("DCLS_CONV_ORDER", bad)
        with pytest.raises(ValueError, match="DCLS_CONV_ORDER="):
            conv()


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
    assert (
        dispatch.select_conv(x3, torch.randn(16, 1, 7, 7, 7, device="cuda"), (1, 1, 1), (3, 3, 3), 16, "zeros")[0]
        == "fft"
    )
    w = torch.randn(96, 1, 26, device="cuda")
    assert dispatch.select_construct(w, torch.randn(2, 96, 1, 26, device="cuda"), None, (23, 23), "v1")[0] == "triton"
    assert dispatch.select_construct(w, torch.randn(1, 96, 1, 26, device="cuda"), None, (23,), "v1")[0] == "triton"
    assert dispatch.select_construct(w, torch.randn(3, 96, 1, 26, device="cuda"), None, (5, 5, 5), "v1")[0] == "triton"
    assert (
        dispatch.select_construct(w, torch.randn(4, 96, 1, 26, device="cuda"), None, (5,) * 4, "v1")[0] == "reference"
    )
    assert (
        dispatch.select_construct(w.double(), torch.randn(2, 96, 1, 26, device="cuda").double(), None, (23, 23), "v1")[
            0
        ]
        == "reference"
    )
    # a sigma version without SIG is not the fused construction's (which would use a default):
    # the reference path raises
    assert (
        dispatch.select_construct(w, torch.randn(2, 96, 1, 26, device="cuda"), None, (23, 23), "gauss")[0]
        == "reference"
    )
    with pytest.raises(ValueError, match="SIG"):
        dcls_core.dcls_conv2d(
            x, w, torch.randn(2, 96, 1, 26, device="cuda"), None, None, 23, 1, 11, 96, version="gauss"
        )
    wc, Pc = torch.randn(96, 1, 26, device="cuda"), torch.randn(2, 96, 1, 26, device="cuda")
    assert dispatch.select_fused(x, wc, Pc, None, (23, 23), (1, 1), (11, 11), "zeros", "v1")
    assert not dispatch.select_fused(x, wc, Pc, None, (23, 23), (2, 2), (11, 11), "zeros", "v1")  # stride
    assert not dispatch.select_fused(
        torch.randn(2, 96, 200, 200, device="cuda"), wc, Pc, None, (23, 23), (1, 1), (11, 11), "zeros", "v1"
    )  # planes over one register block
    with torch.no_grad():
        assert not dispatch.select_fused(x, wc, Pc, None, (23, 23), (1, 1), (11, 11), "zeros", "v1")
    with dispatch.forced(fused=False):
        assert not dispatch.select_fused(x, wc, Pc, None, (23, 23), (1, 1), (11, 11), "zeros", "v1")
    monkeypatch.setenv("DCLS_IMPL", "reference")
    assert not dispatch.select_fused(x, wc, Pc, None, (23, 23), (1, 1), (11, 11), "zeros", "v1")
    assert conv(torch.randn(96, 1, 23, 23, device="cuda")) == "reference"
    assert (
        dispatch.select_construct(w, torch.randn(2, 96, 1, 26, device="cuda"), None, (23, 23), "v1")[0] == "reference"
    )


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
        assert conv(stride=(2, 2)) == "reference"  # forced where it does not apply: the reference
    monkeypatch.setenv("DCLS_IMPL", "fast")
    assert conv() == "fft"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert conv() == "direct"


@pytest.mark.cuda
def test_dispatcher_matrix_rule_cuda(monkeypatch):
    """The matrix path for large depthwise kernels on inputs of no more positions than taps (the
    last two ConvNeXt stages), in every dtype; the direct path above that; never for small
    kernels, channel mixing or the CPU."""
    monkeypatch.setenv("DCLS_IMPL", "auto")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)

    def conv(c, h, w, k=23, groups=None, device="cuda", dtype=torch.float32):
        x = torch.randn(8, c, h, w, device=device, dtype=dtype)
        kernel = torch.randn(c, 1 if groups is None else c, k, k, device=device, dtype=dtype)
        return dispatch.select_conv(x, kernel, (1, 1), (k // 2, k // 2), c if groups is None else groups, "zeros")[0]

    assert conv(384, 16, 15) == "matrix"
    assert conv(768, 8, 7) == "matrix"
    assert conv(768, 8, 7, dtype=torch.float64) == "matrix"
    assert conv(192, 32, 31) == "direct"  # 992 positions > 529 taps
    assert conv(384, 16, 15, k=7) == "reference"  # 7x7: cuDNN
    assert conv(64, 16, 15, groups=1) == "fft"
    assert conv(384, 16, 15, device="cpu") == "reference"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert conv(384, 16, 15) == "matrix"
