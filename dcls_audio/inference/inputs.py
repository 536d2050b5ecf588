"""Expand command-line inputs (files, folders, glob patterns) into a list of audio files."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..data.audio_decode import AUDIO_EXTENSIONS

__all__ = ["AUDIO_EXTENSIONS", "ExpandedInputs", "expand_inputs", "is_audio_file"]

_GLOB_CHARS = set("*?[")


@dataclass
class ExpandedInputs:
    """``files``: audio files in the order given, each once; ``problems``: (input, reason);
    ``skipped``: files found in folders or by patterns whose name has no audio extension."""

    files: list[Path] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)

    def skipped_note(self, max_listed: int = 3) -> str | None:
        """One line saying how many files were skipped and naming a few, or None."""
        if not self.skipped:
            return None
        names = ", ".join(str(p) for p in self.skipped[:max_listed])
        more = ", ..." if len(self.skipped) > max_listed else ""
        n = len(self.skipped)
        return (
            f"note: skipped {n} file{'s' if n != 1 else ''} without an audio extension ({names}{more}); "
            "name a file directly to try it anyway"
        )


def is_audio_file(path: Path) -> bool:
    """A regular file whose name ends with one of :data:`AUDIO_EXTENSIONS` (any case)."""
    return path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS


def _split_files(candidates: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """Regular files among ``candidates`` -> (audio files, other files), each sorted by path."""
    files = sorted(p for p in candidates if p.is_file())
    audio = [p for p in files if p.suffix.lower() in AUDIO_EXTENSIONS]
    return audio, [p for p in files if p.suffix.lower() not in AUDIO_EXTENSIONS]


def _is_glob(text: str) -> bool:
    return any(c in _GLOB_CHARS for c in text)


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> ExpandedInputs:
    """Files, folders (searched recursively for :data:`AUDIO_EXTENSIONS`) and glob patterns
    (``**`` recurses) -> the audio files they name.

    A file given by name is kept whatever its extension (the decoder decides). An input that
    names nothing, a pattern that matches no audio file and a folder without audio files are
    reported in ``problems``; other files met in folders and patterns are listed in
    ``skipped``. Duplicates are dropped, first occurrence kept.
    """
    result = ExpandedInputs()
    seen: set[Path] = set()
    seen_skipped: set[Path] = set()

    def skip(paths: list[Path]) -> None:
        for path in paths:
            key = path.resolve()
            if key not in seen_skipped:
                seen_skipped.add(key)
                result.skipped.append(path)

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            result.files.append(path)

    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_file():
            add(path)
        elif path.is_dir():
            found, others = _split_files(path.rglob("*"))
            skip(others)
            if not found:
                result.problems.append((text, f"folder holds no audio files ({', '.join(AUDIO_EXTENSIONS)})"))
            for p in found:
                add(p)
        elif _is_glob(text):
            found = []
            for match in sorted(Path(m) for m in glob.glob(text, recursive=True)):
                audio, others = _split_files(match.rglob("*") if match.is_dir() else [match])
                found.extend(audio)
                skip(others)
            if not found:
                result.problems.append((text, "pattern matches no audio file"))
            for p in found:
                add(p)
        elif path.exists():
            result.problems.append((text, "not a regular file or folder"))
        else:
            result.problems.append((text, "no such file or folder"))
    result.skipped = [p for p in result.skipped if p.resolve() not in seen]
    return result
