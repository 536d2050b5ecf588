"""LogMelFrontEnd against torchaudio's reference chain and a hand-written STFT/mel/dB chain."""
from __future__ import annotations

import pytest
import torch
import torchaudio.functional as AF
from torchaudio.transforms import AmplitudeToDB, MelScale, Spectrogram

from dcls_audio.data import LogMelFrontEnd
from dcls_audio.data.frontend import AugmentConfig

S = 320000


def reference_chain(waveform_int16: torch.Tensor) -> torch.Tensor:
    """Upstream's per-clip eval transform: /2^15, Spectrogram, MelScale, AmplitudeToDB, Normalize."""
    chain = torch.nn.Sequential(
        Spectrogram(n_fft=1024, hop_length=320, power=2),
        MelScale(n_mels=128, sample_rate=32000, f_min=50, f_max=14000, n_stft=513),
        AmplitudeToDB(),
    )
    out = [(chain(clip[None].float() / 2**15) + 18.2696) / 30.5735 for clip in waveform_int16]
    return torch.stack(out)


def manual_chain(x: torch.Tensor) -> torch.Tensor:
    """Same maths from torch.stft + torchaudio's mel filterbank, in float64."""
    x = x.double()
    spec = torch.stft(x, n_fft=1024, hop_length=320, window=torch.hann_window(1024, dtype=torch.float64),
                      center=True, pad_mode="reflect", return_complex=True).abs() ** 2
    fb = AF.melscale_fbanks(513, 50.0, 14000.0, 128, 32000).double()
    mel = torch.einsum("bft,fm->bmt", spec, fb)
    db = 10 * torch.log10(mel.clamp_min(1e-10))
    return ((db + 18.2696) / 30.5735)[:, None]


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(S) / 32000
    tone = 0.3 * torch.sin(2 * torch.pi * 440 * t)
    noise = 0.05 * torch.randn(S, generator=g)
    quiet = 1e-4 * torch.randn(S, generator=g)
    wave = torch.stack([tone + noise, noise, quiet])
    return (wave * 2**15).round().clamp(-32768, 32767).to(torch.int16)


def test_matches_reference_chain_fp32(clips):
    front = LogMelFrontEnd(augment=False).eval()
    out = front(clips)
    assert out.shape == (3, 1, 128, 1001) and out.dtype == torch.float32
    ref = reference_chain(clips)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.double(), manual_chain(clips.double() / 2**15), rtol=1e-4, atol=1e-4)


def test_float_input_is_int16_over_2_pow_15(clips):
    front = LogMelFrontEnd(augment=False).eval()
    torch.testing.assert_close(front(clips.float() / 2**15), front(clips))


def test_pads_and_truncates_to_ten_seconds(clips):
    front = LogMelFrontEnd(augment=False).eval()
    short = clips[:, :100000]
    padded = torch.nn.functional.pad(short, (0, S - 100000))
    torch.testing.assert_close(front(short), front(padded))
    longer = torch.cat([clips, clips[:, :5000]], dim=1)
    torch.testing.assert_close(front(longer), front(clips))


def test_train_mode_without_augmentation_equals_eval(clips):
    front = LogMelFrontEnd(augment=False).train()
    torch.testing.assert_close(front(clips), reference_chain(clips), rtol=1e-4, atol=1e-4)


def test_augmentation_only_in_train_mode_and_seeded(clips):
    front = LogMelFrontEnd(augment=True, seed=3)
    ref = reference_chain(clips)
    torch.testing.assert_close(front.eval()(clips), ref, rtol=1e-4, atol=1e-4)
    first = front.train()(clips)
    assert not torch.allclose(first, ref, atol=1e-3)  # the roll alone changes every clip
    front.set_seed(3)
    torch.testing.assert_close(front(clips), first)
    assert not torch.equal(front(clips), first)  # the generator advanced


def test_each_augmentation_switch(clips):
    ref = reference_chain(clips)
    only_erase = LogMelFrontEnd(augment={"roll": False, "speed": False, "erase_p": 1.0}, seed=0).train()
    out = only_erase(clips)
    # erased boxes hold power 0 -> the dB floor; everything else is untouched
    floor = (10 * torch.log10(torch.tensor(1e-10)) + 18.2696) / 30.5735
    changed = ~torch.isclose(out, ref, rtol=1e-4, atol=1e-4)
    assert changed.any(dim=(1, 2, 3)).all()
    assert (out[changed] <= ref[changed] + 1e-4).all()
    assert out.min() >= floor - 1e-4
    none = LogMelFrontEnd(augment={"roll": False, "speed": False, "erase": False}).train()
    torch.testing.assert_close(none(clips), ref, rtol=1e-4, atol=1e-4)


def test_autocast_keeps_fp32(clips):
    front = LogMelFrontEnd(augment=False).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = front(clips)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference_chain(clips), rtol=1e-4, atol=1e-4)


def test_bad_inputs():
    front = LogMelFrontEnd(augment=False)
    with pytest.raises(ValueError, match="batch, samples"):
        front(torch.zeros(S, dtype=torch.int16))
    with pytest.raises(TypeError, match="int16 or floating"):
        front(torch.zeros(1, S, dtype=torch.int32))
    with pytest.raises(ValueError, match="unknown option"):
        LogMelFrontEnd(augment={"rol": False})
    assert AugmentConfig.from_any(False) is None and AugmentConfig.from_any(True) == AugmentConfig()


@pytest.mark.cuda
def test_cuda_matches_cpu(clips):
    cpu = LogMelFrontEnd(augment=True, seed=5)
    gpu = LogMelFrontEnd(augment=True, seed=5).cuda()
    torch.testing.assert_close(gpu.eval()(clips.cuda()).cpu(), cpu.eval()(clips), rtol=1e-4, atol=1e-4)
    # augmentation draws happen on the CPU, so the same seed gives the same augmented batch
    torch.testing.assert_close(gpu.train()(clips.cuda()).cpu(), cpu.train()(clips), rtol=1e-3, atol=1e-3)
