"""Host (CPU) time of one DCLS layer's eager forward+backward: where the launch overhead goes.

Eager DCLS layers at the small ConvNeXt-T stages are launch-bound: the GPU waits for Python.
For each stage shape (batch 64, depthwise 23x23, 26 elements) this prints the wall time of
one step in a loop without synchronisation (what training pays), the host time per step
(``torch.profiler`` CPU time of the top-level calls), the number of CUDA kernels per step and
the operators with the most host time. ``--micro`` adds the host cost of single calls
(an empty Triton launch, a tiny ``rfftn``, ``torch.empty``) on this machine; ``--cprofile N``
lists the N Python functions with the most own time in a stage's steps (``cProfile``: where
the host time goes below the operators, Triton's launcher included).

    python benchmarks/profile_host.py --dtypes fp32 --json profile_host.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_layers import DTYPES, STAGES, fwd_bwd_step  # noqa: E402

import dcls_core  # noqa: E402
from dcls_core._triton import launch  # noqa: E402


def per_call_us(fn: Callable[[], object], iters: int, wait_for_gpu: bool) -> float:
    """Microseconds per call of ``fn`` issued back to back after a warm-up; the clock stops
    after a device sync (``wait_for_gpu``: wall time) or right after the last call (host time)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if wait_for_gpu:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    torch.cuda.synchronize()
    return elapsed * 1e6 / iters


def host_profile(step: Callable[[], None], iters: int, top: int) -> dict:
    """Kernels per step, GPU kernel ms per step and the top host operators (us per step)."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    gpu_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    cpu_ops = sorted(
        (e for e in events if e.device_type == torch.autograd.DeviceType.CPU), key=lambda e: -e.self_cpu_time_total
    )
    return {
        "kernels_per_step": kernels / iters,
        "gpu_kernel_ms": gpu_us / iters / 1e3,
        "top_host_ops": [
            {"op": e.key, "calls_per_step": e.count / iters, "self_us_per_step": e.self_cpu_time_total / iters}
            for e in cpu_ops[:top]
        ],
    }


def python_profile(step: Callable[[], None], iters: int, top: int) -> list[dict]:
    """The ``top`` Python functions by own time over ``iters`` steps (us per step)."""
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(iters):
        step()
    prof.disable()
    torch.cuda.synchronize()
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]  # (cc, nc, tottime, cumtime, callers)
    return [
        {
            "function": f"{Path(file).name}:{line}({name})",
            "calls_per_step": nc / iters,
            "own_us_per_step": tt * 1e6 / iters,
        }
        for (file, line, name), (_, nc, tt, _, _) in rows
    ]


def micro_costs(device: torch.device, iters: int = 2000) -> dict:
    """Host us per call of a few primitive launches (results not synchronised per call)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _noop(ptr, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(ptr + i, tl.load(ptr + i, mask=i < n), mask=i < n)

    @triton.jit
    def _noop_wide(src, dst, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, BLOCK: tl.constexpr):
        # as many arguments as the direct path's programs take (their binding is per argument)
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(dst + i, tl.load(src + i, mask=i < a0), mask=i < a0)

    small = torch.zeros(256, device=device)
    ints = (256, 3, 64, 62, 11, 11, 80, 96, 5, 6, 7, 8, 9, 10, 1)
    planes = torch.randn(4, 8, 16, 16, device=device)
    calls = {
        "triton_launch": lambda: _noop[(1,)](small, 256, BLOCK=256),
        "triton_launch_17_args": lambda: _noop_wide[(1,)](small, small, *ints, BLOCK=256),
        "triton_launch_17_args_bound": lambda: launch(_noop_wide, (1,), (small, small), *ints, BLOCK=256),
        "torch_empty": lambda: torch.empty(256, device=device),
        "torch_add_": lambda: small.add_(1.0),
        "fft_rfftn_2d": lambda: torch.fft.rfftn(planes, dim=(-2, -1)),
        "fft_irfftn_2d": lambda: torch.fft.irfftn(planes[..., :9].to(torch.complex64), s=(16, 16), dim=(-2, -1)),
    }
    return {name: per_call_us(fn, iters, wait_for_gpu=False) for name, fn in calls.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", default="fp32")
    parser.add_argument("--version", default="gauss")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--micro", action="store_true")
    parser.add_argument("--channels-last", action="store_true", help="channels-last inputs (the model's)")
    parser.add_argument("--cprofile", type=int, default=0, metavar="N", help="list N Python functions per stage")
    parser.add_argument("--json", default="profile_host.json")
    args = parser.parse_args()
    device = torch.device("cuda")
    result = {"gpu": torch.cuda.get_device_name(), "stages": []}
    if args.micro:
        result["micro_us"] = micro_costs(device)
        print("host us per call:", {k: round(v, 1) for k, v in result["micro_us"].items()})
    for dname in args.dtypes.split(","):
        for C, H, W in STAGES:
            torch.manual_seed(0)
            layer = dcls_core.Dcls2d(
                C, C, kernel_count=26, dilated_kernel_size=23, padding=11, groups=C, version=args.version
            ).to(device)
            x = torch.randn(args.batch, C, H, W, device=device)
            if args.channels_last:  # as a timm ConvNeXt block hands it to the depthwise convolution
                x = x.to(memory_format=torch.channels_last)
            x.requires_grad_()
            step = fwd_bwd_step(layer, x, DTYPES[dname])
            wall = per_call_us(step, 50, wait_for_gpu=True) / 1e3
            prof = host_profile(step, args.iters, args.top)
            row = {"stage": f"C={C}@{H}x{W}", "dtype": dname, "loop_ms": wall, **prof}
            result["stages"].append(row)
            print(
                f"\n{row['stage']} {dname}: loop {wall:.3f} ms/step, {prof['kernels_per_step']:.0f} kernels, "
                f"GPU kernels {prof['gpu_kernel_ms']:.3f} ms"
            )
            for op in prof["top_host_ops"]:
                print(f"  {op['self_us_per_step']:8.1f} us  {op['calls_per_step']:5.1f}x  {op['op']}")
            if args.cprofile:
                row["python"] = python_profile(step, args.iters, args.cprofile)
                print("  Python functions by own time (cProfile):")
                for fn in row["python"]:
                    print(f"  {fn['own_us_per_step']:8.1f} us  {fn['calls_per_step']:5.1f}x  {fn['function']}")
    Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
