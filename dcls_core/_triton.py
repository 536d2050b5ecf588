"""Triton's runtime as the GPU programs use it: whether they can run here, and their launches.

Only the ``programs.py`` modules import Triton at module level, and only when a launcher first
needs them; everything else asks :func:`triton_available` first (as do the log-mel front end's
fused passes in ``dcls_audio.features.logmel_passes``).

Launches bound once per configuration (:func:`launch`): ``program[grid](*args, **settings)``
runs Triton's JIT launch path on every call: it binds and specializes each argument (pointer
dtype and 16-byte alignment, integer divisibility), builds the cache key of the compiled kernel
and looks it up, host time an eager DCLS layer pays on each of its dozen launches per step
(benchmarks/NOTES_layers.md, run 15). :func:`launch` takes the same arguments, the tensors
grouped. The first call of a configuration goes through the JIT (which compiles or finds the
kernel and launches it); later calls with the same configuration call the compiled kernel's
launcher directly (grid, the current stream, the kernel: no launch metadata) while no Triton
launch hook is set, and go through Triton's ``CompiledKernel[grid]`` while one is (a profiler's
hooks still run), or where this Triton's launcher is not one whose arguments are known. A
configuration is the program, the grid, the current device, every scalar argument and setting
by type and value and every tensor argument by dtype and 16-byte alignment: all that the JIT
specializes on, so the kernel found is the one the JIT would have found.
``$DCLS_TRITON_LAUNCH=jit`` (read at import) sends every launch through the JIT; under Triton's
interpreter (``TRITON_INTERPRET=1``) every launch goes there.
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple, Optional

import torch

__all__ = ["LAUNCH_ENV_VAR", "clear_bound_launches", "launch", "next_power_of_2", "triton_available"]

_AVAILABLE: list[bool] = []


def triton_available() -> bool:
    """True if ``triton`` and ``triton.language`` import and CUDA is available (checked once)."""
    if not _AVAILABLE:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401

            _AVAILABLE.append(torch.cuda.is_available())
        except Exception:
            _AVAILABLE.append(False)
    return _AVAILABLE[0]


def next_power_of_2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``): a program's block size (as
    ``triton.next_power_of_2``, without importing Triton)."""
    return 1 << max(0, int(n) - 1).bit_length()


LAUNCH_ENV_VAR = "DCLS_TRITON_LAUNCH"
_BOUND = os.environ.get(LAUNCH_ENV_VAR, "bound") != "jit"
_MAX_ENTRIES = 4096  # configurations kept (shapes that keep changing would grow it without end)


def clear_bound_launches() -> None:
    """Forget every bound configuration (the next launch of each goes through the JIT)."""
    _LAUNCHERS.clear()


class _Bound(NamedTuple):
    """A configuration's compiled kernel, ready to launch."""

    hooked_runner: Callable[..., Any]  # CompiledKernel[grid]: the launch with Triton's launch hooks
    launcher: Optional[Callable[..., Any]]  # the kernel's launcher, called directly while no hook is set
    function: Any
    packed_metadata: Any
    grid: tuple[int, int, int]
    constexprs: tuple  # the values of the parameters after the positional ones


# configuration -> its bound kernel, or None where the program takes arguments this module cannot
# reproduce (then: the JIT)
_LAUNCHERS: dict[tuple, Optional[_Bound]] = {}
# Triton versions whose compiled kernels' launchers take (grid x3, stream, function, packed metadata,
# launch metadata, enter hook, exit hook, *arguments): the direct call is made on these only
_DIRECT_LAUNCH_VERSIONS = ("3.6.",)
_KNOBS: list = []  # Triton's runtime knobs (launch hooks), or None where they are unknown


