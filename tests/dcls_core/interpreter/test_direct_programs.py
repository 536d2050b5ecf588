"""The direct convolution's GPU programs (:mod:`dcls_core.conv.direct.programs`) on the CPU under
Triton's interpreter (float32 products): forward, input, kernel and bias gradients equal float64
``F.conv2d`` over several patches, kernels larger than the image, padding modes and padding
beyond the kernel, channels_last, split kernel-gradient rows, the model's 23x23 kernel; the
custom ops under torch.compile give the eager gradients (see ``conftest.py``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dcls_core.conv.direct import conv as direct_conv
from dcls_core.conv.direct import programs

from dcls_testing import rel_err

TOL = 2e-6
CASES = [  # N, C, H, W, kH, kW, pH, pW, padding mode, channels_last
    (2, 3, 9, 40, 7, 5, 3, 2, "zeros", False),  # two column blocks
    (3, 2, 5, 6, 9, 9, 4, 4, "zeros", False),  # kernel larger than the image
    (1, 2, 7, 17, 3, 23, 1, 11, "zeros", True),  # wide kernel row, channels_last input and gradient
    (2, 2, 6, 5, 5, 3, 2, 1, "circular", False),
    (2, 3, 4, 9, 3, 3, 0, 0, "zeros", False),  # no padding
    (1, 2, 4, 5, 3, 3, 3, 2, "zeros", False),  # padding beyond kernel - 1
    (5, 2, 40, 7, 5, 5, 2, 2, "zeros", False),  # 200 rows: several row blocks and splits
    (2, 2, 20, 19, 23, 23, 11, 11, "zeros", True),  # the model's kernel: shifted input-gradient patches
]


@pytest.fixture
def launched(monkeypatch) -> set:
    """Lets the direct path run on the CPU, splits the kernel gradient's rows in small cases too,
    and records which programs it launches."""
    monkeypatch.setattr(direct_conv, "supports", lambda *args: True)
    monkeypatch.setattr(direct_conv, "_MIN_GRAD_PROGRAMS", 64)
    names: set = set()

    class Spy:
        def __init__(self, real, name):
            self.real, self.name = real, name

        def __getitem__(self, grid):
            names.add(self.name)
            return self.real[grid]

    for name in ("dw_conv2d_patches", "dw_conv2d_patches_kernel_grad"):
        monkeypatch.setattr(programs, name, Spy(getattr(programs, name), name))
    return names


@pytest.mark.parametrize("N,C,H,W,kh,kw,ph,pw,mode,channels_last", CASES)
def test_direct_equals_float64_conv2d(launched, N, C, H, W, kh, kw, ph, pw, mode, channels_last):
    torch.manual_seed(0)
    x = torch.randn(N, C, H, W, dtype=torch.float64)
    k = torch.randn(C, 1, kh, kw, dtype=torch.float64)
    b = torch.randn(C, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (x, k, b)]
    xp = F.pad(x, (pw, pw, ph, ph), mode=mode) if mode != "zeros" else x
    want = F.conv2d(xp, k, b, 1, (0, 0) if mode != "zeros" else (ph, pw), 1, C)
    dy = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, leaves, dy)
    x32, k32, b32 = (t.detach().float().requires_grad_() for t in leaves)
    xin = x32.to(memory_format=torch.channels_last) if channels_last else x32
    got = direct_conv.direct_dw_conv2d(xin, k32, b32, (1, 1), (ph, pw), C, mode)
    g = dy.float().to(memory_format=torch.channels_last) if channels_last else dy.float()  # as after a permute
    grads = torch.autograd.grad(got, (xin, k32, b32), g)
    assert rel_err(got, want) < TOL
    for name, a, r in zip(("input", "kernel", "bias"), grads, want_grads):
        assert rel_err(a, r) < TOL, name
    assert launched == {"dw_conv2d_patches", "dw_conv2d_patches_kernel_grad"}
    # the op's layout contract: output and input gradient in the input's layout, as F.conv2d's
    assert got.stride() == F.conv2d(xin.detach(), k32.detach(), None, 1, (ph, pw), 1, C).stride()
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert grads[0].stride() == xin.stride()


def test_custom_ops_under_compile_give_eager_gradients(launched):
    torch.manual_seed(0)
    x, k, b = torch.randn(2, 3, 9, 20), torch.randn(3, 1, 5, 7), torch.randn(3)
    leaves = [t.requires_grad_() for t in (x, k, b)]

    def loss(x, k, b):
        return direct_conv.direct_dw_conv2d(x, k, b, (1, 1), (2, 3), 3).square().sum()

    eager = torch.autograd.grad(loss(*leaves), leaves)
    compiled = torch.autograd.grad(torch.compile(loss, backend="aot_eager", fullgraph=True)(*leaves), leaves)
    for c, e in zip(compiled, eager):
        assert rel_err(c, e) < TOL


def test_empty_batch_gives_empty_output_and_zero_kernel_gradient(launched):
    x = torch.zeros(0, 3, 6, 5, requires_grad=True)
    k = torch.randn(3, 1, 5, 5, requires_grad=True)
    y = direct_conv.direct_dw_conv2d(x, k, None, (1, 1), (2, 2), 3)
    gx, gk = torch.autograd.grad(y, (x, k), torch.zeros_like(y))
    assert y.shape == (0, 3, 6, 5) and gx.shape == x.shape and gk.shape == k.shape and not gk.any()


def test_only_the_input_gradient_launches_no_kernel_gradient(launched):
    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    y = direct_conv.direct_dw_conv2d(x, torch.randn(3, 1, 5, 5), None, (1, 1), (2, 2), 3)
    y.sum().backward()
    assert launched == {"dw_conv2d_patches"}, launched


def test_kernel_gradient_is_deterministic(launched):
    torch.manual_seed(0)
    x = torch.randn(3, 2, 19, 21, requires_grad=True)
    k = torch.randn(2, 1, 9, 7, requires_grad=True)
    y = direct_conv.direct_dw_conv2d(x, k, None, (1, 1), (4, 3), 2)
    dy = torch.randn_like(y)
    first, second = (torch.autograd.grad(y, k, dy, retain_graph=True)[0] for _ in range(2))
    assert torch.equal(first, second)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_direct_custom_ops_pass_opcheck(launched, layout):
    """The ops' fake implementations give the real outputs' shapes, dtypes and strides (what
    torch.compile relies on), forward and backward: the output and the input gradient have the
    input's layout (channels-last or contiguous)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 8)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    k, b = torch.randn(6, 1, 7, 5), torch.randn(6)
    call = direct_conv.prepare(x, k.shape, b, (1, 1), (3, 2), 6)
    forward = torch.ops.dcls_core.direct_dw_conv2d.default
    backward = torch.ops.dcls_core.direct_dw_conv2d_backward.default
    y = forward(call.input, k, call.bias, *call.settings)
    dy = torch.randn_like(y)
    padding, _, dtype = call.settings
    for result in (
        torch.library.opcheck(forward, (call.input.requires_grad_(), k.requires_grad_(), b, *call.settings)),
        torch.library.opcheck(backward, (dy, call.input.detach(), k.detach(), b, padding, dtype, True, True, True)),
    ):
        assert set(result.values()) == {"SUCCESS"}, result
    real_dx = backward(dy, x, k.detach(), None, padding, dtype, True, False, False)[0]
    with FakeTensorMode() as mode:
        fake_y = forward(mode.from_tensor(x), mode.from_tensor(k), mode.from_tensor(b), *call.settings)
        fake_dx = backward(
            mode.from_tensor(dy), mode.from_tensor(x), mode.from_tensor(k), None, padding, dtype, True, False, False
        )[0]
    assert fake_y.stride() == y.stride() == x.stride()
    assert fake_dx.stride() == real_dx.stride() == x.stride()


