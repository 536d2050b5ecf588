"""What is allocated at each training step's peak, by the code that allocated it (CUDA).

``max_memory_allocated`` says how high a step went, not what was there. This records the caching
allocator's history (``torch.cuda.memory._record_memory_history`` with Python stacks) over a few
steps of a fresh model, replays the allocation events and, for each step, finds the moment the
allocated bytes peak and lists what is alive then (allocated at any point of the trace), grouped
by site: the innermost Python frame outside torch's own files (frames are stored innermost
first). Allocations made by autograd's C++ backward ops run on its device thread without Python
frames and are grouped as one site. Comparing two steps' sites names what one holds at its peak
that the other does not (for the layer graphs: the recording step against a replayed one).

Bytes are the allocations' requested sizes (the allocator rounds blocks up), counted from the
start of the trace: allocations made before it (weights, optimizer state) are not in the events,
and a free of one of them lowers the running total. A block counts as freed when its free is
requested, as the allocator's own allocated-bytes statistic does.
"""

from __future__ import annotations

import collections
from typing import Callable

import torch

__all__ = ["compare_sites", "step_peaks", "traced_steps"]

_MARK = "_memory_trace_step_mark"  # the name of the frame whose allocations separate the steps
_TOP = 15
NO_PYTHON = "autograd's C++ backward (no Python frames)"


def _memory_trace_step_mark(device: torch.device) -> None:
    """One small allocation that the analysis recognises by this function's name."""
    torch.empty(1, device=device)


def traced_steps(step: Callable[[], None], count: int, device: torch.device, max_entries: int = 400_000) -> dict:
    """Runs ``step`` ``count`` times with the allocator's history recorded; returns the snapshot
    (``torch.cuda.memory._snapshot()``) with the steps marked."""
    torch.cuda.synchronize(device)
    torch.cuda.memory._record_memory_history(max_entries=max_entries, stacks="python")
    try:
        for _ in range(count):
            _memory_trace_step_mark(device)
            step()
            torch.cuda.synchronize(device)
        _memory_trace_step_mark(device)
        snapshot = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    return snapshot


def _site(frames: list[dict]) -> str:
    """The innermost frame outside torch's own files (``folder/file:line function``)."""
    for frame in frames:
        name = frame.get("filename", "")
        if "/torch/" not in name and not name.startswith("<"):
            return f"{'/'.join(name.split('/')[-2:])}:{frame.get('line')} {frame.get('name')}"
    return "torch internals" if frames else NO_PYTHON


def _is_mark(event: dict) -> bool:
    return event["action"] == "alloc" and any(f.get("name") == _MARK for f in event.get("frames", []))


def _peak_positions(events: list[dict]) -> list[tuple[int, int, int]]:
    """Per step: (index of its peak event, bytes at its start, bytes at its peak)."""
    total, out, current, marks = 0, [], None, set()
    for i, event in enumerate(events):
        action = event["action"]
        if _is_mark(event):
            marks.add(event["addr"])
            if current is not None:
                out.append(tuple(current))
            current = [i, total, total]
            continue
        if action == "alloc":
            total += event["size"]
        elif action == "free_requested" and event["addr"] in marks:
            marks.discard(event["addr"])
            continue
        elif action == "free_requested":
            total -= event["size"]
        else:
            continue
        if current is not None and total > current[2]:
            current[0], current[2] = i, total
    return out


def step_peaks(snapshot: dict, device_index: int, steps: int, top: int = _TOP) -> list[dict]:
    """Per step (between two marks of :func:`traced_steps`): its peak of allocated bytes (from the
    trace's start) and the sites of what the trace allocated that is alive at that peak (bytes
    and count, largest first; ``sites_all``: every site, for :func:`compare_sites`). Raises if the
    trace does not hold ``steps`` whole steps (its ring buffer overwrote the first ones)."""
    events = snapshot["device_traces"][device_index]
    positions = _peak_positions(events)
    if len(positions) != steps:
        raise RuntimeError(
            f"memory trace: {len(positions)} whole steps in the allocator's history, expected {steps} "
            "(raise max_entries)"
        )
    wanted = {p[0]: n for n, p in enumerate(positions)}
    live: dict[int, tuple[int, str]] = {}  # address -> (size, site)
    at_peak: dict[int, dict[int, tuple[int, str]]] = {}
    for i, event in enumerate(events):
        if event["action"] == "alloc" and not _is_mark(event):
            live[event["addr"]] = (event["size"], _site(event.get("frames", [])))
        elif event["action"] == "free_requested":
            live.pop(event["addr"], None)
        if i in wanted:
            at_peak[wanted[i]] = dict(live)
    out = []
    for n, (_, start, peak) in enumerate(positions):
        sites: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        for size, site in at_peak.get(n, {}).values():
            sites[site][0] += size
            sites[site][1] += 1
        ordered = sorted(sites.items(), key=lambda kv: -kv[1][0])
        out.append(
            {
                "step": n,
                "start_gib": start / 2**30,
                "peak_gib": peak / 2**30,
                "sites": [{"site": s, "gib": b / 2**30, "count": c} for s, (b, c) in ordered[:top]],
                "sites_all": {s: b for s, (b, _) in ordered},
            }
        )
    return out


def compare_sites(a: dict, b: dict, top: int = _TOP) -> list[dict]:
    """Sites by how much more step ``a`` holds at its peak than step ``b`` (GiB, largest first)."""
    names = set(a["sites_all"]) | set(b["sites_all"])
    diff = {n: (a["sites_all"].get(n, 0) - b["sites_all"].get(n, 0)) / 2**30 for n in names}
    ordered = sorted(diff.items(), key=lambda kv: -abs(kv[1]))
    return [{"site": n, "gib": d} for n, d in ordered[:top] if d]
