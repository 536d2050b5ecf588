"""DCLS layers' eager training calls replayed as CUDA graphs (dcls_core.conv.layer_graphs).

Every graphed step is compared with the same steps run eagerly (``DCLS_LAYER_GRAPHS=0``) on a copy
of the model. The graph tests run twice: on CUDA, and on the CPU under the operator-level
emulation of CUDA graphs in ``tests/emulated_cuda_graphs.py``, which checks the bookkeeping
(order, buffers, gradients) without a GPU, though not the memory pools."""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import warnings
import weakref

import pytest
import torch
from torch import nn

from dcls_core import Dcls2d
from dcls_core.conv import layer_graphs
from dcls_core.conv.layer_graphs import _Generation

from emulated_cuda_graphs import layer_graphs_device


class _Alive:
    pass


# -- the order rules -------------------------------------------------------------------------
def test_a_generation_records_until_its_first_later_replay():
    g = _Generation(pool=None)
    assert g.may_record()
    layers = [g.recorded() for _ in range(3)]  # each recording's forward replays at once
    assert layers == [0, 1, 2] and g.may_record()
    for n in layers:
        g.waiting[n] = weakref.ref(alive := _Alive())
        del alive  # (tokens die with their autograd graphs)
    assert g.may_replay_backward(2) is False  # its token is gone: no backward is expected
    assert g.may_replay_forward(0)  # a new cycle: nothing waits for a backward
    g.replayed_forward(0)
    assert not g.may_record()  # sealed: its memory is planned for the recorded order


def _replayed(count: int, forwards: tuple[int, ...]) -> tuple[_Generation, dict[int, _Alive]]:
    """A sealed generation of ``count`` layers whose ``forwards`` replayed in this cycle, in order,
    each waiting for its backward (the tokens keep them waiting)."""
    g = _Generation(pool=None)
    for _ in range(count):
        g.recorded()
    tokens = {}
    for n in forwards:
        assert g.may_replay_forward(n)
        g.replayed_forward(n)
        tokens[n] = _Alive()
        g.waiting[n] = weakref.ref(tokens[n])
    return g, tokens


def test_forwards_in_order_then_backwards_in_reverse():
    g, tokens = _replayed(3, (0, 1, 2))
    assert not g.may_replay_forward(1)  # 1 and 2 still wait for their backwards
    assert not g.may_replay_backward(0)  # 1 and 2 first: 0's temporaries may lie on their saved tensors
    assert g.may_replay_backward(2)
    g.replayed_backward(2)
    assert not g.may_replay_backward(2)  # once per forward
    assert g.may_replay_backward(1)
    g.replayed_backward(1)
    assert not g.may_replay_forward(2)  # a forward after a backward: a new cycle, and 0 still waits
    g.replayed_backward(0)
    assert g.may_replay_forward(0)  # nothing waits: a new cycle


def test_a_backward_out_of_reverse_order_is_refused():
    g, tokens = _replayed(3, (0, 1, 2))
    assert not g.may_replay_backward(1)  # 2 waits: 1's backward temporaries may lie on 2's saved tensors
    assert not g.may_replay_backward(0)
    assert g.may_replay_backward(2)
    del tokens[2]  # 2's autograd graph is gone: no backward will come
    assert g.may_replay_backward(1)


def test_skipped_layers_keep_the_order():
    g, tokens = _replayed(6, (0, 3))  # 1 and 2 ran eagerly this cycle
    assert g.may_replay_forward(4) and g.may_replay_forward(5)
    assert not g.may_replay_forward(1) and not g.may_replay_forward(2)  # earlier: a new cycle, and 0, 3 wait


def test_switch_values(monkeypatch):
    monkeypatch.setenv(layer_graphs.ENV_VAR, "0")
    assert not layer_graphs.enabled()
    monkeypatch.setenv(layer_graphs.ENV_VAR, "1")
    assert layer_graphs.enabled()
    monkeypatch.setenv(layer_graphs.ENV_VAR, " Small ")
    assert layer_graphs.enabled() and layer_graphs.mode() == "small"
    monkeypatch.delenv(layer_graphs.ENV_VAR)
    assert layer_graphs.enabled() == (layer_graphs.DEFAULT != "0")
    monkeypatch.setenv(layer_graphs.ENV_VAR, "sometimes")
    with pytest.raises(ValueError, match="DCLS_LAYER_GRAPHS"):
        layer_graphs.enabled()


