"""The resumable middle of ``dcls-audio pack``: clips encoded in parallel into part files.

The clips to pack are cut into numbered blocks (:class:`Block`: sources and their labels). Each
block is decoded and encoded by one worker process (:mod:`~.pack_workers`; a worker that dies
stops the pack with an error naming its part) or in this process with 0 workers, and written
as one part file ``part-NNNNNN.npz`` in a staging folder next to the output, under a temporary
name holding the writer's pid (``part-NNNNNN.npz.PID.tmp``, created when the block starts) and
renamed when complete: a part file is complete or absent. The staging folder holds
``plan.json``, the fingerprint of what is packed (inputs, sizes and times, codec, bit rate,
clip length, classes, block size). A later run with the same fingerprint finds the parts that
are already there and encodes only the others (resuming after a crash or Ctrl-C); a different
fingerprint discards them. The caller then assembles the parts into the output (one HDF5 file
or a folder of shards) and removes the staging folder. The caller holds the output's lock
(:mod:`~.pack_claim`) throughout: one pack at a time uses a staging folder.

A part holds ``names`` (S, one per clip), ``labels`` (int32 class indices of all clips,
concatenated) with ``label_offsets`` (n + 1,), the clips (``pcm``: int16 (n, S); otherwise
``encoded`` uint8 concatenated with ``offsets`` (n + 1,)) and ``skipped`` (JSON: [source,
reason] of every source of the block left out).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .clip_codecs import OPUS_BITRATE, encode_clip
from .pack_workers import WorkerDied, map_unordered
from .read_retry import SourceReadError, read_with_retries

__all__ = ["Block", "EncodedPart", "PartStore", "read_part", "run_blocks"]


@dataclass(frozen=True)
class Block:
    """One part's work: ``number``, and per clip its source (an audio file path, or ``"FILE.h5:ROW"``
    for ``--from``), its ``audio_name`` and its class indices."""

    number: int
    sources: tuple[str, ...]
    names: tuple[str, ...]
    labels: tuple[tuple[int, ...], ...]


@dataclass
class EncodedPart:
    """A part read back: names (list[str]), labels (list of int arrays) and skipped
    ([(source, reason)]); its clips (a list of int16 arrays for pcm, of bytes otherwise) are
    read from the part file on each access of :attr:`clips`, so a writer holds one part's clips
    in memory at a time, never a whole dataset's."""

    names: list[str]
    labels: list[np.ndarray]
    skipped: list[tuple[str, str]]
    path: Path

    @property
    def clips(self) -> list:
        with np.load(self.path) as part:
            if "pcm" in part:
                return list(part["pcm"])
            data, offsets = part["encoded"], part["offsets"]
            return [data[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(self.names))]


#: a function ``(source) -> int16 (clip_samples,)`` that raises ``ValueError``/``OSError`` with a
#: reason for a source it cannot read; it is tried again while the error is a transient one of
#: the system (:mod:`~.read_retry`), and the pack stops if that lasts
ClipReader = Callable[[str], np.ndarray]


def _part_name(number: int) -> str:
    return f"part-{number:06d}.npz"


