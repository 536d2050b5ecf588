"""10 s analysis windows over a 32 kHz signal, cut from a whole waveform or from a stream of blocks.

A signal of ``N`` samples gives windows starting at ``0, hop, 2 hop, ...`` while the window ends
before the signal does, then one aligned to the end (:func:`window_starts`); a signal no longer
than a window gives one zero-padded window. :class:`WindowCutter` cuts the same windows from a
signal pushed block by block, holding at most ``window + block`` samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..data.constants import CLIP_SAMPLES, SAMPLE_RATE
from ..errors import UsageError

__all__ = ["WindowCutter", "cut_windows", "hop_samples", "window_starts"]


def hop_samples(hop_s: float, what: str = "hop") -> int:
    """The step between window starts, ``hop_s`` seconds, in samples at 32 kHz (at least 1).

    Raises ValueError naming ``what`` (the argument or option) for a hop that is not a finite
    number of seconds or rounds to less than one sample.
    """
    samples = round(hop_s * SAMPLE_RATE) if math.isfinite(hop_s) else 0
    if samples < 1:
        raise UsageError(
            f"{what} must be a positive number of seconds of at least one sample (1/{SAMPLE_RATE} s), got {hop_s}"
        )
    return samples


def _check_window_hop(window: int, hop: int) -> None:
    if window < 1 or hop < 1:
        raise UsageError(f"window and hop must be positive, got window={window}, hop={hop}")


def window_starts(num_samples: int, window: int = CLIP_SAMPLES, hop: int = CLIP_SAMPLES // 2) -> list[int]:
    """First sample of each window over a signal of ``num_samples`` samples.

    ``num_samples <= window``: ``[0]`` (one window, zero-padded). Otherwise ``0, hop, 2 hop, ...``
    while the window ends before the signal does, then ``num_samples - window``: the last
    window is aligned to the end, so ``ceil((num_samples - window) / hop) + 1`` windows.
    """
    if num_samples < 1:
        raise UsageError(f"num_samples must be positive, got {num_samples}")
    _check_window_hop(window, hop)
    if num_samples <= window:
        return [0]
    last = num_samples - window
    count = math.ceil(last / hop)
    return [k * hop for k in range(count)] + [last]


def cut_windows(
    sources: Sequence[tuple[torch.Tensor, int]], window: int = CLIP_SAMPLES, pin_memory: bool = False
) -> torch.Tensor:
    """Windows ``(waveform (S,), start)`` -> (len(sources), window), zero-padded past each end.

    ``pin_memory`` allocates the batch in pinned memory so a copy to the GPU can overlap.
    """
    out = torch.zeros(len(sources), window, pin_memory=pin_memory)
    for row, (waveform, start) in enumerate(sources):
        piece = waveform[start : start + window]
        out[row, : piece.shape[0]] = piece
    return out


class WindowCutter:
    """The windows of :func:`window_starts` from a signal that arrives in blocks.

    :meth:`push` returns ``(start, samples (window,))`` for each window known to be complete:
    a regular start ``k * hop`` as soon as more than ``start + window`` samples have arrived
    (then ``k * hop < N - window`` whatever the final length ``N``); :meth:`finish` returns the
    window aligned to the end (zero-padded when ``N <= window``). The windows equal
    ``cut_windows`` over the whole signal. ``num_samples``: samples pushed so far;
    ``max_buffered``: the most samples held at once (at most ``window`` + the largest block).
    Buffers are numpy arrays: plain single-threaded copies.
    """

    def __init__(self, window: int = CLIP_SAMPLES, hop: int = CLIP_SAMPLES // 2) -> None:
        _check_window_hop(window, hop)
        self.window, self.hop = window, hop
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start = 0  # signal index of self._buffer[0]
        self._next_start = 0
        self.num_samples = 0
        self.max_buffered = 0

    def _slice(self, start: int) -> torch.Tensor:
        lo = start - self._buffer_start
        return torch.from_numpy(self._buffer[lo : lo + self.window].copy())

    def push(self, block: torch.Tensor | np.ndarray) -> list[tuple[int, torch.Tensor]]:
        """Add (k,) samples; returns the windows completed by them, in order."""
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        self._buffer = np.concatenate([self._buffer, block])
        self.num_samples += block.shape[0]
        self.max_buffered = max(self.max_buffered, self._buffer.shape[0])
        out = []
        while self._next_start + self.window < self.num_samples:
            out.append((self._next_start, self._slice(self._next_start)))
            self._next_start += self.hop
        # keep what the next regular window and a window aligned to the end may still need
        keep_from = max(self._buffer_start, min(self._next_start, self.num_samples - self.window))
        if keep_from > self._buffer_start:
            self._buffer = self._buffer[keep_from - self._buffer_start :].copy()
            self._buffer_start = keep_from
        return out

    def finish(self) -> list[tuple[int, torch.Tensor]]:
        """The last window (``[(0, zero-padded)]`` for a signal no longer than a window)."""
        if self.num_samples < 1:
            raise UsageError("WindowCutter: no samples were pushed")
        if self.num_samples <= self.window:
            padded = torch.zeros(self.window)
            padded[: self.num_samples] = torch.from_numpy(self._buffer[: self.num_samples].copy())
            return [(0, padded)]
        return [(self.num_samples - self.window, self._slice(self.num_samples - self.window))]
