"""Bound Triton launches (:func:`dcls_core._triton.launch`): which calls reuse a bound kernel, which go
through the JIT, and (``cuda``) that a DCLS layer step gives the same bits either way.

The CPU tests stand in a recording program for a Triton ``JITFunction``: calling it with a grid
is the JIT's launch, which returns a compiled kernel whose ``[grid]`` launcher records the
bound launches.
"""

from __future__ import annotations

import types

import pytest
import torch

from dcls_core import _triton


class _Kernel:
    """A compiled kernel: ``kernel[grid](*values)`` is a bound launch."""

    def __init__(self, calls: list) -> None:
        self.calls = calls

    def __getitem__(self, grid):
        return lambda *values: self.calls.append(("bound", grid, values))


class _Program:
    """A JIT program with parameters ``names``: ``program[grid](*args, **settings)`` is the JIT's
    launch (recorded) and returns the compiled kernel."""

    def __init__(self, *names: str) -> None:
        self.params = [types.SimpleNamespace(name=n) for n in names]
        self.calls: list = []

    def __getitem__(self, grid):
        def run(*args, **settings):
            self.calls.append(("jit", grid, args, settings))
            return _Kernel(self.calls)

        return run


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(_triton, "_BOUND", True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    _triton.clear_bound_launches()
    yield
    _triton.clear_bound_launches()


def test_the_second_call_of_a_configuration_is_bound_with_the_constexprs_in_order():
    prog = _Program("x", "y", "n", "m", "BLOCK", "FLAG")
    x, y = torch.zeros(64), torch.zeros(64)
    _triton.launch(prog, (4, 2), (x, y), 7, 3, FLAG=True, BLOCK=128, num_warps=4)
    x2, y2 = torch.ones(64), torch.ones(64)  # other tensors, same dtypes and alignment
    _triton.launch(prog, (4, 2), (x2, y2), 7, 3, FLAG=True, BLOCK=128, num_warps=4)
    assert [c[0] for c in prog.calls] == ["jit", "bound"]
    assert prog.calls[0][2] == (x, y, 7, 3) and prog.calls[0][3] == dict(FLAG=True, BLOCK=128, num_warps=4)
    kind, grid, values = prog.calls[1]
    assert grid == (4, 2, 1)  # a compiled kernel's launcher reads three sizes
    assert values[0] is x2 and values[1] is y2 and values[2:] == (7, 3, 128, True)  # parameter order


@pytest.mark.parametrize(
    "change",
    ["scalar", "setting", "grid", "dtype", "alignment", "device"],
)
def test_whatever_the_jit_specializes_on_makes_a_new_configuration(change, monkeypatch):
    prog = _Program("x", "n", "BLOCK")
    base = torch.zeros(64)
    _triton.launch(prog, (1,), (base,), 5, BLOCK=32)
    x, n, grid, settings = torch.zeros(64), 5, (1,), dict(BLOCK=32)
    if change == "scalar":
        n = 16  # divisible by 16: the JIT specializes on it
    elif change == "setting":
        settings = dict(BLOCK=64)
    elif change == "grid":
        grid = (2,)
    elif change == "dtype":
        x = torch.zeros(64, dtype=torch.float16)
    elif change == "alignment":
        x = torch.zeros(65)[1:]  # 4 bytes past a 16-byte boundary
        assert x.data_ptr() % 16 != 0
    else:
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    _triton.launch(prog, grid, (x,), n, **settings)
    _triton.launch(prog, grid, (x,), n, **settings)
    assert [c[0] for c in prog.calls] == ["jit", "jit", "bound"]


def test_scalars_are_keyed_by_type_too():
    """1.0 == 1 in Python; a float and an int argument are typed apart by the JIT."""
    prog = _Program("x", "scale")
    x = torch.zeros(8)
    _triton.launch(prog, (1,), (x,), 1)
    _triton.launch(prog, (1,), (x,), 1.0)
    assert [c[0] for c in prog.calls] == ["jit", "jit"]


class _Loaded(_Kernel):
    """A loaded compiled kernel: its launcher (``run``), function and metadata."""

    function, packed_metadata = "function", "packed"

    def run(self, *launch_args):
        self.calls.append(("run", launch_args))


def _loaded_program(monkeypatch) -> tuple[_Program, list]:
    """A program whose JIT returns a :class:`_Loaded` kernel, and the list its launches go to."""
    calls: list = []
    monkeypatch.setattr(_Program, "__getitem__", lambda self, grid: lambda *a, **kw: _Loaded(calls))
    return _Program("x", "n", "BLOCK"), calls


def test_without_launch_hooks_the_kernels_launcher_runs_directly(monkeypatch):
    """A compiled kernel with a launcher: bound launches call it with Triton's launch arguments
    (grid, stream, the kernel, no metadata or hooks) while no launch hook is set, and go through
    the kernel's runner (which calls the hooks) while one is."""
    from triton import knobs

    prog, calls = _loaded_program(monkeypatch)
    monkeypatch.setattr(_triton, "_raw_stream", lambda device: 77)
    x = torch.zeros(8)
    for _ in range(2):
        _triton.launch(prog, (3,), (x,), 5, BLOCK=16)
    assert calls[-1] == ("run", (3, 1, 1, 77, "function", "packed", None, None, None, x, 5, 16))
    hook = lambda metadata: None  # noqa: E731
    knobs.runtime.launch_enter_hook.add(hook)
    try:
        _triton.launch(prog, (3,), (x,), 5, BLOCK=16)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert calls[-1] == ("bound", (3, 1, 1), (x, 5, 16))


def test_an_unknown_triton_keeps_the_runner(monkeypatch):
    """Where this Triton is not one whose launcher's arguments are known (or its knobs do not
    import), bound launches go through the kernel's runner, never its launcher."""
    prog, calls = _loaded_program(monkeypatch)
    monkeypatch.setattr(_triton, "_KNOBS", [None])
    x = torch.zeros(8)
    for _ in range(3):
        _triton.launch(prog, (3,), (x,), 5, BLOCK=16)
    assert [c[0] for c in calls] == ["bound", "bound"]
    monkeypatch.setattr(_triton, "_KNOBS", [])
    monkeypatch.setattr("triton.__version__", "9.9.0")
    assert _triton._runtime_knobs() is None


def test_a_parameter_left_to_its_default_keeps_the_jit():
    """The bound launch passes every parameter; one the caller left out (a default) is unknown."""
    prog = _Program("x", "n", "BLOCK", "EXTRA")
    x = torch.zeros(8)
    for _ in range(3):
        _triton.launch(prog, (1,), (x,), 2, BLOCK=16)
    assert [c[0] for c in prog.calls] == ["jit"] * 3


def test_the_switch_and_the_interpreter_keep_the_jit(monkeypatch):
    prog = _Program("x", "n")
    x = torch.zeros(8)
    monkeypatch.setattr(_triton, "_BOUND", False)
    for _ in range(2):
        _triton.launch(prog, (1,), (x,), 2)
    assert [c[0] for c in prog.calls] == ["jit"] * 2

    monkeypatch.setattr(_triton, "_BOUND", True)
    calls = []

    class Interpreted:  # no ``params``: Triton's interpreter runs it
        def __getitem__(self, grid):
            return lambda *args, **kw: calls.append(args)

    for _ in range(2):
        _triton.launch(Interpreted(), (1,), (x,), 2)
    assert len(calls) == 2 and not _triton._LAUNCHERS


def test_configurations_are_bounded(monkeypatch):
    monkeypatch.setattr(_triton, "_MAX_ENTRIES", 4)
    prog = _Program("x", "n")
    x = torch.zeros(8)
    for n in range(10):
        _triton.launch(prog, (1,), (x,), n)
    assert len(_triton._LAUNCHERS) <= 4


@pytest.mark.cuda
@pytest.mark.parametrize("conv", ["direct", "fft"])
def test_bound_launches_give_the_jits_bits_cuda(monkeypatch, conv):
    """A DCLS layer step (fused construction and the path's programs) launched through bound
    kernels equals the JIT-launched step bit for bit, and its launches were bound."""
    import dcls_core
    from dcls_core import dispatch

    torch.manual_seed(0)
    layer = dcls_core.Dcls2d(32, 32, kernel_count=26, dilated_kernel_size=23, padding=11, groups=32).cuda()
    x = torch.randn(4, 32, 40, 37, device="cuda").to(memory_format=torch.channels_last).requires_grad_()
    dy = torch.randn(4, 32, 40, 37, device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = layer(x)
        grads = torch.autograd.grad(y, [x, *layer.parameters()], dy.to(y.dtype))
        return [y.float(), *grads]

    with dispatch.forced(construct="triton", conv=conv):
        monkeypatch.setattr(_triton, "_BOUND", False)
        jit = step()
        monkeypatch.setattr(_triton, "_BOUND", True)
        step()  # binds
        bound = [step() for _ in range(2)]
    assert any(v is not None for v in _triton._LAUNCHERS.values())
    for run in bound:
        for a, b in zip(jit, run):
            assert torch.equal(a, b)


def test_next_power_of_2_is_tritons():
    import triton

    assert _triton.next_power_of_2(0) == 1
    for n in range(1, 1100):
        assert _triton.next_power_of_2(n) == triton.next_power_of_2(n)
