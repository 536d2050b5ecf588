"""Pack a folder of audio files and an AudioSet segments CSV into the PANNs HDF5 layout.

Labels CSV (AudioSet ``*_segments.csv`` format): lines ``YTID, start_seconds, end_seconds,
"mid,mid,..."``; lines starting with ``#`` are comments. A file matches a YTID when its stem is
the YTID, ``Y<YTID>``, or either followed by ``_<start>`` or ``_<start>_<end>`` (numbers).
Each clip is decoded (libsndfile, else FFmpeg through PyAV: the formats of
:data:`~.audio_decode.AUDIO_EXTENSIONS`), mixed down to mono, resampled to 32 kHz, padded/cut
to 10 s and stored as int16; ``audio_name`` holds the YTID. Only the first 10 s of a file are
decoded. Files without an audio extension are listed in the report, not packed; so are files
that do not decode. A read error of the system rather than of the file (:mod:`~.read_retry`)
is tried again, and stops the pack with :class:`~.read_retry.SourceReadError` if it lasts.

``codec`` ``flac``/``opus`` stores each clip's encoded bytes instead of int16
(:mod:`~.clip_codecs`); :func:`pack_panns` converts an existing PANNs file (``--from``);
``shards`` writes a folder of litdata shards (:mod:`~.shards`) instead of one HDF5 file. The
work is done in resumable parts (:mod:`~.pack_parts`), by one pack per output at a time
(:mod:`~.pack_claim`).
"""

from __future__ import annotations

import codecs
import csv
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from ..errors import UsageError
from ..outputs import atomic_output, check_output_path, same_file
from .audio_io import (
    AUDIO_EXTENSIONS,
    AudioReadError,
    float_to_int16,
    pad_or_trim,
    read_head,
)
from .classes import load_class_names, mid_to_index
from .clip_codecs import OPUS_BITRATE, OPUS_PACKET_MS, check_encoder
from .constants import CLIP_SAMPLES, SAMPLE_RATE
from .hdf5_dataset import create_encoded_layout, create_layout, file_codec, inspect_file
from .pack_claim import TEMP_TAG, claim_output, is_pack_file, remove_stale_temporaries
from .pack_parts import Block, PartStore, fingerprint_of, read_part, run_blocks
from .read_retry import probe_file, transient_errno
from .shards import is_shard_location, require_litdata

__all__ = [
    "PackReport",
    "decode_clip",
    "list_audio_files",
    "list_files",
    "match_ytid",
    "pack_folder",
    "pack_panns",
    "read_segments_csv",
    "read_text_file",
    "run_pack",
]

#: clips per part file (the unit of parallel work and of resuming)
DEFAULT_PART_CLIPS = 256

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
                raise UsageError(f"{what} {path}: not valid {name} at byte {err.start}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UsageError(
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
            raise UsageError(
                f"labels CSV {path}, line {line_no}: expected 'YTID, start, end, \"mid,...\"', got {line.strip()!r}"
            )
        ytid = row[0].strip()
        mids = [m.strip() for m in ",".join(row[3:]).split(",") if m.strip()]
        if ytid in labels:
            repeated.append(ytid)
        merged = labels.setdefault(ytid, [])
        merged.extend(m for m in mids if m not in merged)
    if not labels:
        raise UsageError(f"labels CSV {path} lists no segments")
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
    codec: str = "pcm"
    parts: int = 0
    resumed_parts: int = 0  # parts found complete from an earlier, interrupted run
    empty_rows: int = 0  # --from: rows with an empty audio_name, left out

    def summary(self, max_listed: int = 20) -> str:
        lines = [f"packed {self.packed} clips ({self.num_classes} classes, {self.codec}) into {self.output}"]
        if self.resumed_parts:
            lines.append(f"resumed: {self.resumed_parts} of {self.parts} parts were already encoded by an earlier run")
        if self.empty_rows:
            lines.append(f"{self.empty_rows} rows with an empty audio_name (failed downloads) left out")
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


class _FileClip:
    """Picklable ``source -> int16 clip`` for audio files (a pack worker's reader). When
    libsndfile fails with a bare "System error" (it keeps the error number to itself), the file
    is read with Python to raise the ``OSError`` the system gives now (a transient one is read
    again, :mod:`~.read_retry`); a file Python reads well is an undecodable clip as before."""

    def __init__(self, clip_samples: int) -> None:
        self.clip_samples = clip_samples

    def __call__(self, source: str) -> np.ndarray:
        try:
            return decode_clip(Path(source), self.clip_samples)
        except AudioReadError as exc:
            if _LIBSNDFILE_SYSTEM_ERROR in exc.reason and transient_errno(exc) is None:
                try:
                    probe_file(Path(source))
                except OSError as err:
                    raise err from exc
            raise


#: libsndfile's text for a failed system call (its SFE_SYSTEM), without the error number
_LIBSNDFILE_SYSTEM_ERROR = "System error"


class _PannsRow:
    """Picklable ``"ROW" -> int16 clip`` of one PANNs file, opened once per process."""

    def __init__(self, path: Path, clip_samples: int) -> None:
        self.path, self.clip_samples = path, clip_samples
        self._waves = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "clip_samples": self.clip_samples, "_waves": None}

    def __call__(self, source: str) -> np.ndarray:
        if self._waves is None:
            self._waves = h5py.File(self.path, "r")["waveform"]
        return pad_or_trim_int16(self._waves[int(source.rsplit(":", 1)[1])], self.clip_samples)


