"""Helpers shared by the test modules: float64 comparisons, layer randomisation, the torch.compile
check, one float64 depthwise-convolution case and a record of the Triton programs a module launches.

Errors are relative by norm, ``||got - want|| / ||want||``, against a float64 reference, with
one tolerance per dtype.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

import dcls_core

# relative error by norm, per dtype of the result
TOL = {"fp32": 2e-5, "bf16": 3e-2, "fp16": 8e-3}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def record_programs(monkeypatch, module) -> set:
    """Names of the Triton programs that ``module`` (one whose ``_programs()`` returns its programs
    module) launches from now on, in the set returned."""
    names: set = set()
    real = module._programs()

    class Recording:
        def __getattr__(self, name):
            names.add(name)
            return getattr(real, name)

    monkeypatch.setattr(module, "_programs", Recording)
    return names


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.isfinite(got).all(), "non-finite values"
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-300)).item()


def run_layer(layer, x, grad_out, autocast_dtype=None):
    """Output and gradients (input and every parameter) of one forward + backward."""
    x = x.detach().clone().requires_grad_(True)
    params = dict(layer.named_parameters())
    with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        out = layer(x)
    grads = torch.autograd.grad(out, [x, *params.values()], grad_out.to(out.dtype))
    return out.detach(), dict(zip(["input", *params], grads))


def randomise(layer, seed=0):
    """Fractional positions spread over the kernel, sigmas away from 0, non-zero bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, lim in enumerate(layer.position_limits()):
            P_i = layer.P.select(0, i)
            P_i.copy_((torch.rand(P_i.shape, generator=g) * 2 - 1) * max(lim - 0.6, 0.3))
        if layer.SIG is not None:
            layer.SIG.copy_(torch.rand(layer.SIG.shape, generator=g) * 0.6 + 0.1)
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g))
    return layer


def compare_to_fp64(monkeypatch, layer, x, fast_impl, tol, autocast_dtype=None, device="cpu"):
    """``layer`` on ``device`` with ``DCLS_IMPL=fast_impl`` vs its float64 reference copy on the CPU."""
    ref = copy.deepcopy(layer).double().cpu()
    monkeypatch.setenv("DCLS_IMPL", "reference")
    grad_out = torch.randn(ref(x.double()).shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    want_out, want = run_layer(ref, x.double(), grad_out)
    monkeypatch.setenv("DCLS_IMPL", fast_impl)
    got_out, got = run_layer(layer.to(device), x.to(device), grad_out.float().to(device), autocast_dtype)
    errors = {"output": rel_err(got_out.cpu(), want_out)}
    errors.update({k: rel_err(got[k].cpu(), want[k]) for k in want})
    bad = {k: e for k, e in errors.items() if not e <= tol}
    assert not bad, f"rel errors above {tol}: {bad}"
    return errors


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dw = dcls_core.Dcls2d(8, 8, kernel_count=6, dilated_kernel_size=9, padding=4, groups=8)
        self.mix = torch.nn.Conv2d(8, 8, 1)
        self.delay = dcls_core.Dcls1d(8, 4, kernel_count=1, dilated_kernel_size=7, padding=3)

    def forward(self, x):
        y = self.mix(torch.nn.functional.gelu(self.dw(x)))
        return self.delay(y.mean(2))


def compile_matches_eager(device, backend):
    torch.manual_seed(0)
    net = SmallNet().to(device)
    x = torch.randn(4, 8, 48, 64, device=device)
    eager_out = net(x)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(net.parameters()))
    compiled = torch.compile(net, backend=backend, fullgraph=True)  # a graph break fails the test
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
    assert rel_err(out, eager_out) < 1e-5
    for g, e in zip(grads, eager_grads):
        assert rel_err(g, e) < 1e-4
    net.eval()
    with torch.no_grad():
        assert rel_err(compiled(x), net(x)) < 1e-5


def float64_depthwise_case(shape, seed: int = 3):
    """A depthwise ``F.conv2d`` problem in float64: ``((x, k, b), dy, out, (dx, dk, db))`` for
    ``shape = (N, C, H, W, kH, kW, pH, pW)``, the kernel scaled to unit output variance."""
    N, C, H, W, KH, KW, ph, pw = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, dtype=torch.float64, generator=g)
    k = torch.randn(C, 1, KH, KW, dtype=torch.float64, generator=g) / (KH * KW) ** 0.5
    b = torch.randn(C, dtype=torch.float64, generator=g)
    leaves = [t.clone().requires_grad_() for t in (x, k, b)]
    want = F.conv2d(*leaves, padding=(ph, pw), groups=C)
    dy = torch.randn(want.shape, dtype=torch.float64, generator=g)
    return (x, k, b), dy, want.detach(), torch.autograd.grad(want, leaves, dy)


def check_depthwise_against_float64(conv, shape, mode: str, tol: float) -> dict:
    """``conv(x, k, b, stride, padding, groups)`` on CUDA in ``mode`` (fp32 or an autocast
    dtype) vs float64 ``F.conv2d``: output and the three gradients within ``tol``."""
    (x, k, b), dy, want, want_grads = float64_depthwise_case(shape)
    xc, kc, bc = (t.float().cuda().requires_grad_() for t in (x, k, b))
    with torch.autocast("cuda", dtype=AUTOCAST.get(mode, torch.float32), enabled=mode in AUTOCAST):
        got = conv(xc, kc, bc, (1, 1), shape[-2:], shape[1])
    assert got.dtype == AUTOCAST.get(mode, torch.float32)
    grads = torch.autograd.grad(got, (xc, kc, bc), dy.cuda().to(got.dtype))
    errors = {"output": rel_err(got.cpu(), want)}
    errors.update({n: rel_err(a.cpu(), r) for n, a, r in zip(("input", "kernel", "bias"), grads, want_grads)})
    assert all(e < tol for e in errors.values()), errors
    return errors


def png_size(path) -> tuple[int, int]:
    """(width, height) in pixels of a PNG file, read from its IHDR chunk (no image library)."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG file"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
