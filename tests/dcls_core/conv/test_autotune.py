"""The per-shape path measurement (``dcls_core.conv.autotune``) and its use by the dispatcher:
the fastest path wins, failures are left out, the caller's random streams are untouched, choices
are cached per key, survive a checkpoint and are never measured while compiling."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

import dcls_core
from dcls_core import dispatch
from dcls_core.conv import autotune

from dcls_testing import rel_err


@pytest.fixture(autouse=True)
def _fresh_cache():
    autotune.clear()
    yield
    autotune.clear()


def _conv_args(x, k):
    return dict(
        input=x,
        kernel_shape=k.shape,
        kernel_dtype=k.dtype,
        stride=(1, 1),
        padding=(2, 2),
        groups=x.shape[1],
        padding_mode="zeros",
    )


def _key(x, k, backward=True):
    args = _conv_args(x, k)
    return autotune.call_key(**args, backward=backward)


def _sleeping(ms: float, calls: list):
    def convolve(input, kernel, bias, stride, padding, groups, padding_mode):
        calls.append(ms)
        time.sleep(ms / 1e3)
        return F.conv2d(input, kernel, bias, stride, padding, groups=groups)

    return convolve


def test_the_fastest_candidate_wins_and_failures_are_left_out():
    x, k = torch.randn(2, 3, 8, 8), torch.randn(3, 1, 5, 5)
    calls: list = []

    def broken(*args):
        raise RuntimeError("out of memory (simulated)")

    candidates = {"slow": _sleeping(30, calls), "broken": broken, "fast": _sleeping(1, calls)}
    key = _key(x, k)
    assert autotune.measure(key, candidates, **_conv_args(x, k), backward=True) == "fast"
    assert calls.count(30) == calls.count(1) == 1 + autotune.REPEATS  # one untimed run each
    assert autotune.choice(key) == "fast"
    times = autotune.timings()[autotune.key_text(key)]
    assert set(times) == {"slow", "fast"} and times["slow"] >= 30 > times["fast"]
    # cached: no second measurement
    calls.clear()
    assert autotune.measure(key, candidates, **_conv_args(x, k), backward=True) == "fast"
    assert calls == []
    assert autotune.measure(_key(x, k, backward=False), {"broken": broken}, **_conv_args(x, k), backward=False) is None


def test_measuring_leaves_the_callers_random_streams_alone():
    x, k = torch.randn(2, 3, 8, 8), torch.randn(3, 1, 5, 5)
    torch.manual_seed(123)
    want = torch.rand(4)
    torch.manual_seed(123)
    autotune.measure(_key(x, k), {"a": _sleeping(0, []), "b": _sleeping(0, [])}, **_conv_args(x, k), backward=True)
    assert torch.equal(torch.rand(4), want)


def test_keys_tell_apart_what_changes_the_speed():
    x, k = torch.randn(2, 3, 8, 8), torch.randn(3, 1, 5, 5)
    keys = {
        _key(x, k),
        _key(x, k, backward=False),
        _key(x.to(memory_format=torch.channels_last), k),
        _key(x.double(), k),
        _key(torch.randn(4, 3, 8, 8), k),
        _key(x, torch.randn(3, 1, 3, 3)),
    }
    assert len(keys) == 6
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _key(x, k) not in keys
    assert _key(x, k) == _key(x.clone(), k.clone())


def test_no_measurement_while_compiling(monkeypatch):
    x, k = torch.randn(2, 3, 8, 8), torch.randn(3, 1, 5, 5)
    calls: list = []
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    candidates = {"a": _sleeping(0, calls), "b": _sleeping(0, calls)}
    assert autotune.measure(_key(x, k), candidates, **_conv_args(x, k), backward=True) is None
    assert calls == [] and autotune.state_dict() == {}


def test_choices_round_trip_and_bad_state_is_refused():
    """Choices go into a checkpoint as text and come back for the same calls; a loaded choice
    replaces one measured for the same key."""
    x, k = torch.randn(2, 3, 8, 8), torch.randn(3, 1, 5, 5)
    a, b = _key(x, k), _key(x, k, backward=False)
    autotune.measure(a, {"fft": _sleeping(0, [])}, **_conv_args(x, k), backward=True)
    autotune.measure(b, {"reference": _sleeping(0, [])}, **_conv_args(x, k), backward=False)
    saved = autotune.state_dict()
    assert saved == {autotune.key_text(a): "fft", autotune.key_text(b): "reference"}
    assert all(isinstance(t, str) and t.startswith("cpu|torch.float32|") for t in saved)
    autotune.clear()
    assert autotune.state_dict() == {} and autotune.choice(a) is None
    autotune.load_state_dict(saved)
    assert autotune.state_dict() == saved  # not yet used: kept as loaded
    assert autotune.choice(a) == "fft" and autotune.choice(b) == "reference"
    assert autotune.state_dict() == saved
    autotune.load_state_dict({autotune.key_text(a): "matrix"})
    assert autotune.choice(a) == "matrix"
    with pytest.raises(ValueError, match="must map str to str"):
        autotune.load_state_dict({"cpu|c": 3})


def test_dispatcher_autotune_switch_measures_each_shape_once(monkeypatch):
    """``DCLS_CONV=autotune`` on the CPU: every path that supports the call is measured once per
    shape (the matrix path, the FFT and the reference here), the layer's result equals the
    reference's, and a second call reads the cache."""
    monkeypatch.setenv("DCLS_CONV", "autotune")
    measured: list = []
    real = autotune.measure
    monkeypatch.setattr(
        autotune,
        "measure",
        lambda key, candidates, *a, **kw: measured.append(set(candidates)) or real(key, candidates, *a, **kw),
    )
    layer = dcls_core.Dcls2d(4, 4, kernel_count=3, dilated_kernel_size=9, padding=4, groups=4).double()
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert measured == [{"matrix", "fft", "reference"}]
    ((text, name),) = autotune.state_dict().items()
    assert text.endswith("|train") and name in {"matrix", "fft", "reference"}
    with dispatch.forced(conv="reference"):
        want = layer(x)
    assert rel_err(y, want) < 1e-12
    layer(x)
    assert len(measured) == 1
    with torch.no_grad():
        layer(x)  # inference: its own key
    assert len(measured) == 2 and len(autotune.state_dict()) == 2


