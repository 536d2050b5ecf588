"""Waveform batch -> normalised log-mel batch, with the upstream train-time augmentations."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..data.audio_io import pad_or_trim
from ..data.constants import CLIP_SAMPLES, INT16_SCALE, LOGMEL_MEAN, LOGMEL_STD, SAMPLE_RATE
from .augment import AugmentConfig, FrontEndDraws, apply_erase, apply_time_warp, sample_front_end
from .logmel_passes import db_normalised, fused_front_end_enabled, power_erased, windowed_frames
from .spectral import AmplitudeToDB, MelScale, Spectrogram

__all__ = ["LogMelFrontEnd"]


class LogMelFrontEnd(nn.Module):
    """(B, S) waveforms at 32 kHz (int16 or float in [-1, 1]) -> (B, 1, 128, 1001) log-mel.

    Chain: int16 / 2^15, pad/cut to ``clip_samples``; [train: random roll, speed perturbation];
    ``Spectrogram(n_fft=1024, hop_length=320, power=2)``; [train: random erasing on the power
    spectrogram]; ``MelScale(128, 32000, 50, 14000, n_stft=513)``; ``AmplitudeToDB()``;
    ``(x - mean) / std``. Augmentations run only in ``.train()`` mode and when ``augment`` is
    enabled. The whole chain runs in fp32 with autocast disabled.

    On CUDA with Triton (and everywhere with ``DCLS_AUDIO_FRONT_END=fused``) the chain runs as
    three fused passes around the FFT and the mel product (:mod:`.logmel_passes`: the same result
    up to float32 rounding); on the CPU, with ``DCLS_AUDIO_FRONT_END=reference`` and always under
    ``torch.compile``, it runs op by op as written above.

    ``seed`` seeds a private CPU generator for the augmentation draws (use a different seed
    per rank under DDP); ``None`` uses torch's global RNG.
    """

    def __init__(
        self,
        augment: bool | Mapping[str, Any] | AugmentConfig | None = True,
        sample_rate: int = SAMPLE_RATE,
        clip_samples: int = CLIP_SAMPLES,
        n_fft: int = 1024,
        hop_length: int = 320,
        n_mels: int = 128,
        f_min: float = 50.0,
        f_max: float = 14000.0,
        mean: float = LOGMEL_MEAN,
        std: float = LOGMEL_STD,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.augment = AugmentConfig.from_any(augment)
        self.clip_samples = clip_samples
        self.mean = mean
        self.std = std
        self.spectrogram = Spectrogram(n_fft=n_fft, hop_length=hop_length, power=2.0)
        self.mel_scale = MelScale(
            n_mels=n_mels, sample_rate=sample_rate, f_min=f_min, f_max=f_max, n_stft=n_fft // 2 + 1
        )
        self.to_db = AmplitudeToDB(stype="power")
        self.generator: torch.Generator | None = None
        if seed is not None:
            self.set_seed(seed)

    def set_seed(self, seed: int) -> None:
        """Reseed the augmentation generator (a CPU generator: the draws are the same on every device)."""
        self.generator = torch.Generator().manual_seed(int(seed))

    def power_shape(self) -> tuple[int, int]:
        """(frequency bins, frames) of the power spectrogram of one clip."""
        spec = self.spectrogram
        samples = self.clip_samples + 2 * getattr(spec, "pad", 0)
        if getattr(spec, "center", True):
            frames = samples // spec.hop_length + 1
        else:
            frames = (samples - spec.n_fft) // spec.hop_length + 1
        return spec.n_fft // 2 + 1, frames

    def sample_augmentations(self, batch: int) -> FrontEndDraws | None:
        """This step's augmentation draws (CPU tensors) for ``batch`` clips, from the front end's
        generator; None when not augmenting. Pass them (moved with ``.to(device)``) to
        :meth:`forward` to keep the host-side drawing outside a compiled region."""
        cfg = self.augment if self.augmenting else None
        if cfg is None:
            return None
        return sample_front_end(
            batch,
            self.clip_samples,
            roll=cfg.roll,
            speed=(cfg.speed_rates, cfg.speed_p) if cfg.speed else None,
            erase=(self.power_shape(), cfg.erase_p) if cfg.erase else None,
            generator=self.generator,
        )

    @property
    def augmenting(self) -> bool:
        return self.training and self.augment is not None

    @staticmethod
    def to_float(waveform: torch.Tensor) -> torch.Tensor:
        """int16 -> float32 / 2^15; floating input -> float32 unchanged."""
        if waveform.dtype == torch.int16:
            return waveform.float() / INT16_SCALE
        if torch.is_floating_point(waveform):
            return waveform.float()
        raise TypeError(f"LogMelFrontEnd: waveform must be int16 or floating, got {waveform.dtype}")

    def forward(self, waveform: torch.Tensor, draws: FrontEndDraws | None = None) -> torch.Tensor:
        """``draws``: this step's augmentation draws on the waveform's device (see
        :meth:`sample_augmentations`); None draws them here when augmenting. Ignored in eval mode."""
        if waveform.ndim != 2:
            raise ValueError(f"LogMelFrontEnd: expected (batch, samples), got shape {tuple(waveform.shape)}")
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            if waveform.dtype != torch.int16 and not torch.is_floating_point(waveform):
                raise TypeError(f"LogMelFrontEnd: waveform must be int16 or floating, got {waveform.dtype}")
            if not self.augmenting:
                draws = None
            elif draws is None:
                draws = self.sample_augmentations(waveform.shape[0]).to(waveform.device)  # one non-blocking copy
            if self._fusable() and fused_front_end_enabled(waveform):
                return self._fused(waveform, draws)
            x = pad_or_trim(self.to_float(waveform), self.clip_samples)
            if draws is not None:
                x = apply_time_warp(x, draws.shift, draws.speed)
            power = self.spectrogram(x)
            if draws is not None and draws.erase is not None:
                if tuple(power.shape[-2:]) != draws.erase_shape:
                    raise ValueError(
                        f"LogMelFrontEnd: erase boxes drawn for {draws.erase_shape}, "
                        f"spectrogram is {tuple(power.shape[-2:])}"
                    )
                power = apply_erase(power, draws.erase)
            logmel = self.to_db(self.mel_scale(power))
            return ((logmel - self.mean) / self.std).unsqueeze(1)

    def _fusable(self) -> bool:
        """Whether this front end's settings are those the fused passes implement."""
        spec, to_db = self.spectrogram, self.to_db
        return (
            spec.win_length == spec.n_fft
            and spec.center
            and spec.pad_mode == "reflect"
            and spec.pad == 0
            and spec.power == 2.0
            and not spec.normalized
            and spec.onesided
            and to_db.stype == "power"
            and to_db.top_db is None
            and to_db.db_multiplier == 0.0
        )

    def _fused(self, waveform: torch.Tensor, draws: FrontEndDraws | None) -> torch.Tensor:
        """forward's chain as :mod:`.logmel_passes`' three passes; ``waveform`` (B, clip_samples)."""
        if waveform.shape[-1] != self.clip_samples:
            waveform = pad_or_trim(waveform, self.clip_samples)
        shift = draws.shift if draws is not None else None
        speed = draws.speed if draws is not None else None
        erase = draws.erase if draws is not None else None
        if erase is not None and draws.erase_shape != self.power_shape():
            raise ValueError(
                f"LogMelFrontEnd: erase boxes drawn for {draws.erase_shape}, spectrogram is {self.power_shape()}"
            )
        # Triton launches on the current device: make it the batch's (cuda:1 from a cuda:0 process)
        on_device = torch.cuda.device(waveform.device) if waveform.is_cuda else contextlib.nullcontext()
        with on_device:
            frames = windowed_frames(waveform, self.spectrogram.window, self.spectrogram.hop_length, shift, speed)
            spec = torch.fft.rfft(frames)  # (B, F, n_fft // 2 + 1)
            del frames
            power = power_erased(spec, erase)
            del spec
            mel = torch.matmul(power, self.mel_scale.fb)  # (B, F, n_mels)
            return db_normalised(mel, self.mean, self.std, self.to_db.amin)

    def extra_repr(self) -> str:
        return f"clip_samples={self.clip_samples}, mean={self.mean}, std={self.std}, augment={self.augment}"
