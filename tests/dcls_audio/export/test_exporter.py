"""`dcls-audio export`: the exported ONNX / TorchScript model scores like PyTorch (1e-4).

PyTorch reference: LogMelFrontEnd (eval) + the unfolded model + sigmoid, computed here.
The full-size DCLS ConvNeXt-T with the synthetic upstream weights is checked against the
upstream logits stored in ../shared/upstream.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from dcls_audio import cli
from dcls_audio.export import exporter as export
from dcls_audio.export.exporter import export_model, read_metadata, run_exported
from dcls_audio.features import LogMelFrontEnd
from dcls_audio.features.onnx_logmel import ConvLogMel, dft_basis
from dcls_audio.inference import loader as tagging_model
from dcls_audio.models import create_model

SR = 32000
TINY = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), kernel_count=4, dilated_kernel_size=7)
LABELS = [f"label {i}" for i in range(10)]


def _waveforms(batch: int = 3, seed: int = 0) -> torch.Tensor:
    """Noise + tones at different levels; the last clip is silent after 4 s."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(10 * SR) / SR
    x = torch.stack(
        [
            0.02 * (i + 1) * torch.randn(10 * SR, generator=g) + 0.2 * torch.sin(2 * math.pi * 300 * (i + 1) * t)
            for i in range(batch)
        ]
    )
    x[-1, 4 * SR :] = 0
    return x


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = create_model("convnext_dcls_audio_tiny", num_classes=len(LABELS), **TINY).eval()
    with torch.no_grad():  # spread the logits so that score differences show
        model.head.fc.weight.mul_(20)
    return model


def _pytorch_scores(model, x, with_frontend, logits=False):
    with torch.inference_mode():
        mel = LogMelFrontEnd(augment=False).eval()(x) if with_frontend else x
        out = model(mel)
    return out if logits else out.sigmoid()


def test_dft_basis_is_the_windowed_rfft():
    window = torch.hann_window(64, periodic=True, dtype=torch.float64)
    frames = torch.randn(5, 64, dtype=torch.float64)
    parts = torch.nn.functional.conv1d(frames[:, None], dft_basis(64, window).double())[..., 0]
    spectrum = torch.fft.rfft(frames * window)
    torch.testing.assert_close(parts[:, :33], spectrum.real, atol=1e-6, rtol=0)
    torch.testing.assert_close(parts[:, 33:], spectrum.imag, atol=1e-6, rtol=0)


def test_conv_logmel_equals_frontend():
    """Equal to the STFT front end up to fp32 rounding, and as close to a float64 chain."""
    T = pytest.importorskip("torchaudio.transforms", reason="torchaudio (the test oracle) is not installed")

    frontend = LogMelFrontEnd(augment=False).eval()
    x = torch.cat([_waveforms(), torch.zeros(1, 10 * SR), 1e-3 * _waveforms(1, seed=5)])
    with torch.inference_mode():
        expected, got = frontend(x), ConvLogMel(frontend)(x)
        chain64 = torch.nn.Sequential(
            T.Spectrogram(n_fft=1024, hop_length=320, power=2),
            T.MelScale(n_mels=128, sample_rate=SR, f_min=50, f_max=14000, n_stft=513),
            T.AmplitudeToDB(),
        ).double()
        exact = ((chain64(x.double()) - frontend.mean) / frontend.std).unsqueeze(1)
    assert got.shape == expected.shape == (5, 1, 128, 1001)
    diff = (got - expected).abs()
    assert float(diff.mean()) < 1e-6 and float(diff.max()) < 5e-4
    assert float((got.double() - exact).abs().max()) < 5e-4
    torch.testing.assert_close(got[3], expected[3], atol=1e-6, rtol=0)  # silence: the dB floor


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("with_frontend", [True, False], ids=["waveform", "logmel"])
def test_export_matches_pytorch(tmp_path, tiny_model, fmt, with_frontend):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
    path = tmp_path / f"model.{fmt}"
    report = export_model(tiny_model, path, fmt, with_frontend=with_frontend, labels=LABELS, check=False)
    assert report.folded_layers == 4 and path.is_file()
    x = _waveforms() if with_frontend else torch.randn(3, 1, 128, 1001, generator=torch.Generator().manual_seed(3))
    expected = _pytorch_scores(tiny_model, x, with_frontend)
    assert float(expected.max() - expected.min()) > 0.5  # the scores are spread
    got = run_exported(path, fmt, x)  # batch 3; traced with batch 2
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    meta = read_metadata(path, fmt)
    assert meta["labels"] == LABELS and meta["model"] == "convnext_dcls_audio_tiny"
    assert meta["input"]["name"] == ("waveform" if with_frontend else "logmel")
    # the export folded a copy: the model itself keeps its DCLS layers
    assert sum(type(m).__name__ == "Dcls2d" for m in tiny_model.modules()) == 4


def test_onnx_graph_holds_dense_convs(tmp_path, tiny_model):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    export_model(tiny_model, path, "onnx", with_frontend=False, check=False)
    graph = onnx.load(str(path)).graph
    weights = {init.name: tuple(init.dims) for init in graph.initializer}
    kernels = [weights[node.input[1]] for node in graph.node if node.op_type == "Conv" and node.input[1] in weights]
    assert sorted(k for k in kernels if k[2:] == (7, 7)) == sorted(
        [(8, 1, 7, 7), (16, 1, 7, 7), (24, 1, 7, 7), (32, 1, 7, 7)]
    )


