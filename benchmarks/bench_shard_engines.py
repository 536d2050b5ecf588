"""Shard engines compared on this machine's CPUs: litdata (optimised chunks) vs WebDataset (tar shards).

Writes the same clips (encoded bytes of a realistic size, 527-class targets) with each engine into
a temporary folder, then reads every clip back through each engine's reader in one process, with
and without DataLoader workers: write s, read clips/s (bytes only; decoding is the same for both
and measured by ``bench_data.py``), bytes per clip on disk, and for litdata the random-access
rate (``dataset[i]`` in a shuffled order), which WebDataset's tar reader does not offer. JSON + table.

    .venv/bin/pip install webdataset   # not a project dependency: only this comparison reads it
    .venv/bin/python benchmarks/bench_shard_engines.py --clips 2000 --out engines.json

Measured on the 2-core development machine (1500 clips of 83 kB, 64 MB shards,
``results/shard_engines_2core.json``): litdata streams 3800 clips/s and reads 2400 clips/s by
random index, WebDataset streams 4400 clips/s; litdata's files are 5 % smaller (tar headers).
Both read bytes 100 times faster than a core decodes Opus (about 55 clips/s), so speed does not
decide; the project uses litdata because its random access by global index keeps the samplers'
contract (every clip once per epoch across ranks, seeded order, exact resume inside an epoch)
without a second implementation for tar streams, and it reads bucket URLs with a chunk cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _clips(count: int, clip_bytes: int, classes: int = 527):
    rng = np.random.default_rng(0)
    for i in range(count):
        target = np.flatnonzero(rng.random(classes) < 0.01).astype(np.int16)
        yield f"Y{i:010d}", rng.integers(0, 256, clip_bytes, dtype=np.uint8).tobytes(), target


def write_litdata(folder: Path, clips, chunk_bytes: str) -> None:
    from litdata.streaming.writer import BinaryWriter

    writer = BinaryWriter(str(folder), chunk_bytes=chunk_bytes)
    for i, (name, data, target) in enumerate(clips):
        writer.add_item(i, {"audio_name": name, "audio": data, "labels": target.tobytes()})
    writer.done()
    writer.merge()


def write_webdataset(folder: Path, clips, max_bytes: int) -> None:
    import webdataset as wds

    with wds.ShardWriter(str(folder / "shard-%06d.tar"), maxsize=max_bytes, verbose=0) as sink:
        for name, data, target in clips:
            sink.write({"__key__": name, "opus": data, "labels": target.tobytes()})


def read_stream(dataset) -> tuple[int, float]:
    """Iterate the engine's dataset in this process (a torch DataLoader over litdata's
    StreamingDataset read 8-12 clips/s here, its StreamingDataLoader stalled: left out)."""
    start, count = time.perf_counter(), 0
    for _ in dataset:
        count += 1
    return count, count / (time.perf_counter() - start)


def litdata_dataset(folder: Path):
    from litdata import StreamingDataset

    return StreamingDataset(str(folder), shuffle=True, seed=0)


def webdataset_dataset(folder: Path):
    import webdataset as wds

    urls = sorted(str(p) for p in folder.glob("*.tar"))
    return wds.WebDataset(urls, shardshuffle=len(urls), seed=0, empty_check=False, nodesplitter=None).shuffle(256)


def litdata_random(folder: Path, count: int) -> float:
    dataset = litdata_dataset(folder)
    order = np.random.default_rng(0).permutation(count)
    start = time.perf_counter()
    for i in order:
        dataset[int(i)]
    return count / (time.perf_counter() - start)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument(
        "--clip-bytes", type=int, default=84_000, help="bytes per encoded clip (Opus at the default rate: ~84 kB)"
    )
    parser.add_argument("--shard-mb", type=int, default=64)
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        for engine, write, open_dataset in (
            ("litdata", lambda f, c: write_litdata(f, c, f"{args.shard_mb}MB"), litdata_dataset),
            ("webdataset", lambda f, c: write_webdataset(f, c, args.shard_mb * 2**20), webdataset_dataset),
        ):
            folder = Path(tmp) / engine
            folder.mkdir()
            start = time.perf_counter()
            write(folder, _clips(args.clips, args.clip_bytes))
            row = {"engine": engine, "write_s": time.perf_counter() - start}
            row["bytes_per_clip"] = folder_bytes(folder) / args.clips
            count, rate = read_stream(open_dataset(folder))
            if count != args.clips:
                raise SystemExit(f"{engine}: read {count} clips of {args.clips}")
            row["stream_clips_per_s"] = rate
            if engine == "litdata":
                row["random_access_clips_per_s"] = litdata_random(folder, args.clips)
            rows.append(row)
            print(json.dumps(row), flush=True)
    keys = sorted({k for row in rows for k in row} - {"engine"})
    print(
        f"\ncores: {len(os.sched_getaffinity(0))}, clips: {args.clips} x {args.clip_bytes} B, shards {args.shard_mb} MB"
    )
    print(f"{'engine':>10} | " + " | ".join(f"{k:>26}" for k in keys))
    for row in rows:
        print(f"{row['engine']:>10} | " + " | ".join(f"{row.get(k, float('nan')):>26.1f}" for k in keys))
    if args.out:
        Path(args.out).write_text(
            json.dumps({"clips": args.clips, "clip_bytes": args.clip_bytes, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
