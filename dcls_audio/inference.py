"""Tagging audio files: 10 s windows, batched scoring on one device, per-file aggregation.

A file of any length becomes one or more 10 s windows at 32 kHz (:func:`window_starts`):
a file shorter than a window gives one zero-padded window; a longer one gives windows every
``hop`` samples, the last one aligned to the end of the file. :class:`AudioTagger` turns a
batch of windows into class probabilities (log-mel front end in fp32, classifier in the
chosen precision, sigmoid). :func:`tag_files` streams files through it: files are decoded
(optionally in worker processes), their windows are batched together across files, and one
:class:`FileTags` (or :class:`FileFailure` for a file that cannot be decoded) is yielded
per input, in input order.
"""
from __future__ import annotations

import contextlib
import math
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from dcls_audio.data import CLIP_SAMPLES, SAMPLE_RATE, AudioReadError, LogMelFrontEnd, load_audio
from dcls_audio.models import dcls_layers, fold_dcls

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AGGREGATIONS = ("max", "mean")
DEFAULT_HOP_S = 5.0


# -- windows ---------------------------------------------------------------------------------
def hop_samples(hop_s: float, what: str = "hop") -> int:
    """The step between window starts, ``hop_s`` seconds, in samples at 32 kHz (at least 1).

    Raises ValueError naming ``what`` (the argument or option) for a hop that is not a finite
    number of seconds or rounds to less than one sample.
    """
    samples = round(hop_s * SAMPLE_RATE) if math.isfinite(hop_s) else 0
    if samples < 1:
        raise ValueError(
            f"{what} must be a positive number of seconds of at least one sample "
            f"(1/{SAMPLE_RATE} s), got {hop_s}"
        )
    return samples


def window_starts(num_samples: int, window: int = CLIP_SAMPLES, hop: int = CLIP_SAMPLES // 2) -> list[int]:
    """First sample of each window over a signal of ``num_samples`` samples.

    ``num_samples <= window``: ``[0]`` (one window, zero-padded). Otherwise ``0, hop, 2 hop, ...``
    while the window ends before the signal does, then ``num_samples - window``: the last
    window is aligned to the end, so ``ceil((num_samples - window) / hop) + 1`` windows.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    if window < 1 or hop < 1:
        raise ValueError(f"window and hop must be positive, got window={window}, hop={hop}")
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


# -- results ---------------------------------------------------------------------------------
@dataclass
class FileTags:
    """Scores of one file.

    ``window_spans_s``: (start_s, end_s) of each window's audio (the end is capped at the end
    of the file); ``window_scores``: (num_windows, C) probabilities; ``scores``: (C,) the
    aggregate over windows (max or mean).
    """

    file: str
    duration_s: float
    sample_rate: int
    window_spans_s: list[tuple[float, float]]
    window_scores: torch.Tensor
    scores: torch.Tensor


@dataclass
class FileFailure:
    """A file that could not be tagged, and why (one line)."""

    file: str
    reason: str

    def message(self) -> str:
        return f"{self.file}: {self.reason}"


# -- the scoring engine ----------------------------------------------------------------------
def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU; anything else as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available")
    return device


def check_precision(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for ``precision`` (fp32, bf16, fp16); half precisions need CUDA."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if precision != "fp32" and device.type != "cuda":
        raise ValueError(f"precision {precision} needs a CUDA device; the device is {device} (use fp32)")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision bf16 is not supported by this GPU (use fp16 or fp32)")
    return PRECISIONS[precision]


class AudioTagger:
    """Front end + classifier on one device: waveforms (B, 320000) at 32 kHz -> (B, C) probabilities.

    The model is put in eval mode. ``fold=True`` replaces its DCLS layers by the equivalent
    dense ``nn.Conv2d`` (same kernel, same scores); ``fold=None`` (auto) folds on the CPU and
    keeps the DCLS layers on CUDA, where in eval mode they build their kernel once and run it
    through ``dcls_core``'s depthwise kernel, faster than cuDNN's dense 23x23 convolution
    (``benchmarks/bench_infer.py`` measures both). The front end always runs in fp32; the
    classifier runs under autocast in bf16/fp16 when asked (CUDA only). Scores come back as
    fp32 on the CPU.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        fold: bool | None = None,
        channels_last: bool = False,
        frontend: nn.Module | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = check_precision(precision, self.device)
        self.precision = precision
        model = model.eval()
        if fold is None:
            fold = self.device.type != "cuda"
        self.folded_layers = len(list(dcls_layers(model))) if fold else 0
        if fold:
            fold_dcls(model)
        self.model = model.to(self.device)
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.frontend = (frontend if frontend is not None else LogMelFrontEnd(augment=False)).eval().to(self.device)

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def logmel(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, S) waveforms -> (B, 1, 128, 1001) normalised log-mel on the device."""
        return self.frontend(waveforms.to(self.device, non_blocking=True))

    @torch.inference_mode()
    def __call__(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, S) float waveforms at 32 kHz -> (B, C) sigmoid probabilities (fp32, CPU)."""
        if waveforms.ndim != 2:
            raise ValueError(f"AudioTagger: expected waveforms of shape (batch, samples), got {tuple(waveforms.shape)}")
        x = self.logmel(waveforms)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            logits = self.model(x)
        return logits.float().sigmoid().cpu()


