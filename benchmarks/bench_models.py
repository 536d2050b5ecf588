"""Bare model step of every backbone, DCLS against its depthwise 7x7 twin, in one run.

For each family (ConvNeXt-T, FastViT-SA24, ConvFormer-S18) and each mode (``eager`` or a
``torch.compile`` mode) it times, for the DCLS model and the plain model side by side:

- train: one training step on a log-mel batch already on the device (forward under autocast,
  BCE, backward, AdamW fused on CUDA, gradients set to None), samples/s and peak memory;
- infer (``--infer``): eval mode under ``no_grad`` (the DCLS kernels come from the eval cache),
  samples/s;

and prints the table with DCLS / plain ratios. ``--convs`` repeats the DCLS rows with the
convolution path forced (``dcls_core.dispatch.forced(conv=...)``), ``auto`` being the
dispatcher's own choice as configured (by default: measured for training calls), ``measured``
with the fast paths measured per call shape (``DCLS_AUTOTUNE=1``), ``rules`` its fixed order
(``DCLS_AUTOTUNE=0``) and ``autotune`` a measurement of every path that supports a call.
``--layer-graphs 1 small 0`` times the DCLS rows with their layers' eager training calls replayed
as CUDA graphs (all, or only the small calls) and without (``DCLS_LAYER_GRAPHS``,
:mod:`dcls_core.conv.layer_graphs`); the reserved-memory ratio counts the graphs' pools.
``--memory`` breaks one step's memory down by phase; ``--memory-trace`` records a fresh model's
first four steps (warm-up, the graphs' recording, two replays) and lists what is alive at each
step's peak by code site (:mod:`memory_trace`).
``--profile`` adds, per model and mode (in CUDA-graph modes the kernels of a graph's replay are
listed, but no host operator owns them), where one training step's (with ``--infer`` also one
inference step's) device time goes: total kernel time against the step's wall time (device busy
share) and kernel time by group (DCLS programs, convolutions, GEMMs, normalisation, element-wise,
copies, optimizer), so a gap can be traced to GPU work or to host time. Timing: ``--warmup``
untimed steps, then ``--steps`` steps between two device synchronisations. ``--processes N`` runs
all of it N times, each in a fresh process, and prints each DCLS row's ratios by process and the
lowest: host-bound eager steps vary more between processes than within one.

    python benchmarks/bench_models.py                                         # all six, eager
    python benchmarks/bench_models.py --families convnext --modes eager default reduce-overhead
    python benchmarks/bench_models.py --families convnext --convs auto fft --profile
    python benchmarks/bench_models.py --layer-graphs 1 small 0 --infer   # DCLS layers as CUDA graphs or not
    python benchmarks/bench_models.py --families convnext --layer-graphs 1 --memory --memory-trace
    python benchmarks/bench_models.py --families convnext --modes reduce-overhead --convs rules rules@fft,direct
    python benchmarks/bench_models.py --families convnext --repeats 2 --processes 4  # the spread by process
    python benchmarks/bench_models.py --smoke                                 # tiny CPU check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import env_var, format_by_process, fresh, is_kernel, main_in_processes, ratios_by_process, sync  # noqa: E402
from memory_trace import compare_sites, step_peaks, traced_steps  # noqa: E402

from dcls_audio.models import create_model  # noqa: E402
from dcls_audio.training.optim import build_optimizer  # noqa: E402
from dcls_core import dispatch  # noqa: E402
from dcls_core.conv import autotune, layer_graphs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FAMILIES = {
    "convnext": ("convnext_dcls_audio_tiny", "convnext_audio_tiny"),
    "fastvit": ("fastvit_dcls_audio_sa24", "fastvit_audio_sa24"),
    "convformer": ("convformer_dcls_audio_s18", "convformer_audio_s18"),
}
NUM_CLASSES = 527
FRAMES = 1001  # 10 s at 32 kHz, hop 320
# kernel-name fragments -> group, first match wins (Triton programs keep their Python names)
KERNEL_GROUPS = (
    ("dcls", ("dw_conv2d", "banded", "construct", "placed", "spectral", "dcls")),
    ("fft", ("fft", "radix", "regular_fft", "vector_fft")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("conv (cuDNN)", ("conv", "cudnn", "implicit", "dgrad", "wgrad", "depthwise", "xmma_fprop")),
    ("gemm", ("gemm", "cutlass", "sm90_xmma", "matmul", "nvjet")),
    ("norm", ("norm", "welford")),
    ("copy / layout", ("copy", "memcpy", "transpose", "permute", "cat", "pad")),
    ("reduce", ("reduce",)),
    ("element-wise", ("elementwise", "vectorized", "unrolled", "triton_poi", "triton_per", "fused")),
)
SMOKE = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))


def _autocast(device: torch.device, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _kwargs(name: str, smoke: bool) -> dict:
    kwargs: dict = {"drop_path_rate": 0.1}
    if smoke:
        if name.startswith("convnext"):
            kwargs.update(SMOKE)
        if "dcls" in name:
            kwargs.update(kernel_count=4, dilated_kernel_size=5)
    return kwargs


def group_of(kernel_name: str) -> str:
    """The :data:`KERNEL_GROUPS` group of a device kernel's name ("other" if none matches)."""
    low = kernel_name.lower()
    for group, fragments in KERNEL_GROUPS:
        if any(f in low for f in fragments):
            return group
    return "other"


