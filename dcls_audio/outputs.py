"""Output folders and files: create folders and prove they are writable before any work
starts; refuse outputs that would destroy an input or a file the user did not name for
replacement; write files so that a reader never sees half of one.

The rule for every output file (``infer -o``, ``export -o``, ``eval -o``'s files):

- it is never one of the command's inputs (checkpoint, data or audio files), compared as
  resolved paths and by ``os.path.samefile`` (hard links, symlinks), even with ``--overwrite``;
- an existing file is replaced only with ``--overwrite``; without it the command stops with
  an error naming the file before any work;
- it is written to a temporary file in the same folder, flushed to disk (fsync) and renamed
  over the target in one step, so that an error, a full disk or Ctrl-C leaves either the old
  file or the new one, and no temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

__all__ = [
    "OutputError",
    "atomic_output",
    "atomic_output_set",
    "check_output_path",
    "ensure_writable_dir",
    "same_file",
]


class OutputError(OSError):
    """An output could not be written, or may not be written there.

    ``errno``/``strerror``/``filename`` are those of the cause; ``str()`` is a full sentence
    naming the path (and, for failed writes, that the previous file was left as it was).
    """

    def __init__(self, code: int | None, strerror: str, path: str | Path, message: str) -> None:
        super().__init__(code if code is not None else errno.EIO, strerror, str(path))
        self.message = message

    def __str__(self) -> str:
        return self.message


def ensure_writable_dir(directory: str | Path, what: str) -> Path:
    """Create ``directory`` if needed and check a file can be written there.

    Raises ``OSError`` naming ``what`` (the option or config key) and the folder otherwise.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as err:
        raise OSError(err.errno, f"{what}: cannot write to {directory}: {err.strerror or err}") from None
    return directory


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file: equal once resolved (symlinks followed), or the same
    inode (hard links, bind mounts). Paths that do not exist compare by resolved path only."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(
    path: str | Path, inputs: Iterable[str | Path] = (), overwrite: bool = False, what: str = "--output"
) -> Path:
    """Check that ``path`` may be written, before any work; returns it as a Path.

    Raises :class:`OutputError` (naming ``what`` and the path) when ``path`` is one of
    ``inputs`` (even with ``overwrite``), is a folder, is not a regular file (a device, a pipe:
    the atomic rename would replace it), exists without ``overwrite``, or its folder does not
    exist or cannot be written (probed with a temporary file, removed at once).
    """
    path = Path(path)
    for item in inputs:
        if item is not None and same_file(path, item):
            raise OutputError(
                errno.EEXIST,
                "output is an input",
                path,
                f"{what}: {path} is also an input ({item}); refusing to write over it",
            )
    if path.is_dir():
        raise OutputError(errno.EISDIR, "is a folder", path, f"{what}: {path} is a folder; give a file name")
    if path.exists() and not stat.S_ISREG(path.stat().st_mode):
        raise OutputError(
            errno.EEXIST,
            "not a regular file",
            path,
            f"{what}: {path} is not a regular file (a device or a pipe); leave {what} out to write to "
            "standard output, or give a file name",
        )
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputError(
            errno.EEXIST, "exists", path, f"{what}: {path} already exists; pass --overwrite to replace it"
        )
    if not path.parent.is_dir():
        raise OutputError(errno.ENOENT, "no folder", path, f"{what}: folder {path.parent} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        raise OutputError(
            err.errno or errno.EACCES, reason, path, f"{what}: cannot write to {path.parent}: {reason}"
        ) from None
    return path


_UMASK = os.umask(0)  # read once, at import: setting it per write would change it process-wide
os.umask(_UMASK)  # for a moment, under the other threads' files

#: RuntimeError texts with which torch's zip writer reports a failed write (full disk)
_TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems cannot sync folders; a file must reach the disk
            raise
    finally:
        os.close(fd)


def _write_error(err: BaseException, path: Path, kept: str | None = None) -> OutputError | None:
    """The :class:`OutputError` for a failed write of ``path``, or None when ``err`` is not one."""
    if isinstance(err, OutputError):
        return err
    if isinstance(err, OSError):
        code, reason = err.errno, err.strerror or str(err)
    elif isinstance(err, RuntimeError) and any(s in str(err) for s in _TORCH_WRITE_FAILURES):
        try:
            full = shutil.disk_usage(path.parent).free < (1 << 20)
        except OSError:
            full = False
        code = errno.ENOSPC if full else errno.EIO
        reason = os.strerror(code) if full else "the write failed (is the disk full?)"
    else:
        return None
    if kept is None:
        kept = "the previous file was left as it was" if path.exists() else "no file was written"
    return OutputError(code, reason, path, f"cannot write {path}: {reason}; nothing was lost ({kept})")


@contextlib.contextmanager
def atomic_output(path: str | Path, tag: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without an error the file
    is flushed to disk, gets the permissions a new file would get (umask) and replaces ``path``
    in one rename. On any error (KeyboardInterrupt included) the temporary file is removed and
    ``path`` is left as it was; write errors (full disk, read-only folder, torch's zip writer
    failing) are raised as :class:`OutputError` naming ``path``. The temporary file is named
    ``.<name>.<tag><random>.tmp``: ``tag`` lets a writer recognise what a killed run of it left.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{tag}", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    except (OSError, RuntimeError) as err:
        translated = _write_error(err, path)
        if translated is None or translated is err:
            raise
        raise translated from err
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output_set(directory: str | Path, names: Iterable[str]) -> Iterator[dict[str, Path]]:
    """Write several files of ``directory`` as one set.

    Yields ``{name: temporary path}``, all inside a hidden temporary folder in ``directory``.
    When the block ends without an error each file is flushed and renamed into ``directory``
    (renames need no space, so once the data is written a full disk cannot leave a mix of old
    and new files); on any error the temporary folder is removed and the old files are left
    as they were. Write errors are raised as :class:`OutputError` naming the file.
    """
    directory = Path(directory)
    names = list(names)
    staging: Path | None = None
    current, kept = directory, f"the files in {directory} were left as they were"
    try:
        staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=directory))
        temps = {name: staging / name for name in names}
        yield temps
        for name, tmp in temps.items():
            current = directory / name  # the data is written now: name the file that failed
            _fsync(tmp)
            os.chmod(tmp, 0o666 & ~_UMASK)
        for name, tmp in temps.items():
            current = directory / name
            os.replace(tmp, directory / name)
        _fsync(directory, directory=True)
    except (OSError, RuntimeError) as err:
        translated = _write_error(err, current, kept)
        if translated is None or translated is err:
            raise
        raise translated from err
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