def test_small_admits_inputs_up_to_the_size_per_sample(monkeypatch):
    layer = Dcls2d(3, 3, kernel_count=3, dilated_kernel_size=5, padding=2, groups=3)
    monkeypatch.setattr(layer_graphs, "SMALL_SAMPLE_ELEMENTS", 3 * 4 * 4)
    small, large = torch.empty(2, 3, 4, 4), torch.empty(2, 3, 4, 5)
    monkeypatch.setenv(layer_graphs.ENV_VAR, "small")
    assert layer_graphs.admits(layer, small) and not layer_graphs.admits(layer, large)
    assert layer_graphs.admits(layer, torch.empty(64, 3, 4, 4))  # per sample: any batch size
    assert layer_graphs.admits(layer, torch.empty(3, 4, 4)) and not layer_graphs.admits(layer, torch.empty(3, 4, 5))
    assert layer_graphs.admits(nn.Identity(), torch.empty(8, 48)) and not layer_graphs.admits(nn.Identity(), large)
    monkeypatch.setenv(layer_graphs.ENV_VAR, "1")
    assert layer_graphs.admits(layer, small) and layer_graphs.admits(layer, large)
    monkeypatch.setenv(layer_graphs.ENV_VAR, "0")
    assert not layer_graphs.admits(layer, small)


def test_cpu_calls_are_never_recorded(monkeypatch):
    monkeypatch.setenv(layer_graphs.ENV_VAR, "1")
    layer = Dcls2d(4, 4, kernel_count=3, dilated_kernel_size=7, padding=3, groups=4)
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    for _ in range(3):
        layer(x).sum().backward()
    assert layer_graphs.recorded(layer) == []


