"""AudioSet clips stored in PANNs-layout HDF5 files.

Layout of each file (N rows, C classes):

- ``audio_name``: fixed-length bytes (``S20`` in PANNs files); empty for clips that failed to
  download (their waveform is all zeros) -- such rows are dropped and counted.
- ``waveform``: int16, (N, 320000): 10 s at 32 kHz.
- ``target``: bool, (N, C).

Files written by ``dcls-audio pack --codec flac|opus`` hold the clips as encoded bytes instead:
the file attribute ``codec`` (``flac`` or ``opus``; absent or ``pcm`` for the PANNs layout) and a
dataset ``encoded`` of variable-length uint8 rows (N,) in place of ``waveform`` (see
:mod:`~.clip_codecs`). Such rows are decoded in the process that reads them (the loader
workers) and pass the same checks as decoded audio files (length, NaN, huge values); a row that
does not decode is left out of its batch (which comes out smaller), logged with its file and
row, and counted in :attr:`AudioSetHDF5.undecodable` of that process.

Several files are concatenated (e.g. balanced + unbalanced train). h5py handles are opened
lazily in each process on its first read (after DataLoader workers fork), never shared across
processes, and kept open.

A DataLoader with a batch size fetches a whole batch through ``__getitems__`` into one
preallocated (B, S) array (in shared memory inside a loader worker, so handing it to the main
process copies nothing), in the sampler's order. Contiguous int16 waveforms (the PANNs files)
are read row by row with ``os.preadv`` straight into that array (:mod:`.contiguous_rows`);
other layouts with one h5py call per file (rows sorted; runs of adjacent rows come out as one
hyperslab), then put in place. Use :func:`collate_clips` as the loader's ``collate_fn`` to pass
such batches through unchanged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from ..errors import UsageError
from .classes import ClassInfo, display_names, mids, resolve_class_names
from .clip_codecs import CODECS, ClipDecodeError, decode_clip_bytes
from .constants import CLIP_SAMPLES
from .contiguous_rows import ContiguousRows, PendingRows

__all__ = [
    "AudioSetHDF5",
    "ClipBatch",
    "PathLike",
    "as_path_list",
    "check_files_exist",
    "collate_clips",
    "common_num_classes",
    "create_encoded_layout",
    "create_layout",
    "file_codec",
    "inspect_file",
    "write_hdf5",
]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


def as_path_list(files: PathLike | Sequence[PathLike] | None, argument: str = "files") -> list[Path]:
    """Normalise one path or a sequence of paths to a list of ``Path``."""
    if files is None:
        return []
    if isinstance(files, (str, os.PathLike)):
        return [Path(files)]
    try:
        return [Path(f) for f in files]
    except TypeError:
        raise TypeError(f"{argument}: expected a path or a list of paths, got {files!r}") from None


def check_files_exist(paths: Sequence[Path], argument: str = "files") -> None:
    """Raise ``FileNotFoundError`` naming the first missing path."""
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{argument}: HDF5 file not found: {path}")


#: h5py chunk cache per open file: room for a few one-clip chunks (files written by ``pack``
#: store one clip per chunk; the PANNs files are contiguous and do not use it)
_CHUNK_CACHE = dict(rdcc_nbytes=16 * 2**20, rdcc_nslots=4099)


class ClipBatch(list):
    """What :meth:`AudioSetHDF5.__getitems__` returns: the list of item dicts (views into the
    batch, so any ``collate_fn`` works) and, as ``.collated``, the batch itself (``waveform``
    int16 (B, S), ``target`` float32 (B, C), ``index`` int64 (B,), ``audio_name`` list[str],
    ``undecodable`` int: rows of the batch left out because they did not decode). A batch whose
    waveform is still to be read (a :class:`~.contiguous_rows.PendingRows`, see
    ``AudioSetHDF5.defer_pcm_reads``) has ``None`` as each item's waveform."""

    def __init__(self, collated: dict) -> None:
        names = collated["audio_name"]
        waveform = collated["waveform"]
        pending = isinstance(waveform, PendingRows)
        super().__init__(
            {
                "waveform": None if pending else waveform[i],
                "target": collated["target"][i],
                "index": collated["index"][i],
                "audio_name": names[i],
            }
            for i in range(len(names))
        )
        self.collated = collated