def _runtime_knobs() -> Any:
    """Triton's runtime knobs (its launch hooks), or None where this Triton has none this module
    knows; looked up once."""
    if not _KNOBS:
        try:
            import triton
            from triton import knobs

            known = triton.__version__.startswith(_DIRECT_LAUNCH_VERSIONS)
            _KNOBS.append(knobs.runtime if known else None)
        except (ImportError, AttributeError):
            _KNOBS.append(None)
    return _KNOBS[0]


def _raw_stream(device: int) -> int:
    """The current CUDA stream's handle on ``device``, as Triton's launches take it."""
    return torch._C._cuda_getCurrentRawStream(device)


def _hooks_set() -> bool:
    """True if a Triton launch hook is set (a profiler's): launches then go through the runner."""
    runtime = _runtime_knobs()
    enter, exit_ = runtime.launch_enter_hook, runtime.launch_exit_hook
    return bool(getattr(enter, "calls", enter is not None) or getattr(exit_, "calls", exit_ is not None))


def _bind(program: Any, grid: tuple, kernel: Any, num_args: int, settings: dict) -> Optional[_Bound]:
    """The launch of ``kernel`` (what the JIT returned) for ``grid`` with the values of the
    program's parameters after its ``num_args`` positional ones (the constexprs, in ``settings``).
    The direct launcher call is left out (the runner kept) where this Triton is not one whose
    launcher's arguments are known, or the kernel lacks what the call needs."""
    names = [p.name for p in program.params]
    rest = names[num_args:]
    if kernel is None or not hasattr(kernel, "__getitem__") or any(name not in settings for name in rest):
        return None
    grid3 = (*grid, 1, 1)[:3]  # a compiled kernel's launcher reads three sizes (the JIT pads them)
    runner = kernel[grid3]
    # after kernel[grid] the kernel is loaded: its launcher, function and metadata are there
    launcher = getattr(kernel, "run", None)
    function, packed = getattr(kernel, "function", None), getattr(kernel, "packed_metadata", None)
    if _runtime_knobs() is None or function is None or packed is None:
        launcher = None
    return _Bound(runner, launcher, function, packed, grid3, tuple(settings[name] for name in rest))


def launch(program: Any, grid: tuple, tensors: tuple, *scalars: Any, **settings: Any) -> None:
    """``program[grid](*tensors, *scalars, **settings)``, the kernel of the configuration bound
    once (module docstring).

    ``tensors``: the program's leading pointer parameters (they may change from call to call);
    ``scalars``: the plain parameters after them (compared by type and value); ``grid``: a
    tuple of ints; ``settings``: every parameter after those (the constexprs) and the launch
    options (``num_warps``, ``num_stages``)."""
    if not _BOUND or not hasattr(program, "params"):  # the JIT's own path, or the interpreter's
        program[grid](*tensors, *scalars, **settings)
        return
    device = torch.cuda.current_device()
    # scalars by type too: 1 == 1.0 == True, but the JIT types them apart
    key = (
        id(program),
        grid,
        device,
        scalars,
        tuple(map(type, scalars)),
        tuple(settings.items()),
        tuple([(t.dtype, t.data_ptr() % 16 == 0) for t in tensors]),
    )
    bound = _LAUNCHERS.get(key, False)
    if bound:
        if bound.launcher is None or _hooks_set():
            bound.hooked_runner(*tensors, *scalars, *bound.constexprs)
        else:  # as the runner does, without building launch metadata for hooks that are not there
            g0, g1, g2 = bound.grid
            stream = _raw_stream(device)
            bound.launcher(
                g0, g1, g2, stream, bound.function, bound.packed_metadata, None, None, None,
                *tensors, *scalars, *bound.constexprs,
            )  # fmt: skip
        return
    kernel = program[grid](*tensors, *scalars, **settings)
    if bound is False:  # the first call of this configuration
        if len(_LAUNCHERS) >= _MAX_ENTRIES:
            _LAUNCHERS.clear()
        _LAUNCHERS[key] = _bind(program, grid, kernel, len(tensors) + len(scalars), settings)
