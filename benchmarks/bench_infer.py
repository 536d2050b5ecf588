"""Inference throughput of the tagger: windows/s for DCLS ConvNeXt-T, folded or not, CPU and GPU.

What is timed is ``AudioTagger.__call__`` on a batch of 10 s waveforms already in host memory:
transfer to the device, log-mel front end (fp32), classifier (fp32 or bf16/fp16 autocast),
sigmoid, scores back to the host; i.e. everything ``dcls-audio infer`` does per batch except
decoding files. Weights are random (speed does not depend on them).

Rows: for each device (``cpu`` with ``--cpu-threads`` threads, ``cuda`` when present), model
(DCLS ConvNeXt-T; the 7x7 ConvNeXt-T for comparison), DCLS layers folded into dense
``nn.Conv2d`` or kept (``dcls_core`` dispatch: ``$DCLS_IMPL``), and precision. Prints a table
and writes JSON (--out).

    .venv/bin/python benchmarks/bench_infer.py --out bench_infer.json                 # CPU (+ GPU if present)
    .venv/bin/python benchmarks/bench_infer.py --devices cuda --out bench_infer_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcls_audio.data import CLIP_SAMPLES  # noqa: E402
from dcls_audio.inference.tagger import AudioTagger  # noqa: E402
from dcls_audio.models import create_model  # noqa: E402

DCLS_MODEL = "convnext_dcls_audio_tiny"
BASELINE_MODEL = "convnext_audio_tiny"


def timed_call(fn, batch: torch.Tensor) -> float:
    """Seconds for one call, synchronised (the tagger returns host tensors; the front end is synced)."""
    t0 = time.perf_counter()
    out = fn(batch)
    if out.is_cuda:
        torch.cuda.synchronize(out.device)
    return time.perf_counter() - t0


def summarise(times: list[float], batch: int) -> dict:
    median = statistics.median(times)
    best = min(times)
    return {
        "iters": len(times),
        "median_s": median,
        "best_s": best,
        "windows_per_s": batch / median,
        "best_windows_per_s": batch / best,
    }


def peak_memory_mib(device: torch.device, base: int) -> float | None:
    """Peak allocated MiB above ``base`` bytes (what was resident before the configuration ran)."""
    if device.type != "cuda":
        return None
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def configs(device: str, precisions: list[str], models: list[str]) -> list[tuple[str, bool, str]]:
    """(model, fold, precision) rows for one device."""
    rows = []
    for precision in precisions if device == "cuda" else ["fp32"]:
        for model in models:
            for fold in (False, True) if "dcls" in model else (False,):
                rows.append((model, fold, precision))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument(
        "--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu", help="comma list of cpu, cuda"
    )
    parser.add_argument("--models", default=f"{DCLS_MODEL},{BASELINE_MODEL}", help="comma list of model names")
    parser.add_argument("--precisions", default="fp32,bf16,fp16", help="GPU precisions (CPU runs fp32)")
    parser.add_argument("--cpu-threads", type=int, default=2)
    parser.add_argument("--cpu-batch", type=int, default=4)
    parser.add_argument("--gpu-batch", type=int, default=64)
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed calls per configuration first (CUDA: at least 3)"
    )
    parser.add_argument("--iters", type=int, default=5, help="timed rounds (one call per configuration each), at least")
    parser.add_argument("--min-seconds", type=float, default=0.0, help="keep timing until this much time passed")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    args = parser.parse_args()

    torch.set_num_threads(args.cpu_threads)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("--devices cuda: CUDA is not available")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]

    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "dcls_impl": os.environ.get("DCLS_IMPL", "auto"),
        "channels_last": args.channels_last,
        "timed": "AudioTagger call: host waveforms -> device -> log-mel (fp32) -> classifier -> sigmoid -> host",
        "peak_mib": "max allocated during the configuration's warm-up, above the memory held before it (all taggers)",
    }
    rows = []
    g = torch.Generator().manual_seed(0)
    for device_name in devices:
        device = torch.device(device_name)
        batch_size = args.gpu_batch if device.type == "cuda" else args.cpu_batch
        batch = 0.1 * torch.randn(batch_size, CLIP_SAMPLES, generator=g)
        if device.type == "cuda":
            batch = batch.pin_memory()
        warmup = max(args.warmup, 3) if device.type == "cuda" else args.warmup
        fns = {("(log-mel front end only)", None, "fp32"): AudioTagger(torch.nn.Identity(), device).logmel}
        for model_name, fold, precision in configs(device.type, precisions, models):
            torch.manual_seed(0)
            fns[(model_name, fold, precision)] = AudioTagger(
                create_model(model_name), device, precision=precision, fold=fold, channels_last=args.channels_last
            )
        peaks: dict = {}
        for key, fn in fns.items():  # warm-up, and each configuration's peak above what every tagger holds
            base = 0
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            for _ in range(warmup):
                timed_call(fn, batch)
            peaks[key] = peak_memory_mib(device, base)
        # rounds interleave the configurations, so that a change in machine load hits them alike
        times: dict = {key: [] for key in fns}
        start = time.perf_counter()
        rounds = 0
        while rounds < args.iters or time.perf_counter() - start < args.min_seconds:
            for key, fn in fns.items():
                times[key].append(timed_call(fn, batch))
            rounds += 1
        for (model_name, fold, precision), t in times.items():
            row = {
                "device": device.type,
                "model": model_name,
                "folded": fold,
                "precision": precision,
                "batch": batch_size,
                **summarise(t, batch_size),
                "peak_mib": peaks[(model_name, fold, precision)],
            }
            rows.append(row)
            print(
                f"  {device.type:4s} {model_name:26s} fold={str(fold):5s} {precision:4s} "
                f"{row['windows_per_s']:9.1f} windows/s",
                file=sys.stderr,
                flush=True,
            )
        del fns
        if device.type == "cuda":
            torch.cuda.empty_cache()

    header = (
        f"{'device':6s} {'model':26s} {'folded':6s} {'prec':5s} {'batch':>5s} {'windows/s':>10s} "
        f"{'best w/s':>9s} {'ms/batch':>9s} {'peak MiB':>9s}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        peak = f"{r['peak_mib']:9.0f}" if r["peak_mib"] is not None else f"{'-':>9s}"
        print(
            f"{r['device']:6s} {r['model']:26s} {'-' if r['folded'] is None else str(r['folded']):6s} "
            f"{r['precision']:5s} {r['batch']:5d} "
            f"{r['windows_per_s']:10.1f} {r['best_windows_per_s']:9.1f} {1000 * r['median_s']:9.1f} {peak}"
        )
    print("\nwindows/s from the median time per batch, best w/s from the fastest batch; ms/batch is the median")
    print(
        f"{info['gpu'] or 'no GPU'}; CPU threads {info['cpu_threads']}; DCLS_IMPL={info['dcls_impl']}; "
        f"torch {info['torch']}"
    )
    if args.out:
        args.out.write_text(json.dumps({"info": info, "rows": rows}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
