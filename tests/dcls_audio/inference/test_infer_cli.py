"""`dcls-audio infer` end to end with the synthetic upstream ConvNeXt-T checkpoint (.pth).

The reference is computed independently of the inference code: soundfile + channel mean + the
product's resampling (tested against torchaudio in test_resample.py), windows cut at hand-written
times, LogMelFrontEnd, the model loaded straight from the synthetic state_dict, sigmoid. Labels
are checked against the shipped CSV read with the csv module.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from dcls_audio import cli
from dcls_audio.data.resample import resample
from dcls_audio.features import LogMelFrontEnd
from dcls_audio.models import create_model, load_state_dict_checked

from dcls_testing import png_size

MODEL = "convnext_audio_tiny"
SR = 32000
CLASS_CSV = Path(__file__).resolve().parents[3] / "dcls_audio" / "resources" / "class_labels_indices.csv"


@pytest.fixture(scope="module")
def synthetic_state_dict(upstream_dir):
    from reference_fill import load_manifest, synthetic_state_dict

    return synthetic_state_dict(load_manifest(MODEL))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, synthetic_state_dict) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / f"{MODEL}.pth"
    args = argparse.Namespace(model=MODEL, nb_classes=527, lr=4e-3)
    torch.save({"model": synthetic_state_dict, "epoch": 1, "args": args}, path)
    return path


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    """44.1 kHz stereo 25 s (different content per 5 s), 8 kHz mono 3 s, silence, a corrupt file."""
    folder = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    sr = 44100
    t = np.arange(25 * sr) / sr
    left = 0.05 * rng.standard_normal(t.size)
    left[t >= 10] += 0.4 * np.sin(2 * np.pi * 880 * t[t >= 10])
    right = 0.05 * rng.standard_normal(t.size) + 0.3 * np.sign(np.sin(2 * np.pi * 2 * t)) * (t >= 15)
    sf.write(folder / "long_stereo.flac", np.stack([left, right], 1).astype(np.float32), sr)
    t8 = np.arange(3 * 8000) / 8000
    chirp = 0.5 * np.sin(2 * np.pi * (200 + 300 * t8) * t8) + 0.02 * rng.standard_normal(t8.size)
    sf.write(folder / "short_8k.wav", chirp.astype(np.float32), 8000)
    sf.write(folder / "silence.wav", np.zeros(4 * 16000, np.int16), 16000, subtype="PCM_16")
    (folder / "corrupt.wav").write_bytes(b"RIFF\xff\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + bytes(64))
    return folder


def _decode(path: Path) -> torch.Tensor:
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    mono = torch.from_numpy(data.mean(axis=1))
    # the product's resampler (tested against torchaudio in test_resample.py), so that this test
    # checks the pipeline (decoding, windows, batching, aggregation) at the old tolerance
    return resample(mono, sr, SR) if sr != SR else mono


def _window(wave: torch.Tensor, start_s: float) -> torch.Tensor:
    out = torch.zeros(10 * SR)
    piece = wave[round(start_s * SR) : round(start_s * SR) + 10 * SR]
    out[: piece.shape[0]] = piece
    return out


@pytest.fixture(scope="module")
def reference(audio_dir, synthetic_state_dict) -> dict[tuple[str, float], torch.Tensor]:
    """(file name, window start in s) -> (527,) probabilities."""
    starts = {"long_stereo.flac": [0.0, 5.0, 7.5, 10.0, 15.0], "short_8k.wav": [0.0], "silence.wav": [0.0]}
    keys, windows = [], []
    for name, times in starts.items():
        wave = _decode(audio_dir / name)
        for s in times:
            keys.append((name, s))
            windows.append(_window(wave, s))
    model = create_model(MODEL).eval()
    load_state_dict_checked(model, synthetic_state_dict)
    with torch.inference_mode():
        probs = model(LogMelFrontEnd(augment=False).eval()(torch.stack(windows))).sigmoid()
    return dict(zip(keys, probs))


@pytest.fixture(scope="module")
def class_names() -> list[str]:
    with CLASS_CSV.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, skipinitialspace=True))
    assert [int(r["index"]) for r in rows] == list(range(527))
    return [r["display_name"] for r in rows]


# A tqdm bar as the app draws it (no description, unit "file"), e.g.
# " 50%|█████     | 2/4 [00:00<00:00,  5.51file/s]"; stderr is split at "\r" and "\n".
PROGRESS_LINE = re.compile(r" *\d{1,3}%\|[^|]*\| \d+/\d+ \[[\d:]+<[\d:?]+, +(\?|\d+(\.\d+)?)(file/s|s/file)\] *")


def test_progress_line_pattern():
    assert PROGRESS_LINE.fullmatch("  0%|          | 0/4 [00:00<?, ?file/s]")
    assert PROGRESS_LINE.fullmatch(" 50%|█████     | 2/4 [00:00<00:00,  5.51file/s]  ")
    assert PROGRESS_LINE.fullmatch("100%|██████████| 4/4 [01:02<00:00, 12.34s/file]")
    assert not PROGRESS_LINE.fullmatch("Traceback (most recent call last):")
    assert not PROGRESS_LINE.fullmatch("UserWarning: 50%|x| 2/4 [00:00<00:00,  5.51file/s]")


def _stderr_errors(err: str) -> list[str]:
    """The stderr lines that are not progress-bar lines or the note naming a written file (blank ones dropped)."""
    return [
        line
        for line in err.splitlines()
        if line.strip() and not PROGRESS_LINE.fullmatch(line) and not line.startswith("dcls-audio infer: wrote ")
    ]


SCORE_ATOL = 2e-6


def _check_top(top: list[dict], expected: torch.Tensor, k: int, class_names: list[str]) -> None:
    """Listed entries are the k best classes of ``expected``, with its scores and the CSV's names."""
    assert len(top) == k
    assert [set(e) for e in top] == [{"index", "label", "score"}] * k
    for e in top:
        assert e["label"] == class_names[e["index"]]
        assert e["score"] == pytest.approx(float(expected[e["index"]]), abs=SCORE_ATOL)
    scores = [e["score"] for e in top]
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores, expected.topk(k).values.numpy(), atol=SCORE_ATOL)


