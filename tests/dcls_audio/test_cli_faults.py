"""The command line under a closed pipe and Ctrl-C: one line or none, never a traceback;
bad ``export`` arguments are argument errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
