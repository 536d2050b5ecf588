"""Pack a folder of audio files and an AudioSet segments CSV into the PANNs HDF5 layout.

Labels CSV (AudioSet ``*_segments.csv`` format): lines ``YTID, start_seconds, end_seconds,
"mid,mid,..."``; lines starting with ``#`` are comments. A file matches a YTID when its stem is
the YTID, ``Y<YTID>``, or either followed by ``_<start>`` or ``_<start>_<end>`` (numbers).
Each clip is decoded (libsndfile, else FFmpeg through PyAV: the formats of
:data:`~.audio_decode.AUDIO_EXTENSIONS`), mixed down to mono, resampled to 32 kHz, padded/cut
to 10 s and stored as int16; ``audio_name`` holds the YTID. Only the first 10 s of a file are
decoded. Files without an audio extension are listed in the report, not packed.
"""

from __future__ import annotations

import codecs
import csv
import multiprocessing
import os
import re
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from ..outputs import atomic_output, check_output_path, same_file
from .audio_io import (
    AUDIO_EXTENSIONS,
    AudioReadError,
    float_to_int16,
    pad_or_trim,
    read_head,
)
from .classes import load_class_names, mid_to_index
from .constants import CLIP_SAMPLES, SAMPLE_RATE
from .hdf5_dataset import create_layout

__all__ = [
    "PackReport",
    "decode_clip",
    "list_audio_files",
    "list_files",
    "match_ytid",
    "pack_folder",
    "read_segments_csv",
    "read_text_file",
    "run_pack",
]

_TIME_SUFFIX = re.compile(r"^(.+?)(?:_\d+(?:\.\d+)?){1,2}$")