def test_full_size_dcls_export_gives_upstream_logits(tmp_path, upstream_dir):
    pytest.importorskip("onnxruntime")
    from dcls_audio.models import load_state_dict_checked

    from reference_fill import expected_logits, load_manifest, reference_input, synthetic_state_dict

    name = "convnext_dcls_audio_tiny"
    model = create_model(name).eval()
    load_state_dict_checked(model, synthetic_state_dict(load_manifest(name)))
    path = tmp_path / "full.onnx"
    export_model(model, path, "onnx", with_frontend=False, logits=True, check=False)
    got = run_exported(path, "onnx", reference_input())
    torch.testing.assert_close(got, expected_logits(name), atol=1e-4, rtol=0)


def test_cli_export_our_checkpoint(tmp_path, capsys, tiny_model):
    pytest.importorskip("onnxruntime")
    ckpt = tmp_path / "tiny.ckpt"
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in tiny_model.state_dict().items()},
            "hyper_parameters": {
                "model_name": "convnext_dcls_audio_tiny",
                "num_classes": len(LABELS),
                "model_kwargs": TINY,
                "class_names": LABELS,
            },
        },
        ckpt,
    )
    out = tmp_path / "tiny.onnx"
    rc = cli.main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--output", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0 and "4 DCLS layers folded" in stdout and "(ok" in stdout
    x = _waveforms(2, seed=9)
    torch.testing.assert_close(run_exported(out, "onnx", x), _pytorch_scores(tiny_model, x, True), atol=1e-4, rtol=0)
    assert read_metadata(out, "onnx")["labels"] == LABELS

    rc = cli.main(["export", "-c", str(ckpt), "-f", "torchscript", "-o", str(tmp_path / "missing" / "m.pt")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = cli.main(["export", "-c", str(tmp_path / "none.ckpt"), "-f", "onnx", "-o", str(out)])
    assert rc == 2 and "none.ckpt" in capsys.readouterr().err


def test_export_writes_the_file_only_when_complete(tmp_path, tiny_model, monkeypatch):
    path = tmp_path / "model.pt"
    export_model(tiny_model, path, "torchscript", with_frontend=False, check=False)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as a new file, not mkstemp's 0600
    before = path.read_bytes()

    def interrupted(module, example, out, meta):
        out.write_bytes(b"half a model")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(export, "_export_torchscript", interrupted)
    with pytest.raises(RuntimeError, match="interrupted"):
        export_model(tiny_model, path, "torchscript", with_frontend=False, check=False)
    assert list(tmp_path.iterdir()) == [path] and path.read_bytes() == before  # the old file, untouched


def test_onnx_export_interrupted_while_adding_metadata_leaves_no_file(tmp_path, tiny_model, monkeypatch):
    onnx = pytest.importorskip("onnx")

    def interrupted(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(onnx, "save", interrupted)  # after torch.onnx.export wrote the graph
    with pytest.raises(RuntimeError, match="interrupted"):
        export_model(tiny_model, tmp_path / "model.onnx", "onnx", with_frontend=False, check=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "missing, expected",
    [
        ("onnx", "error: onnx export needs onnx: pip install 'dcls-audio[onnx]'"),
        ("onnxruntime.capi", "error: onnx export needs onnxruntime: pip install 'dcls-audio[onnx]'"),
        ("h5py", "error: No module named 'h5py'"),
    ],
)
def test_cli_export_names_the_missing_module(tmp_path, capsys, monkeypatch, missing, expected):
    def fail(*args, **kwargs):
        raise ModuleNotFoundError(f"No module named '{missing}'", name=missing)

    monkeypatch.setattr(tagging_model, "load_tagging_model", fail)
    rc = cli.main(["export", "-c", str(tmp_path / "any.ckpt"), "-f", "onnx", "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and err.splitlines() == [f"dcls-audio export: {expected}"]


def test_cli_export_never_writes_over_an_input_or_an_unmeant_file(tmp_path, capsys, tiny_model):
    ckpt = tmp_path / "tiny.ckpt"
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in tiny_model.state_dict().items()},
            "hyper_parameters": {
                "model_name": "convnext_dcls_audio_tiny",
                "num_classes": len(LABELS),
                "model_kwargs": TINY,
                "class_names": LABELS,
            },
        },
        ckpt,
    )
    before = ckpt.read_bytes()
    link = tmp_path / "link.pt"
    link.symlink_to(ckpt)
    base = ["export", "-c", str(ckpt), "-f", "torchscript", "--no-frontend", "--no-check"]
    for output in (ckpt, link):
        for extra in ([], ["--overwrite"]):
            assert cli.main([*base, "-o", str(output), *extra]) == 2
            assert "is also an input" in capsys.readouterr().err
    assert ckpt.read_bytes() == before
    victim = tmp_path / "victim.wav"
    victim.write_bytes(b"RIFF....WAVE")
    assert cli.main([*base, "-o", str(victim)]) == 2
    assert f"{victim} already exists; pass --overwrite" in capsys.readouterr().err
    assert victim.read_bytes() == b"RIFF....WAVE"
    assert cli.main([*base, "-o", str(victim), "--overwrite"]) == 0
    assert victim.read_bytes() != b"RIFF....WAVE" and sorted(p.name for p in tmp_path.iterdir()) == [
        "link.pt",
        "tiny.ckpt",
        "victim.wav",
    ]


def test_export_to_a_full_disk_is_one_message(tmp_path, capsys, tiny_model, monkeypatch):
    import errno

    ckpt = tmp_path / "tiny.ckpt"
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in tiny_model.state_dict().items()},
            "hyper_parameters": {
                "model_name": "convnext_dcls_audio_tiny",
                "num_classes": len(LABELS),
                "model_kwargs": TINY,
            },
        },
        ckpt,
    )

    def full(module, example, out, meta):
        out.write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export, "_export_torchscript", full)
    out = tmp_path / "m.pt"
    assert cli.main(["export", "-c", str(ckpt), "-f", "torchscript", "-o", str(out), "--no-check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and "No space left on device" in err and "nothing was lost" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.ckpt"]
