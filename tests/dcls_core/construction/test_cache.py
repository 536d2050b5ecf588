"""The layers' eval-mode kernel cache: built once, rebuilt whenever a parameter changes."""

from __future__ import annotations

import torch

import dcls_core
from dcls_core.construction.reference import construct_kernel
from dcls_core.conv.reference import conv_nd

from dcls_testing import randomise, rel_err


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
