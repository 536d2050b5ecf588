"""The per-shape path measurement (``dcls_core.conv.autotune``) and its use by the dispatcher:
the fastest path wins, failures are left out (and remembered), the caller's random streams and
saved-tensor hooks are untouched, choices are cached per key, survive a checkpoint, and nothing
is measured or looked up while compiling or under deterministic algorithms."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import dcls_core
from dcls_core import dispatch
from dcls_core.conv import autotune

from dcls_testing import rel_err

BOTH = (True, True)


@pytest.fixture(autouse=True)
def _fresh_cache():
    autotune.clear()
    yield
    autotune.clear()


def _call(x, k, grads=BOTH):
    return autotune.ConvCall(x, k.shape, k.dtype, (1, 1), (2, 2), x.shape[1], "zeros", grads)


def _key(x, k, grads=BOTH, names=("a", "b")):
    return autotune.call_key(_call(x, k, grads), names)


def _sleeping(ms: float, calls: list):
    def convolve(input, kernel, bias, stride, padding, groups, padding_mode):
        calls.append(ms)
        time.sleep(ms / 1e3)
        return F.conv2d(input, kernel, bias, stride, padding, groups=groups)

    return convolve


def _measure(key, candidates, x, k, grads=BOTH):
    return autotune.measure(key, candidates, _call(x, k, grads))


def test_the_fastest_candidate_wins_and_failures_are_left_out():
    x, k = torch.randn(2, 3, 8, 8), torch.randn(3, 1, 5, 5)
    calls: list = []

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("simulated")

    candidates = {"slow": _sleeping(80, calls), "oom": out_of_memory, "fast": _sleeping(0, calls)}
    key = _key(x, k)
    assert _measure(key, candidates, x, k) == "fast"
    assert calls.count(80) == calls.count(0) == 1 + autotune.REPEATS  # one untimed run each
    assert autotune.choice(key) == "fast"
    times = autotune.timings()[autotune.key_text(key)]
    assert set(times) == {"slow", "fast"} and times["slow"] >= 80 and times["fast"] < times["slow"]
    calls.clear()
    assert _measure(key, candidates, x, k) == "fast"  # cached: no second measurement
    assert calls == []


@pytest.mark.parametrize(
    "times, want",
    [
        ({"first": 1.05, "second": 1.0, "third": 0.99}, "first"),  # near-ties go to the order of preference
        ({"first": 1.2, "second": 1.0, "third": 1.09}, "second"),  # the first within the margin of the fastest
        ({"first": 1.5, "second": 1.3, "third": 1.0}, "third"),  # a clearly faster path wins
        ({"second": 1.0, "third": 1.05}, "second"),  # a failed candidate is not chosen
    ],
)
def test_measured_near_ties_go_to_the_order_of_preference(monkeypatch, times, want):
    x, k = torch.randn(2, 3, 8, 8), torch.randn(3, 1, 5, 5)
    monkeypatch.setattr(autotune, "_time_candidates", lambda key, candidates, run, clock: dict(times))
    candidates = {name: _sleeping(0, []) for name in ("first", "second", "third")}
    key = _key(x, k, names=tuple(candidates))
    assert autotune.TIE_MARGIN == pytest.approx(0.10)
    assert _measure(key, candidates, x, k) == want
    assert autotune.timings()[autotune.key_text(key)] == times  # every measurement kept


def test_a_failing_path_is_named_in_a_warning_and_a_key_where_all_fail_is_not_measured_again():
    x, k = torch.randn(2, 3, 8, 8), torch.randn(3, 1, 5, 5)
    calls: list = []

    def broken(*args):
        calls.append("broken")
        raise RuntimeError("a GPU program that does not compile (simulated)")

    key = _key(x, k, names=("broken",))
    with pytest.warns(UserWarning, match="the broken path failed on cpu.*simulated"):
        assert _measure(key, {"broken": broken}, x, k) is None
    assert calls == ["broken"] and autotune.state_dict() == {}
    assert _measure(key, {"broken": broken}, x, k) is None
    assert calls == ["broken"]  # remembered


def test_measuring_leaves_the_callers_random_streams_and_saved_tensor_hooks_alone():
    x, k = torch.randn(2, 3, 8, 8), torch.randn(3, 1, 5, 5)
    torch.manual_seed(123)
    want = torch.rand(4)
    torch.manual_seed(123)
    packed: list = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        _measure(_key(x, k), {"a": _sleeping(0, []), "b": _sleeping(0, [])}, x, k)
    assert torch.equal(torch.rand(4), want)
    assert packed == []


def test_overlapping_input_strides_are_measured_as_they_are():
    """An expanded input (stride 0) is reproduced with its strides, not refused."""
    x = torch.randn(1, 3, 8, 1).expand(2, 3, 8, 8)
    k = torch.randn(3, 1, 5, 5)
    seen: list = []

    def recording(input, kernel, bias, stride, padding, groups, padding_mode):
        seen.append(input.stride())
        return F.conv2d(input, kernel, bias, stride, padding, groups=groups)

    assert _measure(_key(x, k), {"a": recording, "b": recording}, x, k) in {"a", "b"}
    assert set(seen) == {x.stride()}


def test_only_the_needed_gradients_are_timed():
    x, k = torch.randn(2, 3, 8, 8), torch.randn(3, 1, 5, 5)
    wanted: list = []

    def recording(input, kernel, bias, stride, padding, groups, padding_mode):
        wanted.append((input.requires_grad, kernel.requires_grad, torch.is_grad_enabled()))
        return F.conv2d(input, kernel, bias, stride, padding, groups=groups)

    _measure(_key(x, k, (False, True)), {"a": recording, "b": recording}, x, k, (False, True))
    assert set(wanted) == {(False, True, True)}
    wanted.clear()
    _measure(_key(x, k, (False, False)), {"a": recording, "b": recording}, x, k, (False, False))
    assert set(wanted) == {(False, False, False)}


def test_keys_tell_apart_what_changes_the_speed():
    x, k = torch.randn(2, 3, 8, 8), torch.randn(3, 1, 5, 5)
    keys = {
        _key(x, k),
        _key(x, k, grads=(False, True)),
        _key(x, k, grads=(False, False)),
        _key(x, k, names=("a", "b", "c")),
        _key(x.to(memory_format=torch.channels_last), k),
        _key(x.double(), k),
        _key(torch.randn(4, 3, 8, 8), k),
        _key(x, torch.randn(3, 1, 3, 3)),
    }
    assert len(keys) == 8
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _key(x, k) not in keys
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_tf32
    matmul.allow_tf32 = not saved  # the matrix path's products follow it
    try:
        assert _key(x, k) not in keys
    finally:
        matmul.allow_tf32 = saved
    assert _key(x, k) == _key(x.clone(), k.clone())


def test_nothing_is_measured_under_deterministic_algorithms():
    x, k = torch.randn(2, 3, 8, 8), torch.randn(3, 1, 5, 5)
    calls: list = []
    torch.use_deterministic_algorithms(True)
    try:
        assert _measure(_key(x, k), {"a": _sleeping(0, calls), "b": _sleeping(0, calls)}, x, k) is None
    finally:
        torch.use_deterministic_algorithms(False)
    assert calls == [] and autotune.state_dict() == {}


def test_choices_round_trip_and_bad_state_is_refused():
    """Choices go into a checkpoint as text and come back for the same calls; a loaded choice
    replaces one measured for the same key."""
    x, k = torch.randn(2, 3, 8, 8), torch.randn(3, 1, 5, 5)
    a, b = _key(x, k, names=("fft", "x")), _key(x, k, (False, False), names=("reference", "x"))
    # 40 ms apart: a loaded 2-core machine once timed the 0 ms candidate slower than a 5 ms one
    _measure(a, {"fft": _sleeping(0, []), "x": _sleeping(40, [])}, x, k)
    _measure(b, {"reference": _sleeping(0, []), "x": _sleeping(40, [])}, x, k, (False, False))
    saved = autotune.state_dict()
    assert saved == {autotune.key_text(a): "fft", autotune.key_text(b): "reference"}
    assert all(isinstance(t, str) and t.startswith("cpu|torch.float32|") for t in saved)
    autotune.clear()
    assert autotune.state_dict() == {} and autotune.choice(a) is None
    autotune.load_state_dict(saved)
    assert autotune.state_dict() == saved  # not yet used: kept as loaded
    assert autotune.choice(a) == "fft" and autotune.choice(b) == "reference"
    assert autotune.state_dict() == saved
    autotune.load_state_dict({autotune.key_text(a): "x"})
    assert autotune.choice(a) == "x"
    with pytest.raises(ValueError, match="must map str to str"):
        autotune.load_state_dict({"cpu|c": 3})


def _layer():
    return dcls_core.Dcls2d(4, 4, kernel_count=3, dilated_kernel_size=9, padding=4, groups=4).double()


def test_dispatcher_autotune_switch_measures_each_shape_once(monkeypatch):
    """``DCLS_CONV=autotune`` on the CPU: every path that supports the call is measured once per
    shape (the matrix path, the FFT and the reference here), the layer's result equals the
    reference's, and a second call reads the cache."""
    monkeypatch.setenv("DCLS_CONV", "autotune")
    measured: list = []
    real = autotune.measure

    def counted(key, candidates, *args, **kwargs):
        measured.append(set(candidates))
        return real(key, candidates, *args, **kwargs)

    monkeypatch.setattr(autotune, "measure", counted)
    layer = _layer()
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert measured == [{"matrix", "fft", "reference"}]
    ((text, name),) = autotune.state_dict().items()
    assert "|grads=1,1|" in text and name in {"matrix", "fft", "reference"}
    with dispatch.forced(conv="reference"):
        want = layer(x)
    assert rel_err(y, want) < 1e-12
    layer(x)
    assert len(measured) == 1
    with torch.no_grad():
        layer(x)  # inference: its own key
    assert len(measured) == 2 and len(autotune.state_dict()) == 2