def test_json_output_windows_scores_labels(tmp_path, capsys, checkpoint, audio_dir, reference, class_names):
    out = tmp_path / "tags.json"
    rc = cli.main(
        [
            "infer",
            "--checkpoint",
            str(checkpoint),
            str(audio_dir),
            "--format",
            "json",
            "--output",
            str(out),
            "--progress",
            "--batch-size",
            "4",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 1  # the corrupt file
    errors = _stderr_errors(captured.err)  # anything but progress-bar lines
    corrupt = str(audio_dir / "corrupt.wav")
    assert len(errors) == 1 and errors[0].startswith(f"error: {corrupt}: ")
    assert errors[0].count(corrupt) == 1 and "cannot decode" not in errors[0]  # the path once, the reason
    assert "0/4" in captured.err  # the progress bar went to stderr (and was cleared at the end: leave=False)
    assert captured.out == ""

    records = {Path(r["file"]).name: r for r in json.loads(out.read_text())}
    assert set(records) == {"long_stereo.flac", "short_8k.wav", "silence.wav"}
    for r in records.values():
        assert set(r) == {"file", "duration_s", "sample_rate", "windows", "top"}
        assert all(set(w) == {"start_s", "end_s", "top"} for w in r["windows"])

    expect = {
        "long_stereo.flac": (25.0, 44100, [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (15.0, 25.0)]),
        "short_8k.wav": (3.0, 8000, [(0.0, 3.0)]),
        "silence.wav": (4.0, 16000, [(0.0, 4.0)]),
    }
    for name, (duration, rate, spans) in expect.items():
        r = records[name]
        assert r["duration_s"] == pytest.approx(duration) and r["sample_rate"] == rate
        assert [(w["start_s"], w["end_s"]) for w in r["windows"]] == [pytest.approx(s) for s in spans]
        per_window = [reference[(name, start)] for start, _ in spans]
        for w, expected in zip(r["windows"], per_window):
            _check_top(w["top"], expected, 5, class_names)
        _check_top(r["top"], torch.stack(per_window).amax(0), 5, class_names)
    # the windows of the long file see different sounds
    tops = [tuple(e["index"] for e in w["top"]) for w in records["long_stereo.flac"]["windows"]]
    assert len(set(tops)) > 1


def test_csv_output_with_hop_and_mean(capsys, checkpoint, audio_dir, reference, class_names):
    rc = cli.main(
        [
            "infer",
            "-c",
            str(checkpoint),
            str(audio_dir / "long_*.flac"),
            "--format",
            "csv",
            "--hop",
            "7.5",
            "--aggregate",
            "mean",
            "--top-k",
            "3",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0 and captured.err.strip() == ""
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert list(rows[0]) == [
        "file",
        "duration_s",
        "sample_rate",
        "scope",
        "window",
        "start_s",
        "end_s",
        "rank",
        "index",
        "label",
        "score",
    ]
    assert len(rows) == (1 + 3) * 3
    windows = [(float(r["start_s"]), float(r["end_s"])) for r in rows if r["scope"] == "window" and r["rank"] == "1"]
    assert windows == [(0.0, 10.0), (7.5, 17.5), (15.0, 25.0)]
    per_window = [reference[("long_stereo.flac", s)] for s, _ in windows]
    groups = [("file", "", torch.stack(per_window).mean(0))] + [("window", str(i), p) for i, p in enumerate(per_window)]
    for scope, window, expected in groups:
        top = [
            {"index": int(r["index"]), "label": r["label"], "score": float(r["score"])}
            for r in rows
            if r["scope"] == scope and r["window"] == window
        ]
        _check_top(top, expected, 3, class_names)


def test_table_output_with_positional_checkpoint(capsys, checkpoint, audio_dir, reference, class_names):
    rc = cli.main(["infer", str(checkpoint), str(audio_dir / "short_8k.wav"), "-k", "2", "--no-fold"])
    out = capsys.readouterr().out
    assert rc == 0
    best = int(reference[("short_8k.wav", 0.0)].argmax())
    lines = out.splitlines()
    assert lines[0].startswith(str(audio_dir / "short_8k.wav")) and "3.00 s, 8000 Hz, 1 window" in lines[0]
    assert lines[1].split(None, 1)[1] == class_names[best]
    assert float(lines[1].split()[0]) == pytest.approx(float(reference[("short_8k.wav", 0.0)][best]), abs=1e-3)


def test_missing_checkpoint_and_unknown_model_fail_before_work(tmp_path, capsys, checkpoint, audio_dir):
    rc = cli.main(["infer", "-c", str(tmp_path / "nope.pth"), str(audio_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and "nope.pth" in err and "not found" in err and "corrupt.wav" not in err
    rc = cli.main(["infer", "-c", str(checkpoint), "--model", "resnet_audio", str(audio_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown model 'resnet_audio'" in err and "convnext_dcls_audio_tiny" in err
    assert "corrupt.wav" not in err
    with pytest.raises(SystemExit):
        cli.main(["infer", str(audio_dir / "short_8k.wav")])  # no checkpoint at all
    assert "give a checkpoint" in capsys.readouterr().err


def test_tiny_hop_is_an_option_error(tmp_path, capsys, checkpoint, audio_dir):
    out = tmp_path / "tags.json"
    out.write_text("keep me")
    rc = cli.main(
        [
            "infer",
            "-c",
            str(checkpoint),
            str(audio_dir / "short_8k.wav"),
            "--hop",
            "1e-6",
            "--format",
            "json",
            "--output",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err  # one error line, no traceback
    assert lines[0].startswith("dcls-audio infer: error: --hop must be a positive number of seconds")
    assert "1e-06" in lines[0]
    assert out.read_text() == "keep me"  # rejected before --output is opened


def test_labels_stored_in_our_checkpoint(tmp_path, capsys, audio_dir):
    kwargs = {"depths": (1, 1, 1, 1), "dims": (8, 16, 16, 16), "kernel_count": 4, "dilated_kernel_size": 7}
    torch.manual_seed(0)
    net = create_model("convnext_dcls_audio_tiny", num_classes=3, **kwargs)
    names = ["Alpha sound", "Beta sound", "Gamma sound"]
    ckpt = tmp_path / "finetuned.ckpt"
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "hyper_parameters": {
                "model_name": "convnext_dcls_audio_tiny",
                "num_classes": 3,
                "model_kwargs": kwargs,
                "class_names": names,
                "class_mids": ["/a", "/b", "/c"],
            },
            "epoch": 3,
        },
        ckpt,
    )
    rc = cli.main(["infer", "-c", str(ckpt), str(audio_dir / "silence.wav"), "--format", "json", "-k", "3"])
    record = json.loads(capsys.readouterr().out)[0]
    assert rc == 0
    with torch.inference_mode():
        expected = net.eval()(LogMelFrontEnd(augment=False).eval()(torch.zeros(1, 10 * SR)))[0].sigmoid()
    _check_top(record["top"], expected, 3, names)


def test_all_class_scores_and_the_timeline_plot(tmp_path, capsys, monkeypatch, audio_dir):
    kwargs = {"depths": (1, 1, 1, 1), "dims": (8, 16, 16, 16), "kernel_count": 4, "dilated_kernel_size": 7}
    torch.manual_seed(0)
    net = create_model("convnext_dcls_audio_tiny", num_classes=3, **kwargs)
    names = ["Alpha sound", "Beta sound", "Gamma sound"]
    ckpt = tmp_path / "finetuned.ckpt"
    hparams = {"model_name": "convnext_dcls_audio_tiny", "num_classes": 3, "model_kwargs": kwargs, "class_names": names}
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "hyper_parameters": hparams}, ckpt)
    out, plot = tmp_path / "tags.json", tmp_path / "timeline.png"
    files = [str(audio_dir / "long_stereo.flac"), str(audio_dir / "silence.wav")]
    argv = ["infer", "-c", str(ckpt), *files, "-f", "json", "-k", "all", "-o", str(out), "--plot", str(plot)]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert f"wrote {out}" in err and f"wrote {plot}" in err
    records = json.loads(out.read_text())
    assert [len(r["top"]) for r in records] == [3, 3]  # every class, not only the top k
    assert all(len(w["top"]) == 3 for r in records for w in r["windows"])
    with torch.inference_mode():
        expected = net.eval()(LogMelFrontEnd(augment=False).eval()(torch.zeros(1, 10 * SR)))[0].sigmoid()
    _check_top(records[1]["top"], expected, 3, names)
    # two panels of 3 classes: 12 in x 2 x (1.2 + 3 x 0.3) in at 100 dpi
    assert png_size(plot) == (1200, 420)
    assert cli.main(argv[:-2] + ["--plot", str(plot), "--overwrite"]) == 0
    capsys.readouterr()
    assert cli.main(argv[:5] + ["--plot", str(plot)]) == 2  # an existing picture needs --overwrite
    assert f"--plot: {plot} already exists" in capsys.readouterr().err
    # many files: the first MAX_PLOT_FILES are drawn (a bounded, readable picture), the rest named
    from dcls_audio.inference import app

    monkeypatch.setattr(app, "MAX_PLOT_FILES", 1)
    assert cli.main(argv[:-2] + ["--plot", str(plot), "--overwrite"]) == 0
    assert "(1 file(s), top 10 classes; the other 1 are not drawn)" in capsys.readouterr().err
    assert png_size(plot) == (1200, 210)


# -- containers libsndfile cannot read, decoded through FFmpeg (PyAV) ------------------------------
def _scene(sr: int, seconds: float = 12.0) -> np.ndarray:
    """(2, frames) float32: a tone, a chirp from 6 s and an amplitude-modulated 1 kHz tone on the right.

    Written at any rate it is the same sound, so a 44.1 kHz and a 48 kHz file can be compared.
    """
    t = np.arange(round(seconds * sr)) / sr
    left = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * (300 + 150 * (t - 6)) * (t - 6)) * (t >= 6)
    right = 0.25 * np.sin(2 * np.pi * 1000 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    return np.stack([left, right]).astype(np.float32)


@pytest.fixture(scope="module")
def compressed_dir(tmp_path_factory) -> Path:
    """12 s 44.1 kHz stereo as m4a (AAC) and WAV; as webm (Opus, 48 kHz) and WAV if libopus exists;
    12 s of noise as another sound."""
    from pyav_audio import encoder_available, write_with_pyav

    folder = tmp_path_factory.mktemp("compressed")
    write_with_pyav(folder / "phone.m4a", _scene(44100), 44100, "mp4", "aac")
    sf.write(folder / "phone_source.wav", _scene(44100).T, 44100, subtype="FLOAT")
    if encoder_available("libopus"):
        write_with_pyav(folder / "browser.webm", _scene(48000), 48000, "webm", "libopus")
        sf.write(folder / "browser_source.wav", _scene(48000).T, 48000, subtype="FLOAT")
    noise = 0.1 * np.random.default_rng(3).standard_normal(12 * 44100)
    sf.write(folder / "other.wav", noise.astype(np.float32), 44100, subtype="FLOAT")
    return folder


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small DCLS model in our checkpoint format (fast on the CPU), 16 classes."""
    kwargs = {"depths": (1, 1, 1, 1), "dims": (8, 16, 16, 16), "kernel_count": 4, "dilated_kernel_size": 7}
    torch.manual_seed(1)
    net = create_model("convnext_dcls_audio_tiny", num_classes=16, **kwargs)
    path = tmp_path_factory.mktemp("tiny") / "tiny.ckpt"
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "hyper_parameters": {
                "model_name": "convnext_dcls_audio_tiny",
                "num_classes": 16,
                "model_kwargs": kwargs,
                "class_names": [f"c{i}" for i in range(16)],
                "class_mids": [f"/c{i}" for i in range(16)],
            },
        },
        path,
    )
    return path


# Lossy codecs change the samples by a few percent of their RMS. Window scores of a coded file
# must stay within LOSSY_SCORE_ATOL of its source's, and much closer to them than to another sound's.
LOSSY_SCORE_ATOL = 0.02


def test_m4a_and_webm_tag_like_their_sources(capsys, tiny_checkpoint, compressed_dir):
    names = sorted(p.name for p in compressed_dir.iterdir())
    rc = cli.main(
        [
            "infer",
            "-c",
            str(tiny_checkpoint),
            *(str(compressed_dir / n) for n in names),
            "--format",
            "json",
            "-k",
            "16",
            "--batch-size",
            "8",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0 and captured.err.strip() == ""
    records = {Path(r["file"]).name: r for r in json.loads(captured.out)}
    assert set(records) == set(names)

    def window_scores(name: str) -> torch.Tensor:
        windows = records[name]["windows"]
        out = torch.zeros(len(windows), 16)
        for row, w in enumerate(windows):
            for e in w["top"]:
                out[row, e["index"]] = e["score"]
        return out

    m4a = records["phone.m4a"]
    assert m4a["sample_rate"] == 44100 and m4a["duration_s"] == pytest.approx(12.0, abs=0.02)
    spans = [(w["start_s"], w["end_s"]) for w in m4a["windows"]]
    assert len(spans) == 2  # 12 s: [0, 10] and the window aligned to the end
    assert spans[0] == (0.0, 10.0) and spans[1] == (pytest.approx(m4a["duration_s"] - 10), m4a["duration_s"])
    for coded, source in (("phone.m4a", "phone_source.wav"), ("browser.webm", "browser_source.wav")):
        if coded not in records:
            continue
        got, want, other = window_scores(coded), window_scores(source), window_scores("other.wav")
        assert got.shape == want.shape == (2, 16)
        err = (got - want).abs().max()
        assert 0 < err < LOSSY_SCORE_ATOL, (coded, err)  # decoded (not copied), and close
        assert err < 0.2 * (other - want).abs().max(), (coded, err)
    if "browser.webm" in records:
        assert records["browser.webm"]["sample_rate"] == 48000
        assert records["browser.webm"]["duration_s"] == pytest.approx(12.0, abs=0.02)


def test_undecodable_container_among_good_files(tmp_path, capsys, tiny_checkpoint, compressed_dir):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "phone.m4a").write_bytes((compressed_dir / "phone.m4a").read_bytes())
    (folder / "broken.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A " + b"garbage" * 40)
    (folder / "notes.txt").write_text("not audio")
    (folder / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    rc = cli.main(["infer", "-c", str(tiny_checkpoint), str(folder), "-k", "1"])
    captured = capsys.readouterr()
    assert rc == 1
    broken = str(folder / "broken.m4a")
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {broken}: ")
    assert errors[0].count("broken.m4a") == 1  # the path once, then the reason
    notes = [line for line in captured.err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "skipped 2 files without an audio extension" in notes[0]
    assert len([line for line in captured.err.splitlines() if line.strip()]) == 2  # no traceback
    assert f"{folder / 'phone.m4a'}  (" in captured.out and "2 windows" in captured.out
    assert "broken.m4a" not in captured.out


# -- outputs: never an input, written whole or not at all; bad --device / --hop; a closed pipe ------
@pytest.fixture()
def one_clip(tmp_path) -> Path:
    path = tmp_path / "clip.wav"
    sf.write(path, (0.1 * np.sin(np.arange(3 * 16000) / 5)).astype(np.float32), 16000)
    return path


@pytest.mark.parametrize("victim", ["audio", "checkpoint", "labels"])
def test_output_that_is_an_input_is_refused_even_with_overwrite(tmp_path, capsys, tiny_checkpoint, one_clip, victim):
    labels = tmp_path / "labels.csv"
    labels.write_text("index,mid,display_name\n" + "".join(f"{i},/c{i},c{i}\n" for i in range(16)))
    target = {"audio": one_clip, "checkpoint": tiny_checkpoint, "labels": labels}[victim]
    link = tmp_path / "link"  # the same file under another name
    link.symlink_to(target)
    before = target.read_bytes()
    for out in (target, link):
        args = ["infer", "-c", str(tiny_checkpoint), str(one_clip), "--labels", str(labels), "-o", str(out)]
        assert cli.main([*args, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "is also an input" in err and "Traceback" not in err
    assert target.read_bytes() == before


def test_output_is_replaced_only_with_overwrite_and_atomically(
    tmp_path, capsys, tiny_checkpoint, one_clip, monkeypatch
):
    out = tmp_path / "tags.json"
    out.write_text("previous")
    args = ["infer", "-c", str(tiny_checkpoint), str(one_clip), "-f", "json", "-o", str(out)]
    assert cli.main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and out.read_text() == "previous"
    # an interrupt while tagging leaves the previous file and no temporary
    from dcls_audio.inference import app

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(app, "_write_results", interrupted)
    assert cli.main([*args, "--overwrite"]) == 130
    assert "was left as it was" in capsys.readouterr().err
    assert out.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["clip.wav", "tags.json"]
    monkeypatch.undo()
    assert cli.main([*args, "--overwrite"]) == 0
    assert json.loads(out.read_text())[0]["file"] == str(one_clip)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.wav", "tags.json"]


def test_unknown_device_and_a_hop_below_the_limit_are_option_errors(capsys, tiny_checkpoint, one_clip):
    from dcls_audio.inference.tagger import MIN_HOP_S

    assert cli.main(["infer", "-c", str(tiny_checkpoint), str(one_clip), "--device", "foo"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "dcls-audio infer: error: --device: unknown device 'foo' (use auto, cpu, cuda or cuda:N)"
    assert cli.main(["infer", "-c", str(tiny_checkpoint), str(one_clip), "--hop", "0.01"]) == 2
    err = capsys.readouterr().err
    assert f"--hop 0.01 s is below the smallest hop, {MIN_HOP_S:g} s" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["infer", "-c", str(tiny_checkpoint), str(one_clip), "--hop", str(MIN_HOP_S), "-f", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["windows"]) == 1  # a 3 s file: one window


def test_infer_into_a_closed_pipe_ends_quietly(tmp_path, tiny_checkpoint, one_clip):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "dcls_audio.cli", "infer", "-c", str(tiny_checkpoint), *[str(one_clip)] * 1]
    copies = []
    for i in range(40):  # enough output to fill the pipe after `head -1` left
        copies.append(tmp_path / f"c{i}.wav")
        copies[-1].write_bytes(one_clip.read_bytes())
    shell = " ".join(map(str, cmd[:-1] + copies)) + " --windows | head -1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", shell], cwd=root, env=env, capture_output=True, text=True)
    assert proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 141)
