"""The convolution path per call shape, measured once and cached (as ``cudnn.benchmark`` does for
cuDNN's algorithms).

Where :mod:`dcls_core.dispatch` autotunes a call, every candidate path runs on inputs of the
call's shape, strides and dtypes (fresh tensors drawn from a private generator, so the caller's
random streams are untouched; the caller's saved-tensor hooks, e.g. activation checkpointing,
do not see them): one untimed run (Triton compiles here), then :data:`REPEATS` timed runs; the
fastest median wins, unless a candidate listed before it (the candidates come in the order of
preference) is within :data:`TIE_MARGIN` of it: then the first such candidate wins. Calls that
record gradients time the forward and the gradients they need (the output gradient taking the
input's memory format); inference calls time the forward alone.
A path that fails is left out (out of memory silently; anything else with a warning naming the
path and the call). A call where every path fails keeps the fixed rules, remembered so that it
is not measured again.

Inside :func:`device_time` (the calls of a layer that :mod:`dcls_core.conv.layer_graphs` warms
up and records, whose later calls replay as CUDA graphs), a timed run measures the device's work
alone: the device first waits on a spin kernel while the host queues the run, so the host's time
between launches, which replays do not pay, is left out. Elsewhere a timed run's time includes the
gaps where the device waited for the host, as an eager call's does. The two kinds of choice are
keyed apart (a device-time key's text ends in ``|device-time``).

A choice is made once per process and key (the key names the candidates too, so ``auto`` and
``DCLS_CONV=autotune`` do not share choices), and the measurement waits for the device. Nothing
is measured while ``torch.compile`` traces, a CUDA graph is captured, or
``torch.use_deterministic_algorithms`` is on. :func:`state_dict` / :func:`load_state_dict` carry
the choices in a training checkpoint, so a resumed run computes with the paths it measured.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
import warnings
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

__all__ = [
    "REPEATS",
    "TIE_MARGIN",
    "CallKey",
    "ConvCall",
    "call_key",
    "choice",
    "clear",
    "device_time",
    "key_text",
    "load_state_dict",
    "lookups_allowed",
    "measure",
    "measures_device_time",
    "measuring_allowed",
    "state_dict",
    "timings",
]

REPEATS = 3
# Calls whose step is host-bound (a ConvNeXt-T's last two stages on an H100) time their paths within
# 0.4-42 % of each other, in a different order from one process to the next (NOTES run 20); a margin
# gives the near-ties to the order of preference, so choices flip less often between runs (and there the
# first path, the matrix products, also needs the least memory: the eager model's peak moved with the
# choices by 5 %). A clearly faster path still wins.
TIE_MARGIN = 0.10
# the spin before a device-time run: about 10 ms at an H100's 2 GHz, longer than the host takes to
# queue one layer step (1-3 ms, NOTES run 15)
DEVICE_TIME_SPIN_CYCLES = 20_000_000
_DEVICE_TIME: contextvars.ContextVar[bool] = contextvars.ContextVar("dcls_autotune_device_time", default=False)
CallKey = tuple  # what call_key returns: hashable, cheap to build on every call
_choices: dict[CallKey, str] = {}
_saved: dict[str, str] = {}  # choices loaded from a checkpoint, by key text, adopted on first use
_timings: dict[CallKey, dict[str, float]] = {}  # key -> path name -> median ms, of this process's measurements
_unmeasurable: set[CallKey] = set()  # keys where every candidate failed: the fixed rules choose
_SEED = 0x5EED


class ConvCall(NamedTuple):
    """One convolution call as the paths' ``convolve`` receives it, less the values, plus the
    gradients ``(input, kernel)`` it must produce."""

    input: Tensor
    kernel_shape: Sequence[int]
    kernel_dtype: torch.dtype
    stride: Sequence[int]
    padding: Sequence[int]
    groups: int
    padding_mode: str
    grads: tuple[bool, bool]


def call_key(call: ConvCall, candidates: Sequence[str]) -> CallKey:
    """Everything a path's speed depends on: device type, dtypes (with the autocast dtype and the
    TF32 switches of convolutions and matrix products), shapes, strides, conv arguments, which
    gradients are needed, the candidate paths, and whether the device's time alone is measured
    (:func:`device_time`: a graphed layer's choice is not an eager one's). A tuple, built on
    every dispatched call; :func:`key_text` names it in a checkpoint."""
    input = call.input
    device = input.device.type
    autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    tf32 = (bool(torch.backends.cudnn.allow_tf32), bool(torch.backends.cuda.matmul.allow_tf32))
    return (
        device,
        input.dtype,
        call.kernel_dtype,
        autocast,
        tf32,
        tuple(input.shape),
        tuple(input.stride()),
        tuple(call.kernel_shape),
        tuple(call.stride),
        tuple(call.padding),
        int(call.groups),
        call.padding_mode,
        (bool(call.grads[0]), bool(call.grads[1])),
        tuple(candidates),
        _DEVICE_TIME.get(),
    )


def key_text(key: CallKey) -> str:
    """A call key as text (the form saved in checkpoints), e.g.
    ``cuda|torch.float32|torch.float32|torch.bfloat16|tf32=1,1|x=(...)@(...)|k=...|...|grads=1,1|direct,fft``,
    ending in ``|device-time`` where the device's time alone was measured."""
    *fields, device_only = key
    device, dtype, kernel_dtype, autocast, tf32, shape, strides, kshape, stride, padding, groups, mode, grads, names = (
        fields
    )
    parts = (
        device,
        str(dtype),
        str(kernel_dtype),
        "off" if autocast is None else str(autocast),
        f"tf32={int(tf32[0])},{int(tf32[1])}",
        f"x={shape}@{strides}",
        f"k={kshape}",
        f"s={stride}",
        f"p={padding}",
        f"g={groups}",
        mode,
        f"grads={int(grads[0])},{int(grads[1])}",
        ",".join(names),
    )
    return "|".join(parts) + ("|device-time" if device_only else "")


