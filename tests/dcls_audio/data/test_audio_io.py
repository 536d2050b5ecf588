"""Decoding: libsndfile and FFmpeg (PyAV) back ends, block-wise resampling, errors naming the file.

Oracles: torchaudio's resample (test-only), soundfile's own reading, float64 scaling of integers.
"""

from __future__ import annotations

import math
import sys
import zlib

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from dcls_audio.data import audio_decode
from dcls_audio.data.audio_decode import AudioReadError, frame_to_array, open_audio
from dcls_audio.data.audio_io import AudioStream, load_audio, read_head
from dcls_audio.data.resample import resample, resample_kernel
from dcls_audio.data.stream_resample import StreamResampler

from pyav_audio import write_with_pyav

AF = pytest.importorskip("torchaudio.functional", reason="torchaudio (the test oracle) is not installed")

SR = 32000


def _chunks(signal: np.ndarray, rng: np.random.Generator, max_chunk: int):
    i = 0
    while i < signal.shape[0]:
        n = int(rng.integers(1, max_chunk + 1))
        yield signal[i : i + n]
        i += n


@pytest.mark.parametrize("orig", [44100, 8000, 48000, 22050, 11025, 96000, 32000])
def test_stream_resampler_equals_whole_signal(orig):
    rng = np.random.default_rng(orig)
    segment = 4096
    signal = (0.3 * rng.standard_normal(int(3.7 * segment) + 17)).astype(np.float32)
    outputs, max_buffered = [], 0
    for seed, max_chunk in ((1, 300), (2, 5000)):  # two different splits into pushed blocks
        stream = StreamResampler(orig, SR, segment=segment)
        pieces = []
        for chunk in _chunks(signal, np.random.default_rng(seed), max_chunk):
            pieces.append(stream.push(torch.from_numpy(chunk)))
            max_buffered = max(max_buffered, stream.buffered)
        pieces.append(stream.finish())
        outputs.append(torch.cat(pieces))
    whole = torch.from_numpy(signal)
    expected_len = math.ceil(signal.shape[0] * SR / orig)
    assert outputs[0].shape == (expected_len,)
    assert torch.equal(outputs[0], outputs[1])  # the split does not matter, to the bit
    torch.testing.assert_close(outputs[0], resample(whole, orig, SR), rtol=0, atol=1e-6)
    # torchaudio (float32 filters) vs the float64 filters of ``resample``: a few 1e-5 at this amplitude
    torch.testing.assert_close(outputs[0], AF.resample(whole, orig, SR), rtol=0, atol=5e-5)
    g = math.gcd(orig, SR)
    width = resample_kernel(orig, SR)[1] if orig != SR else 0
    assert max_buffered < segment + 2 * (width + 2 * orig // g) + 5000


def test_stream_resampler_short_and_misuse():
    stream = StreamResampler(44100, SR)
    assert stream.push(torch.ones(3)).numel() == 0
    out = stream.finish()
    torch.testing.assert_close(out, resample(torch.ones(3), 44100, SR), rtol=0, atol=1e-7)
    with pytest.raises(RuntimeError, match="push after finish"):
        stream.push(torch.ones(1))


def _stereo(sr: int, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    left = 0.4 * np.sin(2 * np.pi * 330 * t) + 0.1 * rng.standard_normal(t.size)
    right = 0.3 * np.sin(2 * np.pi * 2000 * t) * (t > seconds / 2)
    return np.stack([left, right], 1).astype(np.float32)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24"])
def test_wav_and_flac_through_both_back_ends_are_equal(tmp_path, subtype):
    # integer samples, so both files hold the same ones (libsndfile rounds floats per format)
    bits = 16 if subtype == "PCM_16" else 24
    ints = np.round(_stereo(44100, 3.0) * (2 ** (bits - 1) - 1)).astype(np.int32)
    data = ints.astype(np.int16) if bits == 16 else ints << 8
    paths = [tmp_path / f"a.{ext}" for ext in ("wav", "flac")]
    for path in paths:
        sf.write(path, data, 44100, subtype=subtype)
    decoded = {}
    for path in paths:
        for backend in ("soundfile", "ffmpeg"):
            stream = AudioStream(path, SR, backend=backend)
            assert stream.backend == backend and stream.sample_rate == 44100
            decoded[path.suffix, backend] = torch.cat(list(stream))
    first = decoded[".wav", "soundfile"]
    for key, wave in decoded.items():
        assert torch.equal(wave, first), key  # same samples, same resampling: identical
    # oracle: soundfile's whole read, channel mean, torchaudio's resample
    read, _ = sf.read(paths[0], dtype="float32", always_2d=True)
    np.testing.assert_array_equal(read, ints / 2.0 ** (bits - 1))
    expected = AF.resample(torch.from_numpy(read.mean(axis=1, dtype=np.float32)), 44100, SR)
    torch.testing.assert_close(first, expected, rtol=0, atol=1e-5)
    assert load_audio(paths[1])[0].equal(first) and load_audio(paths[1])[1] == 44100


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    n = min(got.shape[0], want.shape[0])
    return float((got[:n] - want[:n]).pow(2).mean().sqrt() / want[:n].pow(2).mean().sqrt())


def test_m4a_and_opus_fall_back_to_ffmpeg(tmp_path):
    data = _stereo(44100, 3.0)
    source = tmp_path / "source.wav"
    sf.write(source, data, 44100, subtype="FLOAT")
    m4a = write_with_pyav(tmp_path / "clip.m4a", data.T, 44100, "mp4", "aac")
    stream = AudioStream(m4a)
    wave = torch.cat(list(stream))
    assert stream.backend == "ffmpeg" and stream.sample_rate == 44100
    reference = load_audio(source)[0]
    assert abs(wave.shape[0] - reference.shape[0]) < 1024 * SR / 44100  # at most one AAC frame of padding
    # lossy, but aligned: the error of a one-sample shift would be far larger
    assert _relative_error(wave, reference) < 0.2
    assert _relative_error(wave[1:], reference) > 2 * _relative_error(wave, reference)
    if "libopus" in av.codecs_available:
        data48 = _stereo(48000, 3.0)
        webm = write_with_pyav(tmp_path / "clip.webm", data48.T, 48000, "webm", "libopus")
        sf.write(tmp_path / "source48.wav", data48, 48000, subtype="FLOAT")
        got, rate = load_audio(webm)
        assert rate == 48000 and _relative_error(got, load_audio(tmp_path / "source48.wav")[0]) < 0.2


@pytest.mark.parametrize("fmt", ["u8", "s16", "s32", "flt", "dbl", "s16p", "s32p", "fltp", "dblp"])
def test_frame_to_array_scales_like_libsndfile(fmt):
    rng = np.random.default_rng(0)
    values = rng.uniform(-1, 1, size=(2, 50))  # (channels, samples) in float64
    dtype, full = {
        "u8": (np.uint8, 2**7),
        "s16": (np.int16, 2**15),
        "s32": (np.int32, 2**31),
        "flt": (np.float32, None),
        "dbl": (np.float64, None),
    }[fmt.rstrip("p")]
    ints = None if full is None else np.round(values * (full - 1)).astype(np.int64)
    stored = values.astype(dtype) if full is None else (ints + (128 if fmt == "u8" else 0)).astype(dtype)
    planar = fmt.endswith("p")
    array = stored if planar else stored.T.reshape(1, -1)  # packed: interleaved in one row
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(array), format=fmt, layout="stereo")
    got = frame_to_array(frame)
    expected = values.T if full is None else ints.T / full
    assert got.dtype == np.float32 and got.shape == (50, 2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)


def _png(path):
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = (1).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b"")
    )
    return path


