"""How a 10 s clip is stored: raw int16 (``pcm``), FLAC bytes (``flac``) or Ogg Opus bytes (``opus``).

- ``pcm``: the PANNs layout, int16 (clip_samples,), nothing to decode.
- ``flac``: lossless (libsndfile, 16 bit, 32 kHz mono): decoding gives the int16 samples back
  bit for bit.
- ``opus``: lossy, Ogg Opus through FFmpeg's libopus (PyAV), mono, VBR at
  :data:`OPUS_BITRATE` bit/s. Opus codes at 48 kHz only (32 kHz is not one of its rates), so the
  clip is resampled 32 -> 48 kHz before encoding and 48 -> 32 kHz after decoding, both with
  :func:`~.resample.resample`. Packets hold :data:`OPUS_PACKET_MS` of audio (three 20 ms
  frames) rather than libopus's default 20 ms: decoding makes a third of the calls and costs
  a fifth to a quarter less CPU per clip. At the same bit rate these packets come out 5-15 % smaller
  and a little coarser on the demo sounds, so the rate is 72 kbit/s instead of the 64 kbit/s at
  which Xiph's recommended settings put fullband music (libopus codes the full 20 kHz band
  there, above the 14 kHz top of the log-mel front end): about the same bytes as 64 kbit/s in
  20 ms packets and a log-mel error no larger (demo sounds: 0.85-1.3 dB mean). That is about
  84 kB per 10 s clip, 1/7.6 of the 640 kB of int16, i.e. ~170 GB for 2 M clips (``--bitrate``
  changes it). PaSST keeps AudioSet as MP3 bytes in HDF5 for the same storage reason. Any Ogg
  Opus packet size decodes.

:func:`encode_clip` and :func:`decode_clip_bytes` are the two directions; a decoded clip is
int16 (clip_samples,), padded with zeros or cut to length, and a clip that cannot be decoded
(corrupt bytes, NaN or huge values) raises :class:`ClipDecodeError`. :func:`check_encoder`
tells, before any work, whether this machine can encode a codec.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from ..errors import UsageError
from .constants import INT16_SCALE, SAMPLE_RATE

__all__ = [
    "CODECS",
    "ClipDecodeError",
    "OPUS_BITRATE",
    "OPUS_PACKET_MS",
    "OPUS_RATE",
    "check_encoder",
    "decode_clip_bytes",
    "encode_clip",
]

CODECS = ("pcm", "flac", "opus")
#: Opus bit rate (bit/s, VBR, mono); see the module docstring for the choice
OPUS_BITRATE = 72_000
#: milliseconds of audio per Ogg Opus packet (libopus ``frame_duration``), see the module docstring
OPUS_PACKET_MS = 60
#: the rate Opus codes at
OPUS_RATE = 48_000
#: decoded values beyond this many times full scale are not audio (the same limit as audio_io)
_MAX_MAGNITUDE = 1.0e4


class ClipDecodeError(ValueError):
    """Stored bytes that do not decode to a clip; ``reason`` says why (one line)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _resample(wave: np.ndarray, orig: int, new: int) -> np.ndarray:
    from .resample import resample

    return resample(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), orig, new).numpy()


def _to_int16(wave: np.ndarray, clip_samples: int) -> np.ndarray:
    """float32 in [-1, 1] -> int16 (clip_samples,), zero-padded or cut; checks the values first."""
    peak = float(np.abs(wave).max(initial=0.0))
    if not np.isfinite(peak):
        raise ClipDecodeError("it decodes to NaN or infinite samples")
    if peak > _MAX_MAGNITUDE:
        raise ClipDecodeError(f"it decodes to sample values of {peak:.3g} (full scale is 1): not audio")
    out = np.zeros(clip_samples, dtype=np.int16)
    n = min(clip_samples, len(wave))
    out[:n] = np.clip(np.round(wave[:n] * 32768.0), -32768, 32767).astype(np.int16)
    return out


def _fit(samples: np.ndarray, clip_samples: int) -> np.ndarray:
    out = np.zeros(clip_samples, dtype=np.int16)
    n = min(clip_samples, len(samples))
    out[:n] = samples[:n]
    return out