def pad_or_trim_int16(clip: np.ndarray, clip_samples: int) -> np.ndarray:
    out = np.zeros(clip_samples, dtype=np.int16)
    n = min(clip_samples, len(clip))
    out[:n] = clip[:n]
    return out


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


def _check_output(output: Path, inputs: list, overwrite: bool, shards: bool) -> None:
    """Refuse an output that is an input, exists without ``overwrite``, or (HDF5) is not a file;
    with ``shards``, check that litdata is installed."""
    if shards:
        try:
            require_litdata("--shards")
        except ImportError as err:
            raise UsageError(str(err)) from None
    for source in inputs:
        if source is not None and same_file(output, source):
            raise UsageError(f"output {output} is also an input ({source}); refusing to write over it")
    if output.exists() and not overwrite:
        raise FileExistsError(f"output {output} exists; pass overwrite=True (--overwrite) to replace it")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(err.errno, f"OUTPUT: cannot make the folder {output.parent}: {err.strerror or err}") from None
    if shards:
        if output.exists() and not output.is_dir():
            raise UsageError(f"OUTPUT: {output} is not a folder; --shards writes a folder of shards")
        if output.exists() and not is_shard_location(output):
            raise UsageError(
                f"OUTPUT: {output} exists and is not a shard folder (no index.json); refusing to replace it, "
                "even with --overwrite"
            )
        for source in inputs:
            if source is not None and Path(source).resolve().is_relative_to(output.resolve()):
                raise UsageError(f"OUTPUT: {output} holds an input ({source}); refusing to replace it")
        return
    check_output_path(output, [i for i in inputs if i is not None], overwrite=True, what="OUTPUT")


def _blocks(planned: list[tuple[str, str, list[int]]], part_clips: int) -> list[Block]:
    blocks = []
    for number, start in enumerate(range(0, len(planned), part_clips)):
        chunk = planned[start : start + part_clips]
        blocks.append(
            Block(
                number,
                tuple(src for src, _, _ in chunk),
                tuple(name for _, name, _ in chunk),
                tuple(tuple(labels) for _, _, labels in chunk),
            )
        )
    return blocks


