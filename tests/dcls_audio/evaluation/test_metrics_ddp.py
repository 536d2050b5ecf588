"""Metrics under DDP: 2 CPU processes (gloo) give exactly the single-process numbers."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from dcls_audio.evaluation.metrics import AudioSetMetrics, tagging_metrics

NUM_CLIPS, NUM_CLASSES = 203, 12  # odd: a padding sampler must repeat a clip


def _data():
    g = torch.Generator().manual_seed(3)
    targets = (torch.rand(NUM_CLIPS, NUM_CLASSES, generator=g) < 0.2).float()
    scores = torch.randn(NUM_CLIPS, NUM_CLASSES, generator=g) + targets
    targets[:, 0] = 0  # a class without positives on every rank
    return scores, targets


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        scores, targets = _data()
        # DistributedSampler pads the 203 clips to 204 with a duplicate: rank shards of 102.
        sampler = DistributedSampler(range(NUM_CLIPS), num_replicas=world, rank=rank, shuffle=True, seed=1)
        mine = torch.tensor(list(sampler))
        metric = AudioSetMetrics(NUM_CLASSES)
        for chunk in mine.split(7 + rank):  # different batch counts per rank
            metric.update(scores[chunk], targets[chunk], chunk)
        result = metric.compute()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
            json.dump({**result.summary(), "ap": result.ap.tolist()}, fh)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_metrics_equal_single_process(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    scores, targets = _data()
    reference = tagging_metrics(scores, targets)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["num_clips"] == NUM_CLIPS
        assert got["num_classes_scored"] == reference.num_classes_scored == NUM_CLASSES - 1
        for key in ("mAP", "mAUC", "d_prime", "d_prime_of_mAUC"):
            assert got[key] == pytest.approx(getattr(reference, key), abs=1e-12), key
        torch.testing.assert_close(torch.tensor(got["ap"], dtype=torch.float64), reference.ap, equal_nan=True)
