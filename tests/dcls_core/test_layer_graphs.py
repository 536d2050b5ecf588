"""DCLS layers' eager training calls replayed as CUDA graphs (dcls_core.conv.layer_graphs).

The order rules run on the CPU; the recordings need a GPU: every graphed step is compared with the
same steps run eagerly (``DCLS_LAYER_GRAPHS=0``) on a copy of the model."""

from __future__ import annotations

import copy
import weakref

import pytest
import torch
from torch import nn

from dcls_core import Dcls2d
from dcls_core.conv import layer_graphs
from dcls_core.conv.layer_graphs import _Generation


class _Alive:
    pass


# -- the order rules (CPU) -------------------------------------------------------------------
def test_generation_records_until_its_first_later_replay():
    g = _Generation(pool=None)
    assert g.may_record()
    f1, f2, b2, b1 = (g.recorded() for _ in range(4))  # each recording replays at once
    assert (f1, f2, b2, b1) == (0, 1, 2, 3) and g.may_record()
    assert g.may_replay(f1)  # a new cycle: nothing waits for a backward
    g.replayed(f1)
    assert not g.may_record()  # sealed: its memory is planned for the recorded order
    assert g.may_replay(f2) and g.may_replay(b1)  # later in the order
    alive = _Alive()
    g.waiting[f2] = weakref.ref(alive)
    g.replayed(b2)
    assert g.may_replay(b1)
    assert not g.may_replay(f2)  # earlier in the order: only as a new cycle, and f2 waits for its backward
    g.waiting.pop(f2)
    assert g.may_replay(f2)  # a new cycle


def test_generation_new_cycle_waits_for_open_backwards():
    g = _Generation(pool=None)
    f1, f2, b2, b1 = (g.recorded() for _ in range(4))
    g.replayed(f1)
    alive = _Alive()
    g.waiting[f1] = weakref.ref(alive)
    g.replayed(f2)
    assert not g.may_replay(f1)  # f1's last call still waits for its backward: its memory is in use
    assert g.may_replay(b2) and g.may_replay(b1)
    del alive  # its autograd graph is gone: no backward will come
    assert g.may_replay(f1)


def test_generation_skipping_graphs_keeps_the_order():
    g = _Generation(pool=None)
    indices = [g.recorded() for _ in range(6)]
    alive = _Alive()
    g.replayed(indices[0])
    g.waiting[indices[0]] = weakref.ref(alive)
    g.replayed(indices[3])  # 1 and 2 ran eagerly this cycle
    assert g.may_replay(indices[4]) and g.may_replay(indices[5])
    assert not g.may_replay(indices[1]) and not g.may_replay(indices[2])  # earlier: a new cycle, and 0 waits


def test_switch_values(monkeypatch):
    monkeypatch.setenv(layer_graphs.ENV_VAR, "0")
    assert not layer_graphs.enabled()
    monkeypatch.setenv(layer_graphs.ENV_VAR, "1")
    assert layer_graphs.enabled()
    monkeypatch.delenv(layer_graphs.ENV_VAR)
    assert layer_graphs.enabled() == (layer_graphs.DEFAULT == "1")
    monkeypatch.setenv(layer_graphs.ENV_VAR, "sometimes")
    with pytest.raises(ValueError, match="DCLS_LAYER_GRAPHS"):
        layer_graphs.enabled()


def test_cpu_calls_are_never_recorded():
    layer = Dcls2d(4, 4, kernel_count=3, dilated_kernel_size=7, padding=3, groups=4)
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    for _ in range(3):
        layer(x).sum().backward()
    assert layer_graphs.recorded(layer) == []


# -- recordings (CUDA) -----------------------------------------------------------------------
class _Stage(nn.Module):
    """Three depthwise DCLS layers sharing P and SIG, with the layer norms and residuals of a
    ConvNeXt stage around them (channels-last, as timm lays them out)."""

    def __init__(self, channels: int = 32, kernel: int = 17, count: int = 8) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            Dcls2d(
                channels, channels, kernel_count=count, dilated_kernel_size=kernel, padding=kernel // 2, groups=channels
            )
            for _ in range(3)
        )
        for conv in self.convs[1:]:
            conv.P, conv.SIG = self.convs[0].P, self.convs[0].SIG
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        for conv in self.convs:
            y = conv(x).permute(0, 2, 3, 1)
            x = x + self.norm(y).permute(0, 3, 1, 2)
        return x


