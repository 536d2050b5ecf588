"""Faults while scoring: inputs and scores that are not finite never reach the output (the file is
reported and skipped, the others are tagged, the JSON stays strict JSON), and running out of memory
is one error line that says what to change."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from dcls_audio import cli
from dcls_audio.inference import tagger
from dcls_audio.models import create_model

MODEL = "convnext_audio_tiny"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "weights.pth"
    torch.manual_seed(0)
    torch.save(create_model(MODEL).state_dict(), path)
    return path


@pytest.fixture()
def clips(tmp_path):
    rng = np.random.default_rng(0)
    huge, ok = tmp_path / "huge.wav", tmp_path / "ok.wav"
    sf.write(huge, (rng.standard_normal(16000 * 2) * 1e30).astype(np.float32), 16000, subtype="FLOAT")
    sf.write(ok, (rng.standard_normal(16000 * 2) * 0.1).astype(np.float32), 16000, subtype="FLOAT")
    return huge, ok


def _strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_huge_sample_values_are_reported_and_the_other_files_tagged(checkpoint, clips, capsys):
    huge, ok = clips
    rc = cli.main(["infer", "-c", str(checkpoint), "--model", MODEL, str(huge), str(ok), "-f", "json", "-k", "2"])
    captured = capsys.readouterr()
    assert rc == 1
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "huge.wav" in errors[0] and "not audio" in errors[0] and "e+30" in errors[0]
    records = _strict_json(captured.out)
    assert [r["file"] for r in records] == [str(ok)]
    assert all(np.isfinite(t["score"]) for t in records[0]["top"])


def test_non_finite_scores_fail_the_file_not_the_json(checkpoint, clips, capsys, monkeypatch):
    _, ok = clips
    original = tagger.AudioTagger.__call__

    def poisoned(self, waveforms):
        scores = original(self, waveforms)
        return torch.full_like(scores, float("nan"))

    monkeypatch.setattr(tagger.AudioTagger, "__call__", poisoned)
    rc = cli.main(["infer", "-c", str(checkpoint), "--model", MODEL, str(ok), "-f", "json"])
    captured = capsys.readouterr()
    assert rc == 1
    assert any("ok.wav" in line and "non-finite scores" in line for line in captured.err.splitlines())
    assert _strict_json(captured.out) == []


def test_running_out_of_memory_while_scoring_says_to_lower_the_batch(checkpoint, clips, capsys, monkeypatch):
    _, ok = clips

    def no_memory(self, waveforms):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(tagger.AudioTagger, "__call__", no_memory)
    rc = cli.main(["infer", "-c", str(checkpoint), "--model", MODEL, str(ok), "--batch-size", "512"])
    err = capsys.readouterr().err
    assert rc == 2 and "out of memory while scoring 512 windows" in err and "--batch-size" in err
    assert "Traceback" not in err
