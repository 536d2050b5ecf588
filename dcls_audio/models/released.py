"""The checkpoints released with the DCLS-Audio paper (Zenodo record 8370979): where we look
for them, where they are downloaded to and how they are verified.

The paper's README links four distinct files. Its two baseline rows for ConvNeXt-T and
FastViT-SA24 (depthwise 7x7) point to the DCLS files, so no baseline file is published
for ``convnext_audio_tiny`` and ``fastvit_audio_sa24``.

Checksums: :data:`PUBLISHED_CHECKSUMS` holds the values the record publishes (Zenodo lists
an MD5 per file), as ``"md5:<hex>"``; where none is filled in, the SHA-256 of the first
download is recorded next to the file (``<name>.pth.sha256``, ``sha256sum`` format) and
every later download or cached copy is checked against it (trust on first use).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..outputs import atomic_output
from .download import DownloadError, download_file, file_checksum, parse_checksum

__all__ = [
    "CHECKPOINT_DIR_ENV",
    "PUBLISHED_CHECKSUMS",
    "RELEASED_CHECKPOINTS",
    "ZENODO_RECORD",
    "cache_dir",
    "checkpoint_dirs",
    "expected_checksum",
    "fetch_released",
    "local_released_file",
    "recorded_checksum_path",
    "verify_released",
]

ZENODO_RECORD = "https://zenodo.org/record/8370979"

#: model name -> URL of its released ``.pth`` (upstream layout).
RELEASED_CHECKPOINTS: dict[str, str] = {
    name: f"{ZENODO_RECORD}/files/{name}.pth"
    for name in (
        "convnext_dcls_audio_tiny",
        "fastvit_dcls_audio_sa24",
        "convformer_audio_s18",
        "convformer_dcls_audio_s18",
    )
}

#: Environment variable naming an extra folder that holds ``<model>.pth`` files.
CHECKPOINT_DIR_ENV = "DCLS_AUDIO_CHECKPOINTS"


#: model name -> checksum the record publishes (``"md5:<hex>"`` / ``"sha256:<hex>"``); None: not
#: known here, the first download's SHA-256 is recorded and later copies checked against it.
PUBLISHED_CHECKSUMS: dict[str, str | None] = {name: None for name in RELEASED_CHECKPOINTS}


def cache_dir() -> Path:
    """Where released checkpoints are downloaded to: $DCLS_AUDIO_CHECKPOINTS, else the user
    cache (``$XDG_CACHE_HOME/dcls-audio/checkpoints``, default ``~/.cache/dcls-audio/checkpoints``)."""
    if os.environ.get(CHECKPOINT_DIR_ENV):
        return Path(os.environ[CHECKPOINT_DIR_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dcls-audio" / "checkpoints"


def checkpoint_dirs() -> list[Path]:
    """Folders searched for ``<model>.pth``: $DCLS_AUDIO_CHECKPOINTS, ./checkpoints,
    <repo>/checkpoints, then the download cache (:func:`cache_dir`)."""
    dirs = []
    if os.environ.get(CHECKPOINT_DIR_ENV):
        dirs.append(Path(os.environ[CHECKPOINT_DIR_ENV]).expanduser())
    dirs.append(Path.cwd() / "checkpoints")
    dirs.append(Path(__file__).resolve().parents[2] / "checkpoints")
    dirs.append(cache_dir())
    unique: list[Path] = []
    for d in dirs:
        if d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def recorded_checksum_path(file: Path) -> Path:
    """The file holding the SHA-256 recorded at a checkpoint's first download."""
    return file.with_name(file.name + ".sha256")


def _read_recorded(file: Path) -> str | None:
    try:
        text = recorded_checksum_path(file).read_text().split()
    except OSError:
        return None
    return f"sha256:{text[0].lower()}" if text else None


def expected_checksum(name: str, file: Path | None = None) -> str | None:
    """The checksum a released file must have: the published one, else the one recorded at
    its first download in :func:`cache_dir`, else one recorded next to ``file``, else None (a
    folder's own record never overrides the cache's)."""
    published = PUBLISHED_CHECKSUMS.get(name)
    if published:
        return published
    cached = cache_dir() / f"{name}.pth"
    return _read_recorded(cached) or (_read_recorded(file) if file is not None else None)


def _record_of(name: str, file: Path) -> Path:
    """The record file that :func:`expected_checksum` read for ``name`` (no published value)."""
    cached = recorded_checksum_path(cache_dir() / f"{name}.pth")
    return cached if cached.is_file() else recorded_checksum_path(file)


def _hand_hint(name: str) -> str:
    return f" Or download it by hand and put it at {cache_dir() / f'{name}.pth'}"


_VERIFIED: set[tuple[str, int, int, str]] = set()


def verify_released(name: str, file: Path) -> None:
    """Check a released checkpoint's file against :func:`expected_checksum` (nothing to check
    when none is known); raises :class:`DownloadError` naming the file, both checksums and
    the URL on a mismatch."""
    expected = expected_checksum(name, file)
    if expected is None:
        return
    stat = file.stat()
    seen = (str(file.resolve()), stat.st_size, stat.st_mtime_ns, expected)
    if seen in _VERIFIED:  # one hash per file and process (eval resolves the name twice)
        return
    algorithm, digest = parse_checksum(expected)
    got = file_checksum(file, algorithm)
    if got.split(":", 1)[1] == digest:
        _VERIFIED.add(seen)
    else:
        raise DownloadError(
            f"{file}: checksum mismatch (got {got}, expected {expected}, "
            f"{'published' if PUBLISHED_CHECKSUMS.get(name) else 'recorded in ' + str(_record_of(name, file))}): "
            f"not the released {name}; delete it to download {RELEASED_CHECKPOINTS[name]} again"
        )


def local_released_file(name: str) -> Path | None:
    """The ``<name>.pth`` of a released model found in :func:`checkpoint_dirs`, or None."""
    for folder in checkpoint_dirs():
        if (folder / f"{name}.pth").is_file():
            return folder / f"{name}.pth"
    return None


def fetch_released(name: str, progress: bool = True) -> Path:
    """Download the released ``<name>.pth`` into :func:`cache_dir` and verify it; returns the
    path. The first download of a file without a published checksum records its SHA-256.

    Raises :class:`DownloadError` (one line: URL, expected checksum, where to put the file by
    hand) when offline, on a cut connection or a checksum mismatch; no partial file is left.
    """
    url = RELEASED_CHECKPOINTS[name]
    target = cache_dir() / f"{name}.pth"
    expected = expected_checksum(name, target)
    if progress:
        print(f"Downloading {url} to {target}", file=sys.stderr, flush=True)
    sha256 = download_file(url, target, expected, progress=progress, hint=_hand_hint(name))
    if expected is None:
        with atomic_output(recorded_checksum_path(target)) as tmp:  # never half a record
            tmp.write_text(f"{sha256.split(':', 1)[1]}  {target.name}\n")
    return target
