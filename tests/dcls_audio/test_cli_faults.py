"""The command line under a closed pipe and Ctrl-C: one line or none, never a traceback;
bad ``export`` arguments are argument errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dcls_audio import cli


def test_closed_pipe_gives_no_traceback():
    # the reader is gone before the command prints (as `dcls-audio models | head -0`)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcls_audio", "models", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert code == cli.EXIT_BROKEN_PIPE == 141


def test_pipe_into_head_gives_no_traceback():
    shell = f"{sys.executable} -m dcls_audio train --help | head -1"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("usage: dcls-audio train"), done.stdout
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode in (0, 141)


def test_ctrl_c_reaching_main_is_one_line_and_130(monkeypatch, capsys):
    import dcls_audio.models as models

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "describe_models", interrupted)
    assert cli.main(["models"]) == 130
    assert capsys.readouterr().err.strip() == "dcls-audio models: interrupted"


@pytest.mark.parametrize("opset", ["5", "13", "21"])
def test_export_opset_out_of_range_is_an_argument_error(opset, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        cli.main(["export", "-c", "x.ckpt", "-f", "onnx", "-o", str(tmp_path / "m.onnx"), "--opset", opset])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --opset: {opset} is outside 14..20" in err


def test_help_into_a_closed_pipe_gives_no_traceback():
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcls_audio", "train", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 141) and "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_missing_resume_checkpoint_is_reported_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DCLS_AUDIO_DATA", str(tmp_path / "data"))
    rc = cli.main(["train", "--resume", str(tmp_path / "nosuch.ckpt"), "--run.output_dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and "checkpoint not found" in err and "nosuch.ckpt" in err and "Traceback" not in err
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()  # no demo data, no run folder


def test_eval_on_an_accelerator_the_machine_lacks_is_one_error_line(tmp_path, capsys, tone_h5):
    from dcls_audio.models import create_model

    data = tone_h5(tmp_path / "eval.h5", [[0], [1]])
    weights = tmp_path / "w.pth"
    torch.save(create_model("convnext_audio_tiny").state_dict(), weights)
    rc = cli.main(
        ["eval", "-c", str(weights), "--model", "convnext_audio_tiny", "-d", str(data), "--accelerator", "tpu"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("dcls-audio eval: error: --accelerator") and "Traceback" not in err


@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_usage_error_is_one_line_and_any_other_value_error_keeps_its_traceback(
    monkeypatch, capsys, tmp_path, command
):
    """What the user gave (UsageError and its kinds: config, checkpoint, audio) -> one line, exit 2;
    a ValueError from anywhere else is a bug: it is not turned into a message."""
    import dcls_audio.evaluation.evaluate as evaluation
    import dcls_audio.training.run as run
    from dcls_audio.errors import UsageError
    from dcls_audio.models.checkpoint import CheckpointError

    for name in ("x.ckpt", "x.h5"):
        (tmp_path / name).write_bytes(b"not read: the command's work is replaced below")
    if command == "train":
        args = ["train", "--trainer.max_epochs", "1"]
    else:
        args = ["eval", "-c", str(tmp_path / "x.ckpt"), "-d", str(tmp_path / "x.h5")]
    target, name = (run, "train") if command == "train" else (evaluation, "evaluate")

    for raised in (UsageError("data.train_files: f.h5: not a readable HDF5 file"), CheckpointError("x.ckpt: corrupt")):
        monkeypatch.setattr(target, name, lambda *a, exc=raised, **k: (_ for _ in ()).throw(exc))
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert err.strip() == f"dcls-audio {command}: error: {raised}"

    monkeypatch.setattr(target, name, lambda *a, **k: (_ for _ in ()).throw(ValueError("a bug deep inside")))
    with pytest.raises(ValueError, match="a bug deep inside"):
        cli.main(args)
