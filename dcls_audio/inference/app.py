"""What ``dcls-audio infer`` does, as a function of plain values.

Order of work: check the options and the output (it is never an input: the checkpoint, an
audio file or the labels CSV; an existing file is replaced only with ``overwrite``), load the
checkpoint (a missing file or an unknown model stops here, before any audio is read), tag the
files, write the output. ``-o FILE`` is written to a temporary file renamed over ``FILE`` when
complete (:func:`~dcls_audio.outputs.atomic_output`): an error or Ctrl-C leaves the previous
file as it was.
A file that cannot be tagged gives one ``error: <file>: <reason>`` line on stderr; the others
are still tagged and the exit code is 1. Files in folders or patterns without an audio
extension are skipped with one ``note:`` line on stderr saying how many (not an error).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

import numpy as np
import torch
from tqdm import tqdm

from ..errors import UsageError
from ..outputs import OutputError, atomic_output, check_output_path
from ..plots.backend import PlotUnavailable, require_matplotlib
from ..plots.timeline import TimelineData, write_timelines
from .inputs import expand_inputs
from .loader import load_tagging_model
from .output import (
    FORMATS,
    csv_rows,
    csv_writer,
    file_record,
    format_table,
    write_json,
)
from .tagger import (
    AGGREGATIONS,
    PRECISIONS,
    AudioTagger,
    FileFailure,
    check_hop,
    resolve_device,
    tag_files,
)

__all__ = ["MAX_PLOT_FILES", "SetupError", "default_num_workers", "run_infer"]

EXIT_OK, EXIT_FILE_ERRORS, EXIT_SETUP_ERROR = 0, 1, 2


#: ``--plot`` draws the first this many files tagged (one panel each): a picture stays readable
#: and its size bounded however many files are tagged
MAX_PLOT_FILES = 20


class SetupError(UsageError):
    """A problem found before any file is tagged (options, checkpoint, model name)."""


def _check_options(
    hop_s: float, aggregate: str, top_k: int | None, batch_size: int, fmt: str, precision: str, plot_classes: int
) -> None:
    try:
        check_hop(hop_s, what="--hop")
    except ValueError as exc:
        raise SetupError(str(exc)) from None
    if aggregate not in AGGREGATIONS:
        raise SetupError(f"--aggregate must be one of {', '.join(AGGREGATIONS)}, got {aggregate!r}")
    if top_k is not None and top_k < 1:
        raise SetupError(f"--top-k must be at least 1 (or all), got {top_k}")
    if plot_classes < 1:
        raise SetupError(f"--plot-classes must be at least 1, got {plot_classes}")
    if batch_size < 1:
        raise SetupError(f"--batch-size must be at least 1, got {batch_size}")
    if fmt not in FORMATS:
        raise SetupError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if precision not in PRECISIONS:
        raise SetupError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def default_num_workers(device_type: str, num_files: int) -> int:
    """Decoding processes: none on CPU (the model needs the cores) or for one file, else up to 4."""
    if device_type != "cuda" or num_files < 2:
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - 1, num_files))


def _is_out_of_memory(exc: BaseException) -> bool:
    """A RuntimeError of torch's allocators running out of memory (CPU or GPU)."""
    text = str(exc)
    return "out of memory" in text or "can't allocate memory" in text or "Cannot allocate memory" in text


