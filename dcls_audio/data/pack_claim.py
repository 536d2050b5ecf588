"""One ``dcls-audio pack`` per OUTPUT at a time.

While a pack runs (from before it checks OUTPUT until the output is in place and its parts are
removed), it holds an exclusive lock on ``.OUTPUT.lock`` next to OUTPUT
(:class:`~dcls_audio.locks.FileLock`; the file is removed when the pack ends, and the kernel
releases the lock however the pack ends, SIGKILL included). A second pack of the same OUTPUT
stops at once with :class:`OutputBusy`, which names OUTPUT and the process writing it, instead
of sharing the staging folder of :mod:`~.pack_parts`.

A pack killed while it assembles the output (SIGKILL, a power cut) leaves the output's
temporary file (or temporary shard folders) of full size next to OUTPUT: they are named
``.NAME.pack-*.tmp`` (:data:`TEMP_TAG`). Under the lock no other pack writes them, so the next
pack of OUTPUT removes every such name (:func:`remove_stale_temporaries`) and says so in its
report.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..locks import FileLock

__all__ = ["TEMP_TAG", "OutputBusy", "claim_output", "is_pack_file", "lock_path", "remove_stale_temporaries"]

#: in the names of pack's temporaries next to OUTPUT: ``.NAME.pack-*.tmp``
TEMP_TAG = "pack-"


class OutputBusy(OSError):
    """Another pack holds OUTPUT's lock; ``str()`` is the whole message."""

    def __init__(self, output: Path, holder: str) -> None:
        message = f"OUTPUT {output}: another pack ({holder}) is writing it; wait for it to end, or give another OUTPUT"
        super().__init__(errno.EBUSY, message, str(output))
        self.message = message

    def __str__(self) -> str:
        return self.message


def lock_path(output: Path) -> Path:
    """The lock file of ``output``: ``.NAME.lock`` in its folder."""
    return output.parent / f".{output.name}.lock"


def is_pack_file(output: Path, path: Path) -> bool:
    """Whether ``path`` is one of the files a pack of ``output`` keeps next to it (its lock, its
    staging folder and what is in it, its temporaries): ``.NAME.*`` in ``output``'s folder."""
    folder, prefix = os.path.abspath(output.parent), f".{output.name}."
    path = Path(os.path.abspath(path))
    return any(str(p.parent) == folder and p.name.startswith(prefix) for p in (path, *path.parents))


@contextlib.contextmanager
def claim_output(output: Path) -> Iterator[FileLock]:
    """Hold ``output``'s lock for the block (its folder is created if needed). Raises
    :class:`OutputBusy` at once when another pack holds it, ``OSError`` naming OUTPUT's folder
    when the lock file cannot be made there."""
    lock = FileLock(lock_path(output), remove=True)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        taken = lock.acquire()
    except OSError as err:
        raise OSError(err.errno, f"OUTPUT: cannot write to {output.parent}: {err.strerror or err}") from None
    if not taken:
        raise OutputBusy(output, lock.holder())
    try:
        yield lock
    finally:
        lock.release()


def remove_stale_temporaries(output: Path) -> list[Path]:
    """Delete the temporaries (files or folders ``.NAME.pack-*.tmp``) that packs of ``output``
    killed part-way left next to it; the caller holds ``output``'s lock. Returns them."""
    removed = []
    for path in sorted(output.parent.glob(f".{glob.escape(output.name)}.{TEMP_TAG}*.tmp")):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