_BOMS = ((codecs.BOM_UTF8, "utf-8-sig", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"))
_BOMS += ((codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),)


def read_text_file(path: Path, what: str, notes: list[str] | None = None) -> str:
    """The text of ``path``: UTF-8, or UTF-8/UTF-16 with a byte-order mark (read without it; a
    line in ``notes`` says so). Any other encoding is a ValueError naming the file, the line and
    the byte (no guess: a wrong guess would silently change names)."""
    data = path.read_bytes()
    for bom, codec, name in _BOMS:
        if data.startswith(bom):
            if notes is not None:
                notes.append(f"{what} {path}: {name} with a byte-order mark (read without it)")
            try:
                return data.decode(codec)
            except UnicodeDecodeError as err:
                raise ValueError(f"{what} {path}: not valid {name} at byte {err.start}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{what} {path}: not UTF-8 text (line {line}, byte {err.start}: {data[err.start : err.start + 1]!r}); "
            "save it as UTF-8"
        ) from None


def read_segments_csv(path: str | os.PathLike, notes: list[str] | None = None) -> dict[str, list[str]]:
    """YTID -> list of label mids from an AudioSet segments CSV (repeated YTIDs are merged).

    ``notes``: gets one line for a byte-order mark and one for YTIDs listed on several lines.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels CSV not found: {path}")
    labels: dict[str, list[str]] = {}
    repeated: list[str] = []
    text = read_text_file(path, "labels CSV", notes)
    lines = (
        (n, line)
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    )
    for line_no, line in lines:
        row = next(csv.reader([line], skipinitialspace=True))
        if len(row) < 4:
            raise ValueError(
                f"labels CSV {path}, line {line_no}: expected 'YTID, start, end, \"mid,...\"', got {line.strip()!r}"
            )
        ytid = row[0].strip()
        mids = [m.strip() for m in ",".join(row[3:]).split(",") if m.strip()]
        if ytid in labels:
            repeated.append(ytid)
        merged = labels.setdefault(ytid, [])
        merged.extend(m for m in mids if m not in merged)
    if not labels:
        raise ValueError(f"labels CSV {path} lists no segments")
    if repeated and notes is not None:
        names = ", ".join(sorted(set(repeated))[:10]) + (" ..." if len(set(repeated)) > 10 else "")
        notes.append(f"labels CSV {path}: {len(set(repeated))} YTID(s) on several lines, labels merged: {names}")
    return labels


def match_ytid(stem: str, known: dict[str, object] | set[str]) -> str | None:
    """The YTID a file stem refers to (see the module docstring), or ``None``."""
    candidates = [stem]
    if stem.startswith("Y"):
        candidates.append(stem[1:])
    for name in list(candidates):
        match = _TIME_SUFFIX.match(name)
        if match:
            candidates.append(match.group(1))
    for name in candidates:
        if name in known:
            return name
    return None


def list_files(audio_dir: Path) -> tuple[list[Path], list[Path]]:
    """Files under ``audio_dir`` (recursively), sorted: (audio files, files without an audio extension)."""
    files = sorted(p for p in audio_dir.rglob("*") if p.is_file())
    audio = [p for p in files if p.suffix.lower() in AUDIO_EXTENSIONS]
    return audio, [p for p in files if p.suffix.lower() not in AUDIO_EXTENSIONS]


def list_audio_files(audio_dir: Path) -> list[Path]:
    """Audio files under ``audio_dir`` (recursively), sorted."""
    return list_files(audio_dir)[0]


@dataclass
class PackReport:
    """What ``pack_folder`` did: clips written, and every file it skipped with the reason."""

    output: Path
    num_classes: int
    packed: int = 0
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    unlabelled: list[tuple[Path, str]] = field(default_factory=list)
    duplicates: list[tuple[Path, str]] = field(default_factory=list)
    not_audio: list[Path] = field(default_factory=list)
    unknown_mids: dict[str, int] = field(default_factory=dict)
    without_audio: list[str] = field(default_factory=list)  # YTIDs of the labels CSV no file matched
    notes: list[str] = field(default_factory=list)  # about the input files (encoding, repeated rows)

    def summary(self, max_listed: int = 20) -> str:
        lines = [f"packed {self.packed} clips ({self.num_classes} classes) into {self.output}"]
        lines += [f"note: {note}" for note in self.notes]
        if self.without_audio:
            shown = ", ".join(self.without_audio[:max_listed])
            more = (
                f" ... and {len(self.without_audio) - max_listed} more" if len(self.without_audio) > max_listed else ""
            )
            lines.append(f"{len(self.without_audio)} segments of the labels CSV without an audio file: {shown}{more}")
        for title, items in (
            ("unreadable files skipped", self.unreadable),
            ("files without labels skipped", self.unlabelled),
            ("files for an already packed YTID skipped", self.duplicates),
            ("files without an audio extension skipped", [(p, "") for p in self.not_audio]),
        ):
            if items:
                lines.append(f"{len(items)} {title}:")
                lines += [f"  {path}: {why}" if why else f"  {path}" for path, why in items[:max_listed]]
                if len(items) > max_listed:
                    lines.append(f"  ... and {len(items) - max_listed} more")
        if self.unknown_mids:
            listed = ", ".join(f"{m} ({n})" for m, n in sorted(self.unknown_mids.items())[:max_listed])
            lines.append(f"labels not in the class list, ignored: {listed}")
        return "\n".join(lines)


def decode_clip(path: Path, clip_samples: int = CLIP_SAMPLES) -> np.ndarray:
    """Decode the start of one file to the stored form: int16 (clip_samples,) mono at 32 kHz."""
    waveform, _ = read_head(path, clip_samples, SAMPLE_RATE)
    return float_to_int16(pad_or_trim(waveform, clip_samples)).numpy()


def _decode_or_error(job: tuple[Path, int]) -> tuple[np.ndarray | None, str]:
    """The clip, or ``None`` and why it cannot be decoded (the report names the file)."""
    path, clip_samples = job
    try:
        return decode_clip(path, clip_samples), ""
    except AudioReadError as exc:
        return None, exc.reason
    except OSError as exc:
        return None, exc.strerror or str(exc)
    except Exception as exc:  # noqa: BLE001 - any other decoder failure skips the file, never the whole pack
        return None, " ".join(str(exc).split()) or type(exc).__name__


def _init_worker() -> None:
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it stops the pool)


def _decoded(jobs: list[tuple[Path, int]], num_workers: int) -> Iterator[tuple[np.ndarray | None, str]]:
    if num_workers <= 0:
        yield from map(_decode_or_error, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(num_workers, initializer=_init_worker) as pool:
        yield from pool.imap(_decode_or_error, jobs, chunksize=4)


def _plan(
    files: Iterable[Path], labels: dict[str, list[str]], mid_index: dict[str, int], report: PackReport
) -> list[tuple[Path, str, list[int]]]:
    """Match files to labels; fill the report's unlabelled/duplicate lists."""
    planned, seen = [], {}
    for path in files:
        ytid = match_ytid(path.stem, labels)
        if ytid is None:
            report.unlabelled.append((path, "no row in the labels CSV matches its name"))
            continue
        if ytid in seen:
            report.duplicates.append((path, f"YTID {ytid} already packed from {seen[ytid]}"))
            continue
        indices = []
        for mid in labels[ytid]:
            if mid in mid_index:
                indices.append(mid_index[mid])
            else:
                report.unknown_mids[mid] = report.unknown_mids.get(mid, 0) + 1
        if not indices:
            report.unlabelled.append((path, f"none of its labels {labels[ytid]} is in the class list"))
            continue
        seen[ytid] = path
        planned.append((path, ytid, indices))
    return planned


def pack_folder(
    audio_dir: str | os.PathLike,
    labels_csv: str | os.PathLike,
    output: str | os.PathLike,
    class_csv: str | os.PathLike | None = None,
    overwrite: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    clip_samples: int = CLIP_SAMPLES,
) -> PackReport:
    """Pack ``audio_dir`` with labels from ``labels_csv`` into the HDF5 file ``output``.

    The file is written next to ``output`` under a temporary name and renamed when complete.
    Raises ``FileExistsError`` if ``output`` exists and ``overwrite`` is False, and
    ``ValueError`` if no file could be packed, if ``output`` is the labels or class CSV, or a
    CSV is not UTF-8 text. The report lists what was skipped and why, the labelled segments
    without an audio file, and notes on the CSV (a byte-order mark, YTIDs on several lines).
    """
    audio_dir, labels_csv, output = Path(audio_dir), Path(labels_csv), Path(output)
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"audio folder not found: {audio_dir}")
    for source in (labels_csv, class_csv):
        if source is not None and same_file(output, source):
            raise ValueError(f"output {output} is also an input ({source}); refusing to write over it")
    if output.exists() and not overwrite:
        raise FileExistsError(f"output {output} exists; pass overwrite=True (--overwrite) to replace it")
    classes = load_class_names(class_csv)
    notes: list[str] = []
    labels = read_segments_csv(labels_csv, notes)
    report = PackReport(output=output, num_classes=len(classes), notes=notes)
    files, report.not_audio = list_files(audio_dir)
    # never over an audio file, a folder or a device, even with --overwrite; checked before decoding
    # (the output's folder is made, as writing it would)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(err.errno, f"OUTPUT: cannot make the folder {output.parent}: {err.strerror or err}") from None
    check_output_path(output, [labels_csv, class_csv, *files], overwrite=True, what="OUTPUT")
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {audio_dir}")
    planned = _plan(files, labels, mid_to_index(classes), report)
    matched = {match_ytid(path.stem, labels) for path in files}
    report.without_audio = [ytid for ytid in labels if ytid not in matched]
    if not planned:
        raise ValueError(f"no audio file under {audio_dir} matches a labelled YTID in {labels_csv}\n{report.summary()}")

    name_width = max(20, max(len(ytid.encode()) for _, ytid, _ in planned))
    with atomic_output(output) as tmp:
        with h5py.File(tmp, "w") as h5:
            names, waves, targets = create_layout(
                h5, len(planned), len(classes), clip_samples, name_width, resizable=True
            )
            h5.attrs["sample_rate"] = SAMPLE_RATE
            jobs = [(path, clip_samples) for path, _, _ in planned]
            bar = tqdm(total=len(jobs), desc="packing", unit="clip", disable=not progress)
            for (path, ytid, indices), (clip, error) in zip(planned, _decoded(jobs, num_workers)):
                bar.update()
                if clip is None:
                    report.unreadable.append((path, error))
                    continue
                row = report.packed
                names[row] = ytid.encode()
                waves[row] = clip
                target = np.zeros(len(classes), dtype=bool)
                target[indices] = True
                targets[row] = target
                report.packed += 1
            bar.close()
            for ds in (names, waves, targets):
                ds.resize(report.packed, axis=0)
        if report.packed == 0:
            raise ValueError(f"no audio file under {audio_dir} could be decoded\n{report.summary()}")
    return report


def run_pack(
    audio_dir: str,
    labels_csv: str,
    output: str,
    class_csv: str | None = None,
    overwrite: bool = False,
    num_workers: int = 0,
    progress: bool = True,
) -> int:
    """``dcls-audio pack``: pack, print the summary; exit code 0, or 1 with the error on stderr."""
    import sys

    try:
        report = pack_folder(
            audio_dir,
            labels_csv,
            output,
            class_csv=class_csv,
            overwrite=overwrite,
            num_workers=num_workers,
            progress=progress,
        )
    except (OSError, ValueError) as exc:  # missing or unreadable inputs, the output refused or not writable
        print(f"dcls-audio pack: error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0