def choice(key: CallKey) -> Optional[str]:
    """The cached path name for ``key`` (measured here or loaded), or None."""
    name = _choices.get(key)
    if name is None and _saved and not torch.compiler.is_compiling():  # text keys: eager calls only
        name = _saved.pop(key_text(key), None)
        if name is not None:
            _choices[key] = name
    return name


def lookups_allowed() -> bool:
    """False while ``torch.compile`` traces (shapes may be symbolic: a key would specialise them)
    and under ``torch.use_deterministic_algorithms`` (the fixed rules then choose)."""
    return not (torch.compiler.is_compiling() or torch.are_deterministic_algorithms_enabled())


def measuring_allowed(input: Tensor) -> bool:
    """:func:`lookups_allowed`, and no CUDA graph being captured (a cached choice may still be used then)."""
    return lookups_allowed() and not (input.is_cuda and torch.cuda.is_current_stream_capturing())


def _fresh(like: Tensor, generator: torch.Generator, requires_grad: bool) -> Tensor:
    """A leaf of ``like``'s shape, strides and dtype (overlapping strides too) with normal values
    drawn from ``generator`` into a dense buffer."""
    span = 1 + sum((n - 1) * st for n, st in zip(like.shape, like.stride()) if n > 0) if like.numel() else 0
    base = torch.empty(span, dtype=like.dtype, device=like.device)
    base.normal_(generator=generator)
    return base.as_strided(like.shape, like.stride()).detach().requires_grad_(requires_grad)


def _output_gradient(y: Tensor, input: Tensor, generator: torch.Generator) -> Tensor:
    fmt = torch.channels_last if input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last) else None
    g = torch.empty_like(y, memory_format=fmt) if fmt is not None else torch.empty_like(y)
    return g.normal_(generator=generator)


@contextlib.contextmanager
def device_time():
    """Measurements made inside the block time the device's work alone (module docstring)."""
    token = _DEVICE_TIME.set(True)
    try:
        yield
    finally:
        _DEVICE_TIME.reset(token)


def measures_device_time() -> bool:
    """Whether a measurement made here would time the device's work alone (:func:`device_time`)."""
    return _DEVICE_TIME.get()


