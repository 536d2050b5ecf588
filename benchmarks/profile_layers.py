"""GPU time of one DCLS layer's forward+backward without launch overhead, and where it goes.

For each ConvNeXt-T audio stage shape (batch 64, depthwise 23x23, 26 elements, gauss) the
DCLS layer (on the direct convolution, on the FFT, and on the FFT with its element-wise passes
as torch operations) and the plain depthwise convolutions are timed twice: eagerly (what a Python loop
pays, launches included) and as a replayed CUDA graph of the same step (the GPU work alone).
The difference is what CUDA graphs or ``torch.compile(mode="reduce-overhead")`` can win.
``--kernels`` prints the top CUDA kernels of one step per stage.

    python benchmarks/profile_layers.py --dtypes fp32,bf16 --json profile_layers.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_layers import DTYPES, STAGES, fwd_bwd_step  # noqa: E402

import dcls_core  # noqa: E402
from dcls_core import dispatch  # noqa: E402
from dcls_core.conv.fft import passes as spectral_ops  # noqa: E402


def graph_of(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` captured once in a CUDA graph; the result replays it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def bench_ms(fn: Callable[[], None]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))


def layers_for(C: int, device) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    dcls = dcls_core.Dcls2d(C, C, kernel_count=26, dilated_kernel_size=23, padding=11, groups=C, version="gauss").to(
        device
    )
    return {  # the DCLS rows are one layer with its convolution forced (see CONVS)
        "dcls-direct": dcls,
        "dcls-fft": dcls,
        "dcls-fft-torch-passes": dcls,
        "conv7x7": nn.Conv2d(C, C, 7, padding=3, groups=C).to(device),
        "conv23x23": nn.Conv2d(C, C, 23, padding=11, groups=C).to(device),
    }


CONVS = {"dcls-direct": "direct", "dcls-fft": "fft", "dcls-fft-torch-passes": "fft"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--kernels", action="store_true", help="print the top CUDA kernels per stage")
    parser.add_argument("--json", default="profile_layers.json")
    args = parser.parse_args()
    device = torch.device("cuda")
    rows = []
    print(f"{'stage':<14} {'dtype':>5} {'impl':<21} {'eager ms':>9} {'graph ms':>9}")
    for dname in args.dtypes.split(","):
        dtype = DTYPES[dname]
        for C, H, W in STAGES:
            x = torch.randn(args.batch, C, H, W, device=device, requires_grad=True)
            for impl, module in layers_for(C, device).items():
                spectral_ops.FORCE_TORCH = impl == "dcls-fft-torch-passes"
                with dispatch.forced(conv=CONVS.get(impl)):
                    step = fwd_bwd_step(module, x, dtype)
                    eager = bench_ms(step)
                    graph = bench_ms(graph_of(step))
                spectral_ops.FORCE_TORCH = False
                rows.append(
                    {"stage": f"C={C}@{H}x{W}", "dtype": dname, "impl": impl, "eager_ms": eager, "graph_ms": graph}
                )
                print(f"{rows[-1]['stage']:<14} {dname:>5} {impl:<21} {eager:>9.3f} {graph:>9.3f}", flush=True)
                if args.kernels and impl in ("dcls-direct", "dcls-fft"):
                    with (
                        dispatch.forced(conv=CONVS[impl]),
                        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof,
                    ):
                        step()
                        torch.cuda.synchronize()
                    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))
    for dname in args.dtypes.split(","):
        for impl in (*CONVS, "conv7x7", "conv23x23"):
            sel = [r for r in rows if r["dtype"] == dname and r["impl"] == impl]
            print(
                f"sum {dname} {impl:<21} eager {sum(r['eager_ms'] for r in sel):8.3f}  "
                f"graph {sum(r['graph_ms'] for r in sel):8.3f}"
                f"  model-weighted (3,3,9,3) graph {sum(r['graph_ms'] * n for r, n in zip(sel, (3, 3, 9, 3))):8.3f}"
            )
    Path(args.json).write_text(
        json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
