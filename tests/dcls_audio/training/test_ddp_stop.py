"""Two CPU ranks under torchrun (gloo): a SIGTERM on one rank stops both after the same step,
with no per-step device broadcast of the stop flag, and the resumed run trains exactly the
batches of an uninterrupted run, to equal weights; the ranks agree on rank 0's run directory
through torchrun's job store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def _torchrun(workdir: Path, data: tuple[Path, Path], name: str, *fault: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for key in ("DCLS_AUDIO_RUN_DIR", "DCLS_AUDIO_RESUME_FROM", "RANK", "WORLD_SIZE", "SLURM_PROCID"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(HERE / "ddp_harness.py"), str(workdir), *map(str, data), name, *fault]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _log(workdir: Path, name: str, rank: int) -> list[dict]:
    return [json.loads(x) for x in (workdir / name / f"rank{rank}.jsonl").read_text().splitlines()]


def _trained(log: list[dict]) -> list[tuple[int, int, list[int]]]:
    kept: list[tuple[int, int, list[int]]] = []
    for item in log:
        if "start" in item:
            kept = [b for b in kept if b[0] <= item["start"]]
        elif "index" in item:
            kept.append((item["step"], item["epoch"], item["index"]))
    return kept


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tone_h5) -> Path:
    workdir = tmp_path_factory.mktemp("ddp")
    train = tone_h5(workdir / "train.h5", [[i % 3] for i in range(8)])  # 4 steps of 1 per rank
    val = tone_h5(workdir / "val.h5", [[0], [1], [2], [0, 1]], seed=1)
    data = (train, val)
    _torchrun(workdir, data, "whole")
    _torchrun(workdir, data, "stopped", "1")  # SIGTERM on rank 1, not rank 0
    _torchrun(workdir, data, "stopped")  # started again: resumes from last.ckpt
    _torchrun(workdir, data, "beforeval", "0", "3")  # agreed after step 4, when validation is due
    _torchrun(workdir, data, "beforeval")
    return workdir


def test_a_sigterm_on_one_rank_stops_every_rank_after_the_same_step(runs):
    first = [[x for x in _log(runs, "stopped", rank) if "interrupted" in x][0] for rank in (0, 1)]
    assert first[0]["interrupted"] and first[1]["interrupted"]
    assert first[0]["step"] == first[1]["step"] and 6 <= first[0]["step"] < 12
    assert first[0]["run_dir"] == first[1]["run_dir"]  # rank 1 took rank 0's directory
    assert first[1]["agent_store"] == "True"  # through torchrun's store (not the hand-off file)


def test_no_device_broadcast_of_the_stop_flag_per_step(runs):
    for rank in (0, 1):
        ends = [x for x in _log(runs, "whole", rank) if "broadcasts_in_batches" in x]
        assert ends == [{**ends[0], "broadcasts_in_batches": 0}]


@pytest.mark.parametrize("name", ["stopped", "beforeval"])
def test_the_resumed_run_equals_the_uninterrupted_one(runs, name):
    for rank in (0, 1):
        whole = _trained(_log(runs, "whole", rank))
        assert [b[0] for b in whole] == list(range(1, 13))
        assert _trained(_log(runs, name, rank)) == whole
        ends = [x for x in _log(runs, name, rank) if "interrupted" in x]
        assert ends[-1]["step"] == 12 and not ends[-1]["interrupted"]
    ref_dir = Path(_log(runs, "whole", 0)[-1]["run_dir"])
    got_dir = Path(_log(runs, name, 0)[-1]["run_dir"])
    ref = torch.load(ref_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    got = torch.load(got_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert got["global_step"] == ref["global_step"] == 12
    for key, value in ref["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key


def test_a_stop_agreed_when_validation_is_due_lets_it_run_over_the_whole_set(runs):
    """Agreed after the epoch's last batch: the validation due there runs whole on every rank
    (Lightning's loop would stop it after one batch), then the run stops."""
    for rank in (0, 1):
        log = _log(runs, "beforeval", rank)
        first = [x for x in log if "interrupted" in x][0]
        assert first["interrupted"] and first["step"] == 4
        validations = [x for x in log if "validation" in x]
        assert [x["validation"] for x in validations] == [0, 1, 2]  # each epoch's, none lost or repeated
        assert all(x["batches"] == 2 for x in validations)  # 4 clips, 2 ranks, batch 1
