"""The memory trace's analysis (``benchmarks/memory_trace.py``) on hand-made allocator histories:
steps split at the marks, each step's peak where the allocator's allocated bytes would peak (a
block counts as freed when its free is requested), the live allocations there by site."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import memory_trace  # noqa: E402

MARK = [{"filename": "/repo/benchmarks/memory_trace.py", "line": 30, "name": memory_trace._MARK}]


def _frames(file: str, line: int = 1) -> list[dict]:
    """A Python stack, innermost first: the site, then torch's frames would follow outward."""
    return [
        {"filename": "/venv/site-packages/torch/nn/modules/module.py", "line": 9, "name": "_call_impl"},
        {"filename": f"/repo/dcls_core/{file}", "line": line, "name": "fn"},
        {"filename": "/repo/benchmarks/bench_models.py", "line": 5, "name": "<module>"},
    ]


class _History:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def alloc(self, addr: int, size: int, frames: list[dict]) -> None:
        self.events.append({"action": "alloc", "addr": addr, "size": size, "frames": frames})

    def free(self, addr: int, size: int, completed: bool = True) -> None:
        self.events.append({"action": "free_requested", "addr": addr, "size": size})
        if completed:
            self.events.append({"action": "free_completed", "addr": addr, "size": size})

    def mark(self) -> None:
        self.alloc(7, 512, MARK)
        self.free(7, 512)

    def snapshot(self) -> dict:
        return {"device_traces": [self.events]}


def test_each_step_peaks_where_the_allocated_bytes_do_and_lists_what_is_alive():
    h = _History()
    h.mark()
    h.alloc(100, 1000, _frames("a.py"))  # kept across the steps
    h.alloc(200, 300, _frames("b.py"))
    h.free(200, 300)
    h.mark()
    h.alloc(300, 500, _frames("b.py"))
    h.alloc(400, 50, [])  # autograd's device thread: no Python frames
    h.free(300, 500, completed=False)  # freed as requested (its completion may come later)
    h.alloc(500, 100, _frames("c.py"))
    h.free(400, 50)
    h.free(500, 100)
    h.mark()
    steps = memory_trace.step_peaks(h.snapshot(), 0, 2)
    assert [(s["start_gib"] * 2**30, s["peak_gib"] * 2**30) for s in steps] == [(0, 1300), (1000, 1550)]
    assert steps[0]["sites_all"] == {"dcls_core/a.py:1 fn": 1000, "dcls_core/b.py:1 fn": 300}
    assert steps[1]["sites_all"] == {
        "dcls_core/a.py:1 fn": 1000,
        "dcls_core/b.py:1 fn": 500,
        memory_trace.NO_PYTHON: 50,
    }
    diff = memory_trace.compare_sites(steps[1], steps[0])
    assert [(d["site"], round(d["gib"] * 2**30)) for d in diff] == [
        ("dcls_core/b.py:1 fn", 200),
        (memory_trace.NO_PYTHON, 50),
    ]


def test_a_history_without_every_step_is_refused():
    h = _History()
    h.alloc(100, 1000, _frames("a.py"))  # the first mark was overwritten
    h.mark()
    h.alloc(200, 10, _frames("a.py"))
    h.mark()
    with pytest.raises(RuntimeError, match="1 whole steps in the allocator's history, expected 2"):
        memory_trace.step_peaks(h.snapshot(), 0, 2)
