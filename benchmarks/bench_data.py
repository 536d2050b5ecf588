"""Data pipeline throughput: HDF5 -> DataLoader workers -> device -> log-mel front end (train augmentations).

Generates its own temporary PANNs-layout HDF5 file (random int16 clips), then for each worker
count measures clips/s of
  - loader:     batches of int16 waveforms from the DataLoader (what the workers deliver),
  - end-to-end: the same batches moved to the device and through LogMelFrontEnd in train mode
                (roll, speed perturbation, random erasing), synchronised.
The front end alone (one batch already on the device) is measured once.
Prints a table and writes JSON (--out).

    .venv/bin/python benchmarks/bench_data.py --out bench_data.json
    .venv/bin/python benchmarks/bench_data.py --clips 4096 --seconds 20 --cold   # on the GPU machine

``--cold`` evicts the file from the page cache (posix_fadvise DONTNEED) before each worker count,
so reads hit the disk as with a dataset much larger than RAM; by default reads are warm.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcls_audio.data import AudioSetDataModule  # noqa: E402
from dcls_audio.data.constants import CLIP_SAMPLES  # noqa: E402
from dcls_audio.data.hdf5_dataset import create_layout  # noqa: E402
from dcls_audio.features import LogMelFrontEnd  # noqa: E402


def make_hdf5(path: Path, clips: int, num_classes: int = 527, block: int = 128) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        names, waves, targets = create_layout(h5, clips, num_classes)
        for start in range(0, clips, block):
            stop = min(start + block, clips)
            waves[start:stop] = rng.integers(-3000, 3000, size=(stop - start, CLIP_SAMPLES), dtype=np.int16)
        names[:] = [f"Y{i:010d}".encode() for i in range(clips)]
        targets[:] = rng.random((clips, num_classes)) < 0.01


def evict(path: Path) -> None:
    if hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(path, workers, args, device, front) -> dict:
    dm = AudioSetDataModule(
        train_files=path,
        batch_size=args.batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        seed=0,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    result = {"workers": workers}
    for mode in ("loader", "end_to_end"):
        if args.cold:
            evict(path)
        clips, batches, start, epoch = 0, 0, None, 0
        done = False
        while not done:
            loader.sampler.set_epoch(epoch)
            for batch in loader:
                if mode == "end_to_end":
                    wave = batch["waveform"].to(device, non_blocking=True)
                    with torch.no_grad():
                        front(wave)
                    sync(device)
                batches += 1
                if batches == args.warmup:
                    start = time.perf_counter()
                elif batches > args.warmup:
                    clips += len(batch["waveform"])
                    if time.perf_counter() - start >= args.seconds or (
                        args.max_batches and batches - args.warmup >= args.max_batches
                    ):
                        done = True
                        break
            epoch += 1
        elapsed = time.perf_counter() - start
        result[f"{mode}_clips_per_s"] = clips / elapsed
        result[f"{mode}_clips"] = clips
    dm.teardown()
    return result


def frontend_only(front, args, device) -> float:
    wave = torch.randint(-3000, 3000, (args.batch_size, CLIP_SAMPLES), dtype=torch.int16, device=device)
    with torch.no_grad():
        for _ in range(2):
            front(wave)
        sync(device)
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < min(args.seconds, 5.0) or reps < 2:
            front(wave)
            sync(device)
            reps += 1
    return reps * args.batch_size / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=2048, help="clips in the temporary HDF5 file")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", default="0,2,4,8,16", help="worker counts (capped at the CPU count)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="batches not timed")
    parser.add_argument("--max-batches", type=int, default=0, help="stop a configuration after this many timed batches")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="front end without augmentation")
    parser.add_argument("--cold", action="store_true", help="evict the file from the page cache first")
    parser.add_argument("--tmpdir", default=None, help="where to write the temporary HDF5 file")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    counts = sorted({min(int(w), cores) for w in args.workers.split(",")})
    front = LogMelFrontEnd(augment=args.augment, seed=0).to(device).train()

    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        path = Path(tmp) / "bench.h5"
        t0 = time.perf_counter()
        make_hdf5(path, args.clips)
        print(f"wrote {args.clips} clips ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.1f} s")
        fe_rate = frontend_only(front, args, device)
        rows = []
        for workers in counts:
            row = run_config(path, workers, args, device, front)
            rows.append(row)
            print(
                f"workers={workers:2d}  loader {row['loader_clips_per_s']:8.1f} clips/s   "
                f"end-to-end {row['end_to_end_clips_per_s']:8.1f} clips/s",
                flush=True,
            )

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print()
    print(
        f"device: {device} ({device_name}), {cores} cores, batch {args.batch_size}, "
        f"augment={args.augment}, cold={args.cold}, torch threads {torch.get_num_threads()}"
    )
    print(f"front end alone: {fe_rate:.1f} clips/s")
    print(f"{'workers':>7} | {'loader clips/s':>14} | {'end-to-end clips/s':>18}")
    print(f"{'-' * 7}-+-{'-' * 14}-+-{'-' * 18}")
    for row in rows:
        print(f"{row['workers']:>7} | {row['loader_clips_per_s']:>14.1f} | {row['end_to_end_clips_per_s']:>18.1f}")
    if args.out:
        report = {
            "device": str(device),
            "device_name": device_name,
            "cores": cores,
            "batch_size": args.batch_size,
            "clips": args.clips,
            "augment": args.augment,
            "cold": args.cold,
            "seconds": args.seconds,
            "torch": torch.__version__,
            "frontend_only_clips_per_s": fe_rate,
            "results": rows,
        }
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
