"""Inference building blocks: windows, input expansion, decoding failures, batching, output formats."""

from __future__ import annotations

import csv
import io
import json
import math
import random

import numpy as np
import pytest
import soundfile as sf
import torch

from dcls_audio.inference.inputs import expand_inputs
from dcls_audio.inference.output import CSV_COLUMNS, csv_rows, file_record, format_table, write_csv, write_json
from dcls_audio.inference.tagger import (
    AudioTagger,
    FileFailure,
    FileTags,
    check_precision,
    cut_windows,
    decode_file,
    hop_samples,
    tag_files,
    top_k,
    window_starts,
)
from dcls_audio.models import create_model, dcls_layers

SR = 32000
W = 10 * SR


# -- windows ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "seconds, hop_s, expected_starts_s",
    [
        (3.0, 5.0, [0.0]),  # shorter than a window: one padded window
        (10.0, 5.0, [0.0]),  # exactly one window
        (25.0, 5.0, [0.0, 5.0, 10.0, 15.0]),
        (23.0, 5.0, [0.0, 5.0, 10.0, 13.0]),  # last window aligned to the end
        (25.0, 10.0, [0.0, 10.0, 15.0]),
        (25.0, 7.5, [0.0, 7.5, 15.0]),
        (10.5, 5.0, [0.0, 0.5]),
    ],
)
def test_window_starts_examples(seconds, hop_s, expected_starts_s):
    starts = window_starts(round(seconds * SR), W, round(hop_s * SR))
    assert [s / SR for s in starts] == expected_starts_s


def test_window_starts_cover_signal_and_end_aligned():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(W + 1, 8 * W)
        hop = rng.randint(1, W)
        starts = window_starts(n, W, hop)
        assert starts[0] == 0 and starts[-1] == n - W
        assert len(starts) == math.ceil((n - W) / hop) + 1
        gaps = np.diff(starts)
        assert (gaps > 0).all() and (gaps <= hop).all() and (gaps[:-1] == hop).all()


@pytest.mark.parametrize("bad", [dict(num_samples=0), dict(num_samples=5, hop=0), dict(num_samples=5, window=0)])
def test_window_starts_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        window_starts(**{"window": W, "hop": W // 2, **bad})


def test_cut_windows_pads_with_zeros():
    wave = torch.arange(1, 26, dtype=torch.float32)
    out = cut_windows([(wave, s) for s in (0, 15, 20)], window=10)
    assert torch.equal(out[0], wave[:10])
    assert torch.equal(out[1], wave[15:25])
    assert torch.equal(out[2], torch.cat([wave[20:], torch.zeros(5)]))


# -- inputs ----------------------------------------------------------------------------------
def _write(path, seconds=0.1, sr=8000):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(seconds * sr), np.float32), sr)
    return path


def test_expand_inputs_files_folders_globs(tmp_path):
    a = _write(tmp_path / "a.wav")
    b = _write(tmp_path / "sub" / "deep" / "b.flac")
    c = _write(tmp_path / "other" / "c.ogg")
    (tmp_path / "sub" / "notes.txt").write_text("not audio")
    (tmp_path / "empty").mkdir()
    got = expand_inputs(
        [
            str(tmp_path / "sub"),  # folder, recursive, skips notes.txt
            str(a),  # file
            str(tmp_path / "**" / "*.ogg"),  # recursive glob
            str(b),  # duplicate of the folder's file
            str(tmp_path / "missing.wav"),
            str(tmp_path / "*.mp3"),  # matches nothing
            str(tmp_path / "empty"),
        ]
    )
    assert [p.resolve() for p in got.files] == [b.resolve(), a.resolve(), c.resolve()]
    problems = dict(got.problems)
    assert set(problems) == {str(tmp_path / "missing.wav"), str(tmp_path / "*.mp3"), str(tmp_path / "empty")}
    assert "no such file" in problems[str(tmp_path / "missing.wav")]


# -- decoding --------------------------------------------------------------------------------
def test_decode_failures_are_one_line_naming_the_reason(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(200)))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    no_frames = tmp_path / "no_frames.wav"
    sf.write(no_frames, np.zeros((0, 1), np.float32), 16000)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.1, np.nan, 0.2] * 100, np.float32), 16000, subtype="FLOAT")
    for path in (corrupt, empty, no_frames, nan, tmp_path / "missing.wav"):
        result = decode_file(path)
        assert isinstance(result, FileFailure), path
        assert result.file == str(path) and result.reason and "\n" not in result.message()
        assert path.name not in result.reason and not result.reason.startswith(("cannot decode", "Error opening"))
    assert "NaN" in decode_file(nan).reason
    assert decode_file(no_frames).reason == "it holds no samples"
    assert decode_file(tmp_path / "missing.wav").reason == "no such file"


