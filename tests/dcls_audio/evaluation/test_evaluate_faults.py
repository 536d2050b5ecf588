"""``dcls-audio eval`` fed bad data and bad models: no usable rows, one file twice, NaN scores,
outputs that are inputs or earlier results."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import torch

from dcls_audio import cli
from dcls_audio.evaluation.evaluate import EvaluationModule
from dcls_audio.models import create_model

pytestmark = pytest.mark.usefixtures("single_thread")

KWARGS = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tone_h5):
    root = tmp_path_factory.mktemp("faults_eval")
    torch.manual_seed(0)
    net = create_model("convnext_audio_tiny", **KWARGS)
    ckpt = root / "tiny.ckpt"
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "hyper_parameters": {"model_name": "convnext_audio_tiny", "num_classes": 3, "model_kwargs": KWARGS},
        },
        ckpt,
    )
    data = tone_h5(root / "eval.h5", [[0], [1], [2], [0, 1]], 3, 0)
    empty = tone_h5(root / "empty.h5", [[0], [1]], 3, 0)
    with h5py.File(empty, "r+") as h5:
        h5["audio_name"][:] = b""
    return {"root": root, "ckpt": ckpt, "data": data, "empty": empty}


def _eval(setup, *args: str) -> int:
    return cli.main(["eval", "-c", str(setup["ckpt"]), "--accelerator", "cpu", "--num-workers", "0", *args])


def test_no_usable_rows_is_an_error_before_any_work(setup, capsys, monkeypatch):
    def no_scoring(*args, **kwargs):
        raise AssertionError("scoring started")

    monkeypatch.setattr(EvaluationModule, "test_step", no_scoring)
    assert _eval(setup, "-d", str(setup["empty"])) == 2
    err = capsys.readouterr().err
    assert "empty.h5: no usable clips to score (2 row(s) with an empty audio_name" in err
    assert "Traceback" not in err


def test_one_file_twice_is_scored_once(setup, tmp_path, capsys):
    link = tmp_path / "link.h5"
    link.symlink_to(setup["data"])
    out = tmp_path / "out"
    assert _eval(setup, "-d", str(setup["data"]), str(setup["data"]), str(link), "-o", str(out)) == 0
    captured = capsys.readouterr()
    assert "clips    4" in captured.out
    assert captured.err.count("is the same file as") == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_clips"] == 4 and metrics["data"] == [str(setup["data"])]
    assert metrics["num_rows_dropped"] == 0


def test_nan_scores_exit_non_zero_and_write_nothing(setup, tmp_path, capsys, monkeypatch):
    original = EvaluationModule.test_step

    def poisoned(self, batch, batch_idx):
        forward = self.net.forward
        self.net.forward = lambda x: forward(x) * torch.where(batch["index"] == 2, torch.nan, 1.0)[:, None]
        try:
            return original(self, batch, batch_idx)
        finally:
            self.net.forward = forward

    monkeypatch.setattr(EvaluationModule, "test_step", poisoned)
    out = tmp_path / "out"
    assert _eval(setup, "-d", str(setup["data"]), "-o", str(out), "--batch-size", "2") == 1
    err = capsys.readouterr().err
    assert "NaN/inf scores for 1 of 4 clips (first: clip002)" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_metrics_json_is_strict_when_nothing_can_be_scored(setup, tmp_path, tone_h5):
    only_positives = tone_h5(tmp_path / "pos.h5", [[0, 1, 2], [0, 1, 2]], 3, 0)
    out = tmp_path / "out"
    assert _eval(setup, "-d", str(only_positives), "-o", str(out)) == 0
    text = (out / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    metrics = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert metrics["mAP"] is None and metrics["num_classes_scored"] == 0


def test_outputs_never_replace_inputs_or_earlier_results(setup, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert _eval(setup, "-d", str(setup["data"]), "-o", str(out)) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(first) == ["metrics.json", "mine.txt", "per_class.csv", "per_class_ap.png", "predictions.npz"]
    capsys.readouterr()
    assert _eval(setup, "-d", str(setup["data"]), "-o", str(out)) == 2
    assert "already holds metrics.json, per_class.csv, predictions.npz, per_class_ap.png" in capsys.readouterr().err
    assert _eval(setup, "-d", str(setup["data"]), "-o", str(out), "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(first) and (out / "mine.txt").read_text() == "keep"
    # a result file that is the data file itself (through a link): refused even with --overwrite
    trap = tmp_path / "trap"
    trap.mkdir()
    (trap / "predictions.npz").symlink_to(setup["data"])
    before = setup["data"].read_bytes()
    assert _eval(setup, "-d", str(setup["data"]), "-o", str(trap), "--overwrite") == 2
    assert "is also an input" in capsys.readouterr().err
    assert setup["data"].read_bytes() == before
    # a file given as the output folder
    assert _eval(setup, "-d", str(setup["data"]), "-o", str(setup["ckpt"])) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_full_disk_while_writing_results_keeps_the_earlier_set(setup, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert _eval(setup, "-d", str(setup["data"]), "-o", str(out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()

    def full(file, **arrays):
        file.write(b"PK half")
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(np, "savez_compressed", full)
    assert _eval(setup, "-d", str(setup["data"]), "-o", str(out), "--overwrite") == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and str(out) in err and "nothing was lost" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_gpu_accelerator_without_gpu(setup, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["eval", "-c", str(setup["ckpt"]), "-d", str(setup["data"]), "--accelerator", "gpu"]) == 2
    assert "--accelerator gpu: no CUDA GPU" in capsys.readouterr().err


def test_more_devices_than_clips_is_an_error_before_any_process_starts(setup, tmp_path, capsys, tone_h5):
    two = tone_h5(tmp_path / "two.h5", [[0], [1]], 3, 0)
    assert _eval(setup, "-d", str(two), "--devices", "3") == 2
    err = capsys.readouterr().err
    assert "3 processes for 2 clips" in err and "--devices 2 or fewer" in err and "Traceback" not in err
