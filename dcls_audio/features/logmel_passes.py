"""The log-mel front end as three fused passes around the FFT and the mel product.

The plain chain (:class:`~.logmel.LogMelFrontEnd` on the CPU, under ``torch.compile``, or with
the reference forced) runs some twenty element-wise kernels over the waveform and the
spectrogram: int16 -> float, the time warp's index arithmetic, reflection padding, framing
and windowing, magnitude, square, erase mask, dB, normalisation. On CUDA these become three
passes, each one read and one write:

1. :func:`windowed_frames`: (B, S) int16 or float waveforms -> (B, F, N) float32 windowed frames,
   the time warp (roll + speed perturbation) and ``torch.stft``'s centre reflection padding
   folded into the read;
2. ``torch.fft.rfft`` -> (B, F, K) complex64, then :func:`power_erased`: ``re^2 + im^2``
   with the random-erasing boxes zeroed, (B, F, K) float32;
3. ``power @ fb`` -> (B, F, M), then :func:`db_normalised`: dB and ``(x - mean) / std``,
   written as (B, 1, M, F).

Each pass has a plain torch twin here (``use_programs=False``), which is also what runs on the
CPU; the Triton programs are in :mod:`.logmel_programs`. :func:`fused_front_end_enabled` is the
switch, the environment variable ``DCLS_AUDIO_FRONT_END``: ``auto`` (the default) runs the three
passes on CUDA tensors when Triton is present and the op-by-op chain elsewhere (the CPU keeps
the chain's exact result), ``reference`` keeps the op-by-op chain everywhere, ``fused`` runs the
passes everywhere (the programs on CUDA tensors when Triton is present, their torch twins
elsewhere). Under ``torch.compile`` the op-by-op chain is traced either way (the compiler fuses it).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from dcls_core._triton import next_power_of_2, triton_available

from .augment import EraseBoxes, SpeedDraws, apply_time_warp, erase_mask

__all__ = [
    "DEFAULT_FRONT_END",
    "FRONT_END_ENV_VAR",
    "db_normalised",
    "fused_front_end_enabled",
    "power_erased",
    "windowed_frames",
]

#: the front end's path: ``auto`` (unset: the passes on CUDA with Triton, the chain elsewhere),
#: ``reference`` (the op-by-op chain) or ``fused`` (the three passes)
FRONT_END_ENV_VAR = "DCLS_AUDIO_FRONT_END"
_MODES = ("auto", "reference", "fused")
#: the path when :data:`FRONT_END_ENV_VAR` is unset
DEFAULT_FRONT_END = "auto"
#: the time warp's float32 index product rounds exactly below this (see ``_round_half_even``)
_EXACT_INDEX = 2**22


def _mode() -> str:
    mode = os.environ.get(FRONT_END_ENV_VAR, "").strip().lower() or DEFAULT_FRONT_END
    if mode not in _MODES:
        raise ValueError(f"{FRONT_END_ENV_VAR}={mode!r}: expected one of {', '.join(_MODES)}")
    return mode


def fused_front_end_enabled(waveform: Tensor) -> bool:
    """Whether the front end runs as the three passes for ``waveform``, outside ``torch.compile``:
    with ``fused`` in :data:`FRONT_END_ENV_VAR` always, with ``auto`` (unset) for a CUDA
    ``waveform`` when Triton is present. The passes launch their Triton programs on CUDA tensors
    (when Triton is present) and run their torch twins elsewhere."""
    mode = _mode()
    if torch.compiler.is_compiling() or mode == "reference":
        return False
    return mode == "fused" or (waveform.is_cuda and triton_available())


def _programs():
    from . import logmel_programs

    return logmel_programs


def _use_programs(x: Tensor, use_programs: bool | None) -> bool:
    if use_programs is None:
        return x.is_cuda and triton_available()
    return use_programs


def windowed_frames(
    waveform: Tensor,
    window: Tensor,
    hop_length: int,
    shift: Tensor | None = None,
    speed: SpeedDraws | None = None,
    use_programs: bool | None = None,
) -> Tensor:
    """(B, S) int16 or floating waveforms -> (B, F, N) float32 windowed frames, F = S // hop + 1.

    Equals ``stft``'s framing of the warped clip: the clip as float32 (int16 / 2^15), rolled by
    ``shift`` (B,) and speed-perturbed by ``speed`` (:func:`~.augment.apply_time_warp`), padded
    by ``N // 2`` reflected samples each side, cut into frames of N = ``len(window)`` samples every
    ``hop_length``, each multiplied by ``window``. ``use_programs``: None picks the Triton program
    for CUDA tensors when Triton is present."""
    if waveform.ndim != 2:
        raise ValueError(f"windowed_frames: expected (batch, samples), got shape {tuple(waveform.shape)}")
    batch, length = waveform.shape
    n_fft = window.shape[0]
    if length <= n_fft // 2:
        raise ValueError(f"windowed_frames: {length} samples are too few for reflection padding of {n_fft // 2}")
    frames = length // hop_length + 1
    exact = 4 * length < _EXACT_INDEX  # |stretched * step| < 2 * (2 * length) stays exact
    if _use_programs(waveform, use_programs) and exact and batch > 0:
        x = waveform.contiguous()
        out = torch.empty((batch, frames, n_fft), dtype=torch.float32, device=x.device)
        window = window.to(device=x.device, dtype=torch.float32).contiguous()
        scale = 1.0 / 32768.0 if x.dtype == torch.int16 else 1.0
        rb, bk = 4, min(1024, next_power_of_2(n_fft))
        grid = (-(-batch * frames // rb), -(-n_fft // bk))
        dummy = window
        _programs().windowed_frames[grid](
            x,
            out,
            window,
            shift if shift is not None else dummy,
            speed.offset if speed is not None else dummy,
            speed.step if speed is not None else dummy,
            speed.end if speed is not None else dummy,
            batch * frames,
            frames,
            length,
            N=n_fft,
            HOP=hop_length,
            SCALE=scale,
            HAS_SHIFT=shift is not None,
            HAS_SPEED=speed is not None,
            RB=rb,
            BK=bk,
            enable_fp_fusion=False,
        )
        return out
    if waveform.dtype == torch.int16:
        x = waveform.float() / 32768.0
    else:
        x = waveform.float()
    x = apply_time_warp(x, shift, speed)
    padded = F.pad(x[:, None], (n_fft // 2, n_fft // 2), mode="reflect")[:, 0]
    return padded.unfold(-1, n_fft, hop_length) * window.to(x.device, torch.float32)


def power_erased(spec: Tensor, erase: EraseBoxes | None = None, use_programs: bool | None = None) -> Tensor:
    """(B, F, K) complex64 spectra -> (B, F, K) float32 power ``re^2 + im^2``; with ``erase``, the
    boxes (drawn for a (K, F) spectrogram: rows are frequency bins, columns frames) are 0."""
    if spec.ndim != 3 or spec.dtype != torch.complex64:
        raise ValueError(f"power_erased: expected (B, F, K) complex64, got {tuple(spec.shape)} {spec.dtype}")
    batch, frames, bins = spec.shape
    if _use_programs(spec, use_programs) and spec.numel() > 0:
        parts = torch.view_as_real(spec.contiguous())
        out = torch.empty((batch, frames, bins), dtype=torch.float32, device=spec.device)
        rb, bk = 4, min(1024, next_power_of_2(bins))
        grid = (-(-batch * frames // rb), -(-bins // bk))
        boxes = (erase.apply, erase.top, erase.left, erase.height, erase.width) if erase is not None else (out,) * 5
        _programs().power_erased[grid](
            parts, out, *boxes, batch * frames, frames, bins, HAS_ERASE=erase is not None, RB=rb, BK=bk
        )
        return out
    parts = torch.view_as_real(spec)
    power = parts[..., 0].square() + parts[..., 1].square()
    if erase is None:
        return power
    mask = erase_mask(erase, bins, frames, spec.device)  # (B, K, F)
    return power.masked_fill(mask.transpose(1, 2), 0.0)


def db_normalised(
    mel: Tensor, mean: float, std: float, amin: float = 1e-10, use_programs: bool | None = None
) -> Tensor:
    """(B, F, M) mel power -> (B, 1, M, F) float32 ``(10 * log10(max(mel, amin)) - mean) / std``,
    contiguous."""
    if mel.ndim != 3:
        raise ValueError(f"db_normalised: expected (B, F, M), got shape {tuple(mel.shape)}")
    batch, frames, mels = mel.shape
    if _use_programs(mel, use_programs) and mel.numel() > 0:
        src = mel.float().contiguous()
        out = torch.empty((batch, 1, mels, frames), dtype=torch.float32, device=mel.device)
        bf, bm = 64, 32
        grid = (-(-frames // bf), -(-mels // bm), batch)
        _programs().db_normalised[grid](src, out, frames, mels, float(amin), float(mean), float(std), BF=bf, BM=bm)
        return out
    db = 10.0 * torch.log10(torch.clamp(mel.float(), min=amin))
    return ((db - mean) / std).transpose(1, 2).unsqueeze(1).contiguous()