@pytest.mark.parametrize(
    "ext, subtype", [("wav", "PCM_24"), ("flac", None), ("ogg", "VORBIS"), ("mp3", "MPEG_LAYER_III")]
)
def test_decode_formats(tmp_path, ext, subtype):
    path = tmp_path / f"tone.{ext}"
    t = np.arange(2 * 22050) / 22050
    sf.write(path, np.stack([0.3 * np.sin(2 * np.pi * 440 * t)] * 2, 1), 22050, subtype=subtype)
    decoded = decode_file(path)
    assert not isinstance(decoded, FileFailure), decoded
    assert decoded.sample_rate == 22050
    assert abs(decoded.waveform.shape[0] / SR - 2.0) < 0.1  # mp3 adds encoder padding
    spectrum = torch.fft.rfft(decoded.waveform[:SR])
    assert abs(int(spectrum.abs().argmax()) - 440) <= 1  # the tone survives, 1 Hz bins


def test_decode_resamples_and_mixes_down(tmp_path):
    path = tmp_path / "stereo.wav"
    left = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)
    sf.write(path, np.stack([left, -left], 1), 16000, subtype="FLOAT")
    decoded = decode_file(path)
    assert decoded.sample_rate == 16000 and decoded.waveform.shape == (32000,)
    assert decoded.waveform.abs().max() < 1e-6  # the channels cancel


# -- batching --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dcls_model():
    torch.manual_seed(0)
    return create_model(
        "convnext_dcls_audio_tiny",
        num_classes=7,
        depths=(1, 1, 1, 1),
        dims=(8, 16, 16, 16),
        kernel_count=4,
        dilated_kernel_size=7,
    ).eval()


def test_fold_keeps_scores_and_removes_dcls_layers(tiny_dcls_model):
    import copy

    from dcls_core import Dcls2d

    x = 0.1 * torch.randn(2, W, generator=torch.Generator().manual_seed(1))
    unfolded = AudioTagger(copy.deepcopy(tiny_dcls_model), "cpu", fold=False)
    folded = AudioTagger(copy.deepcopy(tiny_dcls_model).train(), "cpu", fold=True)
    assert not folded.model.training
    assert not any(isinstance(m, Dcls2d) for m in folded.model.modules())
    assert folded.folded_layers == sum(isinstance(m, Dcls2d) for m in tiny_dcls_model.modules()) == 4
    torch.testing.assert_close(folded(x), unfolded(x), rtol=0, atol=1e-6)
    assert list(dcls_layers(folded.model)) == []
    assert AudioTagger(copy.deepcopy(tiny_dcls_model), "cpu").folded_layers == 4  # auto: fold on the CPU


