"""The log-mel front end without complex numbers or FFTs, for ONNX export.

ONNX exporters cannot take ``torch.stft`` with complex output, so :class:`ConvLogMel`
computes the same power spectrogram as a strided ``conv1d`` whose filters are the
windowed DFT basis (cosine and sine rows for each of the ``n_fft // 2 + 1`` bins), then
applies the front end's own mel filterbank, dB conversion and normalisation. It is built from
a :class:`~dcls_audio.data.LogMelFrontEnd` (eval mode semantics: no augmentation) and reads
every constant from it.

Accuracy: both paths round differently in fp32. Typically they agree to ~1e-5 (normalised
log-mel units); in mel bins whose power is ~1e-7 of the frame's strongest component the
rounding of either path reaches ~2e-4 (onnxruntime's own STFT op is no closer to float64).
The scores of an exported model stay within 1e-4 of PyTorch's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .logmel import LogMelFrontEnd

__all__ = ["ConvLogMel", "dft_basis"]


def dft_basis(n_fft: int, window: torch.Tensor) -> torch.Tensor:
    """Conv1d weight (2 * (n_fft // 2 + 1), 1, n_fft): rows ``window * cos`` then ``-window * sin``.

    Computed in float64 and returned in float32. Frame ``x`` convolved with it gives the real
    and imaginary parts of ``rfft(window * x)``.
    """
    if window.shape != (n_fft,):
        raise ValueError(f"window must have shape ({n_fft},), got {tuple(window.shape)}")
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    angle = (2 * math.pi / n_fft) * torch.outer(k, n).remainder(n_fft)
    w = window.to(torch.float64)
    basis = torch.cat([torch.cos(angle) * w, -torch.sin(angle) * w])
    return basis.float().unsqueeze(1)


class ConvLogMel(nn.Module):
    """(B, clip_samples) float waveforms at 32 kHz -> (B, 1, n_mels, frames) normalised log-mel.

    Equal to ``frontend.eval()(waveform)`` up to fp32 rounding; built only from ops every
    exporter handles (reflect pad, conv1d, matmul, log).
    """

    def __init__(self, frontend: LogMelFrontEnd) -> None:
        super().__init__()
        spec, mel, to_db = frontend.spectrogram, frontend.mel_scale, frontend.to_db
        if spec.power != 2.0 or spec.normalized or not spec.onesided or spec.pad != 0:
            raise ValueError(
                "ConvLogMel supports a one-sided, unnormalised power spectrogram without extra padding; "
                f"got power={spec.power}, normalized={spec.normalized}, onesided={spec.onesided}, pad={spec.pad}"
            )
        if to_db.stype != "power" or to_db.top_db is not None:
            raise ValueError(
                f"ConvLogMel supports AmplitudeToDB(stype='power', top_db=None), got {to_db.stype}, {to_db.top_db}"
            )
        window = spec.window
        if spec.win_length < spec.n_fft:  # torch.stft centres a shorter window in n_fft
            left = (spec.n_fft - spec.win_length) // 2
            window = F.pad(window, (left, spec.n_fft - spec.win_length - left))
        self.n_fft = spec.n_fft
        self.hop_length = spec.hop_length
        self.center = spec.center
        self.pad_mode = spec.pad_mode
        self.clip_samples = frontend.clip_samples
        self.register_buffer("basis", dft_basis(spec.n_fft, window))
        self.register_buffer("mel_fb", mel.fb.detach().clone().float())  # (n_freqs, n_mels)
        self.multiplier = float(to_db.multiplier)
        self.amin = float(to_db.amin)
        self.db_offset = float(to_db.multiplier * to_db.db_multiplier)
        self.mean = float(frontend.mean)
        self.std = float(frontend.std)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = waveform.float().unsqueeze(1)  # (B, 1, S)
        if self.center:
            half = self.n_fft // 2
            x = F.pad(x, (half, half), mode=self.pad_mode)
        parts = F.conv1d(x, self.basis, stride=self.hop_length)  # (B, 2F, frames)
        bins = parts.shape[1] // 2
        power = parts[:, :bins].square() + parts[:, bins:].square()  # (B, F, frames)
        mel = torch.matmul(power.transpose(1, 2), self.mel_fb).transpose(1, 2)  # (B, n_mels, frames)
        db = self.multiplier * torch.log10(torch.clamp(mel, min=self.amin)) - self.db_offset
        return ((db - self.mean) / self.std).unsqueeze(1)

    def extra_repr(self) -> str:
        return f"n_fft={self.n_fft}, hop_length={self.hop_length}, clip_samples={self.clip_samples}"
