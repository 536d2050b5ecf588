"""dcls_audio.data.resample against torchaudio.functional.resample (the test-only oracle)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dcls_audio.data.resample import resample, resample_kernel

AF = pytest.importorskip("torchaudio.functional", reason="torchaudio (the test oracle) is not installed")

# Absolute tolerances on waveforms of peak ~1. torchaudio run in float64 is the reference: float64 results
# agree to ~5e-14 and float32 results to ~3e-7 (float32 rounding of the output). torchaudio's own float32
# path builds its filters in float32 and is up to ~2.2e-5 off its float64 result for rates whose reduced
# ratio has a large L (22050 -> 32000: 441/640, 11025, 44100); this module builds them in float64, so
# it is compared with torchaudio's float32 output at that looser tolerance only.
TOL = {torch.float64: 1e-12, torch.float32: 1e-6}
TOL_VS_TORCHAUDIO_FLOAT32 = 5e-5


def _audio(shape: tuple[int, ...], rate: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Tones (one above the 16 kHz Nyquist of the 32 kHz output), a chirp and noise, peak < 1."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(shape[-1], dtype=torch.float64) / rate
    x = 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.1 * torch.sin(2 * math.pi * min(20000, rate * 0.45) * t)
    x = x + 0.2 * torch.sin(2 * math.pi * (100 + 0.2 * rate * t) * t)
    noise = 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
    return (x + noise).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    ("orig", "new"),
    [
        (8000, 32000),
        (11025, 32000),
        (16000, 32000),
        (22050, 32000),
        (44100, 32000),
        (48000, 32000),
        (96000, 32000),
        (32000, 16000),
    ],
)
def test_matches_torchaudio_batched(orig, new, dtype):
    x = _audio((2, 3, orig // 4 + 7), orig, dtype)  # 0.25 s plus a ragged tail, batch dims (2, 3)
    got = resample(x, orig, new)
    want = AF.resample(x.double(), orig, new)
    assert got.shape == want.shape == (2, 3, math.ceil(x.shape[-1] * new / orig))
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, atol=TOL[dtype], rtol=0)
    assert float(want.abs().max()) > 0.3  # the comparison is on a real signal
    if dtype == torch.float32:
        torch.testing.assert_close(got, AF.resample(x, orig, new), atol=TOL_VS_TORCHAUDIO_FLOAT32, rtol=0)


def test_rows_are_independent():
    x = _audio((4, 4410), 44100, torch.float32, seed=1)
    torch.testing.assert_close(resample(x, 44100, 32000)[2], resample(x[2], 44100, 32000))


@pytest.mark.parametrize(("width", "rolloff"), [(16, 0.945), (3, 0.9)])
def test_other_filter_settings_match_torchaudio(width, rolloff):
    x = _audio((1, 2205), 22050, torch.float64, seed=2)
    got = resample(x, 22050, 32000, lowpass_filter_width=width, rolloff=rolloff)
    torch.testing.assert_close(
        got, AF.resample(x, 22050, 32000, lowpass_filter_width=width, rolloff=rolloff), atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("length", [1, 2, 5])
def test_very_short_inputs(length):
    x = _audio((3, length), 44100, torch.float64, seed=3)
    got = resample(x, 44100, 32000)
    want = AF.resample(x, 44100, 32000)
    assert got.shape == want.shape == (3, math.ceil(length * 320 / 441))
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_empty_input_gives_empty_output():  # torchaudio raises here: it cannot reshape 0 samples
    assert resample(torch.zeros(3, 0), 44100, 32000).shape == (3, 0)
    assert resample(torch.zeros(2, 0, 0), 16000, 32000).shape == (2, 0, 0)


def test_equal_rates_return_the_input():
    x = torch.randn(2, 100)
    assert resample(x, 32000, 32000) is x
    assert resample(x, 32000.0, 32000) is x  # an integral float rate is accepted


def test_rates_with_a_common_factor_reduce_to_the_same_kernel():
    k1, w1 = resample_kernel(44100, 32000, dtype=torch.float64)
    k2, w2 = resample_kernel(441, 320, dtype=torch.float64)
    assert w1 == w2 == 9 and k1.shape == (320, 1, 2 * 9 + 441)
    assert torch.equal(k1, k2)
    # each phase's filter sums to ~1 (unity gain at DC), up to the window's truncation
    torch.testing.assert_close(k1.sum(-1), torch.ones(320, 1, dtype=torch.float64), atol=2e-3, rtol=0)
    k1.zero_()  # the caller owns its copy
    assert resample_kernel(44100, 32000, dtype=torch.float64)[0].abs().sum() > 0


def test_dc_is_kept_and_a_tone_above_the_new_nyquist_is_removed():
    t = torch.arange(48000, dtype=torch.float64) / 48000
    dc = resample(torch.ones(48000, dtype=torch.float64), 48000, 32000)
    torch.testing.assert_close(dc[100:-100], torch.ones_like(dc[100:-100]), atol=2e-3, rtol=0)
    alias = resample(torch.sin(2 * math.pi * 20000 * t), 48000, 32000)  # 20 kHz > 16 kHz Nyquist
    assert float(alias[100:-100].abs().max()) < 1e-2


def test_bad_arguments():
    with pytest.raises(TypeError, match="floating-point"):
        resample(torch.zeros(10, dtype=torch.int16), 16000, 32000)
    with pytest.raises(ValueError, match="orig_freq"):
        resample(torch.zeros(10), 0, 32000)
    with pytest.raises(ValueError, match="new_freq"):
        resample(torch.zeros(10), 16000, 22050.5)
    with pytest.raises(ValueError, match="0-d"):
        resample(torch.tensor(1.0), 16000, 32000)
    with pytest.raises(ValueError, match="rolloff"):
        resample(torch.zeros(10), 16000, 32000, rolloff=1.5)


@pytest.mark.parametrize("orig, new", [(44100, 32000), (101, 320), (32000, 16000), (8000, 32000)])
def test_the_gather_path_equals_torchaudio(monkeypatch, orig, new):
    """The path taken where the polyphase filters would be huge, forced here on ordinary rates."""
    from dcls_audio.data import resample as module

    monkeypatch.setattr(module, "MAX_KERNEL_ELEMENTS", 0)
    x = torch.randn(2, 3, 3001, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(module.resample(x, orig, new), AF.resample(x, orig, new), rtol=0, atol=1e-12)
    x32 = x.float()
    torch.testing.assert_close(module.resample(x32, orig, new), AF.resample(x, orig, new).float(), rtol=0, atol=1e-6)


def test_coprime_rates_resample_in_bounded_memory_and_stream_equal():
    """7999 -> 32000 Hz: the polyphase filters would hold 2.6e8 values; the gather needs ~2e5."""
    from dcls_audio.data.resample import MAX_KERNEL_ELEMENTS, filter_width, resample
    from dcls_audio.data.stream_resample import StreamResampler

    width = filter_width(7999, 32000)
    assert 32000 * (2 * width + 7999) > MAX_KERNEL_ELEMENTS
    t = torch.arange(7999 * 2, dtype=torch.float64) / 7999
    out = resample(torch.sin(2 * torch.pi * 440 * t), 7999, 32000)
    assert out.shape == (-(-2 * 7999 * 32000 // 7999),)
    expected = torch.sin(2 * torch.pi * 440 * torch.arange(out.shape[0], dtype=torch.float64) / 32000)
    inner = slice(32000 // 10, -32000 // 10)  # away from the zero-padded ends
    assert (out[inner] - expected[inner]).abs().max() < 2e-3
    stream = StreamResampler(7999, 32000, segment=4096)
    pieces = [stream.push(chunk) for chunk in np.array_split(t.float().numpy() * 0 + 0.25, 7)]
    streamed = torch.cat([*pieces, stream.finish()])
    torch.testing.assert_close(streamed, resample(torch.full((t.shape[0],), 0.25), 7999, 32000), rtol=0, atol=1e-6)
