"""Fault injection: a tiny CPU run stopped (SIGTERM) or killed (SIGKILL) at each point of training
and resumed trains exactly the batches of an uninterrupted run, in its order, to equal weights.

The runs are made by ``resume_harness.py`` in one subprocess (each run a fork of it; a SIGKILL is
a real SIGKILL of that run's process). Also here: two runs of one name, the run lock, a second
Ctrl-C, a train set smaller than a batch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dcls_audio.training.run_dir import RunDirInUse, RunDirLock, claim_run_dir, release_claim, resolve_run_dir

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
POINTS = ("step", "validation", "save", "epochsave", "epochend")  # see resume_harness.POINTS
SCENARIOS = [f"{point}-{how}" for point in POINTS for how in ("term", "kill")] + ["resumeold-kill"]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for name in ("DCLS_AUDIO_RUN_DIR", "DCLS_AUDIO_RESUME_FROM", "RANK", "WORLD_SIZE", "SLURM_PROCID"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def data(tmp_path_factory, tone_h5) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("h5")
    train = tone_h5(root / "train.h5", [[i % 3] for i in range(8)])  # 4 steps of 2 per epoch
    val = tone_h5(root / "val.h5", [[0], [1], [2], [0, 1], [2]], seed=1)
    return train, val


@pytest.fixture(scope="module")
def faulted(tmp_path_factory, data) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("faults")
    proc = subprocess.run(
        [sys.executable, str(HERE / "resume_harness.py"), str(workdir), *map(str, data), "whole", *SCENARIOS],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, json.loads(proc.stdout.strip().splitlines()[-1])


def trained(workdir: Path, name: str) -> list[tuple[int, int, list[int]]]:
    """(step, epoch, clip indices) of the batches whose updates the run's final weights hold:
    a restart from step s drops what the stopped run trained after s."""
    kept: list[tuple[int, int, list[int]]] = []
    for line in (workdir / name / "batches.jsonl").read_text().splitlines():
        item = json.loads(line)
        if "start" in item:
            kept = [b for b in kept if b[0] <= item["start"]]
        else:
            kept.append((item["step"], item["epoch"], item["index"]))
    return kept


def final(workdir: Path, name: str) -> tuple[Path, dict]:
    run = sorted((workdir / "runs" / name).glob("version_*"))[-1]
    return run, torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_run_stopped_anywhere_resumes_to_the_uninterrupted_run(faulted, scenario):
    workdir, codes = faulted
    expected = [0] if scenario.endswith("term") else [-signal.SIGKILL]
    assert codes[scenario]["codes"] == expected + [0]
    whole = trained(workdir, "whole")
    assert len(whole) == 12 and [b[0] for b in whole] == list(range(1, 13))
    assert trained(workdir, scenario) == whole  # the same batches, in the same order, none twice
    starts = [json.loads(x) for x in (workdir / scenario / "batches.jsonl").read_text().splitlines()]
    assert sum("start" in x for x in starts) == 2  # it was really restarted
    ref_run, ref = final(workdir, "whole")
    run, got = final(workdir, scenario)
    assert got["global_step"] == ref["global_step"] == 12 and got["epoch"] == ref["epoch"]
    assert got["state_dict"].keys() == ref["state_dict"].keys()
    for key, value in ref["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key
    for key in ("exp_avg", "exp_avg_sq"):
        for a, b in zip(ref["optimizer_states"][0]["state"].values(), got["optimizer_states"][0]["state"].values()):
            assert torch.equal(a[key], b[key])
    # the run folder holds what an uninterrupted run's holds: no temporaries, no stale best file
    # (a run resumed from an older copy continues in a new version folder, whose best files are
    # its own: there only last.ckpt is compared)
    ours, reference = ({p.name for p in (r / "checkpoints").iterdir()} for r in (run, ref_run))
    if scenario.startswith("resumeold"):
        ours, reference = ({n for n in names if not n.startswith("best-")} for names in (ours, reference))
    assert sorted(ours) == sorted(reference)
    assert (run / "finished").is_file()
    results = [json.loads(x) for x in (workdir / scenario / "results.jsonl").read_text().splitlines()]
    assert results[-1] == {"interrupted": False, "step": 12}
    if scenario.endswith("term"):
        assert results[0]["interrupted"] and results[0]["step"] < 12


def test_resuming_an_older_checkpoint_of_a_run_leaves_its_later_last_ckpt_alone(faulted):
    workdir, _ = faulted
    runs = workdir / "runs" / "resumeold-kill"
    assert sorted(p.name for p in runs.glob("version_*")) == ["version_0", "version_1"]
    kept = torch.load(runs / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert kept["global_step"] == 6  # the every-3-steps checkpoint of the killed run, untouched


# ----------------------------------------------------------------------------- run directories
def test_two_runs_of_one_name_never_share_a_version(tmp_path):
    first = claim_run_dir(tmp_path, "exp", auto_resume=True, resume=None)
    try:
        assert first.run_dir == tmp_path / "exp" / "version_0" and first.lock is not None
        second = claim_run_dir(tmp_path, "exp", auto_resume=True, resume=None)  # version_0 is unfinished, but held
        try:
            assert second.run_dir == tmp_path / "exp" / "version_1"
            assert "version_0 is being trained by process" in second.note
        finally:
            release_claim(second, tmp_path, "exp")
        (first.run_dir / "config.yaml").write_text("")
        (first.run_dir / "checkpoints").mkdir()
        last = first.run_dir / "checkpoints" / "last.ckpt"
        last.write_bytes(b"x")
        with pytest.raises(RunDirInUse, match="version_0 is being trained by process"):
            claim_run_dir(tmp_path, "exp", auto_resume=True, resume=last)  # resuming that very run: refused
    finally:
        release_claim(first, tmp_path, "exp")
    again = claim_run_dir(tmp_path, "exp", auto_resume=True, resume=last)  # released: continues it
    assert again.run_dir == first.run_dir and again.resume_from == last
    release_claim(again, tmp_path, "exp")


def test_the_lock_is_held_across_processes_until_the_holder_dies(tmp_path):
    (tmp_path / "run").mkdir()
    code = "import sys, time; from dcls_audio.training.run_dir import RunDirLock; "
    code += "assert RunDirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "run")], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not RunDirLock(tmp_path / "run").acquire()
        holder.kill()
        holder.wait(10)
        lock = RunDirLock(tmp_path / "run")
        assert lock.acquire()  # the kernel released it with the killed process
        lock.release()
    finally:
        holder.kill()
        holder.wait(10)


def test_a_killed_holders_forked_children_do_not_keep_its_lock(tmp_path):
    """Data-loader workers are forked from the training process: a SIGKILL of the run must free
    its lock at once, not when the orphaned workers exit."""
    (tmp_path / "run").mkdir()
    code = "import os, sys, time; from dcls_audio.training.run_dir import RunDirLock; "
    code += "assert RunDirLock(sys.argv[1]).acquire(); child = os.fork()\n"
    code += "if child == 0: time.sleep(30); os._exit(0)\n"
    code += "print(child, flush=True); time.sleep(60)"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "run")], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True
    )
    child = None
    try:
        child = int(holder.stdout.readline())
        holder.kill()
        holder.wait(10)
        lock = RunDirLock(tmp_path / "run")
        assert lock.acquire(), "the forked child still holds the killed run's lock"
        lock.release()
    finally:
        holder.kill()
        holder.wait(10)
        if child:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_ranks_launched_by_torchrun_take_rank_0s_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job7")
    (tmp_path / "exp" / "version_0").mkdir(parents=True)
    (tmp_path / "exp" / "version_0" / "finished").write_text("")
    monkeypatch.setenv("RANK", "0")
    rank0 = claim_run_dir(tmp_path, "exp", auto_resume=True, resume=None)
    try:
        assert rank0.run_dir == tmp_path / "exp" / "version_1"
        monkeypatch.setenv("RANK", "1")
        rank1 = claim_run_dir(tmp_path, "exp", auto_resume=True, resume=None)
        assert rank1.run_dir == rank0.run_dir and rank1.lock is None and rank1.resume_from is None
    finally:
        monkeypatch.setenv("RANK", "0")
        release_claim(rank0, tmp_path, "exp")
    assert not list((tmp_path / "exp").glob(".rank0-*"))  # the hand-off is removed at the end
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("DCLS_AUDIO_RANK_WAIT_S", "0.3")
    with pytest.raises(TimeoutError, match="rank 0 did not name the run directory"):
        claim_run_dir(tmp_path, "exp", auto_resume=True, resume=None)


def test_resume_chooses_the_checkpoints_own_run_only_when_it_is_that_runs_last(tmp_path):
    root = tmp_path / "runs"
    run = root / "exp" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("")
    last, best = run / "checkpoints" / "last.ckpt", run / "checkpoints" / "best-epoch0.ckpt"
    last.write_bytes(b"x")
    best.write_bytes(b"x")
    assert resolve_run_dir(root, "exp", True, last) == (run, last)
    assert resolve_run_dir(root, "exp", True, best) == (root / "exp" / "version_1", best)
    assert resolve_run_dir(root, "other", True, last) == (root / "other" / "version_0", last)  # --run.name other
    elsewhere = tmp_path / "elsewhere"
    assert resolve_run_dir(elsewhere, "exp", True, last) == (elsewhere / "exp" / "version_0", last)


# ----------------------------------------------------------------------------- the CLI in a subprocess
def _train_args(data, out: Path, *extra: str) -> list[str]:
    train, val = data
    args = {
        "model.name": "convnext_audio_tiny",
        "model.depths": "[1, 1, 1, 1]",
        "model.dims": "[8, 16, 32, 64]",
        "model.kernel_count": "null",
        "model.dilated_kernel_size": "null",
        "data.train_files": str(train),
        "data.val_files": str(val),
        "data.num_workers": "0",
        "data.batch_size": "2",
        "trainer.enable_progress_bar": "false",
        "trainer.num_sanity_val_steps": "0",
        "run.output_dir": str(out),
    }
    flat = [x for key, value in args.items() for x in (f"--{key}", value)]
    return [sys.executable, "-m", "dcls_audio.cli", "train", *flat, *extra]


def test_a_second_ctrl_c_aborts_at_once_with_130(data, tmp_path):
    """The first SIGINT asks for a stop after the step; a second one, while the run is still busy
    (here: a validation that never ends), ends the process at once with one message."""
    hang = tmp_path / "hang.py"
    hang.write_text(
        "import time, lightning as L, sys\n"
        "from dcls_audio import cli\n"
        "from dcls_audio.training import run\n"
        "class Hang(L.Callback):\n"
        "    def on_train_batch_end(self, *a):\n"
        "        print('step', flush=True)\n"
        "        time.sleep(120)\n"
        "real = run.train\n"
        "run.train = lambda cfg, resume=None, callbacks=(): real(cfg, resume, [*callbacks, Hang()])\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    args = _train_args(data, tmp_path / "runs")
    proc = subprocess.Popen(
        [sys.executable, str(hang), *args[3:]],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stdout:
            if line.strip() == "step":
                break
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(20)
        assert time.monotonic() - started < 10
    finally:
        proc.kill()
        proc.wait()
    err = proc.stderr.read()
    assert code == 130
    assert err.count("aborted (second Ctrl-C)") == 1 and "Traceback" not in err
    assert not list((tmp_path / "runs").rglob("*.tmp"))


def test_a_train_set_smaller_than_a_batch_is_an_error_before_any_work(data, tmp_path, tone_h5):
    small = tone_h5(tmp_path / "small.h5", [[0], [1], [2]])
    args = _train_args((small, data[1]), tmp_path / "runs", "--data.batch_size", "4")  # the last wins
    proc = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "data.train_files: 3 training clips per epoch give no full batch of data.batch_size 4" in proc.stderr
    assert f"{small} (3 clips)" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("version_*"))