def run_infer(
    checkpoint: str,
    inputs: Sequence[str],
    model_name: str | None = None,
    use_ema: bool = False,
    allow_pickle: bool = False,
    class_csv: str | None = None,
    hop_s: float = 5.0,
    aggregate: str = "max",
    top_k: int | None = 5,
    fmt: str = "table",
    output: str | None = None,
    show_windows: bool = False,
    device: str | None = None,
    precision: str = "fp32",
    batch_size: int = 16,
    num_workers: int | None = None,
    fold: bool | None = None,
    channels_last: bool = False,
    progress: bool | None = None,
    overwrite: bool = False,
    plot: str | None = None,
    plot_classes: int = 10,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Tag ``inputs`` (files, folders, globs) with ``checkpoint``; returns the exit code.

    ``top_k``: classes listed per file and window; None: all of them (every class score).
    ``progress=None`` shows a bar on stderr for several files when stderr is a terminal.
    ``output``: a file to write instead of ``stdout`` (see the module docstring); ``overwrite``
    lets it replace an existing file that is not an input (the same for ``plot``).
    ``plot``: a PNG file drawing the ``plot_classes`` best classes over time of each tagged file,
    the first :data:`MAX_PLOT_FILES` of them (window scores as a heat map; needs matplotlib, the
    ``plot`` extra).
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr

    def fail(message: str) -> int:
        print(f"dcls-audio infer: error: {message}", file=stderr)
        return EXIT_SETUP_ERROR

    expanded = expand_inputs(inputs)
    try:
        _check_options(hop_s, aggregate, top_k, batch_size, fmt, precision, plot_classes)
        read = [checkpoint, *expanded.files, *inputs, *([class_csv] if class_csv else [])]
        if output is not None:
            check_output_path(output, inputs=read, overwrite=overwrite, what="--output")
        if plot is not None:
            require_matplotlib("--plot")
            check_output_path(plot, inputs=[*read, *([output] if output else [])], overwrite=overwrite, what="--plot")
        torch_device = resolve_device(device, what="--device")
        loaded = load_tagging_model(
            checkpoint, model_name, use_ema=use_ema, allow_pickle=allow_pickle, class_csv=class_csv
        )
        tagger = AudioTagger(loaded.model, torch_device, precision=precision, fold=fold, channels_last=channels_last)
    except (UsageError, OSError, PlotUnavailable) as exc:  # SetupError, CheckpointError, unknown model, missing file
        return fail(str(exc))

    try:  # a checkpoint given by model name is known by its file only now
        for target, what in ((output, "--output"), (plot, "--plot")):
            if target is not None:
                check_output_path(target, inputs=[loaded.checkpoint], overwrite=True, what=what)
    except OutputError as exc:
        return fail(str(exc))
    failures = 0
    for text, reason in expanded.problems:
        print(f"error: {text}: {reason}", file=stderr)
        failures += 1
    note = expanded.skipped_note()
    if note:
        print(note, file=stderr)
    files = expanded.files
    if not files:
        print("dcls-audio infer: error: no audio file to tag", file=stderr)
        return EXIT_FILE_ERRORS

    workers = default_num_workers(torch_device.type, len(files)) if num_workers is None else num_workers
    show_bar = len(files) > 1 and (progress if progress is not None else stderr.isatty())
    # leave=False: the bar goes when done, so no second 100 % bar is left after the results
    bar = tqdm(total=len(files), unit="file", file=stderr, disable=not show_bar, dynamic_ncols=True, leave=False)
    results = tag_files(tagger, files, hop_s=hop_s, aggregate=aggregate, batch_size=batch_size, num_workers=workers)
    k = len(loaded.labels) if top_k is None else top_k
    timelines: list[TimelineData] | None = [] if plot is not None else None
    try:
        if output is None:
            failures += _write_results(
                results, stdout, stdout, stderr, bar, show_bar, loaded.labels, fmt, k, show_windows, timelines
            )
        else:
            with (
                atomic_output(output) as tmp,
                open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as sink,
            ):
                failures += _write_results(
                    results, sink, stdout, stderr, bar, show_bar, loaded.labels, fmt, k, show_windows, timelines
                )
            bar.close()  # gone before the next lines
            print(f"dcls-audio infer: wrote {output}", file=stderr)
        bar.close()
        if plot is not None and timelines:
            with atomic_output(plot) as tmp:
                write_timelines(tmp, timelines, loaded.labels, top=plot_classes)
            left = f"; the other {len(files) - len(timelines)} are not drawn" if len(files) > len(timelines) else ""
            print(
                f"dcls-audio infer: wrote {plot} ({len(timelines)} file(s), top {plot_classes} classes{left})",
                file=stderr,
            )
    except KeyboardInterrupt:
        kept = f"; {output} was left as it was" if output else ""
        bar.write(f"dcls-audio infer: interrupted{kept}", file=stderr)
        return 130
    except BrokenPipeError:  # `infer ... | head -1`: the caller ends quietly
        raise
    except (torch.OutOfMemoryError, RuntimeError) as exc:  # the model does not fit: say what to change
        if not isinstance(exc, torch.OutOfMemoryError) and not _is_out_of_memory(exc):
            raise
        kept = f"; {output} was left as it was" if output else ""
        return fail(f"out of memory while scoring {batch_size} windows at once: lower --batch-size{kept}")
    except OSError as exc:  # OutputError (full disk, unwritable folder) names the file and what was kept
        bar.close()
        if isinstance(exc, OutputError):
            return fail(str(exc))
        target = f"--output: cannot write {output}" if output else "cannot write to standard output"
        return fail(f"{target}: {exc.strerror or exc}")
    finally:
        bar.close()
    return EXIT_FILE_ERRORS if failures else EXIT_OK


def _write_results(
    results,
    sink: TextIO,
    stdout: TextIO,
    stderr: TextIO,
    bar: tqdm,
    show_bar: bool,
    labels: list[str],
    fmt: str,
    top_k: int,
    show_windows: bool,
    timelines: list[TimelineData] | None = None,
) -> int:
    """Write each result to ``sink`` as it comes (JSON: all at the end); returns the failed files.
    ``timelines``: collects each file's window scores for ``--plot``."""
    failures = 0
    records = []
    writer = csv_writer(sink) if fmt == "csv" else None
    for result in results:
        bar.update(1)
        if isinstance(result, FileFailure):
            failures += 1
            bar.write(f"error: {result.message()}", file=stderr)
            continue
        record = file_record(result, labels, top_k)
        if timelines is not None and len(timelines) < MAX_PLOT_FILES:
            spans = np.asarray(result.window_spans_s, dtype=np.float64).reshape(-1, 2)
            timelines.append(TimelineData(result.file, result.window_scores.float().cpu().numpy(), spans))
        if fmt == "table":
            text = format_table([record], show_windows=show_windows)
            if sink is stdout and show_bar:
                bar.write(text.rstrip("\n") + "\n", file=stdout)
            else:
                sink.write(text)
                sink.flush()
        elif writer is not None:
            if sink is stdout and show_bar:
                with tqdm.external_write_mode(file=stderr):  # the rows never land on the bar's line
                    writer.writerows(csv_rows(record))
                    sink.flush()
            else:
                writer.writerows(csv_rows(record))
        else:
            records.append(record)
    if fmt == "json":
        if sink is stdout:
            bar.close()  # the bar is gone before the JSON is printed
        write_json(records, sink)
    return failures