def _pair(monkeypatch, **kwargs):
    torch.manual_seed(0)
    graphed = _Stage(**kwargs).cuda()
    eager = copy.deepcopy(graphed)
    return graphed, eager


def _step(model, x, env, monkeypatch, opt=None, backward=True):
    monkeypatch.setenv(layer_graphs.ENV_VAR, env)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = model(x)
    loss = y.float().square().mean()
    if backward:
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return y.detach().clone()


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _input(shape=(4, 32, 16, 15), seed=1):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(shape, device="cuda", generator=g)
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.cuda
def test_graphed_training_steps_equal_eager_steps(monkeypatch):
    graphed, eager = _pair(monkeypatch)
    opt_g = torch.optim.SGD(graphed.parameters(), lr=0.1)
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.1)
    for step in range(5):
        x = _input(seed=step).requires_grad_(False)
        y_g = _step(graphed, x, "1", monkeypatch)
        y_e = _step(eager, x, "0", monkeypatch)
        torch.testing.assert_close(y_g, y_e, rtol=1e-2, atol=1e-2)
        g_g, g_e = _grads(graphed), _grads(eager)
        assert g_g.keys() == g_e.keys()
        for name in g_e:
            torch.testing.assert_close(g_g[name], g_e[name], rtol=1e-3, atol=1e-5, msg=f"step {step}: {name}")
        opt_g.step(), opt_e.step()
        opt_g.zero_grad(set_to_none=True), opt_e.zero_grad(set_to_none=True)
    for conv in graphed.convs:  # warmed up (step 0), recorded (step 1), replayed (steps 2-4)
        assert layer_graphs.recorded(conv) == [(True, True, 3)]
    for conv in eager.convs:
        assert layer_graphs.recorded(conv) == []


@pytest.mark.cuda
def test_gradient_accumulation_and_a_new_shape(monkeypatch):
    graphed, eager = _pair(monkeypatch)
    shapes = [(4, 32, 16, 15)] * 3 + [(3, 32, 16, 15)] * 3 + [(4, 32, 16, 15)] * 2
    for i, shape in enumerate(shapes):  # two micro-batches per step: gradients add up
        for model, env in ((graphed, "1"), (eager, "0")):
            _step(model, _input(shape, seed=2 * i), env, monkeypatch)
            _step(model, _input(shape, seed=2 * i + 1), env, monkeypatch)
        g_g, g_e = _grads(graphed), _grads(eager)
        for name in g_e:
            torch.testing.assert_close(g_g[name], g_e[name], rtol=1e-3, atol=1e-5, msg=f"step {i}: {name}")
        for model in (graphed, eager):
            model.zero_grad(set_to_none=True)
    assert [len(layer_graphs.recorded(conv)) for conv in graphed.convs] == [2, 2, 2]  # two signatures


