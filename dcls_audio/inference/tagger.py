"""Tagging audio files: 10 s windows, batched scoring on one device, per-file aggregation.

A file of any length becomes one or more 10 s windows at 32 kHz (:func:`window_starts`):
a file shorter than a window gives one zero-padded window; a longer one gives windows every
``hop`` samples, the last one aligned to the end of the file. :class:`AudioTagger` turns a
batch of windows into class probabilities (log-mel front end in fp32, classifier in the
chosen precision, sigmoid). :func:`tag_files` streams files through it: files are decoded
block by block (optionally in worker processes) and cut into windows as they are read, so
memory does not grow with a file's length; windows are batched together across files, and one
:class:`FileTags` (or :class:`FileFailure` for a file that cannot be decoded) is yielded
per input, in input order.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data import CLIP_SAMPLES, SAMPLE_RATE, AudioReadError, load_audio
from ..errors import UsageError
from ..features import LogMelFrontEnd
from ..models import dcls_layers, fold_dcls
from .file_windows import FileEnd, FileFailure, Window, one_line, windows_per_file
from .windowing import cut_windows, hop_samples, window_starts

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_HOP_S",
    "MIN_HOP_S",
    "PRECISIONS",
    "AudioTagger",
    "FileFailure",
    "FileTags",
    "check_hop",
    "check_precision",
    "cut_windows",
    "decode_file",
    "hop_samples",
    "resolve_device",
    "tag_files",
    "top_k",
    "window_starts",
]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AGGREGATIONS = ("max", "mean")
DEFAULT_HOP_S = 5.0
#: the smallest hop: at most 10 windows start per second of audio, each a full 10 s window
#: (a file of an hour is then 36,000 windows to score); a smaller hop is refused, naming this
MIN_HOP_S = 0.1


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


# -- the scoring engine ----------------------------------------------------------------------
def resolve_device(device: str | torch.device | None = None, what: str = "device") -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU; anything else as given.

    Raises ValueError naming ``what`` for a name torch does not know (``foo``), a CUDA device
    without CUDA, or a CUDA index beyond the GPUs present.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"{what}: unknown device {str(device)!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{what}: device {device} requested but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"{what}: device {device} requested but there are {torch.cuda.device_count()} CUDA devices")
    return device


def check_hop(hop_s: float, what: str = "hop") -> int:
    """The hop in samples; ValueError naming ``what`` for a hop below :data:`MIN_HOP_S` seconds
    (or not a positive number of samples)."""
    samples = hop_samples(hop_s, what=what)
    if hop_s < MIN_HOP_S:
        raise ValueError(
            f"{what} {hop_s:g} s is below the smallest hop, {MIN_HOP_S:g} s: at most {1 / MIN_HOP_S:g} windows "
            "start per second of audio (each window is 10 s scored in full)"
        )
    return samples


def check_precision(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for ``precision`` (fp32, bf16, fp16); half precisions need CUDA."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if precision != "fp32" and device.type != "cuda":
        raise UsageError(f"precision {precision} needs a CUDA device; the device is {device} (use fp32)")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise UsageError("precision bf16 is not supported by this GPU (use fp16 or fp32)")
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


def decode_file(path: str | Path) -> _Decoded | FileFailure:
    """Decode one whole file to a mono 32 kHz waveform, or say in one line why it cannot be.

    The samples are those :func:`tag_files` cuts its windows from; it streams them instead.
    """
    name = str(path)
    try:
        waveform, sample_rate = load_audio(path, target_sr=SAMPLE_RATE)
    except FileNotFoundError:
        return FileFailure(name, "no such file")
    except AudioReadError as exc:
        return FileFailure(name, one_line(exc.reason) or "unreadable")
    except Exception as exc:  # noqa: BLE001 - every decoding problem is reported per file, never fatal
        return FileFailure(name, one_line(str(exc)) or type(exc).__name__)
    return _Decoded(name, sample_rate, waveform)


# -- streaming over files --------------------------------------------------------------------
@dataclass
class _Pending:
    """A file in flight: its windows are scored as batches fill up; ``end`` once it is decoded."""

    file: str
    starts: list[int] = field(default_factory=list)
    scores: list[torch.Tensor | None] = field(default_factory=list)
    remaining: int = 0
    end: FileEnd | FileFailure | None = None


def _finish(pending: _Pending, aggregate: str) -> FileTags | FileFailure:
    end = pending.end
    if isinstance(end, FileFailure):
        return end
    assert end is not None
    window_scores = torch.stack(pending.scores)  # type: ignore[arg-type]
    if not bool(torch.isfinite(window_scores).all()):
        return FileFailure(pending.file, "the model gave non-finite scores (check the checkpoint's weights)")
    scores = window_scores.amax(dim=0) if aggregate == "max" else window_scores.mean(dim=0)
    spans = [(s / SAMPLE_RATE, min(s + CLIP_SAMPLES, end.num_samples) / SAMPLE_RATE) for s in pending.starts]
    return FileTags(
        file=pending.file,
        duration_s=end.num_samples / SAMPLE_RATE,
        sample_rate=end.sample_rate,
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

    Files are decoded and cut into windows block by block (:mod:`dcls_audio.inference.file_windows`), so
    memory does not grow with a file's length: at most ``batch_size`` windows wait to be scored,
    plus a window and a decoded block per file being read. Windows of consecutive files share
    batches of ``batch_size``; ``hop_s`` is the step between window starts in seconds;
    ``aggregate`` (max, mean) combines window scores into file scores; ``num_workers`` > 0
    decodes files in that many worker processes. The arguments are checked here (ValueError),
    before any file is read. ``tagger``: anything with a ``device`` and ``(B, S) -> (B, C)`` call.
    """
    if aggregate not in AGGREGATIONS:
        raise UsageError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    hop = check_hop(hop_s)
    return _tag_stream(tagger, paths, hop, aggregate, batch_size, num_workers)


