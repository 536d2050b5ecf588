"""Download one file over HTTP(S) into a folder, verified, never leaving a partial file behind.

:func:`download_file` streams ``url`` into a temporary name in the target folder (progress
bar on stderr), checks the byte count against ``Content-Length`` (a connection cut mid-file is
an error, not a short file) and the checksum, then renames the file into place. Any failure
removes the temporary file and raises :class:`DownloadError` with one line naming the URL,
the expected checksum and where to put the file by hand.

Checksums are written ``"<algorithm>:<hex>"`` (``sha256:...``, ``md5:...`` as Zenodo
publishes them); a bare hex string is SHA-256.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

__all__ = ["CHUNK_BYTES", "DownloadError", "file_checksum", "download_file", "parse_checksum"]

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 30.0


class DownloadError(OSError):
    """A download that failed or did not verify; ``str()`` is one line saying what to do."""


def parse_checksum(checksum: str) -> tuple[str, str]:
    """``"sha256:ab12..."`` -> ``("sha256", "ab12...")``; a bare hex string is SHA-256."""
    algorithm, sep, digest = checksum.partition(":")
    if not sep:
        algorithm, digest = "sha256", checksum
    algorithm = algorithm.lower()
    if algorithm not in hashlib.algorithms_available:
        raise ValueError(f"unknown checksum algorithm {algorithm!r} in {checksum!r}")
    return algorithm, digest.lower()


def _digest(stream: BinaryIO, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
        h.update(chunk)
    return h.hexdigest()


def file_checksum(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """``"<algorithm>:<hex>"`` of a file's bytes."""
    with open(path, "rb") as fh:
        return f"{algorithm}:{_digest(fh, algorithm)}"


def download_file(
    url: str,
    target: str | os.PathLike,
    checksum: str | None,
    progress: bool = True,
    hint: str = "",
) -> str:
    """Fetch ``url`` into ``target`` (its folder is created); returns the file's SHA-256 as
    ``"sha256:<hex>"``.

    ``checksum``: the expected ``"<algorithm>:<hex>"``, or None to accept any content (the
    caller records the returned hash). ``hint`` ends every error message (e.g. where to put
    the file by hand). ``target`` appears only once the whole file arrived and verified.
    ``progress``: a bar on stderr when it is a terminal.
    """
    target = Path(target)
    expected = parse_checksum(checksum) if checksum else None
    shown = checksum or "none published, the first download's SHA-256 is recorded"

    def error(reason: str) -> DownloadError:
        return DownloadError(f"cannot download {url} ({reason}); expected checksum: {shown}.{hint}")

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    except OSError as err:
        raise error(f"cannot write to {target.parent}: {err.strerror or err}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            sha256 = hashlib.sha256()
            check = hashlib.new(expected[0]) if expected and expected[0] != "sha256" else None
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "dcls-audio"})
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    received = 0
                    with tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=target.name,
                        file=sys.stderr,
                        disable=None if progress else True,  # None: shown on a terminal only
                        leave=False,
                    ) as bar:
                        for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                            out.write(chunk)
                            sha256.update(chunk)
                            if check is not None:
                                check.update(chunk)
                            received += len(chunk)
                            bar.update(len(chunk))
            except urllib.error.HTTPError as err:
                raise error(f"HTTP {err.code} {err.reason}") from None
            except urllib.error.URLError as err:
                raise error(f"offline or unreachable: {err.reason}") from None
            except (OSError, ValueError, http.client.HTTPException) as err:  # reset, timeout, IncompleteRead
                raise error(f"the connection broke: {err}") from None
            if total is None and expected is None:
                # nothing to check a cut against, and this file's hash would be trusted from now on
                raise error("the server sent no Content-Length, so a cut download cannot be told from a whole one")
            if total is not None and received != total:
                raise error(f"the connection was cut after {received} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        got_sha256 = f"sha256:{sha256.hexdigest()}"
        if expected is not None:
            got = got_sha256 if check is None else f"{expected[0]}:{check.hexdigest()}"
            if got.split(":", 1)[1] != expected[1]:
                raise DownloadError(
                    f"{url}: checksum mismatch (got {got}, expected {checksum}); the download was discarded.{hint}"
                )
        os.replace(tmp, target)
        return got_sha256
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