@pytest.fixture(params=["emulated", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request, monkeypatch):
    return layer_graphs_device(request.param, monkeypatch)


# -- recordings --------------------------------------------------------------------------------
class _Stage(nn.Module):
    """Three depthwise DCLS layers sharing P and SIG, with the layer norms and residuals of a
    ConvNeXt stage around them (channels-last, as timm lays them out)."""

    def __init__(self, channels: int = 32, kernel: int = 17, count: int = 8) -> None:
        super().__init__()
        dw = dict(kernel_count=count, dilated_kernel_size=kernel, padding=kernel // 2, groups=channels)
        self.convs = nn.ModuleList(Dcls2d(channels, channels, **dw) for _ in range(3))
        for conv in self.convs[1:]:
            conv.P, conv.SIG = self.convs[0].P, self.convs[0].SIG
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        for conv in self.convs:
            y = conv(x).permute(0, 2, 3, 1)
            x = x + self.norm(y).permute(0, 3, 1, 2)
        return x


def _pair(device):
    torch.manual_seed(0)
    graphed = _Stage().to(device, torch.float64 if device == "cpu" else torch.float32)
    return graphed, copy.deepcopy(graphed)


def _autocast(device):
    if device == "cpu":  # float64 throughout: equal to the last bit
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


def _close(got, want, msg="", output=False):
    """Equal as float64 (emulated: the same operations); on CUDA within bf16 rounding (``output``:
    a model output) or float32 gradient sums."""
    tol = {} if got.dtype == torch.float64 else dict(rtol=1e-2, atol=1e-2) if output else dict(rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(got, want, msg=msg or None, **tol)


def _close_out(got, want):
    _close(got, want, output=True)


def _step(model, x, env, monkeypatch, backward=True):
    monkeypatch.setenv(layer_graphs.ENV_VAR, env)
    with _autocast(x.device.type):
        y = model(x)
    if backward:
        y.float().square().mean().backward()
    return y.detach().clone()


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _same_grads(graphed, eager, msg=""):
    want = _grads(eager)
    got = _grads(graphed)
    assert got.keys() == want.keys()
    for name in want:
        _close(got[name], want[name], msg=f"{msg} {name}")


def _input(device, shape=(4, 32, 16, 15), seed=1):
    g = torch.Generator(device=device).manual_seed(seed)
    dtype = torch.float64 if device == "cpu" else torch.float32
    x = torch.randn(shape, device=device, generator=g, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last)


def test_graphed_training_steps_equal_eager_steps(device, monkeypatch):
    graphed, eager = _pair(device)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (graphed, eager)]
    for step in range(5):
        x = _input(device, seed=step)
        _close_out(_step(graphed, x, "1", monkeypatch), _step(eager, x, "0", monkeypatch))
        _same_grads(graphed, eager, f"step {step}")  # the recording step (1) too
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
    for conv in graphed.convs:  # warmed up (step 0), recorded (step 1), replayed (steps 2-4)
        assert layer_graphs.recorded(conv) == [(True, True, 3)]
    for conv in eager.convs:
        assert layer_graphs.recorded(conv) == []


def test_small_records_only_the_small_calls(device, monkeypatch):
    small_shape, large_shape = (4, 32, 8, 7), (4, 32, 16, 15)
    monkeypatch.setattr(layer_graphs, "SMALL_SAMPLE_ELEMENTS", math.prod(small_shape[1:]))
    graphed, eager = _pair(device)
    for shape in (small_shape, large_shape):
        for step in range(3):  # warm up, record, replay
            x = _input(device, shape, seed=step)
            _close_out(_step(graphed, x, "small", monkeypatch), _step(eager, x, "0", monkeypatch))
            _same_grads(graphed, eager, f"{shape} step {step}")
            for model in (graphed, eager):
                model.zero_grad(set_to_none=True)
    for conv in graphed.convs:  # the small signature recorded and replayed once; the large one never kept
        assert layer_graphs.recorded(conv) == [(True, True, 1)]


def test_replaced_parameters_let_go_of_their_recordings(device, monkeypatch):
    """Keys recorded on parameters a layer no longer has are forgotten, with their graphs, once the
    layer's keys are all taken: the new parameters record, and the old graphs are freed."""
    graphed, eager = _pair(device)
    x = _input(device)
    for _ in range(3):  # warm up, record, replay: one key per layer
        _step(graphed, x, "1", monkeypatch)
    old = [weakref.ref(next(iter(layer_graphs._LAYERS[conv].values()))) for conv in graphed.convs]
    for model in (graphed, eager):  # new parameter objects on new memory, same values
        model.zero_grad(set_to_none=True)
        for conv in model.convs:
            conv.weight = nn.Parameter(conv.weight.detach().clone())
    monkeypatch.setattr(layer_graphs, "MAX_KEYS", 1)  # the old key fills the layer's keys
    for step in range(3):
        _close_out(_step(graphed, x, "1", monkeypatch), _step(eager, x, "0", monkeypatch))
        _same_grads(graphed, eager, f"step {step}")
        for model in (graphed, eager):
            model.zero_grad(set_to_none=True)
    gc.collect()
    assert all(ref() is None for ref in old)  # the old recordings are gone
    for conv in graphed.convs:  # the new parameters' key: warmed up, recorded, replayed
        assert layer_graphs.recorded(conv) == [(True, True, 1)]
        (entry,) = layer_graphs._LAYERS[conv].values()
        assert entry.param_memory[0] == conv.weight.data_ptr()


def test_a_warm_up_call_measures_its_paths_by_device_time(device, monkeypatch):
    """The first call of a signature that replays later chooses its paths by what a replay pays
    (the device's time); an eager model's calls by their whole time."""
    from dcls_core.conv import autotune

    monkeypatch.setenv("DCLS_CONV", "autotune")  # every path that supports the call is measured, on any device
    autotune.clear()
    seen = []
    real = autotune.measure

    def spy(key, candidates, call):
        seen.append(autotune.measures_device_time())
        return real(key, candidates, call)

    monkeypatch.setattr(autotune, "measure", spy)
    # the FFT measured fastest (its CPU ops are the ones whose replay once tripped the emulation)
    times = {"matrix": 1.0, "direct": 1.0, "fft": 0.5, "reference": 1.0}
    monkeypatch.setattr(autotune, "_time_candidates", lambda key, paths, run, clock: {n: times[n] for n in paths})
    try:
        graphed, eager = _pair(device)
        x = _input(device)
        _step(eager, x, "0", monkeypatch)
        eager_seen, seen[:] = list(seen), []
        autotune.clear()
        _step(graphed, x, "1", monkeypatch)
        assert eager_seen and not any(eager_seen)  # a key per input that needs its gradient or not
        assert len(seen) == len(eager_seen) and all(seen)
        assert not autotune.measures_device_time()  # only inside the layer's call
        _step(graphed, x, "1", monkeypatch)  # the recording takes the warm-up's choices: nothing measured
        assert len(seen) == len(eager_seen)
        assert all(layer_graphs.recorded(conv) == [(True, True, 0)] for conv in graphed.convs)
        assert all(text.endswith("|device-time") for text in autotune.state_dict())
    finally:
        autotune.clear()


def test_gradient_accumulation_and_a_new_shape(device, monkeypatch):
    graphed, eager = _pair(device)
    shapes = [(4, 32, 16, 15)] * 3 + [(3, 32, 16, 15)] * 3 + [(4, 32, 16, 15)] * 2
    for i, shape in enumerate(shapes):  # two micro-batches per step: gradients add up
        for model, env in ((graphed, "1"), (eager, "0")):
            _step(model, _input(device, shape, seed=2 * i), env, monkeypatch)
            _step(model, _input(device, shape, seed=2 * i + 1), env, monkeypatch)
        _same_grads(graphed, eager, f"step {i}")
        for model in (graphed, eager):
            model.zero_grad(set_to_none=True)
    assert [len(layer_graphs.recorded(conv)) for conv in graphed.convs] == [2, 2, 2]  # two signatures


@pytest.mark.parametrize("regions", ["one per call", "one for both"])
def test_second_call_before_the_backward_runs_eagerly(device, monkeypatch, regions):
    graphed, eager = _pair(device)
    for _ in range(3):  # warm up, record, replay
        _step(graphed, _input(device), "1", monkeypatch)
        graphed.zero_grad(set_to_none=True)
    outs = {}
    for model, env in ((graphed, "1"), (eager, "0")):
        monkeypatch.setenv(layer_graphs.ENV_VAR, env)
        if regions == "one per call":
            with _autocast(device):
                y1 = model(_input(device, seed=5))
            with _autocast(device):
                y2 = model(_input(device, seed=6))  # out of order: eager
        else:
            with _autocast(device):
                y1, y2 = model(_input(device, seed=5)), model(_input(device, seed=6))
        (y1.float().square().mean() + 2 * y2.float().square().mean()).backward()
        outs[env] = (y1.detach().clone(), y2.detach().clone())
    _close_out(outs["1"][0], outs["0"][0])
    _close_out(outs["1"][1], outs["0"][1])
    if regions == "one for both" and device == "cuda":
        # one autocast region casts the bias to bfloat16 once (its cast cache): the eager calls' bias
        # gradients add up in bfloat16 at that cast, the replayed call's in float32 at the parameter
        # (module docstring; one H100: one bfloat16 rounding apart)
        got, want = _grads(graphed), _grads(eager)
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-2, atol=1e-2, msg=name)
    else:
        _same_grads(graphed, eager)
    assert all(replays == 2 for conv in graphed.convs for *_, replays in layer_graphs.recorded(conv))


def test_forward_without_backward_then_steps(device, monkeypatch):
    graphed, eager = _pair(device)
    for i in range(6):
        backward = i != 3  # step 3: a forward whose autograd graph is dropped
        y_g = _step(graphed, _input(device, seed=i), "1", monkeypatch, backward=backward)
        y_e = _step(eager, _input(device, seed=i), "0", monkeypatch, backward=backward)
        _close_out(y_g, y_e)
        if backward:
            _same_grads(graphed, eager, f"step {i}")
        graphed.zero_grad(set_to_none=True), eager.zero_grad(set_to_none=True)
    assert all(replays == 4 for conv in graphed.convs for *_, replays in layer_graphs.recorded(conv))


def test_leaf_input_gradient_is_its_own_memory(device, monkeypatch):
    graphed, eager = _pair(device)
    layer, ref = graphed.convs[0], eager.convs[0]
    kept = []
    for i in range(4):
        x = _input(device, seed=i).requires_grad_(True)
        x_ref = x.detach().clone().requires_grad_(True)
        _step(layer, x, "1", monkeypatch)
        _step(ref, x_ref, "0", monkeypatch)
        _close(x.grad, x_ref.grad)
        kept.append((x.grad, x_ref.grad))
    for got, want in kept:  # earlier gradients unchanged by later replays
        _close(got, want)
    assert layer_graphs.recorded(layer) == [(True, True, 2)]


def test_strided_input_is_copied_dense(device, monkeypatch):
    graphed, eager = _pair(device)
    for step in range(4):
        x = _input(device, (4, 32, 16, 30), seed=step)[..., ::2]  # neither contiguous nor channels-last
        assert not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
        _close_out(_step(graphed, x, "1", monkeypatch), _step(eager, x, "0", monkeypatch))
        _same_grads(graphed, eager, f"step {step}")
        graphed.zero_grad(set_to_none=True), eager.zero_grad(set_to_none=True)
    assert layer_graphs.recorded(graphed.convs[0]) == [(True, True, 2)]


def test_switch_off_and_eval_calls_are_not_recorded(device, monkeypatch):
    graphed, _ = _pair(device)
    for _ in range(3):
        _step(graphed, _input(device), "0", monkeypatch)
    assert all(layer_graphs.recorded(conv) == [] for conv in graphed.convs)
    graphed.eval()
    for _ in range(3):
        _step(graphed, _input(device), "1", monkeypatch)
    assert all(layer_graphs.recorded(conv) == [] for conv in graphed.convs)


def test_second_backward_through_a_replayed_call_raises(device, monkeypatch):
    graphed, _ = _pair(device)
    for _ in range(3):  # warm up, record, replay
        _step(graphed, _input(device), "1", monkeypatch)
    with _autocast(device):
        loss = graphed(_input(device, seed=9)).float().square().mean()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="DCLS_LAYER_GRAPHS=0"):  # its saved tensors may be overwritten
        loss.backward()