def _encode_and_assemble(
    planned: list[tuple[str, str, list[int]]],
    read_clip,
    report: PackReport,
    settings: dict,
    inputs: list,
    *,
    shards: bool,
    num_workers: int,
    progress: bool,
    part_clips: int,
    clip_samples: int,
) -> None:
    """Encode ``planned`` into parts (resuming), then write the output from them."""
    codec, bitrate, output = report.codec, settings["bitrate"], report.output
    blocks = _blocks(planned, part_clips)
    stale = remove_stale_temporaries(output)
    store = PartStore(output, fingerprint_of([[src, name, labels] for src, name, labels in planned], settings))
    store.open()
    stale += store.stale
    if stale:
        names = ", ".join(p.name for p in stale[:5]) + (" ..." if len(stale) > 5 else "")
        files = f"{len(stale)} temporary file{'s' if len(stale) > 1 else ''}"
        report.notes.append(f"removed {files} an earlier pack left when it was stopped: {names}")
    if store.discarded:
        report.notes.append(f"a partial pack of other inputs in {store.folder} was discarded")
    report.resumed_parts = sum(store.done(b.number) for b in blocks)
    report.parts = len(blocks)
    bar = tqdm(total=len(planned), desc=f"packing ({codec})", unit="clip", disable=not progress)
    bar.update(sum(len(b.sources) for b in blocks if store.done(b.number)))
    sizes = {b.number: len(b.sources) for b in blocks}
    for number, _ in run_blocks(blocks, store, read_clip, codec, bitrate, num_workers):
        bar.update(sizes[number])
    bar.close()
    parts = [read_part(store.path(b.number)) for b in blocks]  # names and labels; clips read per part
    for part in parts:
        report.unreadable += [(Path(src), why) for src, why in part.skipped]
    report.packed = sum(len(p.names) for p in parts)
    if report.packed == 0:
        store.remove()
        raise UsageError(f"no clip could be decoded\n{report.summary()}")
    name_width = max(20, max((len(n.encode()) for p in parts for n in p.names), default=20))
    if shards:
        from .shards import write_shards

        write_shards(output, parts, codec, report.num_classes, clip_samples, bitrate)
    else:
        with atomic_output(output, tag=TEMP_TAG) as tmp:
            _write_hdf5(tmp, parts, codec, report.num_classes, clip_samples, name_width, bitrate)
    store.remove()


def _write_hdf5(
    path: Path, parts: list, codec: str, num_classes: int, clip_samples: int, name_width: int, bitrate: int
) -> None:
    total = sum(len(p.names) for p in parts)
    with h5py.File(path, "w") as h5:
        if codec == "pcm":
            names, clips, targets = create_layout(h5, total, num_classes, clip_samples, name_width, resizable=True)
        else:
            names, clips, targets = create_encoded_layout(h5, total, num_classes, codec, name_width, resizable=True)
            h5.attrs["clip_samples"] = clip_samples
            if codec == "opus":
                h5.attrs["bitrate"] = bitrate
                h5.attrs["opus_packet_ms"] = OPUS_PACKET_MS
        h5.attrs["codec"] = codec
        h5.attrs["sample_rate"] = SAMPLE_RATE
        row = 0
        for part in parts:
            count = len(part.names)
            if count == 0:
                continue
            target = np.zeros((count, num_classes), dtype=bool)
            for i, labels in enumerate(part.labels):
                target[i, labels] = True
            names[row : row + count] = [n.encode() for n in part.names]
            targets[row : row + count] = target
            if codec == "pcm":
                clips[row : row + count] = np.stack(part.clips)
            else:
                for i, clip in enumerate(part.clips):  # one row at a time: h5py's vlen slices mis-shape 1 row
                    clips[row + i] = np.frombuffer(clip, dtype=np.uint8)
            row += count


def _settings(codec: str, bitrate: int, clip_samples: int, classes: list, part_clips: int, shards: bool) -> dict:
    return {
        "version": 1,
        "codec": codec,
        "bitrate": int(bitrate) if codec == "opus" else 0,
        "opus_packet_ms": OPUS_PACKET_MS if codec == "opus" else 0,  # parts of another packet size: not resumed
        "clip_samples": clip_samples,
        "classes": [c.mid for c in classes],
        "part_clips": part_clips,
        "shards": shards,
    }


