"""Data pipeline throughput per storage format: file -> DataLoader workers (decoding) -> device -> log-mel.

Generates a temporary PANNs-layout HDF5 file (the synthetic demo sounds, or the first --clips
rows of --source, e.g. a real AudioSet file), converts it with ``pack --from`` to each format
of --formats (pcm: the PANNs file itself; flac, opus: HDF5 with encoded bytes; shards: litdata
shards of --shard-codec clips), then for each format and worker count measures
  - loader:     clips/s of int16 batches from the DataLoader (what the workers deliver, decoding
                included) and the CPU seconds per clip they cost (this process and its workers),
  - end-to-end: the same batches moved to the device and through LogMelFrontEnd in train mode
                (roll, speed perturbation, random erasing), synchronised.
Bytes per clip are the format's size on disk over its clips. The front end alone (one batch
already on the device) is measured once per path: op by op and, on CUDA, the fused passes
(``DCLS_AUDIO_FRONT_END``). Prints a table and writes JSON (--out).

    .venv/bin/python benchmarks/bench_data.py --out bench_data.json
    .venv/bin/python benchmarks/bench_data.py --clips 4096 --seconds 20 --workers 4,8,12,16 --cold   # GPU host

``--cold`` evicts the file from the page cache (posix_fadvise DONTNEED) before each worker count,
so reads hit the disk as with a dataset much larger than RAM; by default reads are warm.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import sync  # noqa: E402

from dcls_audio.data import AudioSetDataModule, AudioSetHDF5  # noqa: E402
from dcls_audio.data.constants import CLIP_SAMPLES  # noqa: E402
from dcls_audio.data.contiguous_rows import PendingRows  # noqa: E402
from dcls_audio.data.demo import iter_demo_clips  # noqa: E402
from dcls_audio.data.hdf5_dataset import create_layout  # noqa: E402
from dcls_audio.data.pack import pack_panns  # noqa: E402
from dcls_audio.features import LogMelFrontEnd  # noqa: E402
from dcls_audio.features.logmel_passes import FRONT_END_ENV_VAR  # noqa: E402

FORMATS = ("pcm", "flac", "opus", "shards")


def make_hdf5(path: Path, clips: int, source: str | None, num_classes: int = 527, block: int = 128) -> None:
    """A PANNs file of ``clips`` rows: the first rows of ``source`` (non-empty names), else the demo
    sounds (256 distinct clips, repeated)."""
    with h5py.File(path, "w") as h5:
        if source is not None:
            with h5py.File(source, "r") as src:
                keep = np.flatnonzero(src["audio_name"][: clips * 2] != b"")[:clips]
                names, waves, targets = create_layout(h5, len(keep), src["target"].shape[1])
                for start in range(0, len(keep), block):
                    rows = keep[start : start + block]
                    waves[start : start + len(rows)] = src["waveform"][rows]
                names[:], targets[:] = src["audio_name"][keep], src["target"][keep]
            return
        names, waves, targets = create_layout(h5, clips, num_classes)
        demo = list(itertools.islice(iter_demo_clips("train"), min(clips, 256)))
        target = np.zeros((clips, num_classes), bool)
        for i in range(clips):
            name, clip, labels = demo[i % len(demo)]
            waves[i] = clip
            target[i, labels] = True
        names[:] = [f"Y{i:010d}".encode() for i in range(clips)]
        targets[:] = target


def size_on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def evict(path: Path) -> None:
    if not hasattr(os, "posix_fadvise"):
        return
    for file in [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (loader workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_config(path, workers, args, device, front, pcm_reads: str = "worker") -> dict:
    """``pcm_reads``: where PANNs rows are read, ``worker`` (into the batch the worker hands over)
    or ``main`` (the worker hands over which rows; the main process reads them: by the loader's
    pin-memory thread where it pins, else in the loop; see contiguous_rows.PendingRows)."""
    dm = AudioSetDataModule(
        train_files=path,
        batch_size=args.batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,  # workers end with each pass, so their CPU time is counted
        seed=0,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    if isinstance(dm.datasets["train"], AudioSetHDF5):
        dm.datasets["train"].defer_pcm_reads = pcm_reads == "main"  # read by the workers when they start
    result = {"workers": workers, "pcm_reads": pcm_reads}
    for mode in ("loader", "end_to_end"):
        if args.cold:
            evict(Path(path))
        clips, batches, start, epoch = 0, 0, None, 0
        cpu_start = cpu_seconds()
        done = False
        while not done:
            loader.sampler.set_epoch(epoch)
            batch_iter = iter(loader)
            for batch in batch_iter:
                if isinstance(batch["waveform"], PendingRows):  # a loader that does not pin
                    batch["waveform"] = batch["waveform"].read()
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
            elapsed = time.perf_counter() - start if start is not None else 0.0
            if hasattr(batch_iter, "_shutdown_workers"):
                batch_iter._shutdown_workers()  # joined: their CPU time is in RUSAGE_CHILDREN now
            del batch_iter
            epoch += 1
        result[f"{mode}_clips_per_s"] = clips / elapsed
        result[f"{mode}_clips"] = clips
        if mode == "loader":  # the workers' whole pass (warm-up batches included) over the clips it gave;
            # batches they prefetched past the end are counted too: a slight overestimate
            given = clips + args.warmup * args.batch_size
            result["loader_cpu_s_per_clip"] = (cpu_seconds() - cpu_start) / given
    dm.teardown()
    return result


def frontend_paths(front, args, device) -> dict[str, float]:
    """clips/s of the front end alone per path: the op-by-op chain (``reference``) and, on CUDA,
    the fused passes (``fused``), forced through ``DCLS_AUDIO_FRONT_END``."""
    rates = {}
    for path in ("reference", "fused") if device.type == "cuda" else ("reference",):
        with mock.patch.dict(os.environ, {FRONT_END_ENV_VAR: path}):
            rates[path] = frontend_only(front, args, device)
    return rates


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
    parser.add_argument("--tmpdir", default=None, help="where to write the temporary files")
    parser.add_argument("--source", default=None, help="PANNs HDF5 file whose first --clips rows are measured")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"formats to measure, of {', '.join(FORMATS)}")
    parser.add_argument("--shard-codec", default="opus", choices=("pcm", "flac", "opus"), help="codec of the shards")
    parser.add_argument(
        "--pcm-reads",
        default="worker,main",
        help="where PCM rows are read: worker (into the batch it hands over), main (by the main process: "
        "the pin-memory thread on CUDA, the default there), or both",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        parser.error(f"--formats: unknown {', '.join(unknown)} (known: {', '.join(FORMATS)})")

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    counts = sorted({min(int(w), cores) for w in args.workers.split(",")})
    front = LogMelFrontEnd(augment=args.augment, seed=0).to(device).train()

    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        pcm = Path(tmp) / "pcm.h5"
        t0 = time.perf_counter()
        make_hdf5(pcm, args.clips, args.source)
        with h5py.File(pcm, "r") as h5:
            num_clips = len(h5["audio_name"])
        print(f"wrote {num_clips} clips ({pcm.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.1f} s")
        fe_rates = frontend_paths(front, args, device)
        rows = []
        for fmt in formats:
            path = pcm
            if fmt != "pcm":
                path = Path(tmp) / ("shards" if fmt == "shards" else f"{fmt}.h5")
                codec = args.shard_codec if fmt == "shards" else fmt
                t0 = time.perf_counter()
                pack_panns(pcm, path, codec, num_workers=cores, progress=False, shards=fmt == "shards")
                print(f"{fmt}: packed in {time.perf_counter() - t0:.1f} s with {cores} processes", flush=True)
            per_clip = size_on_disk(path) / num_clips
            for workers, reads in itertools.product(counts, args.pcm_reads.split(",") if fmt == "pcm" else ["worker"]):
                row = {
                    "format": fmt,
                    "bytes_per_clip": per_clip,
                    **run_config(path, workers, args, device, front, reads),
                }
                rows.append(row)
                print(
                    f"{fmt:>6} reads={reads:6s} workers={workers:2d}  loader {row['loader_clips_per_s']:8.1f} clips/s "
                    f"({row['loader_cpu_s_per_clip'] * 1e3:.1f} ms CPU/clip)  "
                    f"end-to-end {row['end_to_end_clips_per_s']:8.1f} clips/s",
                    flush=True,
                )

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print()
    print(
        f"device: {device} ({device_name}), {cores} cores, batch {args.batch_size}, "
        f"augment={args.augment}, cold={args.cold}, torch threads {torch.get_num_threads()}, "
        f"data: {args.source or 'demo sounds'}, shards: {args.shard_codec}"
    )
    print(
        "front end alone: "
        + ", ".join(
            f"{path} {rate:.1f} clips/s ({1e3 * args.batch_size / rate:.2f} ms/batch)"
            for path, rate in fe_rates.items()
        )
    )
    header = f"{'format':>6} | {'reads':>6} | {'workers':>7} | {'kB/clip':>8} | {'loader clips/s':>14} | "
    header += f"{'CPU ms/clip':>11} | {'end-to-end clips/s':>18}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['format']:>6} | {row['pcm_reads']:>6} | {row['workers']:>7} | {row['bytes_per_clip'] / 1e3:>8.1f} | "
            f"{row['loader_clips_per_s']:>14.1f} | {row['loader_cpu_s_per_clip'] * 1e3:>11.2f} | "
            f"{row['end_to_end_clips_per_s']:>18.1f}"
        )
    if args.out:
        report = {
            "device": str(device),
            "device_name": device_name,
            "cores": cores,
            "batch_size": args.batch_size,
            "clips": num_clips,
            "source": args.source,
            "shard_codec": args.shard_codec,
            "augment": args.augment,
            "cold": args.cold,
            "seconds": args.seconds,
            "torch": torch.__version__,
            "frontend_only_clips_per_s": fe_rates,
            "results": rows,
        }
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
