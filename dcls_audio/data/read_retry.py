"""Reading a pack's source clip again when the system failed, not the clip.

Some read errors say nothing about the file's content: the process or the system ran out of
file descriptors (``EMFILE``, ``ENFILE``: many workers, other programs), of memory
(``ENOMEM``, ``ENOBUFS``), a disk or network file system hiccuped (``EIO``, ``ETIMEDOUT``,
``ESTALE``), or a call was interrupted or would block (``EINTR``, ``EAGAIN``). Those are
:data:`TRANSIENT_ERRNOS`. Recording such a clip as bad would drop good data silently, so
:func:`read_with_retries` reads it again after :data:`RETRY_DELAYS_S` (0.5, 2 and 5 s: four
attempts over about 7.5 s), and if the error lasts raises :class:`SourceReadError` naming the
source, which stops the pack (the parts written so far are kept: the same command resumes).
Any other error (audio that does not decode, a missing file, no permission) is the caller's
to report, as before.

:func:`transient_errno` finds the error number in the exception or its causes (PyAV's errors
carry it; h5py writes ``errno = N`` in its messages). libsndfile only says "System error":
:func:`probe_file` reads the file with Python to learn what the system says now.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = [
    "RETRY_DELAYS_S",
    "TRANSIENT_ERRNOS",
    "SourceReadError",
    "probe_file",
    "read_with_retries",
    "transient_errno",
]

#: error numbers of a read that may succeed when tried again (see the module docstring)
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.EMFILE,
        errno.ENFILE,
        errno.EAGAIN,
        errno.EWOULDBLOCK,
        errno.EINTR,
        errno.ENOMEM,
        errno.ENOBUFS,
        errno.ETIMEDOUT,
        errno.ESTALE,
    }
)

#: seconds to wait before each new attempt (len + 1 attempts in all)
RETRY_DELAYS_S: tuple[float, ...] = (0.5, 2.0, 5.0)

#: bytes :func:`probe_file` reads at most (more than the first 10 s of any usual audio file)
PROBE_BYTES = 64 << 20

_H5PY_ERRNO = re.compile(r"\berrno = (\d+)")

T = TypeVar("T")


class SourceReadError(OSError):
    """A source the system could not read, still after the retries; ``str()`` is the whole
    message. ``errno`` is the last error's; ``filename`` the source."""

    def __init__(self, source: str, code: int, attempts: int, seconds: float) -> None:
        name = errno.errorcode.get(code, str(code))
        message = (
            f"cannot read {source}: {os.strerror(code)} ({name}), still after {attempts} attempts over "
            f"{seconds:.1f} s; the system failed, not the clip, so it was not skipped: the parts written so far "
            "are kept, run the same command again to resume once the cause is fixed"
        )
        super().__init__(code, message, source)
        self.message, self.source, self.attempts, self.seconds = message, source, attempts, seconds

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return type(self), (self.source, self.errno, self.attempts, self.seconds)


def transient_errno(exc: BaseException) -> int | None:
    """The first error number of :data:`TRANSIENT_ERRNOS` in ``exc`` or its causes, else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            code = exc.errno
            if code is None:
                match = _H5PY_ERRNO.search(str(exc))
                code = int(match.group(1)) if match else None
            if code in TRANSIENT_ERRNOS:
                return code
        exc = exc.__cause__ or exc.__context__
    return None


def probe_file(path: Path, limit: int = PROBE_BYTES) -> None:
    """Open and read ``path`` (up to ``limit`` bytes): raises the ``OSError`` the system gives."""
    with open(path, "rb") as handle:
        left = limit
        while left > 0 and handle.read(min(left, 1 << 20)):
            left -= 1 << 20


def read_with_retries(read: Callable[[str], T], source: str, delays: tuple[float, ...] | None = None) -> T:
    """``read(source)``, tried again after each of ``delays`` (default :data:`RETRY_DELAYS_S`)
    while it fails with a transient error (:func:`transient_errno`). Raises
    :class:`SourceReadError` when that error lasts; any other error at once."""
    delays = RETRY_DELAYS_S if delays is None else delays
    started, attempt = time.monotonic(), 0
    while True:
        try:
            return read(source)
        except Exception as exc:
            code = transient_errno(exc)
            if code is None:
                raise
            if attempt == len(delays):
                raise SourceReadError(source, code, attempt + 1, time.monotonic() - started) from exc
        time.sleep(delays[attempt])
        attempt += 1