def test_held_bytes_counts_each_kept_buffer_once(device, monkeypatch):
    graphed, _ = _pair(device)
    x = _input(device)
    for _ in range(3):  # warm up, record, replay
        _step(graphed, x, "1", monkeypatch)
    held = layer_graphs.held_bytes()
    assert held["inputs"] == 3 * x.numel() * x.element_size()  # one input copy per layer
    assert held["grad_outputs"] == 0  # output gradients go over the graphs' output blocks
    per_layer = sum(p.numel() * p.element_size() for p in graphed.convs[0].parameters())
    assert held["param_grads"] == 3 * per_layer  # each layer's W, P, SIG gradients (P, SIG shared)


def _allocated_in_graph_pools() -> int:
    """Bytes allocated in CUDA-graph memory pools (segments of a pool other than the default one)."""
    segments = torch.cuda.memory_snapshot()
    return sum(s["allocated_size"] for s in segments if tuple(s.get("segment_pool_id", (0, 0))) != (0, 0))


def test_a_discarded_model_frees_its_generation(device, monkeypatch):
    monkeypatch.setattr(layer_graphs, "MAX_GENERATIONS", 2)
    monkeypatch.setenv("DCLS_CONV", "matrix")  # matrix products on cuBLAS, whose workspace a capture allocates
    gc.collect()  # graphs of earlier tests' models that wait for a collection
    before = _allocated_in_graph_pools() if device == "cuda" else 0  # pools other tests' graphs may still hold
    for _ in range(layer_graphs.MAX_GENERATIONS + 2):  # one generation per model: more models than live pools
        model, _ = _pair(device)
        for _ in range(3):  # warm up, record, replay
            _step(model, _input(device), "1", monkeypatch)
        assert all(layer_graphs.recorded(conv) == [(True, True, 1)] for conv in model.convs)
        del model
        gc.collect()
        if device == "cuda":  # nothing of the model's graphs stays allocated (a capture's cuBLAS workspace did)
            assert _allocated_in_graph_pools() == before
    assert layer_graphs._generations(_input(device).device).live() == 0  # keyed by the inputs' device (cuda:0)


