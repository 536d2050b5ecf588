"""Expand command-line inputs (files, folders, glob patterns) into a list of audio files."""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

#: File name endings picked up when a folder or a glob is expanded (case-insensitive).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")

_GLOB_CHARS = set("*?[")


@dataclass
class ExpandedInputs:
    """``files``: audio files in the order given, each once; ``problems``: (input, reason)."""

    files: list[Path] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def is_audio_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS


def _folder_audio_files(folder: Path) -> list[Path]:
    """Audio files under ``folder``, recursively, sorted by path."""
    return sorted(p for p in folder.rglob("*") if is_audio_file(p))


def _is_glob(text: str) -> bool:
    return any(c in _GLOB_CHARS for c in text)


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> ExpandedInputs:
    """Files, folders (searched recursively for :data:`AUDIO_EXTENSIONS`) and glob patterns
    (``**`` recurses) -> the audio files they name.

    A file given by name is kept whatever its extension (the decoder decides). An input that
    names nothing, a pattern that matches no audio file and a folder without audio files are
    reported in ``problems`` and skipped. Duplicates are dropped, first occurrence kept.
    """
    result = ExpandedInputs()
    seen: set[Path] = set()

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
            found = _folder_audio_files(path)
            if not found:
                result.problems.append((text, f"folder holds no audio files ({', '.join(AUDIO_EXTENSIONS)})"))
            for p in found:
                add(p)
        elif _is_glob(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            found = []
            for match in matches:
                found.extend([match] if is_audio_file(match) else _folder_audio_files(match) if match.is_dir() else [])
            if not found:
                result.problems.append((text, "pattern matches no audio file"))
            for p in found:
                add(p)
        elif path.exists():
            result.problems.append((text, "not a regular file or folder"))
        else:
            result.problems.append((text, "no such file or folder"))
    return result