def collate_clips(batch):
    """``collate_fn`` for :class:`AudioSetHDF5`: a :class:`ClipBatch`'s batch as it is (no copy),
    anything else through the default collate."""
    if isinstance(batch, ClipBatch):
        return batch.collated
    return default_collate(batch)


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise FileNotFoundError(f"HDF5 file not found: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise UsageError(f"{path}: not a readable HDF5 file ({exc})") from exc


def _dataset(h5: h5py.File, path: Path, name: str) -> h5py.Dataset:
    if name not in h5 or not isinstance(h5[name], h5py.Dataset):
        raise UsageError(f"{path}: dataset '{name}' is missing (PANNs layout needs 'audio_name', 'waveform', 'target')")
    return h5[name]


def file_codec(h5: h5py.File, path: PathLike) -> str:
    """The codec of an open file: its ``codec`` attribute, ``pcm`` when there is none."""
    codec = h5.attrs.get("codec", "pcm")
    codec = codec.decode() if isinstance(codec, bytes) else str(codec)
    if codec not in CODECS:
        raise UsageError(f"{path}: attribute 'codec' is {codec!r}; this version reads {', '.join(CODECS)}")
    return codec


def _clip_dataset(h5: h5py.File, path: Path, codec: str, clip_samples: int) -> h5py.Dataset:
    """The ``waveform`` (pcm) or ``encoded`` dataset of an open file, checked."""
    if codec == "pcm":
        wave = _dataset(h5, path, "waveform")
        if wave.dtype != np.int16 or wave.ndim != 2:
            raise UsageError(
                f"{path}: dataset 'waveform' must be int16 (N, {clip_samples}), "
                f"got dtype {wave.dtype} shape {wave.shape}"
            )
        if wave.shape[1] != clip_samples:
            raise UsageError(
                f"{path}: dataset 'waveform' has clips of {wave.shape[1]} samples, expected {clip_samples}"
            )
        return wave
    stored = h5.attrs.get("clip_samples")
    if stored is not None and int(stored) != clip_samples:
        raise UsageError(
            f"{path}: holds clips of {int(stored)} samples (attribute clip_samples), expected {clip_samples}"
        )
    if "encoded" not in h5 or not isinstance(h5["encoded"], h5py.Dataset):
        raise UsageError(f"{path}: dataset 'encoded' is missing (attribute codec={codec!r} needs it)")
    encoded = h5["encoded"]
    base = h5py.check_vlen_dtype(encoded.dtype)
    if encoded.ndim != 1 or base is None or np.dtype(base) != np.uint8:
        raise UsageError(
            f"{path}: dataset 'encoded' must be 1-D variable-length uint8, "
            f"got dtype {encoded.dtype} shape {encoded.shape}"
        )
    return encoded


def inspect_file(path: PathLike, clip_samples: int = CLIP_SAMPLES) -> tuple[int, int]:
    """Validate the layout of one file; return ``(rows, classes)``.

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` naming the file and the
    dataset for a missing dataset, a wrong dtype, a wrong clip length or mismatched row counts.
    """
    path = Path(path)
    with _open(path) as h5:
        names = _dataset(h5, path, "audio_name")
        codec = file_codec(h5, path)
        wave = _clip_dataset(h5, path, codec, clip_samples)
        target = _dataset(h5, path, "target")
        if names.ndim != 1 or names.dtype.kind != "S":
            raise UsageError(
                f"{path}: dataset 'audio_name' must be 1-D fixed-length bytes (S20), "
                f"got dtype {names.dtype} shape {names.shape}"
            )
        if target.dtype != np.bool_ or target.ndim != 2:
            raise UsageError(
                f"{path}: dataset 'target' must be bool (N, classes), got dtype {target.dtype} shape {target.shape}"
            )
        rows = names.shape[0]
        for name, ds in ((wave.name.lstrip("/"), wave), ("target", target)):
            if ds.shape[0] != rows:
                raise UsageError(f"{path}: dataset '{name}' has {ds.shape[0]} rows but 'audio_name' has {rows}")
        return rows, int(target.shape[1])


def common_num_classes(paths: Sequence[PathLike], clip_samples: int = CLIP_SAMPLES) -> int:
    """The class count shared by all the (validated) files; a ValueError naming the first file
    that disagrees otherwise. ``paths`` must not be empty (the callers check)."""
    first = paths[0]
    num_classes = inspect_file(first, clip_samples)[1]
    for path in paths[1:]:
        count = inspect_file(path, clip_samples)[1]
        if count != num_classes:
            raise UsageError(f"{path}: dataset 'target' has {count} classes but {first} has {num_classes}")
    return num_classes


def create_layout(
    h5: h5py.File,
    rows: int,
    num_classes: int,
    clip_samples: int = CLIP_SAMPLES,
    name_width: int = 20,
    resizable: bool = False,
) -> tuple[h5py.Dataset, h5py.Dataset, h5py.Dataset]:
    """Create empty ``audio_name``, ``waveform``, ``target`` datasets in an open file.

    ``resizable`` makes the row axis growable/shrinkable (waveform chunked one clip per chunk).
    """
    grow = dict(maxshape=(None,)) if resizable else {}
    names = h5.create_dataset("audio_name", (rows,), dtype=f"S{name_width}", **grow)
    extra = dict(maxshape=(None, clip_samples), chunks=(1, clip_samples)) if resizable else {}
    waves = h5.create_dataset("waveform", (rows, clip_samples), dtype=np.int16, **extra)
    extra = dict(maxshape=(None, num_classes)) if resizable else {}
    targets = h5.create_dataset("target", (rows, num_classes), dtype=bool, **extra)
    return names, waves, targets


def create_encoded_layout(
    h5: h5py.File, rows: int, num_classes: int, codec: str, name_width: int = 20, resizable: bool = False
) -> tuple[h5py.Dataset, h5py.Dataset, h5py.Dataset]:
    """Create empty ``audio_name``, ``encoded`` (variable-length uint8) and ``target`` datasets
    and set the ``codec`` attribute (``flac`` or ``opus``) in an open file."""
    grow = dict(maxshape=(None,)) if resizable else {}
    h5.attrs["codec"] = codec
    names = h5.create_dataset("audio_name", (rows,), dtype=f"S{name_width}", **grow)
    encoded = h5.create_dataset("encoded", (rows,), dtype=h5py.vlen_dtype(np.uint8), **grow)
    extra = dict(maxshape=(None, num_classes)) if resizable else {}
    targets = h5.create_dataset("target", (rows, num_classes), dtype=bool, **extra)
    return names, encoded, targets


def write_hdf5(path: PathLike, audio_names: Sequence[str], waveforms: np.ndarray, targets: np.ndarray) -> Path:
    """Write a small PANNs-layout file from in-memory arrays (int16 (N, S), bool (N, C))."""
    waveforms, targets = np.asarray(waveforms, dtype=np.int16), np.asarray(targets, dtype=bool)
    encoded = [n.encode() for n in audio_names]
    with h5py.File(path, "w") as h5:
        names, waves, target = create_layout(
            h5, len(encoded), targets.shape[1], waveforms.shape[1], max([20] + [len(n) for n in encoded])
        )
        if encoded:
            names[:], waves[:], target[:] = encoded, waveforms, targets
    return Path(path)


class AudioSetHDF5(Dataset):
    """Concatenation of PANNs-layout HDF5 files, without the rows of empty ``audio_name``.

    Item ``i`` (0 <= i < len) is a dict: ``waveform`` int16 (clip_samples,), ``target`` float32
    (C,), ``index`` int64 (i, the global row over the valid rows of all files, in file order) and
    ``audio_name`` (str). ``class_csv`` names the classes (its length must equal C); without it
    AudioSet's names are used when C == 527 and generic names otherwise.
    """

    def __init__(
        self,
        files: PathLike | Sequence[PathLike],
        class_csv: PathLike | None = None,
        clip_samples: int = CLIP_SAMPLES,
    ) -> None:
        self.files = as_path_list(files)
        if not self.files:
            raise UsageError("AudioSetHDF5: no HDF5 files given")
        self.clip_samples = clip_samples
        num_classes = common_num_classes(self.files, clip_samples)
        names_per_file, rows_per_file, dropped_per_file = [], [], []
        for path in self.files:
            with h5py.File(path, "r") as h5:
                names = h5["audio_name"][()]
            valid = np.flatnonzero(names != b"").astype(np.int64)
            names_per_file.append(names[valid])
            rows_per_file.append(valid)
            dropped = len(names) - len(valid)
            dropped_per_file.append(dropped)
            if dropped:
                log.info("%s: dropped %d of %d rows with an empty audio_name", path, dropped, len(names))
        self.num_classes: int = int(num_classes)
        self.classes: list[ClassInfo] = resolve_class_names(
            self.num_classes, class_csv, data_source=f"{self.files[0]}: dataset 'target'"
        )
        self._rows = rows_per_file
        self._names = np.concatenate(names_per_file) if names_per_file else np.array([], dtype="S1")
        self._offsets = np.cumsum([0] + [len(r) for r in rows_per_file]).astype(np.int64)
        self.dropped_per_file: list[int] = dropped_per_file
        self._handles: list[h5py.File] | None = None
        self._readers: list[tuple[h5py.Dataset, h5py.Dataset]] | None = None
        self._contiguous: list[ContiguousRows | None] | None = None  # pread readers of PANNs waveforms
        self._pid: int | None = None
        self.codecs: list[str] = []
        for path in self.files:
            with h5py.File(path, "r") as h5:
                self.codecs.append(file_codec(h5, path))
        #: (file, row, reason) of the rows this process could not decode (left out of their batches)
        self.undecodable: list[tuple[Path, int, str]] = []
        #: batches of contiguous PCM rows come out of :meth:`__getitems__` with their waveform a
        #: :class:`~.contiguous_rows.PendingRows`, read when the loader pins the batch (set by a
        #: DataModule whose loader pins memory; anything else must read it)
        self.defer_pcm_reads = False

    # ------------------------------------------------------------------ bookkeeping
    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def num_dropped(self) -> int:
        """Rows skipped because their ``audio_name`` is empty (all files)."""
        return sum(self.dropped_per_file)

    class_names = property(lambda self: display_names(self.classes))
    class_mids = property(lambda self: mids(self.classes))

    def locate(self, index: int) -> tuple[int, int]:
        """Global valid-row index -> (file number, row in that file)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        file_no = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return file_no, int(self._rows[file_no][index - self._offsets[file_no]])

    def audio_name(self, index: int) -> str:
        return self._names[index].decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ reading
    def _datasets(self, file_no: int) -> tuple[h5py.Dataset, h5py.Dataset]:
        """(waveform, target) of file ``file_no``, opened once per process."""
        if self._handles is None or self._pid != os.getpid():
            # A handle inherited through fork is not ours to use or close.
            files = [h5py.File(p, "r", **_CHUNK_CACHE) for p in self.files]
            self._handles = files
            self._readers = [
                (h5["waveform"] if codec == "pcm" else h5["encoded"], h5["target"])
                for h5, codec in zip(files, self.codecs)
            ]
            self._contiguous = [
                ContiguousRows.of(path, waves) if codec == "pcm" else None
                for path, codec, (waves, _) in zip(self.files, self.codecs, self._readers)
            ]
            self._pid = os.getpid()
        return self._readers[file_no]

    def _decode(self, file_no: int, row: int, data: np.ndarray) -> np.ndarray | None:
        """One stored row of an encoded file -> int16 (clip_samples,), or None (logged, counted)."""
        try:
            return decode_clip_bytes(data, self.codecs[file_no], self.clip_samples)
        except ClipDecodeError as err:
            path = self.files[file_no]
            self.undecodable.append((path, row, err.reason))
            log.warning("%s: row %d (%s) cannot be decoded, left out: %s", path, row, self.codecs[file_no], err.reason)
            return None

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        file_no, row = self.locate(index)
        waves, targets = self._datasets(file_no)
        if self.codecs[file_no] != "pcm":
            clip = self._decode(file_no, row, waves[row])
            if clip is None:
                raise ClipDecodeError(f"{self.files[file_no]}: row {row} cannot be decoded")
            waveform = torch.from_numpy(clip)
        else:
            waveform = torch.from_numpy(waves[row])
        target = torch.from_numpy(targets[row].astype(np.float32))
        return {
            "waveform": waveform,
            "target": target,
            "index": torch.tensor(index, dtype=torch.int64),
            "audio_name": self.audio_name(index),
        }

    def __getitems__(self, indices: Sequence[int]) -> ClipBatch:
        """The clips ``indices`` as one collated :class:`ClipBatch`, in the order given."""
        order = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(order) and (order.min() < 0 or order.max() >= len(self)):
            bad = order[(order < 0) | (order >= len(self))][0]
            raise IndexError(f"index {bad} out of range for {len(self)} clips")
        batch = len(order)
        file_of = np.searchsorted(self._offsets, order, side="right") - 1
        groups = []  # (file, slots in the batch, rows of the file, its distinct rows, slot -> distinct row)
        target = np.empty((batch, self.num_classes), dtype=bool)
        for file_no in np.unique(file_of).tolist():
            slots = np.flatnonzero(file_of == file_no)
            rows = self._rows[file_no][order[slots] - self._offsets[file_no]]
            unique_rows, where = np.unique(rows, return_inverse=True)  # h5py reads increasing rows
            target[slots] = self._datasets(file_no)[1][unique_rows][where]
            groups.append((file_no, slots, rows, unique_rows, where))  # targets read on the way
        readers = [self._contiguous[group[0]] for group in groups]
        if self.defer_pcm_reads and all(r is not None for r in readers):  # read when the batch is pinned
            parts = [(reader, slots, rows) for reader, (_, slots, rows, *_) in zip(readers, groups)]
            return self._collated(order, PendingRows((batch, self.clip_samples), np.int16, parts), target, 0)
        if get_worker_info() is not None:  # handed to the main process through shared memory,
            # allocated there directly (share_memory_() would allocate, then copy)
            storage = torch.UntypedStorage._new_shared(batch * self.clip_samples * 2)
            waveform = torch.empty(0, dtype=torch.int16).set_(storage).view(batch, self.clip_samples)
        else:
            waveform = torch.empty((batch, self.clip_samples), dtype=torch.int16)
        wave_np = waveform.numpy()
        failed: list[int] = []
        for (file_no, slots, rows, unique_rows, where), contiguous in zip(groups, readers):
            if contiguous is not None:  # straight into the batch (contiguous_rows: measured faster)
                contiguous.read_into(wave_np, slots, rows)
                continue
            stored = self._datasets(file_no)[0][unique_rows]
            if self.codecs[file_no] == "pcm":
                wave_np[slots] = stored[where]
                continue
            for slot, row, data in zip(slots, rows, stored[where]):
                clip = self._decode(file_no, int(row), data)
                if clip is None:
                    failed.append(int(slot))
                else:
                    wave_np[slot] = clip
        if len(failed) == batch:  # an empty batch would give a NaN loss and stop training obscurely
            files = ", ".join(sorted({str(self.files[f]) for f, *_ in groups}))
            raise UsageError(
                f"{files}: none of the {batch} clips of a batch could be decoded; the file is damaged: pack it again"
            )
        if failed:  # leave the rows out: a smaller batch
            keep = np.setdiff1d(np.arange(batch), failed)
            order, target = order[keep], target[keep]
            waveform = waveform[torch.from_numpy(keep)]
        return self._collated(order, waveform, target, len(failed))

    def _collated(self, order: np.ndarray, waveform, target: np.ndarray, undecodable: int) -> ClipBatch:
        """The :class:`ClipBatch` of the clips ``order`` (global indices) with their waveforms (a
        (B, S) tensor or a :class:`PendingRows`) and bool targets (B, C)."""
        return ClipBatch(
            {
                "waveform": waveform,
                "target": torch.from_numpy(target.astype(np.float32)),
                "index": torch.from_numpy(order.copy()),
                "audio_name": [self.audio_name(int(i)) for i in order],
                "undecodable": undecodable,
            }
        )

    def iter_targets(self, chunk_rows: int = 65536) -> Iterator[np.ndarray]:
        """Bool target rows (n, C) of all valid clips, in global order, a chunk at a time."""
        for path, rows in zip(self.files, self._rows):
            if len(rows) == 0:
                continue
            with h5py.File(path, "r") as h5:
                target = h5["target"]
                for start in range(0, target.shape[0], chunk_rows):
                    stop = min(start + chunk_rows, target.shape[0])
                    keep = rows[(rows >= start) & (rows < stop)] - start
                    if len(keep):
                        yield target[start:stop][keep]

    def targets(self) -> np.ndarray:
        """All valid targets as one bool array (len, C); large for full AudioSet (~1 GB)."""
        chunks = list(self.iter_targets())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.num_classes), dtype=bool)

    def close(self) -> None:
        if self._handles is not None and self._pid == os.getpid():
            for h5 in self._handles:
                h5.close()
            for reader in self._contiguous or []:
                if reader is not None:
                    reader.close()
        self._handles = None
        self._readers = None
        self._contiguous = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = state["_readers"] = state["_contiguous"] = state["_pid"] = None
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
