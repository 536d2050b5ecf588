"""Resampling a signal that arrives in blocks, with the result of resampling it whole.

:func:`~dcls_audio.data.resample.resample` maps output block ``q`` (``M`` samples) from the input
samples ``[q L - width, q L + L + width)`` (``L``, ``M``: the rates divided by their gcd; zeros
outside the signal). :class:`StreamResampler` therefore cuts the input into segments of a fixed
number of blocks at fixed positions, each with ``context`` extra input samples (a multiple of
``L``, at least ``width``) on both sides, resamples each segment and keeps the blocks whose
inputs it holds in full. The segments depend only on the positions in the signal, not on how
the input was split into pushed blocks, so any split gives the same output, and that output
equals whole-signal resampling up to the rounding of the convolution (about 1e-7).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .resample import filter_width, resample

__all__ = ["SEGMENT_SAMPLES", "StreamResampler"]

#: Input samples per segment (rounded to whole blocks of ``L`` samples).
SEGMENT_SAMPLES = 1 << 16


class StreamResampler:
    """``orig_freq`` -> ``new_freq`` over a 1-D float32 signal pushed in blocks of any size.

    :meth:`push` returns the output samples that are complete so far (in pieces of about a
    segment, or nothing), :meth:`finish` the rest;
    their concatenation equals ``resample(whole_signal, orig_freq, new_freq)``, of length
    ``ceil(S * new_freq / orig_freq)``. Fewer than ``segment + 2 * context`` input samples
    plus the last pushed block are held at any time (:attr:`buffered`).
    """

    def __init__(self, orig_freq: int, new_freq: int, segment: int = SEGMENT_SAMPLES) -> None:
        self.orig_freq, self.new_freq = int(orig_freq), int(new_freq)
        g = math.gcd(self.orig_freq, self.new_freq)
        self._in, self._out = self.orig_freq // g, self.new_freq // g  # L, M
        self._identity = self.orig_freq == self.new_freq
        width = 0 if self._identity else filter_width(self.orig_freq, self.new_freq)
        self._context_blocks = math.ceil(width / self._in) + 1  # one block to spare
        # a step emits segment_blocks * M samples: bound it by the larger of input and output
        self._segment_blocks = max(1, segment // max(self._in, self._out))
        # the conceptual signal starts with ``context`` zeros, so every segment has left context
        self._buffer = np.zeros(0 if self._identity else self._context_blocks * self._in, np.float32)
        self._pending: list[np.ndarray] = []  # pushed after the buffer, not yet joined to it
        self._pending_len = 0
        self._pushed = 0
        self._emitted = 0
        self._finished = False

    @property
    def buffered(self) -> int:
        """Input samples held now."""
        return int(self._buffer.shape[0]) + self._pending_len

    def _join(self) -> None:
        if self._pending:
            self._buffer = np.concatenate([self._buffer, *self._pending])
            self._pending, self._pending_len = [], 0

    def _flush_identity(self) -> torch.Tensor:
        out = torch.from_numpy(np.concatenate(self._pending)) if self._pending else torch.zeros(0)
        self._pending, self._pending_len = [], 0
        self._emitted += out.shape[0]
        return out

    def _step(self, blocks: int, take: int) -> torch.Tensor:
        """Resample the buffer's first ``blocks + 2 context`` blocks (or all of it), keep ``take`` samples."""
        ctx = self._context_blocks
        segment = torch.from_numpy(self._buffer[: (blocks + 2 * ctx) * self._in])
        out = resample(segment, self.orig_freq, self.new_freq)[ctx * self._out : ctx * self._out + take]
        out = torch.from_numpy(out.numpy().copy())  # not a view of the whole segment's output
        self._buffer = self._buffer[blocks * self._in :].copy()
        self._emitted += out.shape[0]
        return out

    def push(self, samples: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Add (k,) float32 samples; returns the (m,) output samples now complete (m may be 0)."""
        if self._finished:
            raise RuntimeError("StreamResampler: push after finish")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._pushed += samples.shape[0]
        self._pending.append(samples)
        self._pending_len += samples.shape[0]
        if self._identity:  # pass the samples on in pieces of at least a segment
            return self._flush_identity() if self._pending_len >= self._segment_blocks else torch.zeros(0)
        full = (self._segment_blocks + 2 * self._context_blocks) * self._in
        if self.buffered < full:
            return torch.zeros(0)
        self._join()
        pieces = []
        while self._buffer.shape[0] >= full:
            pieces.append(self._step(self._segment_blocks, self._segment_blocks * self._out))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def finish(self) -> torch.Tensor:
        """The remaining (m,) output samples; the stream ends here."""
        if self._finished:
            raise RuntimeError("StreamResampler: finish called twice")
        self._finished = True
        if self._identity:
            return self._flush_identity()
        total = -(-self._out * self._pushed // self._in)  # ceil(S * M / L)
        self._join()
        out = self._step(self._buffer.shape[0] // self._in + 1, total - self._emitted)
        self._buffer = self._buffer[:0]
        return out
