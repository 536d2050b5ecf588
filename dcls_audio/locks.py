"""One writer at a time: an exclusive ``fcntl.flock`` on a lock file, between processes.

:class:`FileLock` locks a file (created if needed) without waiting: :meth:`~FileLock.acquire`
says False at once when another open lock holds it. The holder's pid is written into the file,
so an error can name it (:meth:`~FileLock.holder`). The kernel releases the lock however the
holder ends, SIGKILL included, and a child forked while it is held closes its copy of the
descriptor at once: a killed holder's orphaned children (data-loader workers) never keep it.

With ``remove=True`` the file is deleted on release: it is unlinked while still locked, and a
process that locked a file which has been unlinked since it opened it opens the new one and
tries again, so two processes never hold locks on two different files of one name.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

__all__ = ["FileLock"]

#: descriptors of the locks this process holds: a forked child closes its copies at once
_HELD_LOCK_FDS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in list(_HELD_LOCK_FDS):
        try:
            os.close(fd)  # the parent's descriptor keeps the lock
        except OSError:
            pass
    _HELD_LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class FileLock:
    """An exclusive, non-blocking ``flock`` on ``path`` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, remove: bool = False) -> None:
        self.path = Path(path)
        self.remove = remove
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock: True, or False at once when another open lock holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)  # its holder removed that file after this process opened it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        _HELD_LOCK_FDS.add(fd)
        return True

    def release(self) -> None:
        """Let the lock go (and delete the file with ``remove``); nothing if not held."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD_LOCK_FDS.discard(fd)
        if self.remove:
            try:
                self.path.unlink()  # while still locked: see the module docstring
            except FileNotFoundError:
                pass
        os.close(fd)  # closing the descriptor releases the flock

    def holder(self) -> str:
        """``"process N"`` as the holder wrote it in the file, else ``"another process"``."""
        try:
            pid = self.path.read_text().strip()
        except OSError:
            return "another process"
        return f"process {pid}" if pid.isdigit() else "another process"
