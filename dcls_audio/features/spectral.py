"""Power spectrogram, mel filterbank and dB conversion in plain torch.

Drop-in equivalents of the torchaudio transforms the log-mel front end was defined with
(``torchaudio.transforms.Spectrogram``, ``MelScale`` and ``AmplitudeToDB``), for the options the
project uses: the same constructor arguments and defaults, the same attribute names, and the same
persistent buffers (``window`` of shape ``(win_length,)``, ``fb`` of shape ``(n_stft, n_mels)``), so
state dicts saved with the torchaudio modules load unchanged.

The mel filterbank is computed with the same float32 operations as torchaudio's
``melscale_fbanks`` (float32 ``linspace`` of the bin frequencies and of the mel points), so its
buffer agrees with torchaudio's bit for bit rather than to float64 accuracy.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

__all__ = ["AmplitudeToDB", "MelScale", "Spectrogram", "amplitude_to_db", "hz_to_mel", "mel_to_hz", "melscale_fbanks"]


def hz_to_mel(freq: float) -> float:
    """HTK mel of ``freq`` Hz: ``2595 * log10(1 + freq / 700)``."""
    return 2595.0 * math.log10(1.0 + freq / 700.0)


def mel_to_hz(mels: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`, elementwise, in ``mels``' dtype."""
    return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)


