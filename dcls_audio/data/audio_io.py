"""Decoding audio files to mono float waveforms at the model's sampling rate, whole or block by block.

:class:`AudioStream` reads a file through :func:`~.audio_decode.open_audio` (libsndfile, else
FFmpeg through PyAV), averages the channels and resamples to ``target_sr`` with
:class:`~.stream_resample.StreamResampler`, one block at a time: memory does not grow with the
file's length. :func:`load_audio` concatenates a stream, :func:`read_head` stops after the first
samples. All three give the same samples for the same file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .audio_decode import AUDIO_EXTENSIONS, AudioReadError, AudioSource, open_audio
from .constants import INT16_SCALE, SAMPLE_RATE
from .stream_resample import StreamResampler

#: Largest sample magnitude accepted (full scale is 1). Float files may exceed full scale a
#: little; values far beyond it are not audio and overflow the float32 power spectrogram.
MAX_SAMPLE_MAGNITUDE = 1.0e4

__all__ = [
    "MAX_SAMPLE_MAGNITUDE",
    "AUDIO_EXTENSIONS",
    "AudioReadError",
    "AudioStream",
    "float_to_int16",
    "load_audio",
    "pad_or_trim",
    "read_head",
]


def mixdown(block: np.ndarray) -> np.ndarray:
    """float32 (frames, channels) -> (frames,) channel mean."""
    return np.ascontiguousarray(block.mean(axis=1, dtype=np.float32))


class AudioStream:
    """A file as mono float32 blocks at ``target_sr``: iterate once for (k,) tensors.

    ``sample_rate``: the file's own rate; after the iteration ends, ``num_samples``: the length
    at ``target_sr`` (``ceil(frames * target_sr / sample_rate)``). Raises ``FileNotFoundError``
    (missing path) and :class:`AudioReadError` (naming the file) when opening, and
    :class:`AudioReadError` while iterating for a decoding error, NaN or infinite samples, or a
    file without samples. ``backend``: see :func:`~.audio_decode.open_audio`.
    """

    def __init__(self, path: str | Path, target_sr: int = SAMPLE_RATE, backend: str = "auto") -> None:
        self.path = Path(path)
        self.target_sr = int(target_sr)
        self._source: AudioSource = open_audio(self.path, backend)
        self.sample_rate = self._source.sample_rate
        self.backend = self._source.backend
        self.num_samples: int | None = None
        self._resampler = StreamResampler(self.sample_rate, self.target_sr)

    @property
    def buffered(self) -> int:
        """Input samples the resampler holds now."""
        return self._resampler.buffered

    def __iter__(self) -> Iterator[torch.Tensor]:
        emitted = frames = 0
        try:
            for block in self._source.blocks():
                peak = float(np.abs(block).max(initial=0.0))  # one pass: NaN and inf come out too
                if not np.isfinite(peak):
                    raise AudioReadError(self.path, "it holds NaN or infinite samples")
                if peak > MAX_SAMPLE_MAGNITUDE:
                    raise AudioReadError(
                        self.path,
                        f"sample values reach {peak:.3g}: not audio (full scale is 1; the limit is "
                        f"{MAX_SAMPLE_MAGNITUDE:.0e}, above which the spectrogram overflows)",
                    )
                frames += block.shape[0]
                out = self._resampler.push(mixdown(block))
                if out.shape[0]:
                    emitted += out.shape[0]
                    yield out
            if frames == 0:
                raise AudioReadError(self.path, "it holds no samples")
            out = self._resampler.finish()
            if out.shape[0]:
                emitted += out.shape[0]
                yield out
            self.num_samples = emitted
        finally:
            self.close()

    def close(self) -> None:
        """Close the file (done when the iteration ends or stops early)."""
        self._source.close()


def load_audio(path: str | Path, target_sr: int = SAMPLE_RATE, backend: str = "auto") -> tuple[torch.Tensor, int]:
    """Decode ``path`` (any format of :data:`AUDIO_EXTENSIONS`) to a mono float32 waveform.

    Channels are averaged, then the waveform is resampled to ``target_sr`` (plain-torch
    windowed sinc, equal to torchaudio's ``resample``). Returns ``(waveform (S,),
    original_sample_rate)``. Raises ``FileNotFoundError`` for a missing path and
    :class:`AudioReadError` (naming the file) for anything that cannot be decoded, including
    truncated WAV files and NaN samples. The whole waveform is in memory: use
    :class:`AudioStream` for long files.
    """
    stream = AudioStream(path, target_sr, backend)
    blocks = list(stream)
    return torch.cat(blocks), stream.sample_rate


def read_head(
    path: str | Path, num_samples: int, target_sr: int = SAMPLE_RATE, backend: str = "auto"
) -> tuple[torch.Tensor, int]:
    """The first ``num_samples`` samples of :func:`load_audio` (fewer for a shorter file).

    Reading stops as soon as they are decoded, so the cost does not depend on the file's length.
    """
    stream = AudioStream(path, target_sr, backend)
    blocks, have = [], 0
    try:
        for block in stream:
            blocks.append(block)
            have += block.shape[0]
            if have >= num_samples:
                break
    finally:
        stream.close()
    return torch.cat(blocks)[:num_samples], stream.sample_rate


def pad_or_trim(waveform: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad at the end or cut the last axis to ``length`` samples. (..., S) -> (..., length)."""
    size = waveform.shape[-1]
    if size == length:
        return waveform
    if size > length:
        return waveform[..., :length]
    return torch.nn.functional.pad(waveform, (0, length - size))


def float_to_int16(waveform: torch.Tensor) -> torch.Tensor:
    """Float waveform in [-1, 1] -> int16 (clipped, scaled by 2^15 - 1 as PANNs does)."""
    return (waveform.clamp(-1.0, 1.0) * (INT16_SCALE - 1)).round().to(torch.int16)
