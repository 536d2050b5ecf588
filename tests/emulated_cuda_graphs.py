"""CUDA graphs emulated on the CPU at the operator level, for tests of
``dcls_core.conv.layer_graphs`` without a GPU.

A recording keeps every ATen call made inside ``torch.cuda.graph`` with its tensors; a replay
calls them again and writes each result into the recorded output. So, as on a GPU, a replay
reads and writes fixed tensors and runs no host logic, and a buffer that two recordings share is
shared by their replays. Unlike a GPU, a recording also runs its operations, and nothing emulates
the memory pools (which addresses a later recording may reuse).
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dcls_core.conv import layer_graphs

__all__ = ["layer_graphs_device"]


class _Recorder(TorchDispatchMode):
    def __init__(self, graph: EmulatedGraph) -> None:
        super().__init__()
        self.graph = graph

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.graph.calls.append((func, args, kwargs or {}, out))
        return out


class EmulatedGraph:
    """Stands in for ``torch.cuda.CUDAGraph``."""

    def __init__(self) -> None:
        self.calls: list = []

    def replay(self) -> None:
        with torch.no_grad():  # a replay runs kernels only: nothing for autograd to record or check
            self._run()

    def _run(self) -> None:
        for func, args, kwargs, out in self.calls:
            new = func(*args, **kwargs)
            for old, fresh in zip(*(o if isinstance(o, (tuple, list)) else (o,) for o in (out, new))):
                if isinstance(old, torch.Tensor) and isinstance(fresh, torch.Tensor):
                    if old.data_ptr() != fresh.data_ptr():  # written by a kernel into the recorded output
                        old.data.copy_(fresh)  # (.data: no version bump, as a replay does not bump one)


class _Stream:
    cuda_stream = 0


def layer_graphs_device(kind: str, monkeypatch) -> str:
    """The device of a layer-graphs test (``emulated``: the CPU, with CUDA graphs emulated and
    every training call of a DCLS layer wanted), with the module's state empty."""
    monkeypatch.setattr(layer_graphs, "_LAYERS", layer_graphs.weakref.WeakKeyDictionary())
    monkeypatch.setattr(layer_graphs, "_GENERATIONS", {})
    monkeypatch.setattr(layer_graphs, "_DISABLED", [])
    monkeypatch.setattr(layer_graphs, "_POOLS_FULL_WARNED", [])
    if kind != "emulated":
        return kind

    @contextlib.contextmanager
    def graph(cuda_graph, pool=None, capture_error_mode=None):
        with _Recorder(cuda_graph):
            yield

    monkeypatch.setattr(torch.cuda, "CUDAGraph", EmulatedGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _Stream())
    # the real check wants a CUDA input (tests/dcls_core/test_layer_graphs.py checks it on the CPU)
    monkeypatch.setattr(
        layer_graphs,
        "wanted",
        lambda module, input: module.training and torch.is_grad_enabled() and layer_graphs.graphable(module, input),
    )
    return "cpu"