@pytest.mark.parametrize(
    "order, want", [(None, ["matrix", "fft", "reference"]), ("fft", ["fft", "matrix", "reference"])]
)
def test_dispatcher_autotune_switch_offers_the_paths_in_the_order_of_preference(monkeypatch, order, want):
    """Near-ties go to the first candidate: ``DCLS_CONV=autotune`` lists them in
    ``DCLS_CONV_ORDER``'s order, the reference last."""
    monkeypatch.setenv("DCLS_CONV", "autotune")
    if order is not None:
        monkeypatch.setenv("DCLS_CONV_ORDER", order)
    offered: list = []
    monkeypatch.setattr(autotune, "measure", lambda key, candidates, call: offered.append(list(candidates)))
    _layer()(torch.randn(2, 4, 6, 7, dtype=torch.float64, requires_grad=True))
    assert offered == [want]


def test_a_layer_under_non_reentrant_checkpointing_measures_and_recomputes(monkeypatch):
    """Measuring inside ``checkpoint(..., use_reentrant=False)``: the recomputation in the
    backward reads the cache, and the gradients equal the uncheckpointed ones."""
    monkeypatch.setenv("DCLS_CONV", "autotune")
    layer = _layer()
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64, requires_grad=True)
    checkpoint(layer, x, use_reentrant=False).sum().backward()
    got = (x.grad.clone(), layer.weight.grad.clone())
    x.grad = None
    layer.zero_grad()
    layer(x).sum().backward()
    assert rel_err(got[0], x.grad) < 1e-12 and rel_err(got[1], layer.weight.grad) < 1e-12


