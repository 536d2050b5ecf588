"""The convolution path per call shape, measured once and cached (as ``cudnn.benchmark`` does for
cuDNN's algorithms).

Where :mod:`dcls_core.dispatch` autotunes a call, every registered path that supports it runs on
inputs of the call's shape, strides and dtypes (fresh tensors drawn from a private generator, so
the caller's random streams are untouched): one untimed run (Triton compiles here), then
:data:`REPEATS` timed runs; the fastest median wins. Training calls (gradients recorded) time the
forward and backward, the output gradient taking the input's memory format; inference calls time
the forward alone. A path that fails (out of memory, a GPU program that does not compile on this
machine) is left out.

A choice is made once per process and key, and the measurement waits for the device; calls made
while ``torch.compile`` traces or a CUDA graph is captured never measure: they read the cache and
otherwise keep the fixed rules. :func:`state_dict` / :func:`load_state_dict` carry the choices in
a training checkpoint, so a resumed run computes with the paths it started with.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor

__all__ = [
    "REPEATS",
    "CallKey",
    "call_key",
    "choice",
    "clear",
    "key_text",
    "load_state_dict",
    "measure",
    "state_dict",
    "timings",
]

REPEATS = 3
CallKey = tuple  # what call_key returns: hashable, cheap to build on every call
_choices: dict[CallKey, str] = {}
_saved: dict[str, str] = {}  # choices loaded from a checkpoint, by key text, adopted on first use
_timings: dict[CallKey, dict[str, float]] = {}  # key -> path name -> median ms, of this process's measurements
_SEED = 0x5EED


def call_key(
    input: Tensor,
    kernel_shape: Sequence[int],
    kernel_dtype: torch.dtype,
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    padding_mode: str,
    backward: bool,
) -> CallKey:
    """Everything a path's speed depends on: device type, dtypes (with the autocast dtype and
    TF32 switch), shapes, strides, conv arguments and whether the backward runs. A tuple, built on
    every dispatched call; :func:`key_text` names it in a checkpoint."""
    device = input.device.type
    autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    return (
        device,
        input.dtype,
        kernel_dtype,
        autocast,
        bool(torch.backends.cudnn.allow_tf32),
        tuple(input.shape),
        tuple(input.stride()),
        tuple(kernel_shape),
        tuple(stride),
        tuple(padding),
        int(groups),
        padding_mode,
        bool(backward),
    )


def key_text(key: CallKey) -> str:
    """A call key as text (the form saved in checkpoints), e.g. ``cuda|torch.float32|...|train``."""
    device, dtype, kernel_dtype, autocast, tf32, shape, strides, kshape, stride, padding, groups, mode, backward = key
    parts = (
        device,
        str(dtype),
        str(kernel_dtype),
        "off" if autocast is None else str(autocast),
        f"tf32={int(tf32)}",
        f"x={shape}@{strides}",
        f"k={kshape}",
        f"s={stride}",
        f"p={padding}",
        f"g={groups}",
        mode,
        "train" if backward else "infer",
    )
    return "|".join(parts)


def choice(key: CallKey) -> Optional[str]:
    """The cached path name for ``key`` (measured here or loaded), or None."""
    name = _choices.get(key)
    if name is None and _saved and not torch.compiler.is_compiling():  # text keys: eager calls only
        name = _saved.pop(key_text(key), None)
        if name is not None:
            _choices[key] = name
    return name


def _measuring_allowed(input: Tensor) -> bool:
    if torch.compiler.is_compiling():
        return False
    if input.is_cuda and torch.cuda.is_current_stream_capturing():
        return False
    return True


def _fresh(like: Tensor, dtype: torch.dtype, generator: torch.Generator, requires_grad: bool) -> Tensor:
    """A tensor of ``like``'s shape and strides in ``dtype`` with normal values from ``generator``."""
    t = torch.empty_strided(like.shape, like.stride(), dtype=dtype, device=like.device)
    with torch.no_grad():
        t.normal_(generator=generator)
    return t.requires_grad_(requires_grad)


def _output_gradient(y: Tensor, input: Tensor, generator: torch.Generator) -> Tensor:
    fmt = torch.channels_last if input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last) else None
    g = torch.empty_like(y, memory_format=fmt) if fmt is not None else torch.empty_like(y)
    return g.normal_(generator=generator)


class _Clock:
    """Elapsed milliseconds of a block of device work (CUDA events, or the host clock)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def time(self, fn: Callable[[], None]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def measure(
    key: CallKey,
    candidates: Mapping[str, Callable[..., Tensor]],
    input: Tensor,
    kernel_shape: Sequence[int],
    kernel_dtype: torch.dtype,
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    padding_mode: str,
    backward: bool,
) -> Optional[str]:
    """Time each candidate ``name -> convolve`` (the paths' contract, :mod:`dcls_core.conv`) on a
    call of this shape, cache the fastest under ``key`` and return its name. Returns the cached
    name without measuring if there is one, and None where measuring is not allowed here (while
    compiling or capturing) or every candidate failed."""
    cached = choice(key)
    if cached is not None:
        return cached
    if not candidates or not _measuring_allowed(input):
        return None
    generator = torch.Generator(device=input.device).manual_seed(_SEED)
    clock = _Clock(input.device)
    with torch.enable_grad() if backward else torch.no_grad():
        x = _fresh(input, input.dtype, generator, backward)
        k = torch.randn(tuple(kernel_shape), generator=generator, device=input.device, dtype=kernel_dtype)
        k.requires_grad_(backward)
        dy: list[Tensor] = []

        def run(convolve: Callable[..., Tensor]) -> None:
            y = convolve(x, k, None, tuple(stride), tuple(padding), groups, padding_mode)
            if backward:
                if not dy:
                    dy.append(_output_gradient(y, input, generator))
                torch.autograd.grad(y, (x, k), dy[0])

        times: dict[str, float] = {}
        for name, convolve in candidates.items():
            try:
                run(convolve)  # untimed: compiles, allocates
                samples = sorted(clock.time(lambda c=convolve: run(c)) for _ in range(REPEATS))
            except Exception:  # out of memory, a program that does not compile here, ...: not a candidate
                continue
            times[name] = samples[len(samples) // 2]
    if not times:
        return None
    best = min(times, key=lambda name: (times[name], list(candidates).index(name)))
    if not math.isfinite(times[best]):
        return None
    _choices[key] = best
    _timings[key] = times
    return best


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
