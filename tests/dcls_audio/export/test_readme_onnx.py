"""The README's onnxruntime example runs on an exported model and prints its top classes."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from dcls_audio.export.exporter import export_model
from dcls_audio.features import LogMelFrontEnd
from dcls_audio.models import create_model

ROOT = Path(__file__).resolve().parents[3]
MARKER = "<!-- onnxruntime example: tests/dcls_audio/export/test_readme_onnx.py runs this block -->"


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    after = text.split(MARKER, 1)[1]
    match = re.match(r"\s*```python\n(.*?)```", after, re.S)
    assert match, "the README's onnxruntime example block is missing"
    return match.group(1)


def test_readme_onnxruntime_example(tmp_path, monkeypatch):
    torch.manual_seed(0)
    labels = [f"sound {i}" for i in range(7)]
    tiny = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), kernel_count=4, dilated_kernel_size=7)
    model = create_model("convnext_dcls_audio_tiny", num_classes=len(labels), **tiny).eval()
    with torch.no_grad():
        model.head.fc.weight.mul_(20)  # spread the scores so that the order is clear
    (tmp_path / "runs").mkdir()
    export_model(model, tmp_path / "runs" / "model.onnx", "onnx", labels=labels, check=False)
    t = np.arange(7 * 32000) / 32000  # 7 s: the example pads it to 10 s
    wave = (0.3 * np.sin(2 * np.pi * 700 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)).astype(
        np.float32
    )
    sf.write(tmp_path / "clip.wav", np.stack([wave, wave], 1), 32000)

    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(readme_example(), "README.md", "exec"), {})
    lines = printed.getvalue().splitlines()

    padded = torch.zeros(1, 320000)
    padded[0, : wave.size] = torch.from_numpy(wave)
    with torch.inference_mode():
        want = model(LogMelFrontEnd(augment=False).eval()(padded))[0].sigmoid()
    order = torch.argsort(want, descending=True)[:5].tolist()
    assert [line.split(None, 1)[1] for line in lines] == [labels[i] for i in order]
    assert [float(line.split()[0]) for line in lines] == pytest.approx([float(want[i]) for i in order], abs=6e-4)
