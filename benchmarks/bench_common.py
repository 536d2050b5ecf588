"""What the benchmark scripts share: device synchronisation and a clean slate between runs."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

__all__ = [
    "env_var",
    "format_by_process",
    "fresh",
    "is_kernel",
    "main_in_processes",
    "ratios_by_process",
    "run_in_processes",
    "sync",
]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (nothing on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh(device: torch.device) -> None:
    """Before a measurement: collect garbage, drop compiled graphs, return cached device memory
    and reset the peak-memory counter."""
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def is_kernel(event) -> bool:
    """Whether a profiler event (or average) is device work: a kernel or a copy on the device, not
    a host operator and not a range annotated on the device timeline (``Optimizer.step#...``),
    whose time spans kernels already counted."""
    return event.device_type == torch.autograd.DeviceType.CUDA and not getattr(event, "is_user_annotation", False)


@contextlib.contextmanager
def env_var(name: str, value: str | None):
    """The environment variable ``name`` set to ``value`` (None: unset) for the block."""
    saved = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def run_in_processes(
    script: Path, argv: Sequence[str], processes: int, out: Path, summarize: Callable[[list[dict]], dict]
) -> dict:
    """The benchmark ``script`` run ``processes`` times, one after another, each in a fresh Python
    process with ``argv`` followed by ``--processes 1`` and its own ``--json`` (argparse takes an
    option's last value, so these win over the caller's, abbreviated or not); their output passes
    through.

    Returns their reports joined: the first one's header fields, every row of ``results`` tagged
    with its ``process`` (index from 0), ``processes`` (how many reported), ``failed_processes``
    (the indices of those that exited with an error or wrote no readable report; a process cut
    short keeps the rows it wrote: the scripts write after each row) and what
    ``summarize(results)`` returns; written to ``out`` after each process. An empty dict where no
    process reported. Host-bound steps vary more between processes than between the repeats of
    one process (benchmarks/NOTES_layers.md, run 20)."""
    report: dict = {}
    failed: list[int] = []
    with tempfile.TemporaryDirectory(prefix="bench_processes_") as tmp:
        for index in range(processes):
            part = Path(tmp) / f"process{index}.json"
            print(f"-- process {index + 1} of {processes}", flush=True)
            cmd = [sys.executable, str(script), *argv, "--processes", "1", "--json", str(part)]
            done = subprocess.run(cmd, check=False)
            try:
                child = json.loads(part.read_text()) if part.exists() else None
            except ValueError:  # cut short while writing
                child = None
            if done.returncode != 0 or child is None:
                failed.append(index)
                why = f"exited with status {done.returncode}" if done.returncode else "wrote no readable report"
                print(f"error: process {index + 1} {why}", file=sys.stderr)
            if child is not None:
                if not report:
                    report = {k: v for k, v in child.items() if k != "results"}
                    report["results"] = []
                for row in child["results"]:
                    row["process"] = index
                    report["results"].append(row)
                report["processes"] = report.get("processes", 0) + 1
                report.update(summarize(report["results"]))
            if report:
                report["failed_processes"] = list(failed)
                out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main_in_processes(
    script: Path,
    argv: Optional[Sequence[str]],
    processes: int,
    out: Path,
    summarize: Callable[[list[dict]], dict],
    show: Callable[[dict], None],
) -> int:
    """A benchmark's ``main`` for ``--processes N``: :func:`run_in_processes` (``argv`` None: this
    process's own arguments), then ``show(report)`` prints the joined report. Returns the exit
    status: 1 where a process failed or none reported, else 0."""
    argv = sys.argv[1:] if argv is None else list(argv)
    report = run_in_processes(script, argv, processes, out, summarize)
    if not report:
        print("error: no process wrote a result", file=sys.stderr)
        return 1
    print(f"== {report['processes']} of {processes} processes reported")
    show(report)
    print(f"wrote {out}")
    return 1 if report["failed_processes"] else 0


def ratios_by_process(
    rows: list[dict], medians: Callable[[list[dict]], list[dict]], group: Sequence[str], ratios: Sequence[str]
) -> list[dict]:
    """Per group (the values of the fields ``group`` of a row of ``medians``): each ratio field of
    ``ratios`` per process, from ``medians`` of that process's rows (``<field>_by_process``: pairs
    ``[process, ratio]``), and its lowest and highest (``<field>_lowest``, ``<field>_highest``). A
    target holds only if it holds in the lowest."""
    processes: dict[int, list[dict]] = {}
    for r in rows:
        processes.setdefault(r.get("process", 0), []).append(r)
    out: dict[tuple, dict] = {}
    for index in sorted(processes):
        for m in medians(processes[index]):
            present = [field for field in ratios if field in m]
            if not present:
                continue
            row = out.setdefault(tuple(m[f] for f in group), {f: m[f] for f in group})
            for field in present:
                row.setdefault(f"{field}_by_process", []).append([index, m[field]])
    for row in out.values():
        for field in ratios:
            values = [value for _, value in row.get(f"{field}_by_process", [])]
            if values:
                row[f"{field}_lowest"], row[f"{field}_highest"] = min(values), max(values)
    return list(out.values())


def format_by_process(pairs: Sequence[Sequence]) -> str:
    """``[[process, ratio], ...]`` as ``1:0.85 2:0.66`` (processes counted from 1)."""
    return " ".join(f"{process + 1}:{value:.2f}" for process, value in pairs)
