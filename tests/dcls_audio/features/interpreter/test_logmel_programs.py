"""The log-mel front end's GPU programs (:mod:`dcls_audio.features.logmel_programs`) on the CPU
under Triton's interpreter: each equals its torch twin in :mod:`dcls_audio.features.logmel_passes`
(the time warp's rounding ties and the reflection at both ends included), and the whole fused
front end equals the op-by-op chain."""

from __future__ import annotations

import pytest
import torch

from dcls_audio.features import LogMelFrontEnd
from dcls_audio.features import logmel_passes as passes
from dcls_audio.features.augment import SpeedDraws, sample_erase_boxes, sample_roll, sample_speed

from dcls_testing import record_programs

B, S, N, HOP = 3, 3000, 256, 100


@pytest.fixture
def launched(monkeypatch) -> set:
    """Records which programs the passes launch."""
    return record_programs(monkeypatch, passes)


def _wave(dtype=torch.int16) -> torch.Tensor:
    torch.manual_seed(0)
    wave = (torch.randn(B, S) * 3000).to(torch.int16)
    return wave if dtype == torch.int16 else (wave.to(dtype) / 3)


@pytest.mark.parametrize("warp", ["none", "roll", "speed", "both"])
@pytest.mark.parametrize("dtype", [torch.int16, torch.float32])
def test_windowed_frames_equal_the_torch_framing(launched, warp, dtype):
    wave, window = _wave(dtype), torch.hann_window(N)
    shift = sample_roll(B, S, torch.Generator().manual_seed(1)) if warp in ("roll", "both") else None
    speed = sample_speed(B, S, p=1.0, generator=torch.Generator().manual_seed(2)) if warp in ("speed", "both") else None
    got = passes.windowed_frames(wave, window, HOP, shift, speed, use_programs=True)
    want = passes.windowed_frames(wave, window, HOP, shift, speed, use_programs=False)
    assert got.shape == (B, S // HOP + 1, N)
    assert torch.equal(got, want)
    assert launched == {"windowed_frames"}


def test_windowed_frames_round_ties_to_even_and_zero_outside():
    """Steps 0.5 and 1.5 put half of the products exactly on .5: torch rounds them to even."""
    wave, window = _wave(torch.float32), torch.hann_window(N)
    speed = SpeedDraws(
        offset=torch.tensor([0, -7, 5]), step=torch.tensor([0.5, 1.5, 2.0]), end=torch.tensor([S, S - 100, S // 2])
    )
    shift = torch.tensor([-S, 17, S - 1])
    got = passes.windowed_frames(wave, window, HOP, shift, speed, use_programs=True)
    want = passes.windowed_frames(wave, window, HOP, shift, speed, use_programs=False)
    assert torch.equal(got, want)
    assert (want[2, -3:] == 0).all()  # past the stretched clip's end: zeros


@pytest.mark.parametrize("erase", [False, True])
def test_power_erased_equals_the_torch_power(launched, erase):
    frames = passes.windowed_frames(_wave(), torch.hann_window(N), HOP, use_programs=False)
    spec = torch.fft.rfft(frames)
    bins, count = spec.shape[-1], spec.shape[1]
    boxes = sample_erase_boxes(B, bins, count, p=1.0, generator=torch.Generator().manual_seed(3)) if erase else None
    got = passes.power_erased(spec, boxes, use_programs=True)
    want = passes.power_erased(spec, boxes, use_programs=False)
    assert torch.equal(got, want)
    if erase:
        assert (want == 0).sum() >= int((boxes.height * boxes.width * boxes.apply).sum())
    assert launched == {"power_erased"}


def test_db_normalised_equals_the_torch_db(launched):
    torch.manual_seed(0)
    mel = torch.rand(B, 37, 20) * 10
    mel[0, :3] = 0.0  # below amin
    got = passes.db_normalised(mel, -4.0, 4.5, use_programs=True)
    want = passes.db_normalised(mel, -4.0, 4.5, use_programs=False)
    assert got.shape == (B, 1, 20, 37) and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    assert launched == {"db_normalised"}


def test_fused_front_end_equals_the_op_by_op_chain(monkeypatch, launched):
    """A training front end (roll, speed, erasing on) through the three programs, against the
    reference chain (torch.stft, abs().pow(2), masked_fill, MelScale, AmplitudeToDB)."""
    front = LogMelFrontEnd(seed=0, clip_samples=32000).train()
    wave = (torch.randn(4, 32000, generator=torch.Generator().manual_seed(0)) * 3000).to(torch.int16)
    draws = front.sample_augmentations(4)
    monkeypatch.setenv(passes.FRONT_END_ENV_VAR, "reference")
    want = front(wave, draws)
    monkeypatch.setenv(passes.FRONT_END_ENV_VAR, "fused")
    monkeypatch.setattr(passes, "_use_programs", lambda x, use: True)
    got = front(wave, draws)
    assert launched == {"windowed_frames", "power_erased", "db_normalised"}
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)


def test_an_empty_batch_launches_nothing(launched):
    frames = passes.windowed_frames(torch.zeros(0, S, dtype=torch.int16), torch.hann_window(N), HOP, use_programs=True)
    assert frames.shape == (0, S // HOP + 1, N)
    power = passes.power_erased(torch.zeros(0, S // HOP + 1, N // 2 + 1, dtype=torch.complex64), use_programs=True)
    assert passes.db_normalised(power[..., :20], 0.0, 1.0, use_programs=True).shape == (0, 1, 20, S // HOP + 1)
    assert launched == set()
