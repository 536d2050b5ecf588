"""Class lists: the AudioSet ontology CSV shipped with the package, or any CSV of the same form.

A class CSV has a header row ``index,mid,display_name`` and one row per class with indices
0..C-1 in order (the format of AudioSet's ``class_labels_indices.csv``).
"""

from __future__ import annotations

import csv as csv_module
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import UsageError
from .constants import AUDIOSET_NUM_CLASSES

__all__ = [
    "ClassInfo",
    "default_class_csv_text",
    "display_names",
    "generic_class_names",
    "load_class_names",
    "mid_to_index",
    "mids",
    "resolve_class_names",
]

_REQUIRED_COLUMNS = ("index", "mid", "display_name")


@dataclass(frozen=True)
class ClassInfo:
    """One class: its column in the target matrix, its ontology id and its readable name."""

    index: int
    mid: str
    display_name: str


def _read_rows(text: str, source: str) -> list[ClassInfo]:
    reader = csv_module.reader(text.splitlines(), skipinitialspace=True)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise UsageError(f"class CSV {source} is empty") from None
    missing = [c for c in _REQUIRED_COLUMNS if c not in header]
    if missing:
        raise UsageError(
            f"class CSV {source}: header {header} lacks column(s) {missing}; expected {list(_REQUIRED_COLUMNS)}"
        )
    cols = [header.index(c) for c in _REQUIRED_COLUMNS]
    classes: list[ClassInfo] = []
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            index, mid, name = (row[c].strip() for c in cols)
            index_value = int(index)
        except (IndexError, ValueError):
            raise UsageError(f"class CSV {source}, line {line_no}: cannot parse row {row}") from None
        if index_value != len(classes):
            raise UsageError(
                f"class CSV {source}, line {line_no}: index {index_value}, expected {len(classes)} "
                "(indices must run 0..C-1 in order)"
            )
        classes.append(ClassInfo(index_value, mid, name))
    if not classes:
        raise UsageError(f"class CSV {source} has a header but no classes")
    return classes


def default_class_csv_text() -> str:
    """The text of the AudioSet ``class_labels_indices.csv`` shipped in ``dcls_audio.resources``."""
    resource = importlib.resources.files("dcls_audio") / "resources" / "class_labels_indices.csv"
    return resource.read_text(encoding="utf-8")


def load_class_names(csv: str | Path | None = None) -> list[ClassInfo]:
    """Read a class CSV (``index,mid,display_name``); ``None`` gives AudioSet's 527 classes.

    Returns a list of :class:`ClassInfo`, position i holding class i.
    """
    if csv is None:
        return _read_rows(default_class_csv_text(), "dcls_audio/resources/class_labels_indices.csv")
    path = Path(csv)
    if not path.is_file():
        raise FileNotFoundError(f"class CSV not found: {path}")
    return _read_rows(path.read_text(encoding="utf-8"), str(path))


def generic_class_names(num_classes: int) -> list[ClassInfo]:
    """Placeholder names ``class_000``... with empty mids, for class lists without a CSV."""
    width = max(3, len(str(num_classes - 1)))
    return [ClassInfo(i, "", f"class_{i:0{width}d}") for i in range(num_classes)]


def resolve_class_names(
    num_classes: int, csv: str | Path | None = None, data_source: str = "the data"
) -> list[ClassInfo]:
    """The class list for data with ``num_classes`` target columns.

    ``data_source`` names where ``num_classes`` came from in the error message. With a CSV its
    length must equal ``num_classes``; without one, AudioSet's list is used when
    ``num_classes == 527`` and generic names otherwise.
    """
    if csv is not None:
        classes = load_class_names(csv)
        if len(classes) != num_classes:
            raise UsageError(f"class CSV {csv} lists {len(classes)} classes but {data_source} has {num_classes}")
        return classes
    if num_classes == AUDIOSET_NUM_CLASSES:
        return load_class_names(None)
    return generic_class_names(num_classes)


def mid_to_index(classes: Sequence[ClassInfo]) -> dict[str, int]:
    """Map each non-empty mid to its class index."""
    return {c.mid: c.index for c in classes if c.mid}


def display_names(classes: Sequence[ClassInfo]) -> list[str]:
    """The display names of ``classes``, in order."""
    return [c.display_name for c in classes]


def mids(classes: Sequence[ClassInfo]) -> list[str]:
    """The machine ids of ``classes``, in order."""
    return [c.mid for c in classes]