def test_compiled_calls_neither_measure_nor_specialise_on_shapes(monkeypatch):
    """Under ``torch.compile`` (dynamic shapes) the dispatcher keeps the fixed rules: nothing is
    measured, and a new batch size does not recompile."""
    monkeypatch.setenv("DCLS_CONV", "autotune")
    torch._dynamo.reset()
    layer = _layer()
    compiled = torch.compile(layer, backend="aot_eager", dynamic=True, fullgraph=True)
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):
            for batch in (2, 3, 4):
                x = torch.randn(batch, 4, 6, 7, dtype=torch.float64, requires_grad=True)
                y = compiled(x)
                y.sum().backward()
                with dispatch.forced(conv="reference"):
                    assert rel_err(y, layer(x)) < 1e-12
    finally:
        torch._dynamo.reset()
    assert autotune.state_dict() == {}


def test_dispatcher_ignores_a_saved_choice_that_no_longer_applies(monkeypatch):
    monkeypatch.setenv("DCLS_CONV", "autotune")
    x, k = torch.randn(2, 4, 16, 16), torch.randn(4, 1, 23, 23)
    names = ("matrix", "fft", "reference")
    call = autotune.ConvCall(x, k.shape, k.dtype, (1, 1), (11, 11), 4, "zeros", (False, False))
    key = autotune.call_key(call, names)
    autotune.load_state_dict({autotune.key_text(key): "direct"})  # needs CUDA: not a candidate here
    monkeypatch.setattr(autotune, "measure", lambda *a, **kw: pytest.fail("measured a cached key"))
    assert dispatch.select_conv(x, k, (1, 1), (11, 11), 4, "zeros")[0] == "reference"  # the CPU rule
    autotune.load_state_dict({autotune.key_text(key): "fft"})
    assert dispatch.select_conv(x, k, (1, 1), (11, 11), 4, "zeros")[0] == "fft"


