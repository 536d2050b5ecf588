"""Opening audio files block by block at their own sampling rate: libsndfile first, then FFmpeg.

:func:`open_audio` returns an :class:`AudioSource` whose :meth:`~AudioSource.blocks` yields
float32 arrays ``(frames, channels)`` in [-1, 1] as the file is read, so a file of any length
is decoded in bounded memory. Back ends:

- ``soundfile`` (libsndfile): wav, flac, ogg/vorbis/opus, mp3, aiff, caf, ...; integer PCM is
  scaled by ``1 / 2^(bits - 1)``.
- ``ffmpeg`` (PyAV, whose wheels carry FFmpeg): everything else FFmpeg demuxes, e.g. m4a/aac/mp4,
  webm, mkv, wma. Integer sample formats are scaled the same way, so a file both back ends read
  gives the same samples.

``backend="auto"`` tries libsndfile and falls back to FFmpeg when libsndfile cannot open the file
(a WAV whose data chunk is shorter than its header declares is reported as truncated, not
handed to FFmpeg). Every failure to open or decode is an :class:`AudioReadError` naming the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from ..errors import UsageError

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioReadError",
    "AudioSource",
    "BACKENDS",
    "BLOCK_FRAMES",
    "PyAVSource",
    "SoundFileSource",
    "frame_to_array",
    "import_av",
    "open_audio",
]

BACKENDS = ("auto", "soundfile", "ffmpeg")

#: File name endings that folder scans (``infer``, ``pack``) pick up, lower case.
#: The first group is read by libsndfile, the second by FFmpeg through PyAV.
AUDIO_EXTENSIONS = (
    ".wav",
    ".wave",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".aif",
    ".aiff",
    ".aifc",
    ".au",
    ".caf",
    ".w64",
    ".m4a",
    ".m4b",
    ".aac",
    ".mp4",
    ".mov",
    ".3gp",
    ".webm",
    ".mkv",
    ".mka",
    ".wma",
    ".asf",
    ".ac3",
    ".amr",
    ".ape",
    ".wv",
    ".mp2",
    ".spx",
)

#: Frames per block read through libsndfile.
BLOCK_FRAMES = 1 << 16

_PYAV_HINT = "formats libsndfile cannot read (m4a, aac, mp4, webm, ...) need PyAV: pip install av"


class AudioReadError(UsageError):
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


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _soundfile_reason(exc: Exception) -> str:
    """What went wrong, without libsndfile's "Error opening '<path>': " prefix."""
    if isinstance(exc, sf.LibsndfileError) and exc.prefix.startswith("Error opening "):
        return _one_line(exc.error_string)
    return _one_line(str(exc)) or type(exc).__name__


def _ffmpeg_reason(exc: Exception) -> str:
    """An FFmpeg error's text without the file name PyAV appends."""
    return _one_line(getattr(exc, "strerror", None) or str(exc)) or type(exc).__name__


# libsndfile notes a data chunk shorter than its header as "data : <size> (should be <n>)".
# Streaming writers put 0 or 0xFFFFFFFF there on purpose; those files are complete.
_SHORT_DATA_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _check_not_truncated(path: Path, extra_info: str) -> None:
    match = _SHORT_DATA_CHUNK.search(extra_info or "")
    if match is None:
        return
    declared, actual = int(match.group(1)), int(match.group(2))
    if 0 < declared < 0xFFFFFFF0 and actual < declared:
        raise AudioReadError(path, f"truncated (data chunk holds {actual} of the {declared} bytes its header declares)")