@pytest.mark.parametrize("fails", [False, True], ids=["recorded", "backward capture fails"])
def test_recordings_drop_cublas_workspaces_before_and_after(device, monkeypatch, fails):
    """A workspace made in a capture belongs to that capture's pool only while it records (also
    when the recording fails)."""
    events = []
    real_graph = torch.cuda.graph

    @contextlib.contextmanager
    def graph(*args, **kwargs):
        events.append("capture")
        if fails and events.count("capture") % 2 == 0:
            raise RuntimeError("a capture that fails (simulated)")
        with real_graph(*args, **kwargs):
            yield

    real_clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: events.append("clear"), raising=False)
    model, _ = _pair(device)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if fails else "default")
            if not fails:
                warnings.filterwarnings("error", message="dcls_core")
            for _ in range(2):  # warm up, record
                _step(model, _input(device), "1", monkeypatch)
    finally:
        if device == "cuda" and real_clear is not None:
            real_clear()  # a workspace the mocked drops left in a pool
    # a failed capture stops every later recording in the process: only the first layer tried
    assert events == ["clear", "capture", "capture", "clear"] * (1 if fails else len(model.convs))
    assert bool(layer_graphs._DISABLED) == fails
    if not fails:
        assert all(layer_graphs.recorded(conv) == [(True, True, 0)] for conv in model.convs)
    else:  # the failed layer's entries are gone with the others' (no replays after a failed capture)
        assert all(layer_graphs.recorded(conv) == [] for conv in model.convs)


