"""Decoding audio files to mono float waveforms at the model's sampling rate."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from .constants import INT16_SCALE, SAMPLE_RATE


class AudioReadError(ValueError):
    """An audio file exists but cannot be decoded (corrupt, truncated, unsupported).

    ``path``: the file; ``reason``: why, without the path. The message is
    ``cannot decode audio file <path>: <reason>``.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot decode audio file {path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.path, self.reason)


def _decoder_reason(exc: Exception) -> str:
    """What went wrong, without libsndfile's "Error opening '<path>': " prefix."""
    if isinstance(exc, sf.LibsndfileError) and exc.prefix.startswith("Error opening "):
        return exc.error_string
    return str(exc)


# libsndfile notes a data chunk shorter than its header as "data : <size> (should be <n>)".
# Streaming writers put 0 or 0xFFFFFFFF there on purpose; those files are complete.
_SHORT_DATA_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _check_not_truncated(path: Path, info: sf._SoundFileInfo) -> None:
    match = _SHORT_DATA_CHUNK.search(info.extra_info or "")
    if match is None:
        return
    declared, actual = int(match.group(1)), int(match.group(2))
    if 0 < declared < 0xFFFFFFF0 and actual < declared:
        raise AudioReadError(
            path, f"truncated (data chunk holds {actual} of the {declared} bytes its header declares)"
        )


def load_audio(path: str | Path, target_sr: int = SAMPLE_RATE) -> tuple[torch.Tensor, int]:
    """Decode ``path`` (wav, flac, ogg, mp3, ... through soundfile) to a mono float32 waveform.

    Channels are averaged, then the waveform is resampled to ``target_sr`` with
    ``torchaudio.functional.resample``. Returns ``(waveform (S,), original_sample_rate)``.
    Raises ``FileNotFoundError`` for a missing path and :class:`AudioReadError` (naming the
    file) for anything soundfile cannot decode, including truncated WAV files.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        info = sf.info(str(path))
        _check_not_truncated(path, info)
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except AudioReadError:
        raise
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise AudioReadError(path, _decoder_reason(exc)) from exc
    if data.shape[0] == 0:
        raise AudioReadError(path, "it holds no samples")
    mono = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1, dtype=np.float32)))
    if sr != target_sr:
        mono = AF.resample(mono, orig_freq=int(sr), new_freq=int(target_sr))
    return mono, int(sr)


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