# -- decoding --------------------------------------------------------------------------------
@dataclass
class _Decoded:
    file: str
    sample_rate: int
    waveform: torch.Tensor  # (S,) float32 at 32 kHz


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def decode_file(path: str | Path) -> _Decoded | FileFailure:
    """Decode one file to a mono 32 kHz waveform, or say in one line why it cannot be."""
    name = str(path)
    try:
        waveform, sample_rate = load_audio(path, target_sr=SAMPLE_RATE)
    except FileNotFoundError:
        return FileFailure(name, "no such file")
    except AudioReadError as exc:
        return FileFailure(name, _one_line(exc.reason) or "unreadable")
    except Exception as exc:  # every decoding problem is reported per file, never fatal
        return FileFailure(name, _one_line(str(exc)) or type(exc).__name__)
    if not bool(torch.isfinite(waveform).all()):
        return FileFailure(name, "it holds NaN or infinite samples")
    return _Decoded(name, sample_rate, waveform)


class _DecodeDataset(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[str | Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _Decoded | FileFailure:
        return decode_file(self.paths[index])


def _as_is(item):
    return item


def _decoded_files(paths: Sequence[str | Path], num_workers: int) -> Iterator[_Decoded | FileFailure]:
    """Decoded files in order; ``num_workers`` > 0 decodes ahead in worker processes."""
    if num_workers <= 0 or not paths:
        return (decode_file(p) for p in paths)
    loader = torch.utils.data.DataLoader(
        _DecodeDataset(paths), batch_size=None, shuffle=False, num_workers=min(num_workers, len(paths)),
        collate_fn=_as_is, prefetch_factor=2,
    )
    return iter(loader)


# -- streaming over files --------------------------------------------------------------------
@dataclass
class _Pending:
    """A file in flight: its windows are scored as batches fill up."""

    decoded: _Decoded | FileFailure
    starts: list[int] = field(default_factory=list)
    scores: list[torch.Tensor | None] = field(default_factory=list)
    remaining: int = 0


def _finish(pending: _Pending, aggregate: str) -> FileTags | FileFailure:
    decoded = pending.decoded
    if isinstance(decoded, FileFailure):
        return decoded
    num_samples = decoded.waveform.shape[0]
    window_scores = torch.stack(pending.scores)  # type: ignore[arg-type]
    scores = window_scores.amax(dim=0) if aggregate == "max" else window_scores.mean(dim=0)
    spans = [(s / SAMPLE_RATE, min(s + CLIP_SAMPLES, num_samples) / SAMPLE_RATE) for s in pending.starts]
    return FileTags(
        file=decoded.file,
        duration_s=num_samples / SAMPLE_RATE,
        sample_rate=decoded.sample_rate,
        window_spans_s=spans,
        window_scores=window_scores,
        scores=scores,
    )


def tag_files(
    tagger: AudioTagger,
    paths: Sequence[str | Path],
    hop_s: float = DEFAULT_HOP_S,
    aggregate: str = "max",
    batch_size: int = 16,
    num_workers: int = 0,
) -> Iterator[FileTags | FileFailure]:
    """Tag ``paths`` with ``tagger``; yields one result per path, in order, as soon as it is done.

    Windows of consecutive files share batches of ``batch_size``; ``hop_s`` is the step between
    window starts in seconds; ``aggregate`` (max, mean) combines window scores into file
    scores; ``num_workers`` > 0 decodes files in that many worker processes. The arguments
    are checked here (ValueError), before any file is read.
    """
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    hop = hop_samples(hop_s)
    return _tag_stream(tagger, paths, hop, aggregate, batch_size, num_workers)


def _tag_stream(
    tagger: AudioTagger, paths: Sequence[str | Path], hop: int, aggregate: str, batch_size: int, num_workers: int
) -> Iterator[FileTags | FileFailure]:
    """The generator behind :func:`tag_files`, on checked arguments (``hop`` in samples)."""
    in_flight: deque[_Pending] = deque()
    queue: list[tuple[_Pending, int]] = []  # windows waiting for a batch: (file, window index)

    def run_batch(items: list[tuple[_Pending, int]]) -> None:
        sources = [(pending.decoded.waveform, pending.starts[i]) for pending, i in items]  # type: ignore[union-attr]
        probs = tagger(cut_windows(sources, pin_memory=tagger.device.type == "cuda"))
        for (pending, i), row in zip(items, probs):
            pending.scores[i] = row
            pending.remaining -= 1

    def completed() -> Iterator[FileTags | FileFailure]:
        while in_flight and in_flight[0].remaining == 0:
            yield _finish(in_flight.popleft(), aggregate)

    for decoded in _decoded_files(paths, num_workers):
        pending = _Pending(decoded)
        if isinstance(decoded, _Decoded):
            pending.starts = window_starts(decoded.waveform.shape[0], CLIP_SAMPLES, hop)
            pending.scores = [None] * len(pending.starts)
            pending.remaining = len(pending.starts)
            queue.extend((pending, i) for i in range(len(pending.starts)))
        in_flight.append(pending)
        while len(queue) >= batch_size:
            run_batch(queue[:batch_size])
            del queue[:batch_size]
        yield from completed()
    if queue:
        run_batch(queue)
    yield from completed()


def top_k(scores: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """(C,) scores -> the ``k`` best (index, score), best first (ties: lower index first)."""
    k = min(k, scores.shape[-1])
    values, indices = torch.sort(scores, descending=True, stable=True)
    return [(int(i), float(v)) for v, i in zip(values[:k], indices[:k])]