class _Scaled(nn.Module):
    """``sigmoid(x * weight)`` per channel through ``graphed_call`` (sigmoid saves its output for the
    backward). ``owner``: the module whose parameter it reads (itself by default); ``early``: the
    call's function holds the parameter it read before the call (not through the module)."""

    def __init__(self, channels: int, owner: nn.Module | None = None, early: bool = False) -> None:
        super().__init__()
        if owner is None:
            self.weight = nn.Parameter(torch.linspace(0.5, 1.5, channels))
        self._owner, self.early = [owner or self], early  # (a list: not registered as a submodule)

    def forward(self, x):
        held = self._owner[0].weight

        def fn(inp):
            weight = held if self.early else self._owner[0].weight
            return torch.sigmoid(inp * weight.view(1, -1, 1, 1))

        if self.training and torch.is_grad_enabled() and layer_graphs.admits(self, x):
            return layer_graphs.graphed_call(self, fn, x, [held], ())
        return fn(x)


def _scaled_step(layer, x, env, monkeypatch):
    monkeypatch.setenv(layer_graphs.ENV_VAR, env)
    x = x.detach().clone().requires_grad_(True)
    layer(x).square().sum().backward()
    return x.grad


def test_a_forward_that_saves_its_output_gets_its_own_gradient_buffer(device, monkeypatch):
    dtype = torch.float64 if device == "cpu" else torch.float32
    graphed = _Scaled(8).to(device, dtype)
    eager = copy.deepcopy(graphed)
    for step in range(4):  # warm up, record, replay twice
        x = torch.randn(2, 8, 5, 6, device=device, dtype=dtype)
        _close(_scaled_step(graphed, x, "1", monkeypatch), _scaled_step(eager, x, "0", monkeypatch))
        _close(graphed.weight.grad, eager.weight.grad, f"step {step}")
        graphed.weight.grad = eager.weight.grad = None
    assert layer_graphs.recorded(graphed) == [(True, True, 2)]
    assert layer_graphs.held_bytes()["grad_outputs"] == x.numel() * x.element_size()


def test_a_parameter_wrapped_again_on_the_same_memory(device, monkeypatch):
    graphed, eager = _pair(device)
    layer, ref = graphed.convs[0], eager.convs[0]
    for step in range(4):
        if step == 1:  # the same memory, a new Parameter: the recording reads this one
            layer.weight = nn.Parameter(layer.weight.data)
        x = _input(device, seed=step)
        _close_out(_step(layer, x, "1", monkeypatch), _step(ref, x, "0", monkeypatch))
        _close(layer.weight.grad, ref.weight.grad, f"step {step}")
        layer.zero_grad(set_to_none=True), ref.zero_grad(set_to_none=True)
    assert layer_graphs.recorded(layer) == [(True, True, 2)]


