"""Rows of a contiguous HDF5 dataset read straight from the file, without h5py in the way.

The PANNs files store ``waveform`` int16 (N, S) contiguously (no chunks, no filters): row ``r``
is the ``S * 2`` bytes at ``offset + r * S * 2`` of the file, where ``offset`` is where HDF5
placed the data (h5py reports it). :class:`ContiguousRows` reads each wanted row with one
``os.preadv`` into the caller's array: no intermediate arrays and no selection machinery (a
loader worker spends a quarter less CPU per clip than with h5py's selection and the copies after
it: ``benchmarks/bench_data.py``, numbers in the README).

:meth:`ContiguousRows.of` returns None where this does not apply (a chunked, filtered, compact,
virtual or external dataset, an integer type whose stored bits h5py would convert: a reduced
precision, a bit offset or a byte order other than the machine's; no data written yet; a file
driver other than the default ``sec2``; no ``os.preadv`` on this system); the caller then reads
through h5py. The reader duplicates the descriptor of the h5py file it was made from, so it reads
the very file h5py opened even if the path is replaced afterwards; readers are made per process
(a descriptor inherited through ``fork`` is never used) and closed by :meth:`close`. A reader
sent to another process opens the path there, and refuses a file that is no longer the one it
was made from (device and inode compared).

:class:`PendingRows` defers the reading: a loader worker hands over which rows to read (a few
hundred bytes) instead of the rows themselves (a shared-memory batch of 640 kB per clip that the
worker faults in and the loader's pin-memory thread copies again), and the pin-memory thread
reads them with ``os.preadv`` straight into the batch's pinned buffer, the one copy left.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import h5py
import numpy as np
import torch

from ..errors import UsageError

__all__ = ["ContiguousRows", "PendingRows"]

#: threads that read one :class:`PendingRows` batch (``os.preadv`` releases the GIL)
READ_THREADS = 4
_POOL: list = []  # [(pid, ThreadPoolExecutor)]: made on first use, per process


class ContiguousRows:
    """The rows of one contiguous 2-D dataset of ``path``, read with ``os.preadv``."""

    def __init__(
        self,
        path: Path,
        offset: int,
        shape: tuple[int, int],
        dtype: np.dtype,
        name: str = "waveform",
        fd: Optional[int] = None,
    ) -> None:
        """``fd``: an open descriptor of ``path`` this reader now owns (None: opened on first read)."""
        self.path, self.offset, self.shape, self.dtype = Path(path), int(offset), shape, np.dtype(dtype)
        self.name = name  # the dataset's name, for messages
        self.row_bytes = shape[1] * self.dtype.itemsize
        self._fd: Optional[int] = fd
        self._pid: Optional[int] = None if fd is None else os.getpid()
        #: (device, inode) of the file this reader was made for; None: not known
        self.identity: Optional[tuple[int, int]] = None
        if fd is not None:
            st = os.fstat(fd)
            self.identity = (st.st_dev, st.st_ino)

    @classmethod
    def of(cls, path: Path, dataset: h5py.Dataset) -> Optional[ContiguousRows]:
        """A reader of ``dataset`` (2-D, of file ``path``), or None where only h5py can read it."""
        if not hasattr(os, "preadv") or dataset.ndim != 2 or dataset.chunks is not None:
            return None
        if dataset.compression is not None or dataset.external or dataset.file.driver != "sec2":
            return None
        stored = dataset.id.get_type()
        native = dataset.dtype.newbyteorder("=")
        if not isinstance(stored, h5py.h5t.TypeIntegerID) or dataset.dtype != native:
            return None
        if stored.get_precision() != 8 * native.itemsize or stored.get_offset() != 0:
            return None  # h5py shifts and sign-extends such values; the raw bytes are not them
        offset = dataset.id.get_offset()  # None until the data is allocated in the file (and if virtual)
        if offset is None:
            return None
        fd = os.dup(dataset.file.id.get_vfd_handle())  # the file h5py has open, whatever the path is now
        return cls(path, offset, tuple(int(n) for n in dataset.shape), native, dataset.name.lstrip("/"), fd)

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            fd = os.open(self.path, os.O_RDONLY)  # an inherited descriptor is not ours
            st = os.fstat(fd)
            if self.identity is not None and (st.st_dev, st.st_ino) != self.identity:
                os.close(fd)
                raise UsageError(f"{self.path}: the file was replaced while it was being read; start again")
            self._fd, self._pid = fd, os.getpid()
        return self._fd

    def read_into(self, out: np.ndarray, slots: np.ndarray, rows: np.ndarray) -> None:
        """``out[slots[i]] = dataset[rows[i]]`` for every ``i``; ``out`` C-contiguous (B, S) of the
        dataset's dtype and row length. Rows are read in increasing order (sequential on disk)."""
        if out.dtype != self.dtype or out.ndim != 2 or out.shape[1] != self.shape[1] or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous {self.dtype} (B, {self.shape[1]}), got {out.dtype} {out.shape}")
        if len(slots) != len(rows):
            raise ValueError(f"slots and rows differ in length: {len(slots)} and {len(rows)}")
        fd = self._descriptor()
        flat = memoryview(out).cast("B")
        for i in np.argsort(rows, kind="stable"):
            row, slot = int(rows[i]), int(slots[i])
            if not 0 <= row < self.shape[0]:
                raise IndexError(f"{self.path}: row {row} out of range for {self.shape[0]} rows")
            if not 0 <= slot < out.shape[0]:
                raise IndexError(f"slot {slot} out of range for a batch of {out.shape[0]}")
            start = slot * self.row_bytes
            done = 0
            while done < self.row_bytes:  # a short read is legal: carry on where it stopped
                at = self.offset + row * self.row_bytes + done
                got = os.preadv(fd, [flat[start + done : start + self.row_bytes]], at)
                if got == 0:
                    raise UsageError(f"{self.path}: the file ends inside row {row} of '{self.name}': it is truncated")
                done += got

    def close(self) -> None:
        """Close this process's descriptor (one inherited from another process is left alone)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = self._pid = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"] = state["_pid"] = None
        return state


def _pool() -> ThreadPoolExecutor:
    if not _POOL or _POOL[0][0] != os.getpid():  # a pool inherited through fork has no threads
        _POOL[:] = [(os.getpid(), ThreadPoolExecutor(READ_THREADS, thread_name_prefix="dcls-audio-rows"))]
    return _POOL[0][1]


class PendingRows:
    """A batch of rows still to be read: ``(B, S)`` of ``dtype``, slot ``slots[i]`` of each part
    being row ``rows[i]`` of its reader. Picklable (the readers reopen their file by path).

    The loader's pin-memory stage calls :meth:`pin_memory`, which reads the rows into pinned
    memory; :meth:`read` reads them into ordinary memory. Either returns a tensor of ``shape``."""

    def __init__(
        self, shape: tuple[int, int], dtype: np.dtype, parts: list[tuple[ContiguousRows, np.ndarray, np.ndarray]]
    ):
        self.shape, self.dtype, self.parts = (int(shape[0]), int(shape[1])), np.dtype(dtype), parts
        for reader, slots, rows in parts:
            if reader.dtype != self.dtype or reader.shape[1] != self.shape[1] or len(slots) != len(rows):
                raise ValueError(f"{reader.path}: rows of {reader.dtype} x {reader.shape[1]} do not fit {self}")

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"PendingRows(shape={self.shape}, dtype={self.dtype}, files={len(self.parts)})"

    def read(self, pin: bool = False) -> torch.Tensor:
        """The rows as a ``(B, S)`` tensor (in pinned memory with ``pin``), read by up to
        :data:`READ_THREADS` threads."""
        out = torch.empty(self.shape, dtype=torch.from_numpy(np.empty(0, self.dtype)).dtype, pin_memory=pin)
        array = out.numpy()
        jobs, opened = [], []
        for reader, slots, rows in self.parts:
            if reader._fd is None or reader._pid != os.getpid():
                opened.append(reader)  # a reader sent from a worker: its descriptor is this batch's
            reader._descriptor()  # opened here, once, not by the threads
            order = np.argsort(rows, kind="stable")  # each thread reads a run of increasing rows
            for chunk in np.array_split(order, min(READ_THREADS, max(1, len(order) // 8))):
                if len(chunk):
                    jobs.append((reader, slots[chunk], rows[chunk]))
        try:
            if len(jobs) == 1:
                jobs[0][0].read_into(array, jobs[0][1], jobs[0][2])
            else:
                for future in [_pool().submit(reader.read_into, array, s, r) for reader, s, r in jobs]:
                    future.result()
        finally:
            for reader in opened:
                reader.close()
        return out

    def pin_memory(self, device: Optional[str] = None) -> torch.Tensor:
        """:meth:`read` into pinned memory (what ``DataLoader(pin_memory=True)`` calls)."""
        return self.read(pin=True)