class AudioSource:
    """An open audio file: ``path``, ``backend``, ``sample_rate`` (Hz) and ``channels``.

    :meth:`blocks` yields float32 ``(frames, channels)`` arrays in file order; use it once,
    then :meth:`close`.
    """

    path: Path
    backend: str
    sample_rate: int
    channels: int

    def blocks(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SoundFileSource(AudioSource):
    """libsndfile through soundfile; blocks of :data:`BLOCK_FRAMES` frames."""

    backend = "soundfile"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = sf.SoundFile(str(path))
        try:
            _check_not_truncated(path, self._file.extra_info)
        except AudioReadError:
            self._file.close()
            raise
        self.sample_rate = int(self._file.samplerate)
        self.channels = int(self._file.channels)

    def blocks(self) -> Iterator[np.ndarray]:
        while True:
            try:
                data = self._file.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
            except Exception as exc:  # LibsndfileError, RuntimeError
                raise AudioReadError(self.path, _soundfile_reason(exc)) from exc
            if data.shape[0] == 0:
                return
            yield data

    def close(self) -> None:
        self._file.close()


# Integer sample formats -> the factor that maps them to [-1, 1) (as libsndfile does).
_INT_SCALE = {np.dtype(np.int16): 2.0**-15, np.dtype(np.int32): 2.0**-31, np.dtype(np.int64): 2.0**-63}


def frame_to_array(frame) -> np.ndarray:
    """A PyAV ``AudioFrame`` -> float32 ``(samples, channels)`` in [-1, 1], packed or planar alike."""
    data = frame.to_ndarray()
    channels = frame.layout.nb_channels
    data = data.T if frame.format.is_planar else data.reshape(-1, channels)
    if data.dtype == np.uint8:
        return ((data.astype(np.float32) - np.float32(128)) * np.float32(1 / 128)).astype(np.float32)
    if data.dtype in _INT_SCALE:
        return data.astype(np.float32) * np.float32(_INT_SCALE[data.dtype])
    return np.ascontiguousarray(data, dtype=np.float32)


def import_av(path: Path | None = None):
    """``import av``, or an :class:`AudioReadError` for ``path`` saying how to install it."""
    try:
        import av
    except ImportError as exc:
        if path is None:
            raise
        raise AudioReadError(path, _PYAV_HINT) from exc
    return av


class PyAVSource(AudioSource):
    """FFmpeg through PyAV: the container's first audio stream, one block per decoded frame."""

    backend = "ffmpeg"

    def __init__(self, path: Path) -> None:
        av = import_av(path)
        self.path = path
        self._errors = (av.FFmpegError,)
        try:
            self._container = av.open(str(path), mode="r", metadata_errors="ignore")
        except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
            raise AudioReadError(path, _ffmpeg_reason(exc)) from exc
        audio = self._container.streams.audio
        if len(audio) == 0:
            self._container.close()
            raise AudioReadError(path, "it holds no audio stream")
        self._stream = audio[0]
        context = self._stream.codec_context
        self.sample_rate = int(context.sample_rate or self._stream.rate or 0)
        self.channels = int(context.channels or 0)
        if self.sample_rate <= 0:
            self._container.close()
            raise AudioReadError(path, "its audio stream has no sample rate")

    def blocks(self) -> Iterator[np.ndarray]:
        try:
            for packet in self._container.demux(self._stream):
                for frame in packet.decode():
                    if frame.sample_rate != self.sample_rate:
                        raise AudioReadError(
                            self.path, f"the sample rate changes from {self.sample_rate} to {frame.sample_rate} Hz"
                        )
                    yield frame_to_array(frame)
        except self._errors as exc:
            raise AudioReadError(self.path, _ffmpeg_reason(exc)) from exc

    def close(self) -> None:
        self._container.close()


def open_audio(path: str | Path, backend: str = "auto") -> AudioSource:
    """Open ``path`` for block-wise decoding (see the module docstring for ``backend``).

    Raises ``FileNotFoundError`` for a missing path, ``ValueError`` for an unknown back end and
    :class:`AudioReadError` when no back end can open the file; with ``auto`` its reason gives
    both back ends' reasons, or says to ``pip install av`` when PyAV is missing.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    sf_reason = None
    if backend in ("auto", "soundfile"):
        try:
            return SoundFileSource(path)
        except AudioReadError:
            raise
        except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
            sf_reason = _soundfile_reason(exc)
            if backend == "soundfile":
                raise AudioReadError(path, sf_reason) from exc
    try:
        return PyAVSource(path)
    except AudioReadError as exc:
        if sf_reason is None:
            raise
        if exc.reason == _PYAV_HINT:
            raise AudioReadError(path, f"{sf_reason} ({_PYAV_HINT})") from exc
        raise AudioReadError(path, f"libsndfile: {sf_reason}; FFmpeg: {exc.reason}") from exc