@pytest.mark.parametrize("case", ["another module's", "read before the call"])
def test_a_parameter_not_read_through_the_module_is_not_recorded(device, monkeypatch, case):
    dtype = torch.float64 if device == "cpu" else torch.float32
    owner = _Scaled(8).to(device, dtype)
    if case == "another module's":
        layer = _Scaled(8, owner=owner)
    else:
        layer, owner.early = owner, True
    eager = copy.deepcopy(owner)
    eager.early = False
    with pytest.warns(UserWarning, match="other than through its module's own attributes"):
        for step in range(3):
            x = torch.randn(2, 8, 5, 6, device=device, dtype=dtype)
            _close(_scaled_step(layer, x, "1", monkeypatch), _scaled_step(eager, x, "0", monkeypatch))
            _close(owner.weight.grad, eager.weight.grad, f"step {step}")
            owner.weight.grad = eager.weight.grad = None
    assert layer_graphs.recorded(layer) == [(False, False, 0)]  # its gradient would not reach the leaf


def test_a_failed_capture_stops_recordings_for_the_process(device, monkeypatch):
    """A capture that raises inside (after its first operations) may leave CUDA's capture state
    broken: the layer, and every later call, runs eagerly with the same results."""
    real_graph = torch.cuda.graph

    @contextlib.contextmanager
    def graph(*args, **kwargs):
        with real_graph(*args, **kwargs):
            yield
            raise RuntimeError("operation not permitted when stream is capturing (simulated)")

    graphed, eager = _pair(device)
    with monkeypatch.context() as patch:
        patch.setattr(torch.cuda, "graph", graph)
        with pytest.warns(UserWarning, match="run eagerly from now on in this process"):
            for _ in range(2):  # warm up, record (fails)
                x = _input(device)
                _close_out(_step(graphed, x, "1", monkeypatch), _step(eager, x, "0", monkeypatch))
    for step in range(2):  # the capture works again, but nothing records
        x = _input(device, seed=step + 5)
        _close_out(_step(graphed, x, "1", monkeypatch), _step(eager, x, "0", monkeypatch))
    _same_grads(graphed, eager)
    assert layer_graphs._DISABLED
    assert all(layer_graphs.recorded(conv) == [] for conv in graphed.convs)  # nothing kept, nothing replays
    assert not layer_graphs.graphable(graphed.convs[1], x)


class _ViewOf(nn.Module):
    """A parametrization whose value is a view of its original: a non-leaf on the same memory at
    every call (the key's parameter address repeats, as a caching allocator's block may)."""

    def forward(self, original):
        return original.view(original.shape)


def test_a_parametrized_weight_is_not_recorded(device, monkeypatch):
    from torch.nn.utils import parametrize

    graphed, eager = _pair(device)
    for model in (graphed, eager):
        parametrize.register_parametrization(model.convs[0], "weight", _ViewOf())
    for step in range(4):  # warm up, record, replay twice, were it recorded
        x = _input(device, seed=step)
        _close_out(_step(graphed, x, "1", monkeypatch), _step(eager, x, "0", monkeypatch))
        assert graphed.convs[0].parametrizations.weight.original.grad is not None
        _same_grads(graphed, eager, f"step {step}")  # the original's gradient included
        graphed.zero_grad(set_to_none=True), eager.zero_grad(set_to_none=True)
    assert layer_graphs.recorded(graphed.convs[0]) == []
    assert all(layer_graphs.recorded(conv) == [(True, True, 2)] for conv in graphed.convs[1:])


class _Checkpointed(nn.Module):
    """A stage whose layers run under a non-reentrant activation checkpoint."""

    def __init__(self, stage: nn.Module) -> None:
        super().__init__()
        self.stage = stage

    def forward(self, x):
        return torch.utils.checkpoint.checkpoint(self.stage, x, use_reentrant=False)


def test_calls_under_a_non_reentrant_checkpoint_run_eagerly(device, monkeypatch):
    """The checkpoint's hooks must see what the layers save (its recomputation compares them)."""
    graphed, eager = _pair(device)
    graphed, eager = _Checkpointed(graphed), _Checkpointed(eager)
    for step in range(3):
        x = _input(device, seed=step)
        _close_out(_step(graphed, x, "1", monkeypatch), _step(eager, x, "0", monkeypatch))
        _same_grads(graphed, eager, f"step {step}")
        graphed.zero_grad(set_to_none=True), eager.zero_grad(set_to_none=True)
    assert all(layer_graphs.recorded(conv) == [] for conv in graphed.stage.convs)