def _tag_stream(
    tagger: AudioTagger, paths: Sequence[str | Path], hop: int, aggregate: str, batch_size: int, num_workers: int
) -> Iterator[FileTags | FileFailure]:
    """The generator behind :func:`tag_files`, on checked arguments (``hop`` in samples)."""
    in_flight: deque[_Pending] = deque()
    queue: list[tuple[_Pending, int, torch.Tensor]] = []  # windows waiting for a batch: (file, index, samples)
    pin = tagger.device.type == "cuda"

    def run_batch(items: list[tuple[_Pending, int, torch.Tensor]]) -> None:
        batch = torch.empty(len(items), CLIP_SAMPLES, pin_memory=pin)
        for row, (_, _, samples) in enumerate(items):
            batch[row] = samples
        probs = tagger(batch)
        for (pending, i, _), row in zip(items, probs):
            pending.scores[i] = row
            pending.remaining -= 1

    def completed() -> Iterator[FileTags | FileFailure]:
        while in_flight and in_flight[0].end is not None and in_flight[0].remaining == 0:
            yield _finish(in_flight.popleft(), aggregate)

    per_file = windows_per_file(paths, hop, num_workers)
    try:
        for path, events in zip(paths, per_file):
            pending = _Pending(str(path))
            in_flight.append(pending)
            for event in events:
                if isinstance(event, Window):
                    pending.starts.append(event.start)
                    pending.scores.append(None)
                    pending.remaining += 1
                    queue.append((pending, len(pending.starts) - 1, event.samples))
                    if len(queue) >= batch_size:
                        run_batch(queue[:batch_size])
                        del queue[:batch_size]
                        yield from completed()
                else:
                    pending.end = event
                    if isinstance(event, FileFailure):  # its windows are not worth scoring
                        queue[:] = [item for item in queue if item[0] is not pending]
                        pending.remaining = 0
            yield from completed()
        if queue:
            run_batch(queue)
        yield from completed()
    finally:
        close = getattr(per_file, "close", None)
        if close is not None:
            close()


def top_k(scores: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """(C,) scores -> the ``k`` best (index, score), best first (ties: lower index first)."""
    k = min(k, scores.shape[-1])
    values, indices = torch.sort(scores, descending=True, stable=True)
    return [(int(i), float(v)) for v, i in zip(values[:k], indices[:k])]