@pytest.mark.parametrize(
    "N,C,H,W,kh,kw,ph,pw",
    [
        (2, 3, 5, 6, 3, 3, 3, 2),  # padding beyond the kernel: cut rows of the gradient's copy
        (2, 3, 5, 6, 3, 3, 1, 1),
        (2, 3, 5, 6, 3, 3, 0, 4),
        (2, 2, 8, 7, 23, 23, 11, 11),  # the model's kernel on the last stage's plane, uncut
        (3, 2, 20, 19, 9, 7, 4, 3),  # several patches each way
    ],
)
def test_programs_read_only_inside_the_padded_copies(launched, monkeypatch, N, C, H, W, kh, kw, ph, pw):
    """Every padded copy sits between two guard blocks of NaN: a program that read outside its copy
    (padding beyond the kernel moves the output gradient's rows above the copy) would turn the
    results NaN; they stay equal to float64 ``F.conv2d``."""
    real = direct_conv._padded

    def guarded(*args):
        out = real(*args)
        guard = out.numel()
        store = torch.full((guard * 3,), float("nan"), dtype=out.dtype)
        inner = store[guard : 2 * guard].view(out.shape)
        inner.copy_(out)
        return inner

    monkeypatch.setattr(direct_conv, "_padded", guarded)
    torch.manual_seed(0)
    x = torch.randn(N, C, H, W, dtype=torch.float64, requires_grad=True)
    k = torch.randn(C, 1, kh, kw, dtype=torch.float64, requires_grad=True)
    want = F.conv2d(x, k, None, 1, (ph, pw), 1, C)
    dy = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, (x, k), dy)
    x32, k32 = (t.detach().float().requires_grad_() for t in (x, k))
    got = direct_conv.direct_dw_conv2d(x32, k32, None, (1, 1), (ph, pw), C)
    grads = torch.autograd.grad(got, (x32, k32), dy.float())
    assert rel_err(got, want) < TOL
    for a, r in zip(grads, want_grads):
        assert rel_err(a, r) < TOL