def test_tag_files_batches_across_files_in_order(tmp_path, tiny_dcls_model):
    rng = np.random.default_rng(0)
    paths = []
    for i, seconds in enumerate([12.0, 2.0, 21.0]):
        path = tmp_path / f"f{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32), SR, subtype="FLOAT")
        paths.append(path)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    paths.insert(2, bad)
    tagger = AudioTagger(tiny_dcls_model, "cpu")
    runs = {bs: list(tag_files(tagger, paths, hop_s=5.0, batch_size=bs)) for bs in (1, 3, 16)}
    runs["2 workers"] = list(tag_files(tagger, paths, hop_s=5.0, batch_size=16, num_workers=2))
    for results in runs.values():
        assert [r.file for r in results] == [str(p) for p in paths]
        assert isinstance(results[2], FileFailure)
        assert [len(r.window_spans_s) for r in results if isinstance(r, FileTags)] == [2, 1, 4]
    for other in (runs[16], runs["2 workers"]):
        for a, b in zip(runs[1], other):
            if isinstance(a, FileTags):
                torch.testing.assert_close(a.window_scores, b.window_scores, rtol=0, atol=1e-6)
    # each window alone through the tagger gives the same scores
    first = runs[3][0]
    wave = decode_file(paths[0]).waveform
    alone = tagger(cut_windows([(wave, s) for s in window_starts(wave.shape[0], W, 5 * SR)]))
    torch.testing.assert_close(first.window_scores, alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(first.scores, alone.max(dim=0).values)
    mean = list(tag_files(tagger, paths[:1], aggregate="mean"))[0]
    torch.testing.assert_close(mean.scores, alone.mean(dim=0), rtol=0, atol=1e-6)
    assert list(tag_files(tagger, [], num_workers=2)) == []  # nothing to decode: no worker pool
    for hop in (float("inf"), float("nan"), 0.0, 1e-6):
        with pytest.raises(ValueError, match="hop must be a positive number of seconds"):
            tag_files(tagger, paths[:1], hop_s=hop)  # at the call, before the generator runs
    with pytest.raises(ValueError, match="aggregate must be one of"):
        tag_files(tagger, paths[:1], aggregate="median")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        tag_files(tagger, paths[:1], batch_size=0)


def test_hop_samples():
    assert hop_samples(5.0) == 5 * SR
    assert hop_samples(1 / SR) == 1 and hop_samples(0.6 / SR) == 1
    for hop in (float("inf"), float("-inf"), float("nan"), 0.0, -1.0, 1e-6, 0.4 / SR):
        with pytest.raises(ValueError, match=r"^--hop must be a positive number of seconds of at least one sample"):
            hop_samples(hop, what="--hop")
    with pytest.raises(ValueError, match=r"^hop must .*got 1e-06$"):
        hop_samples(1e-6)


def test_half_precision_needs_cuda():
    with pytest.raises(ValueError, match="needs a CUDA device"):
        check_precision("bf16", torch.device("cpu"))
    with pytest.raises(ValueError, match="precision must be one of"):
        check_precision("fp8", torch.device("cpu"))
    assert check_precision("fp32", torch.device("cpu")) is torch.float32


# -- output ----------------------------------------------------------------------------------
def _fake_tags() -> FileTags:
    window_scores = torch.tensor([[0.1, 0.9, 0.3, 0.3], [0.7, 0.2, 0.3, 0.0]])
    return FileTags("x.wav", 12.5, 44100, [(0.0, 10.0), (2.5, 12.5)], window_scores, window_scores.amax(0))


def test_top_k_order_and_ties():
    assert top_k(torch.tensor([0.1, 0.9, 0.3, 0.3]), 3) == [
        (1, pytest.approx(0.9)),
        (2, pytest.approx(0.3)),
        (3, pytest.approx(0.3)),
    ]
    assert len(top_k(torch.tensor([0.5, 0.2]), 5)) == 2


def test_record_json_csv_table():
    labels = ["zero", "one", "two", "three"]
    record = file_record(_fake_tags(), labels, k=2)
    assert set(record) == {"file", "duration_s", "sample_rate", "windows", "top"}
    assert record["top"] == [{"index": 1, "label": "one", "score": 0.9}, {"index": 0, "label": "zero", "score": 0.7}]
    assert [(w["start_s"], w["end_s"]) for w in record["windows"]] == [(0.0, 10.0), (2.5, 12.5)]
    assert record["windows"][1]["top"][0] == {"index": 0, "label": "zero", "score": 0.7}

    stream = io.StringIO()
    write_json([record], stream)
    assert json.loads(stream.getvalue()) == [record]

    stream = io.StringIO()
    write_csv([record], stream)
    rows = list(csv.DictReader(io.StringIO(stream.getvalue())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == len(list(csv_rows(record))) == 2 * 3
    assert [r["scope"] for r in rows] == ["file"] * 2 + ["window"] * 4
    assert rows[4] == {
        "file": "x.wav",
        "duration_s": "12.5",
        "sample_rate": "44100",
        "scope": "window",
        "window": "1",
        "start_s": "2.5",
        "end_s": "12.5",
        "rank": "1",
        "index": "0",
        "label": "zero",
        "score": "0.7",
    }

    table = format_table([record], show_windows=True)
    assert "x.wav" in table and "2 windows" in table and "0.900  one" in table and "2.50 -" in table
    with pytest.raises(ValueError, match="3 labels"):
        file_record(_fake_tags(), labels[:3])


# -- CUDA ------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("precision, atol", [("fp32", 2e-3), ("bf16", 3e-2), ("fp16", 1e-2)])
@pytest.mark.parametrize("fold", [False, True], ids=["dcls", "folded"])
def test_cuda_tagger_matches_cpu(tiny_dcls_model, precision, atol, fold):
    import copy

    x = 0.1 * torch.randn(5, W, generator=torch.Generator().manual_seed(2))
    on_cpu = AudioTagger(copy.deepcopy(tiny_dcls_model), "cpu", fold=False)(x)
    tagger = AudioTagger(copy.deepcopy(tiny_dcls_model), "cuda", precision=precision, fold=fold)
    assert tagger.folded_layers == (4 if fold else 0)
    got = tagger(x)
    assert got.device.type == "cpu" and got.dtype == torch.float32
    torch.testing.assert_close(got, on_cpu, atol=atol, rtol=0)


@pytest.mark.cuda
def test_cuda_auto_fold_keeps_dcls_layers(tiny_dcls_model):
    import copy

    assert AudioTagger(copy.deepcopy(tiny_dcls_model), "cuda").folded_layers == 0


def test_class_csv_of_another_size_names_the_checkpoint(tmp_path):
    from dcls_audio.inference.loader import load_tagging_model

    ckpt = tmp_path / "tiny.pt"
    model = create_model("convnext_audio_tiny")
    torch.save({"model_name": "convnext_audio_tiny", "state_dict": model.state_dict()}, ckpt)
    csv = tmp_path / "three.csv"
    csv.write_text("index,mid,display_name\n0,/m/a,A\n1,/m/b,B\n2,/m/c,C\n")
    with pytest.raises(ValueError, match=r"three\.csv lists 3 classes but the model in .*tiny\.pt has 527"):
        load_tagging_model(ckpt, class_csv=csv)