@pytest.mark.cuda
def test_second_call_before_the_backward_runs_eagerly(monkeypatch):
    graphed, eager = _pair(monkeypatch)
    for _ in range(3):  # warm up, record, replay
        _step(graphed, _input(), "1", monkeypatch)
        graphed.zero_grad(set_to_none=True)
    outs = {}
    for model, env in ((graphed, "1"), (eager, "0")):
        monkeypatch.setenv(layer_graphs.ENV_VAR, env)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y1, y2 = model(_input(seed=5)), model(_input(seed=6))  # the second may not reuse y1's memory
        (y1.float().square().mean() + 2 * y2.float().square().mean()).backward()
        outs[env] = (y1.detach().clone(), y2.detach().clone(), _grads(model))
    torch.testing.assert_close(outs["1"][0], outs["0"][0], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(outs["1"][1], outs["0"][1], rtol=1e-2, atol=1e-2)
    for name, grad in outs["0"][2].items():
        torch.testing.assert_close(outs["1"][2][name], grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.cuda
def test_forward_without_backward_then_steps(monkeypatch):
    graphed, eager = _pair(monkeypatch)
    for i in range(6):
        backward = i != 3  # step 3: a forward whose autograd graph is dropped
        y_g = _step(graphed, _input(seed=i), "1", monkeypatch, backward=backward)
        y_e = _step(eager, _input(seed=i), "0", monkeypatch, backward=backward)
        torch.testing.assert_close(y_g, y_e, rtol=1e-2, atol=1e-2)
        if backward:
            for name, grad in _grads(eager).items():
                torch.testing.assert_close(_grads(graphed)[name], grad, rtol=1e-3, atol=1e-5, msg=f"{i}: {name}")
        graphed.zero_grad(set_to_none=True), eager.zero_grad(set_to_none=True)
    assert all(replays >= 2 for conv in graphed.convs for *_, replays in layer_graphs.recorded(conv))


@pytest.mark.cuda
def test_leaf_input_gradient_is_its_own_memory(monkeypatch):
    monkeypatch.setenv(layer_graphs.ENV_VAR, "1")
    torch.manual_seed(0)
    layer = Dcls2d(32, 32, kernel_count=8, dilated_kernel_size=17, padding=8, groups=32).cuda()
    ref = copy.deepcopy(layer)
    grads = []
    for i in range(4):
        x = _input(seed=i).requires_grad_(True)
        layer(x).square().mean().backward()
        grads.append(x.grad)
        x_ref = x.detach().clone().requires_grad_(True)
        monkeypatch.setenv(layer_graphs.ENV_VAR, "0")
        ref(x_ref).square().mean().backward()
        monkeypatch.setenv(layer_graphs.ENV_VAR, "1")
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-6)
        grads.append(x_ref.grad)
    for i in range(0, len(grads), 2):  # earlier gradients unchanged by later replays
        torch.testing.assert_close(grads[i], grads[i + 1], rtol=1e-4, atol=1e-6)
    assert layer_graphs.recorded(layer) == [(True, True, 2)]


@pytest.mark.cuda
def test_switch_off_and_eval_calls_are_not_recorded(monkeypatch):
    graphed, _ = _pair(monkeypatch)
    for _ in range(3):
        _step(graphed, _input(), "0", monkeypatch)
    assert all(layer_graphs.recorded(conv) == [] for conv in graphed.convs)
    graphed.eval()
    for _ in range(3):
        _step(graphed, _input(), "1", monkeypatch)
    assert all(layer_graphs.recorded(conv) == [] for conv in graphed.convs)


@pytest.mark.cuda
def test_second_backward_through_a_replayed_call_raises(monkeypatch):
    graphed, _ = _pair(monkeypatch)
    for _ in range(3):  # warm up, record, replay
        _step(graphed, _input(), "1", monkeypatch)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = graphed(_input(seed=9)).float().square().mean()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="DCLS_LAYER_GRAPHS=0"):  # its saved tensors may be overwritten
        loss.backward()


@pytest.mark.cuda
def test_strided_input_is_copied_dense(monkeypatch):
    graphed, eager = _pair(monkeypatch)
    for step in range(4):
        x = _input((4, 32, 16, 30), seed=step)[..., ::2]  # neither contiguous nor channels-last
        assert not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
        y_g = _step(graphed, x, "1", monkeypatch)
        y_e = _step(eager, x, "0", monkeypatch)
        torch.testing.assert_close(y_g, y_e, rtol=1e-2, atol=1e-2)
        for name, grad in _grads(eager).items():
            torch.testing.assert_close(_grads(graphed)[name], grad, rtol=1e-3, atol=1e-5, msg=f"{step}: {name}")
        graphed.zero_grad(set_to_none=True), eager.zero_grad(set_to_none=True)
    assert layer_graphs.recorded(graphed.convs[0]) == [(True, True, 2)]