def melscale_fbanks(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular HTK mel filterbank, unnormalised: float32 ``(n_freqs, n_mels)``.

    Bin ``k`` of a one-sided spectrum sits at ``k * (sample_rate // 2) / (n_freqs - 1)`` Hz; filter
    ``m`` rises linearly from mel point ``m`` to ``m + 1`` and falls to ``m + 2``, where the
    ``n_mels + 2`` mel points are equally spaced in HTK mel between ``f_min`` and ``f_max``.
    Warns when a filter covers no bin (``n_mels`` too high for ``n_freqs``).
    """
    for name, value in (("n_freqs", n_freqs), ("n_mels", n_mels)):
        if int(value) != value or value < 1:
            raise ValueError(f"melscale_fbanks: {name} must be a positive integer, got {value!r}")
    if sample_rate <= 0:
        raise ValueError(f"melscale_fbanks: sample_rate must be positive, got {sample_rate!r}")
    # float32 throughout, as torchaudio computes it, so that the filters agree bit for bit
    bin_hz = torch.linspace(0, sample_rate // 2, n_freqs)  # (n_freqs,)
    mel_points = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2)
    edge_hz = mel_to_hz(mel_points)  # (n_mels + 2,)
    widths = edge_hz[1:] - edge_hz[:-1]  # (n_mels + 1,)
    offsets = edge_hz[None, :] - bin_hz[:, None]  # (n_freqs, n_mels + 2): edge minus bin frequency
    rising = -offsets[:, :-2] / widths[:-1]  # 0 at the lower edge, 1 at the centre
    falling = offsets[:, 2:] / widths[1:]  # 1 at the centre, 0 at the upper edge
    fb = torch.clamp(torch.minimum(rising, falling), min=0.0)
    if (fb.amax(dim=0) == 0.0).any():
        warnings.warn(
            f"melscale_fbanks: at least one of the {n_mels} mel filters covers no frequency bin; "
            f"n_mels may be too high for n_freqs={n_freqs}",
            stacklevel=2,
        )
    return fb


def amplitude_to_db(
    x: torch.Tensor, multiplier: float, amin: float, db_multiplier: float, top_db: float | None = None
) -> torch.Tensor:
    """``multiplier * log10(max(x, amin)) - multiplier * db_multiplier``, optionally floored.

    With ``top_db``, values below ``max - top_db`` are raised to it, the maximum taken per
    spectrogram: over the last three dims of a ``(..., C, F, T)`` input (all channels of one
    item together), over the last two of a ``(F, T)`` input.
    """
    db = multiplier * torch.log10(torch.clamp(x, min=amin))
    db = db - multiplier * db_multiplier
    if top_db is None:
        return db
    shape = db.shape
    channels = shape[-3] if db.ndim > 2 else 1
    packed = db.reshape(-1, channels, shape[-2], shape[-1])
    floor = packed.amax(dim=(-3, -2, -1)) - top_db
    return torch.maximum(packed, floor.view(-1, 1, 1, 1)).reshape(shape)


class Spectrogram(nn.Module):
    """(..., S) waveforms -> (..., n_fft // 2 + 1, frames) spectrogram (``|STFT|^power``).

    Hann window (periodic) of ``win_length`` samples, centred in ``n_fft``; ``center=True`` pads
    ``n_fft // 2`` samples each side with ``pad_mode``, giving ``frames = S // hop_length + 1``.
    ``pad`` zeros are added on both sides first. ``normalized=True`` divides the STFT by the
    window's L2 norm. ``power=None`` returns the complex STFT. The waveform's dtype must match the
    window buffer's (float32 unless the module was converted).
    """

    def __init__(
        self,
        n_fft: int = 400,
        win_length: int | None = None,
        hop_length: int | None = None,
        pad: int = 0,
        power: float | None = 2.0,
        normalized: bool = False,
        center: bool = True,
        pad_mode: str = "reflect",
        onesided: bool = True,
    ) -> None:
        super().__init__()
        self.n_fft = int(n_fft)
        self.win_length = int(win_length) if win_length is not None else self.n_fft
        self.hop_length = int(hop_length) if hop_length is not None else self.win_length // 2
        if self.n_fft < 1 or not 1 <= self.win_length <= self.n_fft or self.hop_length < 1:
            raise ValueError(
                "Spectrogram: need n_fft >= 1, 1 <= win_length <= n_fft and hop_length >= 1; got "
                f"n_fft={n_fft}, win_length={win_length}, hop_length={hop_length}"
            )
        if not isinstance(normalized, bool):
            raise TypeError(f"Spectrogram: normalized must be True or False, got {normalized!r}")
        self.pad = int(pad)
        self.power = power
        self.normalized = normalized
        self.center = center
        self.pad_mode = pad_mode
        self.onesided = onesided
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=True))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if self.pad > 0:
            waveform = nn.functional.pad(waveform, (self.pad, self.pad), mode="constant")
        lead = waveform.shape[:-1]
        spec = torch.stft(
            waveform.reshape(-1, waveform.shape[-1]),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=self.center,
            pad_mode=self.pad_mode,
            normalized=False,
            onesided=self.onesided,
            return_complex=True,
        )  # (N, n_freqs, frames)
        spec = spec.reshape(lead + spec.shape[-2:])
        if self.normalized:
            spec = spec / self.window.pow(2.0).sum().sqrt()
        if self.power is None:
            return spec
        magnitude = spec.abs()
        return magnitude if self.power == 1.0 else magnitude.pow(self.power)

    def extra_repr(self) -> str:
        return (
            f"n_fft={self.n_fft}, win_length={self.win_length}, hop_length={self.hop_length}, "
            f"power={self.power}, normalized={self.normalized}, center={self.center}, pad_mode={self.pad_mode!r}"
        )


class MelScale(nn.Module):
    """(..., n_stft, T) linear-frequency spectrogram -> (..., n_mels, T) mel spectrogram.

    Multiplies by the :func:`melscale_fbanks` buffer ``fb`` (``(n_stft, n_mels)``, HTK mel scale,
    no normalisation). ``f_max=None`` means ``sample_rate // 2``. The spectrogram's dtype must
    match the buffer's (float32 unless the module was converted).
    """

    def __init__(
        self,
        n_mels: int = 128,
        sample_rate: int = 16000,
        f_min: float = 0.0,
        f_max: float | None = None,
        n_stft: int = 201,
    ) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.sample_rate = sample_rate
        self.f_max = f_max if f_max is not None else float(sample_rate // 2)
        self.f_min = f_min
        if f_min > self.f_max:
            raise ValueError(f"MelScale: f_min ({f_min}) must not exceed f_max ({self.f_max})")
        self.register_buffer("fb", melscale_fbanks(n_stft, self.f_min, self.f_max, n_mels, sample_rate))

    def forward(self, specgram: torch.Tensor) -> torch.Tensor:
        return torch.matmul(specgram.transpose(-1, -2), self.fb).transpose(-1, -2)

    def extra_repr(self) -> str:
        return f"n_mels={self.n_mels}, sample_rate={self.sample_rate}, f_min={self.f_min}, f_max={self.f_max}"


class AmplitudeToDB(nn.Module):
    """Power (``stype="power"``) or magnitude (``"magnitude"``) spectrogram -> decibels.

    ``10 * log10(max(x, 1e-10))`` for power (20 for magnitude) relative to a reference of 1;
    ``top_db`` floors each spectrogram at its maximum minus ``top_db`` (see :func:`amplitude_to_db`).
    Output has the input's shape and dtype.
    """

    def __init__(self, stype: str = "power", top_db: float | None = None) -> None:
        super().__init__()
        if stype not in ("power", "magnitude"):
            raise ValueError(f"AmplitudeToDB: stype must be 'power' or 'magnitude', got {stype!r}")
        if top_db is not None and top_db < 0:
            raise ValueError(f"AmplitudeToDB: top_db must be None or >= 0, got {top_db!r}")
        self.stype = stype
        self.top_db = top_db
        self.multiplier = 10.0 if stype == "power" else 20.0
        self.amin = 1e-10
        self.ref_value = 1.0
        self.db_multiplier = math.log10(max(self.amin, self.ref_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return amplitude_to_db(x, self.multiplier, self.amin, self.db_multiplier, self.top_db)

    def extra_repr(self) -> str:
        return f"stype={self.stype!r}, top_db={self.top_db}"
