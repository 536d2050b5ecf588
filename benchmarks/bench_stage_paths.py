"""One DCLS ConvNeXt-T layer step per stage and convolution path, with the input in the layout the
model gives it, against cuDNN's 7x7 depthwise convolution on the same input.

For each ConvNeXt-T audio stage (batch 64 by default) and each path that supports the call
(``matrix``, ``direct``, ``fft``), one training step of a
``Dcls2d(C, C, 26, 23, padding=11, groups=C, version="gauss")`` layer: forward under autocast,
then the gradients of the input and of every parameter; the input is channels-last, as a timm
ConvNeXt block's permute leaves it, and so is the output gradient. Median ms over CUDA events
(``triton.testing.do_bench``), the host's time to issue one step, peak MiB above the inputs,
and (``--profile``) the step's kernel time by kernel, to see where a path spends it.

    python benchmarks/bench_stage_paths.py --json results/bench_stage_paths.json
    python benchmarks/bench_stage_paths.py --paths direct fft --profile
    python benchmarks/bench_stage_paths.py --sweep        # the direct path's kernel-gradient tiles
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import is_kernel  # noqa: E402
from bench_layers import STAGES, _peak_mib, fwd_bwd_step  # noqa: E402
from profile_host import per_call_us  # noqa: E402

from dcls_core import Dcls2d, dispatch  # noqa: E402
from dcls_core.conv.direct import conv as direct_conv  # noqa: E402

PATHS = ("conv7x7", "matrix", "direct", "fft")


def _context(path: str):
    """The dispatcher forced to ``path``."""
    return contextlib.nullcontext() if path == "conv7x7" else dispatch.forced(conv=path)


def _step(layer: nn.Module, x: torch.Tensor, dy: torch.Tensor):
    """One training step of ``layer`` under bf16 autocast with the output gradient ``dy``."""
    return fwd_bwd_step(layer, x, torch.bfloat16, dy)


def _stage_case(c: int, h: int, w: int, batch: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The stage's DCLS layer, its channels-last input and bf16 output gradient (seeded)."""
    torch.manual_seed(0)
    dcls = Dcls2d(c, c, kernel_count=26, dilated_kernel_size=23, padding=11, groups=c, version="gauss").cuda()
    x = torch.randn(batch, c, h, w, device="cuda").to(memory_format=torch.channels_last).requires_grad_()
    dy = torch.randn(batch, c, h, w, device="cuda", dtype=torch.bfloat16)
    return dcls, x, dy.to(memory_format=torch.channels_last)


def _kernels(step, top: int) -> dict:
    step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    times: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if is_kernel(event):
            times[event.key[:80]] += event.self_device_time_total / 1000
    return dict(sorted(times.items(), key=lambda kv: -kv[1])[:top])


def run(args: argparse.Namespace) -> list[dict]:
    import triton.testing

    rows = []
    for c, h, w in STAGES:
        dcls, x, dy = _stage_case(c, h, w, args.batch)
        plain = nn.Conv2d(c, c, 7, padding=3, groups=c).cuda()
        for path in args.paths:
            layer = plain if path == "conv7x7" else dcls
            row = {"stage": f"C={c}@{h}x{w}", "path": path}
            try:
                with _context(path):
                    step = _step(layer, x, dy)
                    step()
                    torch.cuda.synchronize()
                    row["peak_mib"] = round(_peak_mib(step, torch.device("cuda")), 1)
                    row["ms"] = float(triton.testing.do_bench(step, warmup=25, rep=150, return_mode="median"))
                    # the host's time to issue one step (no wait for the device): above the
                    # kernels' time, an eager model of such layers waits for its host
                    row["host_ms"] = per_call_us(step, 30, wait_for_gpu=False) / 1000
                    if args.profile:
                        row["kernels_ms"] = _kernels(step, args.top)
            except Exception as exc:  # the row says what broke; the others still run
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            rows.append(row)
            print(_line(row), flush=True)
    return rows


# the kernel gradient's (window positions per program, warps); the products' own tiles (rows per
# program 64/128, warps 4/8, stages 2-4) came out within 10 % of each other (NOTES run 13)
SWEEP = [(64, 4), (128, 4), (128, 8), (256, 8)]


def sweep(args: argparse.Namespace) -> list[dict]:
    """The direct path per kernel-gradient tile ``(window positions per program, warps)``, one
    layer step per stage shape."""
    import triton.testing

    saved = direct_conv._GRAD_BK, direct_conv._GRAD_WARPS
    rows = []
    for c, h, w in STAGES:
        step = _step(*_stage_case(c, h, w, args.batch))
        for setting in SWEEP:
            direct_conv._GRAD_BK, direct_conv._GRAD_WARPS = setting
            row = {"stage": f"C={c}@{h}x{w}", "path": "direct", "setting": setting}
            try:
                with _context("direct"):
                    step()
                    row["ms"] = float(triton.testing.do_bench(step, warmup=25, rep=100, return_mode="median"))
                    # all the step's kernels (--top): a wider tile also changes the splits' diagonal sum
                    row["kernels_ms"] = _kernels(step, args.top)
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            rows.append(row)
            print(f"{setting} " + _line(row), flush=True)
    direct_conv._GRAD_BK, direct_conv._GRAD_WARPS = saved
    return rows


def _line(row: dict) -> str:
    if "error" in row:
        return f"{row['stage']:<14} {row['path']:<8} error: {row['error']}"
    text = f"{row['stage']:<14} {row['path']:<8} {row['ms']:8.3f} ms {row.get('peak_mib', float('nan')):9.1f} MiB"
    if "host_ms" in row:
        text += f"  host {row['host_ms']:.3f} ms"
    for name, ms in row.get("kernels_ms", {}).items():
        text += f"\n{'':<30}{ms:8.3f}  {name}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--profile", action="store_true", help="kernel times of one step per row")
    parser.add_argument("--top", type=int, default=8, help="kernels listed per row with --profile")
    parser.add_argument("--sweep", action="store_true", help="time the direct path's kernel-gradient tiles instead")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, batch {args.batch}")
    if args.sweep:
        rows = sweep(args)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
        return 0
    rows = run(args)
    sums: dict[str, float] = defaultdict(float)
    for r in rows:
        if r.get("ms") is not None:
            sums[r["path"]] += r["ms"] * (9 if r["stage"].startswith("C=384") else 3)
    print("ConvNeXt-T step (3/3/9/3 layers), ms: " + ", ".join(f"{p} {ms:.2f}" for p, ms in sums.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": args.batch}
        args.json.write_text(json.dumps({**report, "rows": rows, "model_step_ms": sums}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