def test_autotune_environment_switch(monkeypatch):
    monkeypatch.setenv("DCLS_AUTOTUNE", "maybe")
    with pytest.raises(ValueError, match="DCLS_AUTOTUNE must be one of train, 1, 0"):
        dispatch.autotune_enabled()
    expected = {"1": (True, True), "train": (True, False), "0": (False, False), " Train ": (True, False)}
    for value, (training, inference) in expected.items():
        monkeypatch.setenv("DCLS_AUTOTUNE", value)
        assert (dispatch.autotune_enabled(True), dispatch.autotune_enabled(False)) == (training, inference), value
    monkeypatch.delenv("DCLS_AUTOTUNE")
    assert (dispatch.autotune_enabled(True), dispatch.autotune_enabled(False)) == (True, False)  # train
    with pytest.raises(ValueError, match="conv must be one of"):
        with dispatch.forced(conv="fastest"):
            pass


@pytest.mark.cuda
def test_device_time_leaves_out_the_hosts_time_between_launches():
    """A run whose host work (3 ms) sits between its launches: on an idle device its time holds that
    gap, under the device clock only the kernels' time."""
    x = torch.ones(1024, device="cuda")

    def run():
        x.add_(1)
        time.sleep(0.003)
        x.add_(1)

    whole, device_only = autotune._Clock(x.device), autotune._Clock(x.device, device_only=True)
    run()  # warm up
    assert min(whole.time(run) for _ in range(3)) >= 2.5
    assert min(device_only.time(run) for _ in range(3)) < 1.0


@pytest.mark.cuda
def test_auto_measures_the_paying_fast_paths_on_cuda(monkeypatch):
    """Under ``auto`` on CUDA a large depthwise kernel on a small input (several fast paths pay)
    is measured once among them when it records gradients (``DCLS_AUTOTUNE=train``, the default);
    an inference call and ``DCLS_AUTOTUNE=0`` keep the fixed order (the matrix path)."""
    monkeypatch.delenv("DCLS_CONV", raising=False)
    x = torch.randn(16, 64, 16, 15, device="cuda", requires_grad=True)
    k = torch.randn(64, 1, 23, 23, device="cuda", requires_grad=True)
    monkeypatch.setenv("DCLS_AUTOTUNE", "0")
    assert dispatch.select_conv(x, k, (1, 1), (11, 11), 64, "zeros")[0] == "matrix"
    assert autotune.state_dict() == {}
    monkeypatch.setenv("DCLS_AUTOTUNE", "train")
    with torch.no_grad():  # an inference call keeps the fixed order under train
        assert dispatch.select_conv(x, k, (1, 1), (11, 11), 64, "zeros")[0] == "matrix"
    assert autotune.state_dict() == {}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        name = dispatch.select_conv(x, k, (1, 1), (11, 11), 64, "zeros")[0]
        ((text, chosen),) = autotune.state_dict().items()
        assert name == chosen and name in {"matrix", "direct", "fft"}
        assert "|torch.bfloat16|" in text and text.endswith("|grads=1,1|matrix,direct,fft")
        y = dispatch.CONV_PATHS[name].convolve(x, k, None, (1, 1), (11, 11), 64, "zeros")
    want = F.conv2d(x.double(), k.double(), padding=11, groups=64)
    assert rel_err(y.double(), want) < 2e-2
