"""LogMelFrontEnd and its plain-torch transforms against torchaudio (the test-only oracle) and a
hand-written float64 STFT/mel/dB chain.

Tolerances: the plain-torch Spectrogram makes the same ``torch.stft`` call as torchaudio and its mel
filterbank is built with the same float32 operations, so spectrogram, filterbank and mel power agree
exactly; they are still compared at rtol 1e-5 (power) and atol 1e-5 (dB), the contract of the module.
"""

from __future__ import annotations

import math

import pytest
import torch

from dcls_audio.features import LogMelFrontEnd, spectral
from dcls_audio.features.logmel import AugmentConfig

AF = pytest.importorskip("torchaudio.functional", reason="torchaudio (the test oracle) is not installed")
T = pytest.importorskip("torchaudio.transforms", reason="torchaudio (the test oracle) is not installed")
AmplitudeToDB, MelScale, Spectrogram = T.AmplitudeToDB, T.MelScale, T.Spectrogram

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
    spec = (
        torch.stft(
            x,
            n_fft=1024,
            hop_length=320,
            window=torch.hann_window(1024, dtype=torch.float64),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        ).abs()
        ** 2
    )
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
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
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


# --- the plain-torch transforms against torchaudio's -------------------------------------------------


def _real_ish(batch: int, samples: int, rate: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """int16-quantised mixtures: harmonic tone + chirp + noise, a decaying click train, near-silence."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples, dtype=torch.float64) / rate
    harmonic = sum(0.2 / k * torch.sin(2 * math.pi * 220 * k * t) for k in range(1, 6))
    chirp = 0.2 * torch.sin(2 * math.pi * (50 + 0.2 * rate * t / t[-1]) * t)
    clicks = (torch.arange(samples) % (rate // 8) < 20).double() * torch.exp(-t)
    rows = [
        harmonic + chirp + 0.02 * torch.randn(samples, generator=g, dtype=torch.float64),
        0.5 * clicks,
        3e-5 * torch.randn(samples, generator=g, dtype=torch.float64),
    ]
    wave = torch.stack([rows[i % 3] for i in range(batch)])
    return ((wave * 2**15).round().clamp(-32768, 32767) / 2**15).to(dtype)


SPEC_CASES = [  # n_fft, win_length, hop_length, center, pad, normalized
    (1024, None, 320, True, 0, False),
    (512, None, 160, True, 0, False),
    (400, 300, 100, True, 0, True),
    (256, None, None, False, 3, False),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("n_fft", "win", "hop", "center", "pad", "normalized"), SPEC_CASES)
def test_spectrogram_matches_torchaudio(n_fft, win, hop, center, pad, normalized, dtype):
    kwargs = {
        "n_fft": n_fft,
        "win_length": win,
        "hop_length": hop,
        "center": center,
        "pad": pad,
        "normalized": normalized,
    }
    ours, ref = spectral.Spectrogram(**kwargs).to(dtype), T.Spectrogram(**kwargs).to(dtype)
    x = torch.cat([_real_ish(3, 16000, 16000, dtype), torch.randn(2, 16000, dtype=dtype)]).reshape(5, 1, 16000)
    got, want = ours(x), ref(x)
    assert got.shape == want.shape and got.dtype == want.dtype == dtype
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    for power in (None, 1.0):  # complex STFT and magnitude
        kwargs["power"] = power
        torch.testing.assert_close(
            spectral.Spectrogram(**kwargs).to(dtype)(x), T.Spectrogram(**kwargs).to(dtype)(x), rtol=1e-5, atol=0
        )
    assert ours.state_dict().keys() == ref.state_dict().keys() == {"window"}
    assert torch.equal(ours.window, ref.window)


FB_CASES = [  # n_mels, sample_rate, f_min, f_max, n_stft
    (128, 32000, 50.0, 14000.0, 513),
    (64, 16000, 0.0, None, 257),
    (80, 22050, 20.0, 8000.0, 1025),
    (40, 44100, 300.0, 20000.0, 201),
]


@pytest.mark.parametrize(("n_mels", "sr", "f_min", "f_max", "n_stft"), FB_CASES)
def test_mel_filterbank_is_torchaudios_bit_for_bit(n_mels, sr, f_min, f_max, n_stft):
    ours = spectral.MelScale(n_mels=n_mels, sample_rate=sr, f_min=f_min, f_max=f_max, n_stft=n_stft)
    ref = T.MelScale(n_mels=n_mels, sample_rate=sr, f_min=f_min, f_max=f_max, n_stft=n_stft)
    assert ours.fb.dtype == torch.float32 and ours.fb.shape == (n_stft, n_mels)
    assert torch.equal(ours.fb, ref.fb)
    assert torch.equal(ours.fb, AF.melscale_fbanks(n_stft, f_min, f_max or sr // 2, n_mels, sr))
    assert ours.state_dict().keys() == ref.state_dict().keys() == {"fb"}
    # and close to the float64 triangles it approximates
    mel_lo, mel_hi = (2595 * math.log10(1 + f / 700) for f in (f_min, f_max or sr // 2))
    edges = 700 * (10 ** (torch.linspace(mel_lo, mel_hi, n_mels + 2, dtype=torch.float64) / 2595) - 1)
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    bins = torch.linspace(0, sr // 2, n_stft, dtype=torch.float64)[:, None]
    tri = torch.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid))
    torch.testing.assert_close(ours.fb.double(), tri.clamp_min(0), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("n_mels", "sr", "f_min", "f_max", "n_stft"), FB_CASES[:3])
def test_mel_scale_and_db_match_torchaudio(n_mels, sr, f_min, f_max, n_stft, dtype):
    n_fft = 2 * (n_stft - 1)
    x = _real_ish(3, sr // 2, sr, dtype, seed=1)
    power = T.Spectrogram(n_fft=n_fft, hop_length=n_fft // 4).to(dtype)(x)
    kwargs = {"n_mels": n_mels, "sample_rate": sr, "f_min": f_min, "f_max": f_max, "n_stft": n_stft}
    got = spectral.MelScale(**kwargs).to(dtype)(power)
    want = T.MelScale(**kwargs).to(dtype)(power)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    db_got, db_want = spectral.AmplitudeToDB()(got), T.AmplitudeToDB()(want)
    torch.testing.assert_close(db_got, db_want, atol=1e-5, rtol=0)
    assert float(db_want.min()) < -60 < -20 < float(db_want.max())  # quiet and loud bins both compared


@pytest.mark.parametrize("stype", ["power", "magnitude"])
@pytest.mark.parametrize("top_db", [None, 80.0, 0.0])
@pytest.mark.parametrize("shape", [(7, 9), (3, 7, 9), (2, 3, 7, 9)])
def test_amplitude_to_db_matches_torchaudio(stype, top_db, shape):
    g = torch.Generator().manual_seed(4)
    x = torch.rand(shape, generator=g, dtype=torch.float64) ** 12 * 10 ** torch.randint(-12, 3, shape, generator=g)
    x.view(-1)[0] = 0.0  # the amin clamp
    ours, ref = spectral.AmplitudeToDB(stype, top_db), T.AmplitudeToDB(stype, top_db)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(ours(x.float()), ref(x.float()), atol=1e-5, rtol=0)
    assert ours.multiplier == ref.multiplier and ours.amin == ref.amin and ours.db_multiplier == ref.db_multiplier


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_whole_front_end_matches_the_torchaudio_chain(dtype):
    """Every stage of LogMelFrontEnd against torchaudio's, in power and in normalised dB."""
    front = LogMelFrontEnd(augment=False, clip_samples=48000).eval().to(dtype)
    x = _real_ish(3, 48000, 32000, dtype, seed=2)
    spec = T.Spectrogram(n_fft=1024, hop_length=320, power=2).to(dtype)
    mel = T.MelScale(n_mels=128, sample_rate=32000, f_min=50, f_max=14000, n_stft=513).to(dtype)
    power, want_power = front.spectrogram(x), spec(x)
    torch.testing.assert_close(power, want_power, rtol=1e-5, atol=0)
    torch.testing.assert_close(front.mel_scale(power), mel(want_power), rtol=1e-5, atol=0)
    want = ((T.AmplitudeToDB()(mel(want_power)) - front.mean) / front.std).unsqueeze(1)
    got = front(x) if dtype == torch.float32 else front.to_db(front.mel_scale(front.spectrogram(x)))
    if dtype == torch.float64:  # forward() computes in float32 by contract; the stages keep float64
        got = ((got - front.mean) / front.std).unsqueeze(1)
    assert got.dtype == dtype and got.shape == (3, 1, 128, 151)
    torch.testing.assert_close(got, want, atol=1e-5 / front.std, rtol=0)  # 1e-5 dB


def test_state_dict_is_the_torchaudio_front_ends():
    """Checkpoints of a training module (front_end.spectrogram.window, front_end.mel_scale.fb) load both ways."""
    front = LogMelFrontEnd(augment=False)
    legacy = torch.nn.Module()
    legacy.spectrogram = T.Spectrogram(n_fft=1024, hop_length=320, power=2)
    legacy.mel_scale = T.MelScale(n_mels=128, sample_rate=32000, f_min=50, f_max=14000, n_stft=513)
    legacy.to_db = T.AmplitudeToDB()
    ours, theirs = front.state_dict(), legacy.state_dict()
    assert ours.keys() == theirs.keys() == {"spectrogram.window", "mel_scale.fb"}
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    front.load_state_dict(theirs, strict=True)
    legacy.load_state_dict(ours, strict=True)


def test_transform_arguments_are_checked():
    with pytest.raises(ValueError, match="win_length"):
        spectral.Spectrogram(n_fft=256, win_length=512)
    with pytest.raises(ValueError, match="f_min"):
        spectral.MelScale(sample_rate=16000, f_min=9000.0)
    with pytest.raises(ValueError, match="stype"):
        spectral.AmplitudeToDB("energy")
    with pytest.warns(UserWarning, match="covers no frequency bin"):
        spectral.melscale_fbanks(9, 0.0, 8000.0, 40, 16000)
