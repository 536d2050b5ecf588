"""Formatting tagging results: JSON records, a long-format CSV and a readable table.

One record per file (the JSON schema)::

    {"file", "duration_s", "sample_rate",
     "windows": [{"start_s", "end_s", "top": [{"index", "label", "score"}, ...]}, ...],
     "top": [{"index", "label", "score"}, ...]}

``top`` lists the k best classes, best first; scores are sigmoid probabilities.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Iterable, Sequence, TextIO

from ..errors import UsageError
from .tagger import FileTags, top_k

__all__ = ["CSV_COLUMNS", "FORMATS", "csv_rows", "csv_writer", "file_record", "format_table", "write_csv", "write_json"]

FORMATS = ("table", "json", "csv")

#: Columns of the CSV output: one row per (file or window, rank).
CSV_COLUMNS = (
    "file",
    "duration_s",
    "sample_rate",
    "scope",
    "window",
    "start_s",
    "end_s",
    "rank",
    "index",
    "label",
    "score",
)

_DIGITS = 6  # scores and times are written with this many decimals


def _top(scores, labels: Sequence[str], k: int) -> list[dict[str, Any]]:
    return [
        {"index": index, "label": labels[index], "score": round(score, _DIGITS)} for index, score in top_k(scores, k)
    ]


def file_record(tags: FileTags, labels: Sequence[str], k: int = 5) -> dict[str, Any]:
    """The JSON record of one tagged file (see the module docstring)."""
    if len(labels) != tags.scores.shape[-1]:
        raise UsageError(f"{len(labels)} labels for a model with {tags.scores.shape[-1]} classes")
    return {
        "file": tags.file,
        "duration_s": round(tags.duration_s, _DIGITS),
        "sample_rate": tags.sample_rate,
        "windows": [
            {"start_s": round(start, _DIGITS), "end_s": round(end, _DIGITS), "top": _top(scores, labels, k)}
            for (start, end), scores in zip(tags.window_spans_s, tags.window_scores)
        ],
        "top": _top(tags.scores, labels, k),
    }


def write_json(records: Sequence[dict[str, Any]], stream: TextIO) -> None:
    """A JSON array of file records."""
    json.dump(list(records), stream, indent=2, ensure_ascii=False, allow_nan=False)  # NaN is not JSON
    stream.write("\n")


def csv_rows(record: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """Long-format rows of one record: ``scope`` "file" (window empty, the file's span) then
    "window" rows (window = its number from 0)."""
    common = {"file": record["file"], "duration_s": record["duration_s"], "sample_rate": record["sample_rate"]}
    scopes = [("file", "", 0.0, record["duration_s"], record["top"])]
    scopes += [("window", n, w["start_s"], w["end_s"], w["top"]) for n, w in enumerate(record["windows"])]
    for scope, window, start, end, top in scopes:
        for rank, entry in enumerate(top, start=1):
            yield {**common, "scope": scope, "window": window, "start_s": start, "end_s": end, "rank": rank, **entry}


def csv_writer(stream: TextIO) -> csv.DictWriter:
    """A writer of :func:`csv_rows` rows on ``stream``; the header :data:`CSV_COLUMNS` is written."""
    writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    return writer


def write_csv(records: Iterable[dict[str, Any]], stream: TextIO) -> None:
    """The records as CSV with the header :data:`CSV_COLUMNS`."""
    writer = csv_writer(stream)
    for record in records:
        writer.writerows(csv_rows(record))


def format_table(records: Iterable[dict[str, Any]], show_windows: bool = False) -> str:
    """A readable table: per file a header line and its top classes; optionally one line per window."""
    out = io.StringIO()
    for record in records:
        n = len(record["windows"])
        out.write(
            f"{record['file']}  ({record['duration_s']:.2f} s, {record['sample_rate']} Hz, "
            f"{n} window{'s' if n != 1 else ''})\n"
        )
        for entry in record["top"]:
            out.write(f"  {entry['score']:6.3f}  {entry['label']}\n")
        if show_windows:
            for w in record["windows"]:
                tags = ", ".join(f"{e['label']} {e['score']:.2f}" for e in w["top"])
                out.write(f"    [{w['start_s']:7.2f} - {w['end_s']:7.2f} s]  {tags}\n")
        out.write("\n")
    return out.getvalue()