class Bench:
    """One model in one mode: its training step, its inference step, their timings."""

    def __init__(self, name: str, mode: str, args: argparse.Namespace, device: torch.device) -> None:
        fresh(device)
        torch.manual_seed(0)
        self.name, self.mode, self.args, self.device = name, mode, args, device
        self.net = create_model(name, num_classes=NUM_CLASSES, **_kwargs(name, args.smoke)).to(device)
        self.opt = build_optimizer(self.net, "adamw", 1e-4, 0.05, 5.0, fused=device.type == "cuda")
        frames = 256 if args.smoke else FRAMES
        self.spec = torch.randn(args.batch_size, 1, 128, frames, device=device)
        self.target = (torch.rand(args.batch_size, NUM_CLASSES, device=device) < 0.01).float()
        self.forward = self.net if mode == "eager" else torch.compile(self.net, mode=mode)
        self.graphs = mode in ("reduce-overhead", "max-autotune")

    def train_step(self) -> None:
        self._update(self._loss())

    def _loss(self) -> torch.Tensor:
        """A training step's forward and loss."""
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with _autocast(self.device, self.args.precision):
            logits = self.forward(self.spec)
        return F.binary_cross_entropy_with_logits(logits.float(), self.target)

    def _update(self, loss: torch.Tensor) -> None:
        """A training step's backward and optimizer step."""
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def infer_step(self) -> None:
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.no_grad(), _autocast(self.device, self.args.precision):
            self.forward(self.spec).float().sigmoid()

    def timed(self, step) -> float:
        """samples/s of ``step`` after the warm-up."""
        for _ in range(self.args.warmup):
            step()
        sync(self.device)
        start = time.perf_counter()
        for _ in range(self.args.steps):
            step()
        sync(self.device)
        return self.args.steps * self.args.batch_size / (time.perf_counter() - start)

    def train_row(self) -> dict:
        self.net.train()
        rate = self.timed(self.train_step)
        row = {"train_samples_per_s": rate, "train_step_ms": 1000 * self.args.batch_size / rate}
        cuda = self.device.type == "cuda"
        row["peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30 if cuda else float("nan")
        # CUDA graphs' temporaries sit in their pools' reserved memory, not in the allocated count
        row["peak_reserved_gib"] = torch.cuda.max_memory_reserved(self.device) / 2**30 if cuda else float("nan")
        return row

    def memory(self) -> dict:
        """Where one training step's memory goes (GiB): allocated before the step (weights,
        optimizer state, what the layer graphs keep), after its forward (plus the activations) and
        at its peak; reserved in CUDA-graph pools; what the layer graphs keep, by kind."""
        self.net.train()
        self.train_step()
        sync(self.device)
        gib = 2**30
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        loss = self._loss()
        after_forward = torch.cuda.memory_allocated(self.device)
        self._update(loss)
        del loss
        sync(self.device)
        pools = [s for s in torch.cuda.memory_snapshot() if tuple(s.get("segment_pool_id", (0, 0))) != (0, 0)]
        return {
            "before_step_gib": before / gib,
            "after_forward_gib": after_forward / gib,
            "step_peak_gib": torch.cuda.max_memory_allocated(self.device) / gib,
            "graph_pools_reserved_gib": sum(s["total_size"] for s in pools) / gib,
            "graph_pools_allocated_gib": sum(s["allocated_size"] for s in pools) / gib,
            "layer_graphs_gib": {k: v / gib for k, v in layer_graphs.held_bytes().items()},
        }

    def infer_row(self) -> dict:
        self.net.eval()
        if self.mode != "eager":
            self.forward = torch.compile(self.net, mode=self.mode)  # a fresh graph for eval mode
        return {"infer_samples_per_s": self.timed(self.infer_step)}

    def explain(self) -> dict:
        """Graphs and graph breaks dynamo makes of the training forward (``torch._dynamo.explain``)."""
        self.net.train()
        with _autocast(self.device, self.args.precision):
            info = torch._dynamo.explain(self.net)(self.spec)
        reasons = sorted({str(b.reason).splitlines()[0][:200] for b in info.break_reasons})
        return {"graphs": info.graph_count, "graph_breaks": info.graph_break_count, "break_reasons": reasons}

    def profile(self, infer: bool = False) -> dict:
        """Device kernel time of one training (``infer``: inference) step by group, and the step's wall time."""
        step = self.infer_step if infer else self.train_step
        self.net.train(not infer)
        for _ in range(3):
            step()
        sync(self.device)
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
            start = time.perf_counter()
            step()
            sync(self.device)
            wall_ms = 1000 * (time.perf_counter() - start)
        groups: dict[str, float] = defaultdict(float)
        kernels: dict[str, float] = defaultdict(float)
        launches = 0
        for event in prof.key_averages():
            if not is_kernel(event):  # host-side operators and ranges annotated on the device
                continue
            ms = event.self_device_time_total / 1000
            groups[group_of(event.key)] += ms
            kernels[event.key] += ms
            launches += event.count
        busy = sum(groups.values())
        top = sorted(kernels.items(), key=lambda kv: -kv[1])[:30]
        # host operators by the device time of the kernels they launch themselves, per input shape
        ops = []
        for event in prof.key_averages(group_by_input_shape=True):
            if event.device_type == torch.autograd.DeviceType.CUDA or event.self_device_time_total <= 0:
                continue
            ops.append((event.self_device_time_total / 1000, event.count, f"{event.key} {event.input_shapes}"))
        ops.sort(key=lambda t: -t[0])
        return {
            "wall_ms": wall_ms,
            "kernel_ms": busy,
            "busy_share": busy / wall_ms if wall_ms else float("nan"),
            "kernels": launches,
            "groups_ms": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
            "top_kernels_ms": {k[:90]: v for k, v in top},
            "top_ops_ms": [{"ms": ms, "calls": n, "op": name[:160]} for ms, n, name in ops[:25]],
        }


def _cudagraph_skips() -> int:
    """How many graphs Inductor has compiled without CUDA graphs so far (reasons: ``TORCH_LOGS=cudagraphs``)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def _conv_variant(value: str, names: tuple[str, ...]) -> str:
    base, _, order = value.partition("@")
    if base not in names:
        raise argparse.ArgumentTypeError(f"{base!r} is not one of {', '.join(names)}")
    if order:
        with env_var(dispatch.CONV_ORDER_ENV_VAR, order):
            try:
                dispatch.conv_order()
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def run_model(name: str, mode: str, conv: str, args: argparse.Namespace, device: torch.device) -> dict:
    base, _, order = conv.partition("@")  # "rules@fft,direct": the fixed rules in that order
    forced = dispatch.forced(conv=None if base in ("auto", "measured", "rules") else base)
    # "measured" / "rules": the dispatcher with / without the fast paths measured per call shape
    autotune_env = {"measured": "1", "rules": "0"}.get(base, os.environ.get(dispatch.AUTOTUNE_ENV_VAR))
    order_env = order or os.environ.get(dispatch.CONV_ORDER_ENV_VAR)
    before = set(autotune.timings())
    with env_var(dispatch.AUTOTUNE_ENV_VAR, autotune_env), env_var(dispatch.CONV_ORDER_ENV_VAR, order_env), forced:
        row = _measure_model(name, mode, conv, args, device)
    measured = {key: times for key, times in autotune.timings().items() if key not in before}
    if measured:
        row["measured_paths_ms"] = measured  # this model's call shapes: each candidate path's median
    return row


TRACED_STEPS = 4  # a fresh model's first steps: warm-up, the layer graphs' recording, two replays


def _memory_trace(name: str, mode: str, args: argparse.Namespace, device: torch.device) -> dict:
    """A fresh model's first :data:`TRACED_STEPS` training steps under the allocator's history
    (:mod:`memory_trace`): each step's peak and what is alive then; the recording step (1) and the
    warm-up (0) against the last replay."""
    bench = Bench(name, mode, args, device)
    bench.net.train()
    index = torch.cuda.current_device() if device.index is None else device.index
    steps = step_peaks(traced_steps(bench.train_step, TRACED_STEPS, device), index, TRACED_STEPS)
    last = steps[-1]
    out = {
        "steps": [{k: v for k, v in s.items() if k != "sites_all"} for s in steps],
        "recording_minus_replay": compare_sites(steps[1], last),
        "warmup_minus_replay": compare_sites(steps[0], last),
    }
    del bench
    return out


def _measure_model(name: str, mode: str, conv: str, args: argparse.Namespace, device: torch.device) -> dict:
    trace = _memory_trace(name, mode, args, device) if args.memory_trace and device.type == "cuda" else None
    bench = Bench(name, mode, args, device)
    skips_before = _cudagraph_skips()
    row = {"model": name, "mode": mode, "conv": conv, **bench.train_row()}
    if args.explain and mode != "eager":
        row["explain"] = bench.explain()
    profiled = args.profile and device.type == "cuda"
    if profiled:
        row["profile"] = bench.profile()
    if args.memory and device.type == "cuda":
        row["memory"] = bench.memory()
    if trace is not None:
        row["memory_trace"] = trace
    if args.infer:
        row.update(bench.infer_row())
        if profiled:
            row["profile_infer"] = bench.profile(infer=True)
    if bench.graphs:  # > 0: parts of the training or inference step were compiled without CUDA graphs
        row["cudagraph_skips"] = _cudagraph_skips() - skips_before
    return row


def medians(rows: list[dict]) -> list[dict]:
    """Per (model, mode, conv): the median samples/s of its runs, DCLS / 7x7 as the ratio of the
    medians, and the lowest and highest single-run training ratio."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["mode"], r["conv"]), []).append(r)
    out = []
    for (model, mode, conv), runs in groups.items():
        row = {"model": model, "mode": mode, "conv": conv, "runs": len(runs)}
        for key in ("train_samples_per_s", "infer_samples_per_s", "peak_gib", "peak_reserved_gib"):
            if key in runs[0]:
                row[key] = float(np.median([r[key] for r in runs]))
        base = runs[0].get("baseline")
        if base:
            plain = next(m for m in out if m["model"] == base and m["mode"] == mode)
            row["baseline"] = base
            row["train_ratio"] = row["train_samples_per_s"] / plain["train_samples_per_s"]
            row["train_ratio_low"] = min(r["train_ratio"] for r in runs)
            row["train_ratio_high"] = max(r["train_ratio"] for r in runs)
            if "infer_samples_per_s" in row:
                row["infer_ratio"] = row["infer_samples_per_s"] / plain["infer_samples_per_s"]
            row["peak_ratio"] = row["peak_gib"] / plain["peak_gib"] if plain["peak_gib"] else float("nan")
            if plain.get("peak_reserved_gib"):
                row["reserved_ratio"] = row["peak_reserved_gib"] / plain["peak_reserved_gib"]
        out.append(row)
    return out


def by_process(rows: list[dict]) -> list[dict]:
    """Per DCLS (model, mode, conv): each process's train (and infer) ratio, of the medians of that
    process's runs, and the lowest and highest of them. Eager steps near their host's limit vary
    more between processes than between the repeats of one process (NOTES run 20): a target holds
    only if it holds in the lowest."""
    return ratios_by_process(rows, medians, ("model", "mode", "conv"), ("train_ratio", "infer_ratio"))


def print_by_process(rows: list[dict], processes: int) -> None:
    print(f"per process ({processes} processes; process:ratio, each of the medians of that process's runs)")
    head = f"{'model':<27} {'mode':<15} {'conv':<17}"
    print(head + f" {'train ratios':<32} {'lowest':>6} {'infer ratios':<32} {'lowest':>6}")
    for r in rows:
        train = format_by_process(r["train_ratio_by_process"])
        infer = format_by_process(r.get("infer_ratio_by_process", []))
        print(
            f"{r['model']:<27} {r['mode']:<15} {r['conv']:<17} {train:<32} {r['train_ratio_lowest']:>6.2f} "
            f"{infer:<32} {r.get('infer_ratio_lowest', float('nan')):>6.2f}"
        )


def print_medians(rows: list[dict], repeats: int) -> None:
    print(f"medians of {repeats} runs (ratios: of the medians; spread: lowest and highest run's train ratio)")
    print(f"{'model':<27} {'mode':<15} {'conv':<17} {'train/s':>8} {'infer/s':>8} {'train ratio':>11} {'spread':>11}")
    for r in rows:
        spread = f"{r['train_ratio_low']:.2f}-{r['train_ratio_high']:.2f}" if "train_ratio" in r else ""
        ratio = f"{r['train_ratio']:.2f}" if "train_ratio" in r else ""
        print(
            f"{r['model']:<27} {r['mode']:<15} {r['conv']:<17} {r['train_samples_per_s']:>8.1f} "
            f"{r.get('infer_samples_per_s', float('nan')):>8.1f} {ratio:>11} {spread:>11}"
        )


def print_table(report: dict) -> None:
    rows = report["results"]
    print(f"device: {report['device']}, torch {report['torch']}, {report['precision']}, batch {report['batch_size']}")
    head = f"{'model':<27} {'mode':<15} {'conv':<17} {'train/s':>8} {'ms':>7} {'peak GiB':>8} {'resv GiB':>8}"
    head += f" {'infer/s':>8}"
    print(head + f" {'train ratio':>11} {'infer ratio':>11} {'peak ratio':>10} {'resv ratio':>10}")
    for r in rows:
        base = r.get("baseline")
        ratios = ""
        if base:
            ratios = f" {r['train_ratio']:>11.2f} {r.get('infer_ratio', float('nan')):>11.2f} {r['peak_ratio']:>10.2f}"
            ratios += f" {r.get('reserved_ratio', float('nan')):>10.2f}"
        print(
            f"{r['model']:<27} {r['mode']:<15} {r['conv']:<17} {r['train_samples_per_s']:>8.1f} "
            f"{r['train_step_ms']:>7.1f} {r['peak_gib']:>8.2f} {r.get('peak_reserved_gib', float('nan')):>8.2f} "
            f"{r.get('infer_samples_per_s', float('nan')):>8.1f}" + ratios
        )
    for r in rows:
        if r.get("cudagraph_skips"):
            skips = r["cudagraph_skips"]
            print(f"== {r['model']} ({r['conv']}) {r['mode']}: {skips} graph(s) compiled without CUDA graphs")
        if "memory" in r:
            m = r["memory"]
            held = ", ".join(f"{k} {v:.3f}" for k, v in m["layer_graphs_gib"].items())
            print(
                f"== {r['model']} ({r['conv']}) memory GiB: before step {m['before_step_gib']:.2f}, after forward "
                f"{m['after_forward_gib']:.2f}, step peak {m['step_peak_gib']:.2f}; graph pools reserved "
                f"{m['graph_pools_reserved_gib']:.2f} (allocated {m['graph_pools_allocated_gib']:.2f}); "
                f"layer graphs keep: {held}"
            )
        if "memory_trace" in r:
            t = r["memory_trace"]
            peaks = ", ".join(f"{s['peak_gib'] - s['start_gib']:+.3f} from {s['start_gib']:.3f}" for s in t["steps"])
            print(f"== {r['model']} ({r['conv']}) first steps' peaks GiB (over the trace's start): {peaks}")
            for key in ("recording_minus_replay", "warmup_minus_replay"):
                print(f"   {key.replace('_', ' ')} at the peaks (GiB):")
                for site in t[key][:8]:
                    print(f"     {site['gib']:+.3f}  {site['site']}")
        if "explain" in r:
            e = r["explain"]
            print(f"== {r['model']} ({r['conv']}) {r['mode']}: {e['graphs']} graphs, {e['graph_breaks']} graph breaks")
            for reason in e["break_reasons"]:
                print(f"   break: {reason}")
        for key, step in (("profile", "training"), ("profile_infer", "inference")):
            prof = r.get(key)
            if not prof:
                continue
            print(
                f"== {r['model']} ({r['conv']}) {r['mode']} {step} step: wall {prof['wall_ms']:.1f} ms, kernels "
                f"{prof['kernel_ms']:.1f} ms ({100 * prof['busy_share']:.0f} % busy), {prof['kernels']} launches"
            )
            print("   " + ", ".join(f"{g} {ms:.1f}" for g, ms in prof["groups_ms"].items()))
            for k, ms in list(prof["top_kernels_ms"].items())[:20]:
                print(f"   {ms:7.2f} ms  {k}")
            print("   by host operator (its own kernels), with input shapes:")
            for op in prof.get("top_ops_ms", [])[:25]:
                print(f"   {op['ms']:7.2f} ms {op['calls']:4d}x  {op['op']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--modes", nargs="+", default=["eager"], help="eager and/or torch.compile modes")
    convs = ("auto", "measured", "rules", *dispatch.CONV_CHOICES)
    parser.add_argument(
        "--convs",
        nargs="+",
        default=["auto"],
        type=lambda v: _conv_variant(v, convs),
        help=f"DCLS variants, of {', '.join(convs)}; NAME@ORDER sets DCLS_CONV_ORDER (e.g. rules@fft,direct)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--infer", action="store_true", help="also time inference (eval, no_grad)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="device time by kernel group (CUDA; in CUDA-graph modes no host operator owns the kernels)",
    )
    parser.add_argument(
        "--explain", action="store_true", help="compile modes: graphs and graph breaks of the training forward"
    )
    parser.add_argument(
        "--memory", action="store_true", help="CUDA: one training step's memory by phase and CUDA-graph pools (JSON)"
    )
    parser.add_argument(
        "--memory-trace",
        action="store_true",
        help="CUDA: a fresh model's first steps under the allocator's history: what is alive at each step's peak",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny CPU check: small models, batch 2, fp32")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of the 7x7 model and every DCLS variant, in turn (medians printed)"
    )
    parser.add_argument(
        "--layer-graphs",
        nargs="+",
        default=[None],
        type=lambda value: value.strip().lower(),
        choices=layer_graphs.MODES,
        help="DCLS_LAYER_GRAPHS of the DCLS rows, one row each: eager training calls replayed as CUDA graphs "
        "(conv column '<conv>/graphs'), only the small ones ('<conv>/small-graphs') or none ('<conv>/no-graphs'); "
        "default: as configured",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="run everything this many times, each in a fresh process, one after another (ratios by process printed)",
    )
    parser.add_argument("--json", default=None, help="output JSON (default: results/bench_models.json)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.smoke:
        args.device, args.precision, args.batch_size, args.steps, args.warmup = "cpu", "fp32", 2, 1, 1
    out = Path(args.json) if args.json else RESULTS / ("bench_models_smoke.json" if args.smoke else "bench_models.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.processes > 1:

        def show(report: dict) -> None:
            print_medians(report["medians"], args.repeats * report["processes"])
            print_by_process(report["by_process"], report["processes"])

        def summarize(rows: list[dict]) -> dict:
            return {"medians": medians(rows), "by_process": by_process(rows)}

        return main_in_processes(Path(__file__).resolve(), argv, args.processes, out, summarize, show)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    report = {"device": name, "torch": torch.__version__, "precision": args.precision, "batch_size": args.batch_size}
    report["results"] = []
    for family in args.families:
        dcls_name, plain_name = FAMILIES[family]
        for mode in args.modes:
            for repeat in range(args.repeats):  # the 7x7 model and each DCLS variant in turn
                plain = run_model(plain_name, mode, "auto", args, device)
                plain["repeat"] = repeat
                report["results"].append(plain)
                for conv, graphs in [(c, g) for c in args.convs for g in args.layer_graphs]:
                    label = conv + {None: "", "1": "/graphs", "small": "/small-graphs", "0": "/no-graphs"}[graphs]
                    with env_var(layer_graphs.ENV_VAR, graphs):
                        row = run_model(dcls_name, mode, conv, args, device)
                    row["conv"], row["repeat"] = label, repeat
                    row["baseline"] = plain_name
                    row["train_ratio"] = row["train_samples_per_s"] / plain["train_samples_per_s"]
                    row["peak_ratio"] = row["peak_gib"] / plain["peak_gib"] if plain["peak_gib"] else float("nan")
                    # reserved: the CUDA-graph pools' temporaries are memory the graphs take, not in the allocated peak
                    row["reserved_ratio"] = (
                        row["peak_reserved_gib"] / plain["peak_reserved_gib"]
                        if plain["peak_reserved_gib"]
                        else float("nan")
                    )
                    if args.infer:
                        row["infer_ratio"] = row["infer_samples_per_s"] / plain["infer_samples_per_s"]
                    report["results"].append(row)
                    report["medians"] = medians(report["results"])
                    out.write_text(json.dumps(report, indent=2) + "\n")  # a run cut short keeps what it measured
    report["medians"] = medians(report["results"])
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    if args.repeats > 1:
        print_medians(report["medians"], args.repeats)
    measured = autotune.timings()
    if measured:
        print("== paths measured per call shape (median ms -> the path taken, autotune.TIE_MARGIN included):")
        chosen = autotune.state_dict()
        for text, times in measured.items():
            fields = dict(part.split("=", 1) for part in text.split("|") if "=" in part)  # x=, k=, grads=, ...
            best = chosen.get(text, "?")
            print(
                f"   x={fields.get('x', '?'):<48} k={fields.get('k', '?'):<16} grads={fields.get('grads', '?'):<4} "
                + ", ".join(f"{name} {ms:.3f}" for name, ms in times.items())
                + f" -> {best}"
            )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