def _encode_flac(clip: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, clip, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def _encode_opus(clip: np.ndarray, sample_rate: int, bitrate: int) -> bytes:
    import av

    wave = _resample(clip.astype(np.float32) / np.float32(INT16_SCALE), sample_rate, OPUS_RATE)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as container:
        options = {"frame_duration": str(OPUS_PACKET_MS)}
        stream = container.add_stream("libopus", rate=OPUS_RATE, layout="mono", options=options)
        stream.bit_rate = int(bitrate)
        frame = av.AudioFrame.from_ndarray(wave[None, :], format="flt", layout="mono")
        frame.sample_rate = OPUS_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def encode_clip(clip: np.ndarray, codec: str, bitrate: int = OPUS_BITRATE, sample_rate: int = SAMPLE_RATE) -> bytes:
    """int16 (S,) at ``sample_rate`` -> the stored bytes of ``codec`` (``flac`` or ``opus``)."""
    clip = np.ascontiguousarray(clip, dtype=np.int16)
    if codec == "flac":
        return _encode_flac(clip, sample_rate)
    if codec == "opus":
        return _encode_opus(clip, sample_rate, bitrate)
    raise UsageError(f"codec must be flac or opus to encode bytes, got {codec!r}")


def _decode_flac(data: bytes, clip_samples: int) -> np.ndarray:
    import soundfile as sf

    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - libsndfile reports corrupt bytes in several ways
        raise ClipDecodeError(f"not FLAC bytes libsndfile can decode ({' '.join(str(exc).split())})") from None
    if rate != SAMPLE_RATE or samples.shape[1] != 1:
        raise ClipDecodeError(f"FLAC of {rate} Hz x {samples.shape[1]} channels, expected {SAMPLE_RATE} Hz mono")
    return _fit(samples[:, 0], clip_samples)


def _decode_opus(data: bytes, clip_samples: int) -> np.ndarray:
    import av

    try:
        with av.open(io.BytesIO(data), "r", format="ogg") as container:
            if not container.streams.audio:
                raise ClipDecodeError("Ogg bytes without an audio stream")
            blocks = [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
    except av.FFmpegError as exc:
        raise ClipDecodeError(f"not Ogg Opus bytes FFmpeg can decode ({' '.join(str(exc).split())})") from None
    if not blocks:
        raise ClipDecodeError("Ogg Opus bytes without any audio frame")
    wave = np.concatenate(blocks).astype(np.float32, copy=False)
    return _to_int16(_resample(wave, OPUS_RATE, SAMPLE_RATE), clip_samples)


def decode_clip_bytes(data: bytes | np.ndarray, codec: str, clip_samples: int) -> np.ndarray:
    """Stored bytes of ``codec`` -> int16 (clip_samples,); :class:`ClipDecodeError` if they do not decode."""
    data = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if not data:
        raise ClipDecodeError("no bytes stored")
    if codec == "flac":
        return _decode_flac(data, clip_samples)
    if codec == "opus":
        return _decode_opus(data, clip_samples)
    raise UsageError(f"unknown codec {codec!r} (known: {', '.join(CODECS)})")


def check_encoder(codec: str, bitrate: int = OPUS_BITRATE) -> None:
    """Raise ``ValueError`` (one line, saying what is missing) unless this machine encodes ``codec``.

    Encodes and decodes a short test signal, so a library without the encoder is found before
    any work.
    """
    if codec not in CODECS:
        raise UsageError(f"--codec must be one of {', '.join(CODECS)}, got {codec!r}")
    if codec == "pcm":
        return
    if codec == "opus" and not 6_000 <= int(bitrate) <= 510_000:
        raise UsageError(f"--bitrate must be between 6000 and 510000 bit/s for Opus, got {bitrate}")
    probe = (np.sin(np.arange(SAMPLE_RATE // 10) * 0.05) * 8000).astype(np.int16)
    try:
        data = encode_clip(probe, codec, bitrate)
        decode_clip_bytes(data, codec, len(probe))
    except ImportError as exc:
        raise UsageError(f"--codec {codec}: this machine cannot encode it ({exc}; pip install av soundfile)") from None
    except Exception as exc:  # noqa: BLE001 - any library failure means: cannot encode here
        raise UsageError(f"--codec {codec}: this machine cannot encode it ({' '.join(str(exc).split())})") from None
