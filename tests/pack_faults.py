"""Test-only readers for ``pack --from``: slow rows (to overlap two packs) and a row that kills
the process reading it (a worker OOM-killed). They subclass the pack's own row reader, so they
pickle into spawned worker processes, which import this module from ``tests/`` on sys.path."""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import time

from dcls_audio.data import pack


class SlowRow(pack._PannsRow):
    """Reads a row after sleeping ``DELAY`` seconds."""

    DELAY = 0.5

    def __call__(self, source: str):
        time.sleep(self.DELAY)
        return super().__call__(source)


class KillingRow(pack._PannsRow):
    """Reads rows; a worker process asked for row ``KILL_ROW`` SIGKILLs itself (the main
    process never does: with 0 workers it reads the row)."""

    KILL_ROW = 7

    def __call__(self, source: str):
        if int(source.rsplit(":", 1)[1]) == self.KILL_ROW and multiprocessing.parent_process() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(source)


def pack_with(reader: type, *args, **kwargs):
    """``pack_panns(*args, **kwargs)`` with ``reader`` in place of the pack's row reader."""
    real = pack._PannsRow
    pack._PannsRow = reader
    try:
        return pack.pack_panns(*args, **kwargs)
    finally:
        pack._PannsRow = real


def pack_killed_while_assembling(*args, **kwargs):
    """``pack_panns`` whose process SIGKILLs itself once the output's temporary file is written,
    before the rename: what a kill during assembly leaves behind."""

    def write_then_die(path, *write_args):
        real_write(path, *write_args)
        os.kill(os.getpid(), signal.SIGKILL)

    real_write = pack._write_hdf5
    pack._write_hdf5 = write_then_die
    return pack.pack_panns(*args, **kwargs)


class FailingRow(pack._PannsRow):
    """Reads rows; in a worker process, row ``FAIL_ROW`` fails with EIO every time (a disk
    error). A worker shortens the retries' waits when it receives the reader."""

    FAIL_ROW = 7

    def __setstate__(self, state: dict) -> None:
        from dcls_audio.data import read_retry

        read_retry.RETRY_DELAYS_S = (0.01, 0.01, 0.01)  # in the worker only: the parent never unpickles it
        self.__dict__.update(state)

    def __call__(self, source: str):
        if int(source.rsplit(":", 1)[1]) == self.FAIL_ROW and multiprocessing.parent_process() is not None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return super().__call__(source)