def pack_folder(
    audio_dir: str | os.PathLike,
    labels_csv: str | os.PathLike,
    output: str | os.PathLike,
    class_csv: str | os.PathLike | None = None,
    overwrite: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    clip_samples: int = CLIP_SAMPLES,
    codec: str = "pcm",
    bitrate: int = OPUS_BITRATE,
    shards: bool = False,
    part_clips: int = DEFAULT_PART_CLIPS,
) -> PackReport:
    """Pack ``audio_dir`` with labels from ``labels_csv`` into ``output``: one HDF5 file, or with
    ``shards`` a folder of litdata shards (:mod:`~.shards`); clips stored as ``codec``.

    Clips are encoded by ``num_workers`` processes into part files of ``part_clips`` clips
    (:mod:`~.pack_parts`): a run stopped or killed part-way continues where it stopped when
    started again with the same inputs. The output is written under a temporary name and renamed
    when complete. The pack holds OUTPUT's lock while it runs (:mod:`~.pack_claim`): another pack
    of the same ``output`` raises :class:`~.pack_claim.OutputBusy` at once. Raises
    ``FileExistsError`` if ``output`` exists and ``overwrite`` is False,
    ``ValueError`` for a codec this machine cannot encode (before any work), if no file could
    be packed, if ``output`` is the labels or class CSV, or a CSV is not UTF-8 text. The report
    lists what was skipped and why, the labelled segments without an audio file, and notes on
    the CSV (a byte-order mark, YTIDs on several lines).
    """
    audio_dir, labels_csv, output = Path(audio_dir), Path(labels_csv), Path(output)
    check_encoder(codec, bitrate)
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"audio folder not found: {audio_dir}")
    with claim_output(output):
        return _pack_folder(
            audio_dir,
            labels_csv,
            output,
            class_csv,
            overwrite,
            num_workers=num_workers,
            progress=progress,
            clip_samples=clip_samples,
            codec=codec,
            bitrate=bitrate,
            shards=shards,
            part_clips=part_clips,
        )


def _pack_folder(
    audio_dir: Path,
    labels_csv: Path,
    output: Path,
    class_csv: str | os.PathLike | None,
    overwrite: bool,
    *,
    num_workers: int,
    progress: bool,
    clip_samples: int,
    codec: str,
    bitrate: int,
    shards: bool,
    part_clips: int,
) -> PackReport:
    """:func:`pack_folder` once OUTPUT's lock is held."""
    _check_output(output, [labels_csv, class_csv], overwrite, shards)
    classes = load_class_names(class_csv)
    notes: list[str] = []
    labels = read_segments_csv(labels_csv, notes)
    report = PackReport(output=output, num_classes=len(classes), notes=notes, codec=codec)
    files, not_audio = list_files(audio_dir)
    report.not_audio = [p for p in not_audio if not is_pack_file(output, p)]  # an OUTPUT inside AUDIO_DIR
    # never over an audio file, a folder or a device, even with --overwrite; checked before decoding
    _check_output(output, [labels_csv, class_csv, *files], True, shards)
    if not files:
        raise UsageError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {audio_dir}")
    planned = _plan(files, labels, mid_to_index(classes), report)
    matched = {match_ytid(path.stem, labels) for path in files}
    report.without_audio = [ytid for ytid in labels if ytid not in matched]
    if not planned:
        raise UsageError(f"no audio file under {audio_dir} matches a labelled YTID in {labels_csv}\n{report.summary()}")
    settings = _settings(codec, bitrate, clip_samples, classes, part_clips, shards)
    stats = [p.stat() for p, _, _ in planned]  # one stat per file: size and time mark its version
    settings["sources"] = [[str(p), st.st_size, st.st_mtime_ns] for (p, _, _), st in zip(planned, stats)]
    jobs = [(str(path), ytid, indices) for path, ytid, indices in planned]
    try:
        _encode_and_assemble(
            jobs,
            _FileClip(clip_samples),
            report,
            settings,
            [labels_csv, class_csv],
            shards=shards,
            num_workers=num_workers,
            progress=progress,
            part_clips=part_clips,
            clip_samples=clip_samples,
        )
    except ValueError as err:
        if report.packed == 0:
            raise UsageError(f"no audio file under {audio_dir} could be decoded\n{report.summary()}") from err
        raise
    return report


