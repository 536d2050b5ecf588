"""AudioSet clips in litdata shards: a folder of chunk files plus litdata's ``index.json``, written
by ``dcls-audio pack --shards`` and read from a local folder or a bucket URL (``s3://``,
``gs://``, ``azure://``: litdata's remote support, which downloads the chunks a process reads
into a local cache).

Each item is a dict: ``audio_name`` (str), ``codec`` (``pcm``, ``flac`` or ``opus``),
``num_classes`` (int), ``labels`` (int32 class indices) and ``audio`` (bytes: int16 samples for
``pcm``, else the encoded clip, see :mod:`~.clip_codecs`). Shards are chunks of about
:data:`SHARD_BYTES` bytes. Next to litdata's index, ``clips.json`` says the codec and count,
and :data:`LABELS_FILE` (``labels.npz``) holds every clip's labels (``labels`` int32, all
clips' class indices concatenated, ``label_offsets`` int64 (n + 1,), ``num_classes``), so that
the balanced sampler's weights (:meth:`AudioSetShards.iter_targets`) need no item read: from a
bucket, each would download a chunk. Shards without it (written by an older pack), or with one
that does not match them, are scanned item by item, with a warning.

:class:`AudioSetShards` reads them by global index (litdata's random access into its chunks),
so the samplers of :mod:`~.samplers` apply unchanged: every clip once per epoch across all ranks,
a deterministic order per seed, and a run resumed inside an epoch continues that epoch's order
(the DataModule's ``train_position``). A clip that does not decode is left out of its batch and
counted, as in :class:`~.hdf5_dataset.AudioSetHDF5`; a shard that cannot be read is a
:class:`ShardReadError` naming it (local shards are checked against the index when opened).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from ..errors import UsageError
from .classes import ClassInfo, display_names, mids, resolve_class_names
from .clip_codecs import CODECS, ClipDecodeError, decode_clip_bytes
from .constants import CLIP_SAMPLES
from .hdf5_dataset import ClipBatch
from .pack_claim import TEMP_TAG

__all__ = [
    "AudioSetShards",
    "LABELS_FILE",
    "SHARD_BYTES",
    "ShardReadError",
    "is_shard_location",
    "require_litdata",
    "write_shards",
]

log = logging.getLogger(__name__)

#: bytes per shard (litdata chunk): large enough for streaming reads, small enough to cache a few
SHARD_BYTES = "64MB"
_INDEX = "index.json"
#: the labels of all clips, next to the index (see the module docstring)
LABELS_FILE = "labels.npz"
_REMOTE = ("s3://", "gs://", "gcs://", "azure://", "az://", "hf://")


#: a batch with no clip left: an empty batch would give a NaN loss and stop training obscurely
_NOTHING_DECODED = "{where}: none of the {count} clips of a batch could be decoded; the data is damaged: pack it again"


class ShardReadError(UsageError):
    """A shard (litdata chunk) that cannot be read; the message names it."""


def require_litdata(what: str = "shards") -> None:
    """``ImportError`` with the install command unless litdata is importable."""
    try:
        import litdata  # noqa: F401
    except ImportError:
        raise ImportError(f"{what} need litdata: pip install 'dcls-audio[shards]'") from None


def is_shard_location(location: str | os.PathLike) -> bool:
    """Whether a ``--data.*_files`` entry is a shard folder (has ``index.json``) or a bucket URL."""
    text = str(location)
    return text.startswith(_REMOTE) or (Path(text) / _INDEX).is_file()


def write_shards(output: Path, parts: Sequence, codec: str, num_classes: int, clip_samples: int, bitrate: int) -> None:
    """Write the clips of ``parts`` (:class:`~.pack_parts.EncodedPart`) as litdata shards into the
    folder ``output``: built in a temporary folder next to it and renamed when complete (an
    existing ``output`` is replaced only then). Both temporary folders are named
    ``.NAME.pack-*.tmp``, which the next pack of ``output`` removes if a kill left them
    (:func:`~.pack_claim.remove_stale_temporaries`)."""
    require_litdata("--shards")
    from litdata.streaming.writer import BinaryWriter

    output = Path(output)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.{TEMP_TAG}", suffix=".tmp", dir=output.parent))
    try:
        writer = BinaryWriter(str(staging), chunk_bytes=SHARD_BYTES)
        index = 0
        all_labels: list[np.ndarray] = []
        for part in parts:
            for name, labels, clip in zip(part.names, part.labels, part.clips):
                all_labels.append(np.asarray(labels, dtype=np.int32))
                audio = np.asarray(clip, dtype=np.int16).tobytes() if codec == "pcm" else bytes(clip)
                item = {
                    "audio_name": name,
                    "codec": codec,
                    "num_classes": int(num_classes),
                    "labels": np.asarray(labels, dtype=np.int32),
                    "audio": audio,
                }
                writer.add_item(index, item)
                index += 1
        writer.done()
        writer.merge()
        _write_labels(staging / LABELS_FILE, all_labels, num_classes)
        (staging / "clips.json").write_text(
            json.dumps({"codec": codec, "clips": index, "clip_samples": clip_samples, "bitrate": bitrate})
        )
        if output.exists():
            old = output.with_name(f".{output.name}.{TEMP_TAG}old.tmp")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(output, old)
            os.replace(staging, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_labels(path: Path, labels: list[np.ndarray], num_classes: int) -> None:
    """The :data:`LABELS_FILE` of clips whose class indices are ``labels``."""
    np.savez(
        path,
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int32),
        label_offsets=np.cumsum([0] + [len(x) for x in labels]).astype(np.int64),
        num_classes=np.int64(num_classes),
    )


def _check_local_shards(folder: Path) -> None:
    """Every chunk the index lists exists with its size (litdata would wait for a missing one)."""
    try:
        index = json.loads((folder / _INDEX).read_text())
        chunks = index["chunks"]
    except (OSError, ValueError, KeyError) as err:
        raise ShardReadError(f"{folder / _INDEX}: not a litdata index ({err})") from None
    for chunk in chunks:
        path = folder / chunk["filename"]
        if not path.is_file():
            raise ShardReadError(f"{path}: shard listed in {folder / _INDEX} is missing")
        size, expected = path.stat().st_size, chunk.get("chunk_bytes")
        if expected is not None and size < int(expected):
            raise ShardReadError(f"{path}: shard cannot be read (holds {size} of its {expected} bytes)")


class AudioSetShards(Dataset):
    """Clips of one shard location (a folder or a bucket URL), items and batches as
    :class:`~.hdf5_dataset.AudioSetHDF5`'s: ``waveform`` int16 (clip_samples,), ``target``
    float32 (C,), ``index`` int64, ``audio_name`` str; :meth:`__getitems__` gives a
    :class:`~.hdf5_dataset.ClipBatch`. ``cache_dir``: where litdata keeps downloaded chunks of a
    remote location (default: litdata's)."""

    def __init__(
        self,
        location: str | os.PathLike,
        class_csv: str | os.PathLike | None = None,
        clip_samples: int = CLIP_SAMPLES,
        cache_dir: str | None = None,
    ) -> None:
        self.location = str(location)
        self.files = [location]
        self.clip_samples = clip_samples
        self.cache_dir = cache_dir
        if not self.location.startswith(_REMOTE):
            _check_local_shards(Path(self.location))
        self._stream = None
        self._pid: int | None = None
        first = self._item(0) if len(self) else None
        if first is None:
            raise UsageError(f"{self.location}: the shards hold no clip")
        if first["codec"] not in CODECS:
            raise UsageError(f"{self.location}: clips stored as {first['codec']!r}; this version reads {CODECS}")
        self.num_classes = int(first["num_classes"])
        self._first_labels = np.asarray(first["labels"], dtype=np.int64)
        self._labels: tuple[np.ndarray, np.ndarray] | None = None  # from LABELS_FILE
        self._labels_read = False
        self.classes: list[ClassInfo] = resolve_class_names(
            self.num_classes, class_csv, data_source=f"{self.location}: num_classes"
        )
        self.dropped_per_file: list[int] = [0]
        self._rows = [np.arange(len(self), dtype=np.int64)]
        #: (location, index, reason) of the clips this process could not decode
        self.undecodable: list[tuple[str, int, str]] = []

    class_names = property(lambda self: display_names(self.classes))
    class_mids = property(lambda self: mids(self.classes))
    num_dropped = property(lambda self: 0)

    def _dataset(self):
        """litdata's StreamingDataset of this location, opened once per process."""
        if self._stream is None or self._pid != os.getpid():
            require_litdata(f"{self.location}: reading shards")
            from litdata import StreamingDataset

            try:
                self._stream = StreamingDataset(self.location, cache_dir=self.cache_dir, shuffle=False)
            except Exception as err:  # noqa: BLE001 - litdata raises several kinds for a bad location
                raise ShardReadError(f"{self.location}: not readable as litdata shards ({err})") from None
            self._pid = os.getpid()
        return self._stream

    def __len__(self) -> int:
        stream = self._dataset()
        if stream.cache is None:
            from litdata.utilities.env import _WorkerEnv

            stream.worker_env = _WorkerEnv.detect()
            stream.cache = stream._create_cache(worker_env=stream.worker_env)
        return len(stream.cache)

    def _shard_name(self, index: int) -> str:
        try:
            chunk = self._dataset().cache._get_chunk_index_from_index(index)[1]
            return self._dataset().cache._reader.config._chunks[chunk]["filename"]
        except Exception:  # noqa: BLE001 - only for the message
            return "?"

    def _item(self, index: int) -> dict:
        try:
            return self._dataset()[int(index)]
        except ShardReadError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure to read a chunk names the shard
            shard = self._shard_name(int(index))
            raise ShardReadError(f"{self.location}: shard {shard} cannot be read ({err})") from None

    def _clip(self, index: int, item: dict) -> np.ndarray | None:
        try:
            if item["codec"] == "pcm":
                clip = np.frombuffer(item["audio"], dtype=np.int16)
                if len(clip) == self.clip_samples:
                    return clip
                out = np.zeros(self.clip_samples, dtype=np.int16)
                out[: min(len(clip), self.clip_samples)] = clip[: self.clip_samples]
                return out
            return decode_clip_bytes(item["audio"], item["codec"], self.clip_samples)
        except (ClipDecodeError, ValueError) as err:
            reason = getattr(err, "reason", str(err))
            self.undecodable.append((self.location, index, reason))
            log.warning("%s: clip %d (%s) cannot be decoded, left out: %s", self.location, index, item["codec"], reason)
            return None

    def _target(self, item: dict) -> np.ndarray:
        target = np.zeros(self.num_classes, dtype=np.float32)
        target[np.asarray(item["labels"], dtype=np.int64)] = 1.0
        return target

    def __getitem__(self, index: int) -> dict:
        item = self._item(index)
        clip = self._clip(int(index), item)
        if clip is None:
            raise ClipDecodeError(f"{self.location}: clip {index} cannot be decoded")
        return {
            "waveform": torch.from_numpy(clip.copy()),
            "target": torch.from_numpy(self._target(item)),
            "index": torch.tensor(int(index), dtype=torch.int64),
            "audio_name": item["audio_name"],
        }

    def __getitems__(self, indices: Sequence[int]) -> ClipBatch:
        order = [int(i) for i in indices]
        clips, targets, kept, names = [], [], [], []
        for index in order:
            item = self._item(index)
            clip = self._clip(index, item)
            if clip is None:
                continue
            clips.append(clip)
            targets.append(self._target(item))
            kept.append(index)
            names.append(item["audio_name"])
        if not clips:
            raise UsageError(_NOTHING_DECODED.format(where=self.location, count=len(indices)))
        if get_worker_info() is not None:  # to the main process through shared memory, no copy
            storage = torch.UntypedStorage._new_shared(len(clips) * self.clip_samples * 2)
            waveform = torch.empty(0, dtype=torch.int16).set_(storage).view(len(clips), self.clip_samples)
        else:
            waveform = torch.empty((len(clips), self.clip_samples), dtype=torch.int16)
        if clips:
            waveform.numpy()[:] = np.stack(clips)
        target = np.stack(targets) if targets else np.zeros((0, self.num_classes), np.float32)
        return ClipBatch(
            {
                "waveform": waveform,
                "target": torch.from_numpy(target),
                "index": torch.tensor(kept, dtype=torch.int64),
                "audio_name": names,
                "undecodable": len(order) - len(kept),
            }
        )

    def _labels_file(self) -> Path | None:
        """The local path of :data:`LABELS_FILE` (downloaded into litdata's cache for a bucket),
        or None when the shards have none."""
        if not self.location.startswith(_REMOTE):
            path = Path(self.location) / LABELS_FILE
            return path if path.is_file() else None
        try:  # litdata's downloader of this location, as it fetches index.json
            from litdata.streaming.downloader import get_downloader

            folder = self._dataset().input_dir
            path = Path(folder.path) / LABELS_FILE
            get_downloader(folder.url, folder.path, []).download_file(os.path.join(folder.url, LABELS_FILE), str(path))
        except Exception as err:  # noqa: BLE001 - no sidecar (older shards) or no access: scan instead
            log.info("%s: no %s fetched (%s)", self.location, LABELS_FILE, err)
            return None
        return path if path.is_file() else None

    def _read_labels(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(labels, label_offsets) of :data:`LABELS_FILE` if it matches the shards, else None
        (with a warning: the caller reads every item instead)."""
        path = self._labels_file()
        if path is None:
            log.warning(
                "%s: no %s with the shards (written by an older pack?): reading every clip's labels, which is "
                "slow from a bucket; pack the shards again to write it",
                self.location,
                LABELS_FILE,
            )
            return None
        try:
            with np.load(path) as sidecar:
                labels = sidecar["labels"].astype(np.int64)
                offsets = sidecar["label_offsets"].astype(np.int64)
                num_classes = int(sidecar["num_classes"])
        except (OSError, ValueError, KeyError) as err:
            labels, offsets, num_classes = np.zeros(0, np.int64), np.zeros(0, np.int64), -1
            log.debug("%s: %s", path, err)
        matches = (
            num_classes == self.num_classes
            and len(offsets) == len(self) + 1
            and offsets[0] == 0
            and offsets[-1] == len(labels)
            and bool(np.all(np.diff(offsets) >= 0))
            and bool(np.all((labels >= 0) & (labels < self.num_classes)))
            and np.array_equal(labels[offsets[0] : offsets[1]], self._first_labels)
        )
        if not matches:
            log.warning(
                "%s: %s does not match the shards (clip count, classes or first clip): reading every clip's labels",
                self.location,
                LABELS_FILE,
            )
            return None
        return labels, offsets

    def iter_targets(self, chunk_rows: int = 65536):
        """Bool target rows (n, C) of all clips, a chunk at a time: from :data:`LABELS_FILE`
        without reading any item, else from every item (slow remotely; see the module docstring)."""
        if not self._labels_read:
            self._labels, self._labels_read = self._read_labels(), True
        for start in range(0, len(self), chunk_rows):
            stop = min(start + chunk_rows, len(self))
            if self._labels is None:
                yield np.stack([self._target(self._item(i)) > 0 for i in range(start, stop)])
                continue
            labels, offsets = self._labels
            rows = np.zeros((stop - start, self.num_classes), dtype=bool)
            clip = np.repeat(np.arange(stop - start), np.diff(offsets[start : stop + 1]))
            rows[clip, labels[offsets[start] : offsets[stop]]] = True
            yield rows

    def close(self) -> None:
        self._stream = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_stream"] = state["_pid"] = None
        state["_labels"], state["_labels_read"] = None, False  # the sampler's, not the loader workers'
        return state
