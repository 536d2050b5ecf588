"""Output folders: create them and prove they are writable before any work starts."""
from __future__ import annotations

import tempfile
from pathlib import Path


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
