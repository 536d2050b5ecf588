"""Writing test audio in containers libsndfile cannot write (m4a/AAC, webm/Opus) with PyAV's encoders."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def encoder_available(codec: str) -> bool:
    return codec in av.codecs_available


def write_with_pyav(path: Path, samples: np.ndarray, rate: int, container: str, codec: str) -> Path:
    """Encode float32 ``samples`` (channels, frames) in [-1, 1] at ``rate`` Hz into ``path``."""
    layout = {1: "mono", 2: "stereo"}[samples.shape[0]]
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        for start in range(0, samples.shape[1], 4096):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples[:, start : start + 4096]), format="fltp", layout=layout
            )
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path
