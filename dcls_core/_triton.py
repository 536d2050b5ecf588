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
kernel and launches it); later calls with the same configuration launch the compiled kernel
through Triton's ``CompiledKernel[grid]`` (launch hooks, a profiler's, still run). A
configuration is the program, the grid, the current device, every scalar argument and setting
by type and value and every tensor argument by dtype and 16-byte alignment: all that the JIT
specializes on, so the kernel found is the one the JIT would have found.
``$DCLS_TRITON_LAUNCH=jit`` (read at import) sends every launch through the JIT; under Triton's
interpreter (``TRITON_INTERPRET=1``) every launch goes there.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import torch

__all__ = ["LAUNCH_ENV_VAR", "clear_bound_launches", "launch", "triton_available"]

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


LAUNCH_ENV_VAR = "DCLS_TRITON_LAUNCH"
_BOUND = os.environ.get(LAUNCH_ENV_VAR, "bound") != "jit"
_MAX_ENTRIES = 4096  # configurations kept (shapes that keep changing would grow it without end)
# configuration -> (the compiled kernel's launcher for the grid, the trailing constexpr values),
# or None where the program takes arguments this module cannot reproduce (then: the JIT)
_LAUNCHERS: dict[tuple, Optional[tuple[Callable[..., Any], tuple]]] = {}


def clear_bound_launches() -> None:
    """Forget every bound configuration (the next launch of each goes through the JIT)."""
    _LAUNCHERS.clear()


def _bind(program: Any, grid: tuple, kernel: Any, num_args: int, settings: dict) -> Optional[tuple]:
    """The launcher of ``kernel`` (what the JIT returned) for ``grid`` and the values of the
    program's parameters after its ``num_args`` positional ones (the constexprs, in ``settings``)."""
    names = [p.name for p in program.params]
    rest = names[num_args:]
    if kernel is None or not hasattr(kernel, "__getitem__") or any(name not in settings for name in rest):
        return None
    # the compiled kernel's launcher reads three grid sizes (the JIT pads them; it does not)
    return kernel[(*grid, 1, 1)[:3]], tuple(settings[name] for name in rest)


def launch(program: Any, grid: tuple, tensors: tuple, *scalars: Any, **settings: Any) -> None:
    """``program[grid](*tensors, *scalars, **settings)``, the kernel of the configuration bound
    once (module docstring).

    ``tensors``: the program's leading pointer parameters (they may change from call to call);
    ``scalars``: the plain parameters after them (compared by type and value); ``grid``: a
    tuple of ints;
    ``settings``: every parameter after those (the constexprs) and the launch options
    (``num_warps``, ``num_stages``)."""
    if not _BOUND or not hasattr(program, "params"):  # the JIT's own path, or the interpreter's
        program[grid](*tensors, *scalars, **settings)
        return
    layout = tuple([(t.dtype, t.data_ptr() % 16 == 0) for t in tensors])
    # scalars by type too: 1 == 1.0 == True, but the JIT types them apart
    key = (
        id(program),
        grid,
        torch.cuda.current_device(),
        scalars,
        tuple(map(type, scalars)),
        tuple(settings.items()),
        layout,
    )
    bound = _LAUNCHERS.get(key, False)
    if bound:
        launcher, constexprs = bound
        launcher(*tensors, *scalars, *constexprs)
        return
    kernel = program[grid](*tensors, *scalars, **settings)
    if bound is False:  # the first call of this configuration
        if len(_LAUNCHERS) >= _MAX_ENTRIES:
            _LAUNCHERS.clear()
        _LAUNCHERS[key] = _bind(program, grid, kernel, len(tensors) + len(scalars), settings)
