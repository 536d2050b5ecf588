"""Files as streams of 10 s windows, decoded in this process or ahead in worker processes.

:func:`file_windows` turns one file into events: a :class:`Window` for each window as soon as
it is decoded, then a :class:`FileEnd` (length, original rate) or a :class:`FileFailure` (one
line). Memory per file is bounded by a window plus a decoded block, whatever the file's length.
:func:`windows_per_file` gives those event streams for many files, in input order; with workers,
worker ``j`` decodes files ``j, j + n, j + 2n, ...`` into its own bounded queue, so at most a
few windows per worker wait to be scored.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import re
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.audio_io import AudioReadError, AudioStream
from ..data.constants import CLIP_SAMPLES, SAMPLE_RATE
from .windowing import WindowCutter

__all__ = ["Event", "FileEnd", "FileFailure", "QUEUE_EVENTS", "Window", "file_windows", "one_line", "windows_per_file"]

#: Events a worker may queue ahead of the consumer (each holds at most one window).
QUEUE_EVENTS = 8


@dataclass
class FileFailure:
    """A file that could not be tagged, and why (one line)."""

    file: str
    reason: str

    def message(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass
class Window:
    """One window of a file: its first sample at 32 kHz and its (CLIP_SAMPLES,) float32 samples."""

    start: int
    samples: torch.Tensor


@dataclass
class FileEnd:
    """A file decoded to the end: its length at 32 kHz and its own sampling rate."""

    num_samples: int
    sample_rate: int


Event = Window | FileEnd | FileFailure


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def file_windows(path: str | Path, hop: int, window: int = CLIP_SAMPLES) -> Iterator[Event]:
    """The windows of ``path`` (see :mod:`dcls_audio.inference.windowing`), ending with FileEnd or FileFailure.

    Never raises for a bad file: a missing file, a decoding error, NaN samples or an empty
    file end the stream with a FileFailure (windows already given are then to be dropped).
    """
    name = str(path)
    try:
        stream = AudioStream(path, SAMPLE_RATE)
        cutter = WindowCutter(window, hop)
        for block in stream:
            for start, samples in cutter.push(block):
                yield Window(start, samples)
        for start, samples in cutter.finish():
            yield Window(start, samples)
    except FileNotFoundError:
        yield FileFailure(name, "no such file")
        return
    except AudioReadError as exc:
        yield FileFailure(name, one_line(exc.reason) or "unreadable")
        return
    except Exception as exc:  # noqa: BLE001 - every decoding problem is reported per file, never fatal
        yield FileFailure(name, one_line(str(exc)) or type(exc).__name__)
        return
    yield FileEnd(cutter.num_samples, stream.sample_rate)


# -- worker processes ------------------------------------------------------------------------
def _to_wire(event: Event):
    return ("window", event.start, event.samples.numpy()) if isinstance(event, Window) else event


def _from_wire(item) -> Event:
    if isinstance(item, tuple):
        return Window(item[1], torch.from_numpy(np.asarray(item[2])))
    return item


def _worker(jobs: list[str], hop: int, window: int, out: multiprocessing.Queue) -> None:
    """Decode ``jobs`` in order into ``out``; Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    for path in jobs:
        for event in file_windows(path, hop, window):
            out.put(_to_wire(event))


class _Slot:
    """One worker process and its queue, decoding ``jobs`` (indices into the file list)."""

    def __init__(self, ctx, paths: Sequence[str], jobs: list[int], hop: int, window: int) -> None:
        self.queue = ctx.Queue(maxsize=QUEUE_EVENTS)
        self.process = ctx.Process(
            target=_worker, args=([paths[i] for i in jobs], hop, window, self.queue), daemon=True
        )
        self.process.start()
        self.died = False

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join()
        self.queue.close()
        self.queue.cancel_join_thread()


def _slot_events(slot: _Slot, path: str) -> Iterator[Event]:
    """The events of the file ``slot`` decodes now; a FileFailure if the worker dies on it."""
    while True:
        try:
            event = _from_wire(slot.queue.get(timeout=0.5))
        except queue_module.Empty:
            if slot.process.is_alive():
                continue
            try:  # it may have queued its last events just before exiting
                event = _from_wire(slot.queue.get(timeout=0.5))
            except queue_module.Empty:
                slot.died = True
                yield FileFailure(path, f"the decoding process died (exit code {slot.process.exitcode})")
                return
        yield event
        if not isinstance(event, Window):
            return


def _events_in_workers(paths: Sequence[str], hop: int, window: int, num_workers: int) -> Iterator[Iterator[Event]]:
    ctx = multiprocessing.get_context()
    n = min(num_workers, len(paths))
    jobs = [list(range(j, len(paths), n)) for j in range(n)]
    slots = [_Slot(ctx, paths, jobs[j], hop, window) for j in range(n)]
    try:
        for index, path in enumerate(paths):
            j = index % n
            events = _slot_events(slots[j], path)
            yield events
            for _ in events:  # whatever the consumer left, so the queue stays in step
                pass
            if slots[j].died:  # a decoder crashed the worker: a fresh one takes the slot's other files
                slots[j].stop()
                rest = [i for i in jobs[j] if i > index]
                if rest:
                    slots[j] = _Slot(ctx, paths, rest, hop, window)
    finally:
        for slot in slots:
            slot.stop()


def windows_per_file(
    paths: Sequence[str | Path], hop: int, num_workers: int = 0, window: int = CLIP_SAMPLES
) -> Iterator[Iterator[Event]]:
    """One event stream per path (see :func:`file_windows`), in order; consume each before the next.

    ``num_workers`` > 0 decodes in that many worker processes (at most one per file), each
    ``QUEUE_EVENTS`` events ahead at most; a worker that dies (a crashing decoder) fails its
    current file and is replaced for its other files. Closing the iterator stops the workers.
    """
    names = [str(p) for p in paths]
    if num_workers <= 0 or not names:
        return (file_windows(p, hop, window) for p in names)
    return _events_in_workers(names, hop, window, num_workers)