class _Clock:
    """Elapsed milliseconds of a block of device work (CUDA events, or the host clock);
    ``device_only``: on CUDA, the device's work alone (a spin kernel first, while the host queues)."""

    def __init__(self, device: torch.device, device_only: bool = False) -> None:
        self.cuda = device.type == "cuda"
        self.device_only = device_only

    def time(self, fn: Callable[[], None]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            if self.device_only:
                torch.cuda._sleep(DEVICE_TIME_SPIN_CYCLES)  # the device waits; the host queues fn meanwhile
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def measure(key: CallKey, candidates: Mapping[str, Callable[..., Tensor]], call: ConvCall) -> Optional[str]:
    """Time each candidate ``name -> convolve`` (the paths' contract, :mod:`dcls_core.conv`) on a
    call like ``call``, computing the gradients ``call.grads`` asks for; cache the
    fastest (the first in ``candidates``' order within :data:`TIE_MARGIN` of it) under ``key``
    and return its name. Returns the cached name without measuring if there
    is one, and None where measuring is not allowed (:func:`measuring_allowed`) or every candidate
    failed (remembered: that key is not measured again)."""
    cached = choice(key)
    if cached is not None or key in _unmeasurable:
        return cached
    if not candidates or not measuring_allowed(call.input):
        return None
    input, grads = call.input, call.grads
    # the caller's saved-tensor hooks (activation checkpointing, offloading) must not see these; the
    # clock's events and spin go to the current device's stream: the input's device made current
    on_device = torch.cuda.device(input.device) if input.is_cuda else contextlib.nullcontext()
    with on_device, torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        generator = torch.Generator(device=input.device).manual_seed(_SEED)
        backward = any(grads)
        with torch.enable_grad() if backward else torch.no_grad():
            x = _fresh(input, generator, grads[0])
            k = torch.randn(tuple(call.kernel_shape), generator=generator, device=input.device, dtype=call.kernel_dtype)
            k.requires_grad_(grads[1])
            wrt = tuple(t for t, need in zip((x, k), grads) if need)
            dy: list[Tensor] = []

            def run(convolve: Callable[..., Tensor]) -> None:
                y = convolve(x, k, None, tuple(call.stride), tuple(call.padding), call.groups, call.padding_mode)
                if backward:
                    if not dy:
                        dy.append(_output_gradient(y, input, generator))
                    torch.autograd.grad(y, wrt, dy[0])

            times = _time_candidates(key, candidates, run, _Clock(input.device, measures_device_time()))
    if not times:
        _unmeasurable.add(key)
        return None
    fastest = min(times.values())
    best = next(name for name in candidates if name in times and times[name] <= fastest * (1 + TIE_MARGIN))
    _choices[key] = best
    _timings[key] = times
    return best


def _time_candidates(
    key: CallKey,
    candidates: Mapping[str, Callable[..., Tensor]],
    run: Callable[[Callable[..., Tensor]], None],
    clock: _Clock,
) -> dict[str, float]:
    """``name -> median ms`` of ``run(convolve)`` for the candidates that ran (one untimed run each
    first: Triton compiles, the allocator warms up)."""
    times: dict[str, float] = {}
    for name, convolve in candidates.items():
        try:
            run(convolve)
            samples = sorted(clock.time(lambda c=convolve: run(c)) for _ in range(REPEATS))
        except torch.OutOfMemoryError:
            continue
        except Exception as exc:  # e.g. a GPU program that does not compile on this machine
            warnings.warn(
                f"dcls_core.autotune: the {name} path failed on {key_text(key)} and is left out: {exc}",
                stacklevel=3,
            )
            continue
        times[name] = samples[len(samples) // 2]
    return times


def state_dict() -> dict[str, str]:
    """The cached choices, ``key text -> path name`` (plain strings, for a checkpoint)."""
    return {**_saved, **{key_text(key): name for key, name in _choices.items()}}


def load_state_dict(state: Mapping[str, str]) -> None:
    """Adopt saved choices (a resumed run computes with the paths it started with); they replace
    cached choices of the same keys."""
    for text, name in state.items():
        if not isinstance(text, str) or not isinstance(name, str):
            raise ValueError(f"dcls_core.autotune: a saved choice must map str to str, got {text!r}: {name!r}")
    for key in [key for key in _choices if key_text(key) in state]:
        del _choices[key]
    _saved.update(state)


def timings() -> dict[str, dict[str, float]]:
    """What this process measured: ``key text -> {path name: median ms}`` (benchmarks print it)."""
    return {key_text(key): dict(times) for key, times in _timings.items()}


def clear() -> None:
    """Forget every cached choice and measurement."""
    _choices.clear()
    _saved.clear()
    _timings.clear()
    _unmeasurable.clear()
