"""Which FFT sizes make the FFT convolution fastest on this GPU.

For each ConvNeXt-T audio stage shape (batch 64, depthwise, 23x23 kernel, padding 11) every
pair of transform sizes ``(L_h, L_w)`` with only the factors 2, 3, 5, 7 between the smallest
exact size (``size + padding``) and ``--slack`` times it is timed on the FFT convolution's
forward pass (``rfft2 -> product -> irfft2 -> crop``, float32) and its backward pass
(gradients of the input and the kernel), with plain torch element-wise operations around the
same transforms (not the Triton passes of :mod:`dcls_core.conv.fft.passes`). Prints the fastest
pairs per stage next to the smallest one and writes JSON. :mod:`dcls_core.conv.fft.sizes` chooses
sizes from the ``--table`` costs (``COST_NS``), checked against these sweeps.

    python benchmarks/sweep_fft_sizes.py --json sweep_fft_sizes.json
    python benchmarks/sweep_fft_sizes.py --table --json fft_costs.json   # per-size cost table

``--table`` times a 2-D real transform and its inverse at every size ``L x L`` with the factors
2, 3, 5, 7 from 8 to ``--max-size`` over about 2^24 elements and prints the cost per element
and axis (ns) that :mod:`dcls_core.conv.fft.sizes` uses to choose transform sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcls_core.conv.fft.sizes import FFT_PRIMES, fast_fft_size  # noqa: E402

STAGES = [(96, 64, 62), (192, 32, 31), (384, 16, 15), (768, 8, 7)]


def smooth_sizes(lo: int, hi: int) -> list[int]:
    out, n = [], fast_fft_size(lo)
    while n <= hi:
        out.append(n)
        n = fast_fft_size(n + 1)
    return out


def conv_pass(x: torch.Tensor, k: torch.Tensor, sizes: tuple[int, int]) -> None:
    """Forward + backward passes of a depthwise FFT convolution at ``sizes`` (as fft_conv)."""
    H, W = x.shape[-2:]
    k_f = torch.fft.rfft2(k, s=sizes)
    x_f = torch.fft.rfft2(x, s=sizes)
    y = torch.fft.irfft2(x_f * k_f, s=sizes)[..., :H, :W].contiguous()
    dy_f = torch.fft.rfft2(y, s=sizes)
    dk = torch.fft.irfft2(torch.linalg.vecdot(x_f, dy_f, dim=0), s=sizes)
    dx = torch.fft.irfft2(dy_f.mul_(k_f.conj()), s=sizes)[..., :H, :W].contiguous()
    del dk, dx


def cost_table(max_size: int) -> dict[int, float]:
    """ns per element and axis of ``irfft2(rfft2(x))`` at ``L x L``, for each 7-smooth ``L``."""
    import triton.testing

    table = {}
    for L in smooth_sizes(8, max_size):
        batch = max(1, round(2**24 / (L * L)))
        x = torch.randn(batch, L, L, device="cuda")
        ms = triton.testing.do_bench(
            lambda x=x, L=L: torch.fft.irfft2(torch.fft.rfft2(x), s=(L, L)), warmup=10, rep=50, return_mode="median"
        )
        table[L] = round(float(ms) * 1e6 / (batch * L * L * 2), 5)
        print(f"L={L:4d}: {table[L]:.4f} ns per element and axis", flush=True)
    return table


def main() -> None:
    import triton.testing

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--padding", type=int, default=11)
    parser.add_argument("--slack", type=float, default=1.45, help="largest size tried, as a multiple of the smallest")
    parser.add_argument("--json", default="sweep_fft_sizes.json")
    parser.add_argument("--table", action="store_true", help="measure the per-size cost table instead")
    parser.add_argument("--max-size", type=int, default=256)
    args = parser.parse_args()
    if args.table:
        table = cost_table(args.max_size)
        Path(args.json).write_text(
            json.dumps({"device": torch.cuda.get_device_name(), "ns_per_element_axis": table}, indent=1)
        )
        return
    print(f"# {torch.cuda.get_device_name()}, primes {FFT_PRIMES}")
    results = []
    for C, H, W in STAGES:
        x = torch.randn(args.batch, C, H, W, device="cuda")
        k = torch.randn(C, 23, 23, device="cuda")
        lh, lw = H + args.padding, W + args.padding
        timings = []
        for sh in smooth_sizes(lh, int(lh * args.slack)):
            for sw in smooth_sizes(lw, int(lw * args.slack)):
                ms = triton.testing.do_bench(
                    lambda x=x, k=k, sh=sh, sw=sw: conv_pass(x, k, (sh, sw)), warmup=10, rep=60, return_mode="median"
                )
                timings.append({"sizes": [sh, sw], "ms": round(float(ms), 4)})
        timings.sort(key=lambda t: t["ms"])
        smallest = next(t for t in timings if t["sizes"] == [fast_fft_size(lh), fast_fft_size(lw)])
        print(
            f"C={C}@{H}x{W}: smallest {smallest['sizes']} {smallest['ms']:.3f} ms; fastest: "
            + ", ".join(f"{t['sizes']} {t['ms']:.3f}" for t in timings[:6])
        )
        results.append({"stage": [C, H, W], "smallest": smallest, "timings": timings})
    Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