class _Strides(nn.Module):
    """``x * weight`` per channel through ``graphed_call``, noting the strides each call computes on."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, channels))
        self.seen: list[tuple] = []

    def forward(self, x):
        def fn(inp):
            self.seen.append(inp.stride())
            return inp * self.weight.view(1, -1, 1, 1)

        return layer_graphs.graphed_call(self, fn, x, [self.weight], ())


def test_a_strided_input_warms_up_on_the_strides_it_records_with(device, monkeypatch):
    """The warm-up chooses paths and compiles programs for the strides the recording then uses; the
    leaf input's gradient is its own memory (a later replay does not write it)."""
    monkeypatch.setenv(layer_graphs.ENV_VAR, "1")
    dtype = torch.float64 if device == "cpu" else torch.float32
    layer = _Strides(8).to(device, dtype)
    kept = []
    for _ in range(4):  # warm up, record, replay twice
        x = torch.randn(2, 8, 5, 12, device=device, dtype=dtype)[..., ::2].requires_grad_()
        layer(x).square().sum().backward()
        assert x.grad is not None and x.grad.shape == x.shape
        kept.append((x.grad, x.grad.clone()))
    for grad, at_the_time in kept:
        torch.testing.assert_close(grad, at_the_time, rtol=0, atol=0)
    assert layer_graphs.recorded(layer) == [(True, True, 2)]
    assert len(layer.seen) == 2  # the warm-up and the recording (replays run no Python)
    assert layer.seen[0] == layer.seen[1] == torch.empty(2, 8, 5, 6).stride()  # the dense copy's, not (480, 60, 12, 2)


def test_a_view_of_a_leaf_keeps_its_own_gradient(device, monkeypatch):
    """A transposed leaf (dense, no copy): the view's backward hands the gradient on to the leaf,
    which must not keep the replays' memory."""
    monkeypatch.setenv(layer_graphs.ENV_VAR, "1")
    dtype = torch.float64 if device == "cpu" else torch.float32
    layer = _Strides(8).to(device, dtype)
    kept = []
    for _ in range(4):  # warm up, record, replay twice
        leaf = torch.randn(2, 8, 6, 5, device=device, dtype=dtype, requires_grad=True)
        layer(leaf.transpose(2, 3)).square().sum().backward()
        kept.append((leaf.grad, leaf.grad.clone()))
    for grad, at_the_time in kept:
        torch.testing.assert_close(grad, at_the_time, rtol=0, atol=0)
    assert layer_graphs.recorded(layer) == [(True, True, 2)]


def test_a_layer_that_finds_every_pool_held_runs_eagerly(device, monkeypatch):
    """Beyond MAX_GENERATIONS live pools a new signature runs eagerly for good (warned once), and
    not inside device_time: its later calls measure paths as eager calls do."""
    from dcls_core.conv import autotune

    monkeypatch.setattr(layer_graphs, "MAX_GENERATIONS", 1)
    first, _ = _pair(device)
    for _ in range(3):  # warm up, record, replay: the one pool is held
        _step(first, _input(device), "1", monkeypatch)
    graphed, eager = _pair(device)
    with pytest.warns(UserWarning, match="memory pools of DCLS layers are held") as caught:
        for step in range(2):  # warm up, recording finds no pool
            x = _input(device, seed=step)
            _close_out(_step(graphed, x, "1", monkeypatch), _step(eager, x, "0", monkeypatch))
    assert sum("memory pools" in str(w.message) for w in caught) == 1
    entered = []
    real_device_time = autotune.device_time

    def device_time():
        entered.append(True)
        return real_device_time()

    monkeypatch.setattr(autotune, "device_time", device_time)
    x = _input(device, seed=5)
    _close_out(_step(graphed, x, "1", monkeypatch), _step(eager, x, "0", monkeypatch))
    assert not entered  # an eager call from now on, measured (were it measured) as one
    assert all(layer_graphs.recorded(conv) == [(False, False, 0)] for conv in graphed.convs)
    assert layer_graphs.recorded(first.convs[0]) == [(True, True, 1)]