@pytest.mark.parametrize("needs", [(True, True, True), (True, True, False), (False, True, False), (True, False, True)])
def test_backward_fake_matches_real_outputs(launched, needs):
    """Shapes, dtypes and strides of every backward output, real against fake, for a kernel with
    permuted strides and a bias whose gradient may be unwanted."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 8).contiguous(memory_format=torch.channels_last)
    k = torch.randn(1, 7, 5, 4).permute(3, 0, 1, 2)  # (4, 1, 7, 5), not contiguous
    b = torch.randn(4)
    call = direct_conv.prepare(x, k.shape, b, (1, 1), (3, 2), 4)
    padding, _, dtype = call.settings
    backward = torch.ops.dcls_core.direct_dw_conv2d_backward.default
    dy = torch.randn(2, 4, 9, 8)
    real = backward(dy, x, k, b, padding, dtype, *needs)
    with FakeTensorMode() as mode:
        fake = backward(*(mode.from_tensor(t) for t in (dy, x, k, b)), padding, dtype, *needs)
    for r, f in zip(real, fake):
        assert (r.shape, r.dtype, r.stride()) == (f.shape, f.dtype, f.stride())


@pytest.mark.parametrize("grad_bk", [64, 128, 256])
@pytest.mark.parametrize("N,C,H,W,kh,kw,ph,pw", [(2, 2, 20, 19, 23, 23, 11, 11), (3, 2, 9, 40, 7, 5, 3, 2)])
def test_kernel_gradient_per_tile_width(launched, monkeypatch, grad_bk, N, C, H, W, kh, kw, ph, pw):
    """The kernel gradient's programs cover 64 to 256 window positions each (1 to 8 window rows
    of a step, the last step cut at the window's end); every width equals float64 ``F.conv2d``."""
    monkeypatch.setattr(direct_conv, "_GRAD_BK", grad_bk)
    torch.manual_seed(0)
    x = torch.randn(N, C, H, W, dtype=torch.float64)
    k = torch.randn(C, 1, kh, kw, dtype=torch.float64, requires_grad=True)
    want = F.conv2d(x, k, None, 1, (ph, pw), 1, C)
    dy = torch.randn_like(want)
    (want_dk,) = torch.autograd.grad(want, (k,), dy)
    k32 = k.detach().float().requires_grad_()
    got = direct_conv.direct_dw_conv2d(x.float(), k32, None, (1, 1), (ph, pw), C)
    (dk,) = torch.autograd.grad(got, (k32,), dy.float())
    assert rel_err(dk, want_dk) < TOL
    assert "dw_conv2d_patches_kernel_grad" in launched


def test_contiguous_output_switch(launched, monkeypatch):
    """``$DCLS_DIRECT_OUTPUT=contiguous``: a channels-last input's output stays in the programs'
    contiguous layout, real and fake alike, with the same values; the input gradient keeps the
    input's layout."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    k = torch.randn(4, 1, 7, 5)
    channels_last = direct_conv.direct_dw_conv2d(x, k, None, (1, 1), (3, 2), 4)
    monkeypatch.setattr(direct_conv, "_CONTIGUOUS_OUTPUT", True)  # as $DCLS_DIRECT_OUTPUT=contiguous at import
    y = direct_conv.direct_dw_conv2d(x, k, None, (1, 1), (3, 2), 4)
    (dx,) = torch.autograd.grad(y, (x,), torch.randn_like(y))
    call = direct_conv.prepare(x, k.shape, None, (1, 1), (3, 2), 4)
    plain = x.detach()
    with FakeTensorMode() as mode:
        fake = torch.ops.dcls_core.direct_dw_conv2d.default(
            mode.from_tensor(plain), mode.from_tensor(k), None, *call.settings
        )
    assert channels_last.is_contiguous(memory_format=torch.channels_last) and not channels_last.is_contiguous()
    assert y.is_contiguous() and fake.stride() == y.stride()
    assert torch.equal(y, channels_last) and dx.stride() == x.stride()