def pack_panns(
    source: str | os.PathLike,
    output: str | os.PathLike,
    codec: str,
    class_csv: str | os.PathLike | None = None,
    overwrite: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    bitrate: int = OPUS_BITRATE,
    shards: bool = False,
    part_clips: int = DEFAULT_PART_CLIPS,
) -> PackReport:
    """Convert a PANNs-layout HDF5 file (``audio_name``, ``waveform`` int16, ``target``) to
    ``codec`` (one HDF5 file, or a folder of shards), without the audio folder: same rows, names
    and targets; rows with an empty ``audio_name`` are left out and counted. Parallel and
    resumable as :func:`pack_folder`. ``class_csv`` only names the classes in the report."""
    source, output = Path(source), Path(output)
    check_encoder(codec, bitrate)
    if not source.is_file():
        raise FileNotFoundError(f"--from: HDF5 file not found: {source}")
    try:
        with h5py.File(source, "r") as h5:
            codec_there = file_codec(h5, source)
            wave = h5.get("waveform")
            clip_samples = int(wave.shape[1]) if wave is not None and wave.ndim == 2 else CLIP_SAMPLES
    except OSError as err:
        raise UsageError(f"--from {source}: not a readable HDF5 file ({err})") from None
    if codec_there != "pcm":
        raise UsageError(f"--from {source}: holds {codec_there} clips; give a PANNs (int16) file")
    _, num_classes = inspect_file(source, clip_samples)
    with h5py.File(source, "r") as h5:
        names = h5["audio_name"][()]
        target = h5["target"][()]
    if class_csv is not None and len(load_class_names(class_csv)) != num_classes:
        raise UsageError(f"--class-csv {class_csv}: its class count differs from the {num_classes} of {source}")
    with claim_output(output):
        _check_output(output, [source, class_csv], overwrite, shards)
        return _pack_rows(
            source,
            output,
            names,
            target,
            codec,
            num_classes,
            clip_samples,
            class_csv,
            num_workers=num_workers,
            progress=progress,
            bitrate=bitrate,
            shards=shards,
            part_clips=part_clips,
        )


def _pack_rows(
    source: Path,
    output: Path,
    names: np.ndarray,
    target: np.ndarray,
    codec: str,
    num_classes: int,
    clip_samples: int,
    class_csv: str | os.PathLike | None,
    *,
    num_workers: int,
    progress: bool,
    bitrate: int,
    shards: bool,
    part_clips: int,
) -> PackReport:
    """:func:`pack_panns` once OUTPUT's lock is held and checked."""
    report = PackReport(output=output, num_classes=num_classes, codec=codec)
    planned = []
    for row, name in enumerate(names):
        if name == b"":
            report.empty_rows += 1
            continue
        planned.append((f"{source}:{row}", name.decode("utf-8", "replace"), np.flatnonzero(target[row]).tolist()))
    if not planned:
        raise UsageError(f"--from {source}: every row has an empty audio_name; nothing to convert")
    stat = source.stat()
    settings = _settings(codec, bitrate, clip_samples, [], part_clips, shards)
    settings["source"] = [str(source.resolve()), stat.st_size, stat.st_mtime_ns]
    _encode_and_assemble(
        planned,
        _PannsRow(source, clip_samples),
        report,
        settings,
        [source, class_csv],
        shards=shards,
        num_workers=num_workers,
        progress=progress,
        part_clips=part_clips,
        clip_samples=clip_samples,
    )
    return report


def run_pack(
    audio_dir: str | None,
    labels_csv: str | None,
    output: str,
    class_csv: str | None = None,
    overwrite: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    codec: str = "pcm",
    bitrate: int = OPUS_BITRATE,
    shards: bool = False,
    from_panns: str | None = None,
) -> int:
    """``dcls-audio pack``: pack, print the summary; exit code 0, or 1 with the error on stderr."""
    import sys

    try:
        if from_panns is not None:
            report = pack_panns(from_panns, output, codec, class_csv, overwrite, num_workers, progress, bitrate, shards)
        else:
            report = pack_folder(
                audio_dir,
                labels_csv,
                output,
                class_csv=class_csv,
                overwrite=overwrite,
                num_workers=num_workers,
                progress=progress,
                codec=codec,
                bitrate=bitrate,
                shards=shards,
            )
    except (OSError, UsageError) as exc:  # missing or unreadable inputs, the output refused or not writable
        print(f"dcls-audio pack: error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0