class PartStore:
    """The staging folder of one output (see the module docstring)."""

    def __init__(self, output: Path, fingerprint: dict) -> None:
        self.folder = output.parent / f".{output.name}.parts"
        self.fingerprint = fingerprint
        self.discarded = False  # an earlier staging folder of other inputs was removed
        self.stale: list[Path] = []  # temporaries of killed writers removed by open()

    def open(self) -> None:
        """Create the folder, or keep the existing one if its plan matches (else start over).
        A kept folder loses the temporaries of writers killed part-way (``*.tmp``: under the
        output's lock no other process writes there)."""
        plan = self.folder / "plan.json"
        if self.folder.is_dir():
            try:
                same = json.loads(plan.read_text()) == self.fingerprint
            except (OSError, ValueError):
                same = False
            if same:
                self.stale = sorted(self.folder.glob("*.tmp"))
                for path in self.stale:
                    path.unlink(missing_ok=True)
                return
            shutil.rmtree(self.folder)
            self.discarded = True
        self.folder.mkdir(parents=True)
        tmp = plan.with_name(f"{plan.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.fingerprint))
        os.replace(tmp, plan)

    def path(self, number: int) -> Path:
        return self.folder / _part_name(number)

    def done(self, number: int) -> bool:
        return self.path(number).is_file()

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def fingerprint_of(items: list, settings: dict) -> dict:
    """The plan fingerprint: ``settings`` and a hash of ``items`` (JSON-able)."""
    digest = hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()
    return {**settings, "items": digest, "count": len(items)}


def _block_arrays(block: Block, read_clip: ClipReader, codec: str, bitrate: int) -> tuple[dict, int, list]:
    """Decode and encode one block's clips; -> (the part file's arrays, clips, skipped)."""
    names, labels, clips, skipped = [], [], [], []
    for source, name, label in zip(block.sources, block.names, block.labels):
        try:
            clip = read_with_retries(read_clip, source)
            clips.append(clip if codec == "pcm" else np.frombuffer(encode_clip(clip, codec, bitrate), np.uint8))
        except SourceReadError:
            raise  # the system failed, not the clip: stop the pack (the parts written so far are kept)
        except (ValueError, OSError) as exc:
            skipped.append((source, getattr(exc, "reason", None) or " ".join(str(exc).split()) or type(exc).__name__))
            continue
        except Exception as exc:  # noqa: BLE001 - any decoder failure skips the clip, never the pack
            skipped.append((source, " ".join(str(exc).split()) or type(exc).__name__))
            continue
        names.append(name.encode())
        labels.append(np.asarray(label, dtype=np.int32))
    arrays = {
        "names": np.array(names, dtype="S") if names else np.zeros(0, dtype="S1"),
        "labels": np.concatenate(labels) if labels else np.zeros(0, np.int32),
        "label_offsets": np.cumsum([0] + [len(x) for x in labels]).astype(np.int64),
        "skipped": np.array(json.dumps(skipped)),
    }
    if codec == "pcm":
        arrays["pcm"] = np.stack(clips) if clips else np.zeros((0, 0), np.int16)
    else:
        arrays["encoded"] = np.concatenate(clips) if clips else np.zeros(0, np.uint8)
        arrays["offsets"] = np.cumsum([0] + [len(c) for c in clips]).astype(np.int64)
    return arrays, len(names), skipped


#: the temporary part file this process is writing (a worker removes it when terminated)
_writing: Path | None = None


def _encode_block(job: tuple[Block, Path, ClipReader, str, int]) -> tuple[int, int, list[tuple[str, str]]]:
    """Decode and encode one block, write its part file; -> (number, clips, skipped).

    The temporary file ``part-N.npz.PID.tmp`` is created before the first clip is read: while
    the block is encoded it names the part this process works on, so that a worker killed on
    the way leaves the name of its part behind (:func:`run_blocks`). Any error removes it."""
    global _writing
    block, path, read_clip, codec, bitrate = job
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    _writing = tmp
    try:
        with open(tmp, "wb") as handle:
            arrays, count, skipped = _block_arrays(block, read_clip, codec, bitrate)
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _writing = None
    return block.number, count, skipped


def read_part(path: Path) -> EncodedPart:
    """A part file back as an :class:`EncodedPart` (names, labels, skips; clips on access)."""
    with np.load(path) as part:
        names = [n.decode() for n in part["names"]]
        bounds = part["label_offsets"]
        labels = [part["labels"][bounds[i] : bounds[i + 1]] for i in range(len(names))]
        skipped = [tuple(x) for x in json.loads(str(part["skipped"]))]
    return EncodedPart(names, labels, skipped, Path(path))


def _terminated(signum: int, frame) -> None:
    """A worker's SIGTERM (the pool stopping): remove the part file it was writing, and exit."""
    if _writing is not None:
        _writing.unlink(missing_ok=True)
    os._exit(128 + signum)


def _init_worker() -> None:
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it stops the pool)
    signal.signal(signal.SIGTERM, _terminated)


def _worker_died(blocks: list[Block], store: PartStore) -> WorkerDied:
    """The error for a broken pool, naming the part(s) whose temporary file a dead worker left
    (workers the pool terminated removed theirs); the files are removed."""
    lost = []
    for tmp in sorted(store.folder.glob("part-*.npz.*.tmp")):
        lost.append(int(tmp.name.split(".")[0].removeprefix("part-")))
        tmp.unlink(missing_ok=True)
    by_number = {b.number: b for b in blocks}
    kept = sum(store.done(b.number) for b in blocks)
    if lost:
        what = "; ".join(
            f"part {n} ({len(by_number[n].sources)} clips from {by_number[n].sources[0]} on)"
            for n in lost
            if n in by_number
        )
        where = f" while encoding {what}"
    else:
        where = ""  # it had no part file open, or a SIGTERM made it remove its own
    return WorkerDied(
        f"a pack worker process ended abruptly (killed: out of memory, or a signal){where}; "
        f"the {kept} of {len(blocks)} parts written are kept in {store.folder}: run the same command again to "
        "resume (with fewer -j processes if memory ran out)"
    )


def run_blocks(
    blocks: list[Block],
    store: PartStore,
    read_clip: ClipReader,
    codec: str,
    bitrate: int = OPUS_BITRATE,
    num_workers: int = 0,
) -> Iterator[tuple[int, int]]:
    """Encode the blocks whose part file is missing; yields (block number, clips) as each is
    written. With workers (:mod:`~.pack_workers`), a worker that dies stops the pack with
    :class:`~.pack_workers.WorkerDied` naming the part it was encoding."""
    jobs = [(b, store.path(b.number), read_clip, codec, bitrate) for b in blocks if not store.done(b.number)]
    if num_workers <= 0:
        for job in jobs:
            number, count, _ = _encode_block(job)
            yield number, count
        return
    try:
        for number, count, _ in map_unordered(_encode_block, jobs, num_workers, _init_worker):
            yield number, count
    except BrokenProcessPool:
        raise _worker_died(blocks, store) from None
