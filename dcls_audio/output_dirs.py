"""Output folders and files: create folders and prove they are writable before any work
starts; write files so that a reader never sees half of one."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


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


_UMASK = os.umask(0)   # read once, at import: setting it per write would change it process-wide
os.umask(_UMASK)       # for a moment, under the other threads' files


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without an error the file
    gets the permissions a new file would get (umask) and replaces ``path`` in one rename,
    otherwise it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