def test_undecodable_files_name_the_file_and_the_reason(tmp_path, monkeypatch):
    text = tmp_path / "text.m4a"
    text.write_text("not audio " * 50)
    with pytest.raises(AudioReadError) as info:
        load_audio(text)
    err = info.value
    assert err.path == text and str(err) == f"cannot decode audio file {text}: {err.reason}"
    assert "libsndfile: " in err.reason and "FFmpeg: " in err.reason and "text.m4a" not in err.reason
    with pytest.raises(AudioReadError, match="it holds no audio stream"):
        load_audio(_png(tmp_path / "image.png"))
    with pytest.raises(AudioReadError, match="image.png") as info:
        open_audio(tmp_path / "image.png", backend="soundfile")
    assert "FFmpeg" not in info.value.reason
    with pytest.raises(ValueError, match="backend must be one of"):
        open_audio(text, backend="gstreamer")
    with pytest.raises(FileNotFoundError, match="missing.m4a"):
        AudioStream(tmp_path / "missing.m4a")
    monkeypatch.setitem(sys.modules, "av", None)  # PyAV not installed
    with pytest.raises(AudioReadError) as info:
        load_audio(text)
    assert "pip install av" in info.value.reason and "text.m4a" not in info.value.reason
    sf.write(tmp_path / "ok.wav", np.zeros(800, np.float32), 8000)
    assert load_audio(tmp_path / "ok.wav")[0].shape == (3200,)  # libsndfile formats need no PyAV


def test_read_head_stops_early_and_equals_load_audio(tmp_path, monkeypatch):
    path = tmp_path / "long.flac"
    sf.write(path, _stereo(22050, 40.0)[:, 0], 22050)
    whole, rate = load_audio(path)
    blocks_read = []
    original = audio_decode.SoundFileSource.blocks

    def counting(self):
        for block in original(self):
            blocks_read.append(block.shape[0])
            yield block

    monkeypatch.setattr(audio_decode.SoundFileSource, "blocks", counting)
    head, head_rate = read_head(path, 5 * SR)
    assert head_rate == rate == 22050 and torch.equal(head, whole[: 5 * SR])
    assert sum(blocks_read) < 0.5 * 40 * 22050  # it did not decode the whole file
    short, _ = read_head(path, 10**9)
    assert torch.equal(short, whole)