def test_dispatcher_ignores_a_saved_choice_that_no_longer_applies(monkeypatch):
    monkeypatch.setenv("DCLS_CONV", "autotune")
    x, k = torch.randn(2, 4, 16, 16), torch.randn(4, 1, 23, 23)
    key = autotune.call_key(x, k.shape, k.dtype, (1, 1), (11, 11), 4, "zeros", False)
    autotune.load_state_dict({autotune.key_text(key): "direct"})  # needs CUDA: not a candidate here
    monkeypatch.setattr(autotune, "measure", lambda *a, **kw: pytest.fail("measured a cached key"))
    assert dispatch.select_conv(x, k, (1, 1), (11, 11), 4, "zeros")[0] == "reference"  # the CPU rule
    autotune.load_state_dict({autotune.key_text(key): "fft"})
    assert dispatch.select_conv(x, k, (1, 1), (11, 11), 4, "zeros")[0] == "fft"


def test_autotune_environment_switch(monkeypatch):
    monkeypatch.setenv("DCLS_AUTOTUNE", "maybe")
    with pytest.raises(ValueError, match="DCLS_AUTOTUNE must be 0 or 1"):
        dispatch.autotune_enabled()
    monkeypatch.setenv("DCLS_AUTOTUNE", "0")
    assert not dispatch.autotune_enabled()
    monkeypatch.delenv("DCLS_AUTOTUNE")
    assert dispatch.autotune_enabled()
    with pytest.raises(ValueError, match="conv must be one of"):
        with dispatch.forced(conv="fastest"):
            pass


@pytest.mark.cuda
def test_auto_measures_the_paying_fast_paths_on_cuda(monkeypatch):
    """Under ``auto`` on CUDA a large depthwise kernel on a small input (several fast paths pay)
    is measured once among them; ``DCLS_AUTOTUNE=0`` keeps the fixed order (the matrix path)."""
    monkeypatch.delenv("DCLS_CONV", raising=False)
    x = torch.randn(16, 64, 16, 15, device="cuda", requires_grad=True)
    k = torch.randn(64, 1, 23, 23, device="cuda", requires_grad=True)
    monkeypatch.setenv("DCLS_AUTOTUNE", "0")
    assert dispatch.select_conv(x, k, (1, 1), (11, 11), 64, "zeros")[0] == "matrix"
    assert autotune.state_dict() == {}
    monkeypatch.setenv("DCLS_AUTOTUNE", "1")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        name = dispatch.select_conv(x, k, (1, 1), (11, 11), 64, "zeros")[0]
        ((text, chosen),) = autotune.state_dict().items()
        assert name == chosen and name in {"matrix", "direct", "fft"}
        assert "|torch.bfloat16|" in text and text.endswith("|train")
        y = dispatch.CONV_PATHS[name].convolve(x, k, None, (1, 1), (11, 11), 64, "zeros")
    want = F.conv2d(x.double(), k.double(), padding=11, groups=64)
    assert rel_err(y.double(), want) < 2e-2
