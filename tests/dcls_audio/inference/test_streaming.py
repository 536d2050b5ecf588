"""Tagging long files window by window: the same windows and scores as whole-file decoding, in
memory that does not grow with the file's length; decoding in worker processes."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest
import soundfile as sf
import torch

import dcls_audio.inference.file_windows as file_windows_module
from dcls_audio.data import audio_io
from dcls_audio.data.stream_resample import StreamResampler
from dcls_audio.inference.tagger import (
    AudioTagger,
    FileFailure,
    FileTags,
    cut_windows,
    tag_files,
    window_starts,
)
from dcls_audio.inference.windowing import WindowCutter
from dcls_audio.models import create_model

AF = pytest.importorskip("torchaudio.functional", reason="torchaudio (the test oracle) is not installed")

SR = 32000
W = 10 * SR


@pytest.mark.parametrize("seed", range(4))
def test_window_cutter_equals_window_starts_and_cut_windows(seed):
    rng = np.random.default_rng(seed)
    window = 50
    for _ in range(60):
        n = int(rng.integers(1, 400))
        hop = int(rng.integers(1, 80))  # also hops longer than a window
        signal = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
        cutter, got, i, largest = WindowCutter(window, hop), [], 0, 0
        while i < n:
            k = int(rng.integers(1, 40))
            got += cutter.push(signal[i : i + k])
            largest, i = max(largest, min(k, n - i)), i + k
        got += cutter.finish()
        starts = window_starts(n, window, hop)
        assert [s for s, _ in got] == starts
        assert torch.equal(torch.stack([w for _, w in got]), cut_windows([(signal, s) for s in starts], window))
        assert cutter.max_buffered <= window + largest


class RecordingTagger:
    """A stand-in for AudioTagger: scores are window statistics; keeps every window it saw."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.windows: list[torch.Tensor] = []
        self.largest_batch = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.windows += list(batch.clone())
        self.largest_batch = max(self.largest_batch, batch.shape[0])
        return torch.stack([batch.mean(1), batch.std(1), batch.abs().amax(1)], 1)


def _long_file(path, minutes: float, sr: int = 8000) -> None:
    """Mono PCM_16 whose content changes every few seconds (a new tone per 3 s)."""
    n = int(minutes * 60 * sr)
    t = np.arange(n) / sr
    freq = 200 + 40 * ((t // 3) % 50)
    sf.write(path, (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, subtype="PCM_16")


@pytest.fixture()
def record_buffers(monkeypatch):
    """The most samples any StreamResampler / WindowCutter held, over all instances."""
    peaks = {"resampler": 0, "cutter": 0}

    class Resampler(StreamResampler):
        def push(self, samples):
            out = super().push(samples)
            peaks["resampler"] = max(peaks["resampler"], self.buffered + samples.shape[0])
            return out

    class Cutter(WindowCutter):
        def push(self, block):
            out = super().push(block)
            peaks["cutter"] = max(peaks["cutter"], self.max_buffered)
            return out

    monkeypatch.setattr(audio_io, "StreamResampler", Resampler)
    monkeypatch.setattr(file_windows_module, "WindowCutter", Cutter)
    return peaks


def test_long_file_streams_in_bounded_memory_with_whole_file_windows(tmp_path, record_buffers):
    peaks = {}
    for minutes in (1, 3):
        path = tmp_path / f"long_{minutes}.wav"
        _long_file(path, minutes)
        tagger = RecordingTagger()
        (result,) = tag_files(tagger, [path], hop_s=5.0, batch_size=4)
        peaks[minutes] = dict(record_buffers)
        assert tagger.largest_batch <= 4  # at most a batch of windows waits to be scored
        # whole-file reference: soundfile, torchaudio's resample, window_starts / cut_windows
        data, sr = sf.read(path, dtype="float32")
        whole = AF.resample(torch.from_numpy(data), sr, SR)
        starts = window_starts(whole.shape[0], W, 5 * SR)
        assert isinstance(result, FileTags) and result.duration_s == pytest.approx(minutes * 60)
        assert [a for a, _ in result.window_spans_s] == [s / SR for s in starts]
        expected = cut_windows([(whole, s) for s in starts])
        torch.testing.assert_close(torch.stack(tagger.windows), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(result.window_scores, tagger(expected), rtol=0, atol=1e-5)
    # memory held by the stream does not depend on the file's length
    assert peaks[3] == peaks[1]
    assert peaks[3]["cutter"] <= W + 2 * 65536 * 4  # a window plus resampled blocks
    assert peaks[3]["resampler"] <= 3 * 65536


def test_streaming_scores_equal_whole_file_scores_with_a_model(tmp_path):
    torch.manual_seed(0)
    model = create_model(
        "convnext_dcls_audio_tiny",
        num_classes=6,
        depths=(1, 1, 1, 1),
        dims=(8, 16, 16, 16),
        kernel_count=4,
        dilated_kernel_size=7,
    )
    tagger = AudioTagger(model, "cpu")
    path = tmp_path / "song.flac"
    rng = np.random.default_rng(1)
    t = np.arange(31 * 44100) / 44100
    sf.write(
        path,
        np.stack([np.sin(2 * np.pi * (300 + 20 * t) * t), 0.2 * rng.standard_normal(t.size)], 1).astype(np.float32)
        * 0.5,
        44100,
    )
    (result,) = tag_files(tagger, [path], hop_s=4.0, batch_size=3)
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    whole = AF.resample(torch.from_numpy(data.mean(axis=1, dtype=np.float32)), 44100, SR)
    starts = window_starts(whole.shape[0], W, 4 * SR)
    assert len(starts) == 7 and [a for a, _ in result.window_spans_s] == [s / SR for s in starts]
    torch.testing.assert_close(
        result.window_scores, tagger(cut_windows([(whole, s) for s in starts])), rtol=0, atol=1e-5
    )


def _crash_on(name):
    original = file_windows_module.file_windows

    def fake(path, hop, window=W):
        if os.path.basename(path) == name:
            os._exit(3)  # a decoder taking the whole process down
        return original(path, hop, window)

    return fake


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="the crash is injected by forking")
def test_workers_keep_order_and_survive_a_crashing_decoder(tmp_path, monkeypatch):
    paths = []
    for i, seconds in enumerate([12.0, 3.0, 1.0, 16.0, 2.0]):
        path = tmp_path / f"f{i}.wav"
        sf.write(path, np.full(int(seconds * 16000), 0.01 * (i + 1), np.float32), 16000, subtype="FLOAT")
        paths.append(path)
    tagger = RecordingTagger()
    alone = list(tag_files(tagger, paths, batch_size=5))
    monkeypatch.setattr(file_windows_module, "file_windows", _crash_on("f1.wav"))
    with_workers = list(tag_files(tagger, paths, batch_size=5, num_workers=2))
    assert [r.file for r in with_workers] == [str(p) for p in paths]
    assert isinstance(with_workers[1], FileFailure)
    assert with_workers[1].reason == "the decoding process died (exit code 3)"
    for i in (0, 2, 3, 4):  # f3 is decoded by the replacement of f1's worker
        assert torch.equal(with_workers[i].window_scores, alone[i].window_scores)
    # stopping early stops the workers
    results = tag_files(tagger, paths, num_workers=2)
    next(results)
    results.close()
    assert multiprocessing.active_children() == []
