"""``--processes`` of ``bench_models.py`` and ``bench_train.py``: the ratios by process on hand-made
rows, and a smoke run of ``bench_models.py`` in two fresh processes whose rows are joined."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_common  # noqa: E402
import bench_models  # noqa: E402
import bench_train  # noqa: E402


def _rows(process: int, plain: list[float], dcls: list[float]) -> list[dict]:
    """One process's runs in turn: the 7x7 row, then the DCLS row (train samples/s)."""
    rows = []
    for repeat, (p, d) in enumerate(zip(plain, dcls)):
        common = {"mode": "eager", "conv": "auto", "repeat": repeat, "process": process, "peak_gib": 1.0}
        rows.append({"model": "plain", "train_samples_per_s": p, **common})
        rows.append({"model": "dcls", "baseline": "plain", "train_samples_per_s": d, "train_ratio": d / p, **common})
    return rows


def test_by_process_takes_each_process_medians_and_the_lowest():
    rows = _rows(0, [100, 100, 100], [90, 80, 85]) + _rows(1, [100, 110, 90], [60, 66, 70])
    (row,) = bench_models.by_process(rows)
    assert (row["model"], row["conv"]) == ("dcls", "auto")
    assert [p for p, _ in row["train_ratio_by_process"]] == [0, 1]
    assert [v for _, v in row["train_ratio_by_process"]] == pytest.approx([0.85, 0.66])  # medians 85/100, 66/100
    assert row["train_ratio_lowest"] == pytest.approx(0.66)
    assert row["train_ratio_highest"] == pytest.approx(0.85)
    assert "infer_ratio_by_process" not in row and "infer_ratio_lowest" not in row


def test_the_medians_of_all_processes_hide_the_low_one():
    rows = _rows(0, [100] * 3, [90, 90, 90]) + _rows(1, [100] * 3, [90, 90, 90]) + _rows(2, [100] * 3, [50] * 3)
    (all_runs,) = [m for m in bench_models.medians(rows) if m["model"] == "dcls"]
    assert all_runs["train_ratio"] == pytest.approx(0.9)
    assert bench_models.by_process(rows)[0]["train_ratio_lowest"] == pytest.approx(0.5)


def test_the_loop_ratio_by_process():
    def rows(process, bare, loop):
        common = {"model": "m", "mode": "eager", "pin": "loader", "front_end": "auto", "process": process}
        return [
            {**common, "bare_samples_per_s": b, "loop_samples_per_s": lo, "ratio": lo / b} for b, lo in zip(bare, loop)
        ]

    (row,) = bench_train.by_process(rows(0, [100, 100], [95, 93]) + rows(1, [100, 100], [80, 84]))
    assert [p for p, _ in row["ratio_by_process"]] == [0, 1]
    assert [v for _, v in row["ratio_by_process"]] == pytest.approx([0.94, 0.82])
    assert bench_common.format_by_process(row["ratio_by_process"]) == "1:0.94 2:0.82"
    assert (row["ratio_lowest"], row["ratio_highest"]) == pytest.approx((0.82, 0.94))


def test_smoke_in_two_processes(tmp_path, capfd):
    """The parent in this process (its children are fresh ones)."""
    out = tmp_path / "report.json"
    status = bench_models.main(["--smoke", "--families", "convnext", "--processes", "2", "--json", str(out)])
    captured = capfd.readouterr()
    assert status == 0, captured.err
    report = json.loads(out.read_text())
    assert report["processes"] == 2
    assert sorted((r["process"], r["model"]) for r in report["results"]) == [
        (0, "convnext_audio_tiny"),
        (0, "convnext_dcls_audio_tiny"),
        (1, "convnext_audio_tiny"),
        (1, "convnext_dcls_audio_tiny"),
    ]
    (row,) = report["by_process"]
    assert [process for process, _ in row["train_ratio_by_process"]] == [0, 1]
    assert row["train_ratio_lowest"] == min(value for _, value in row["train_ratio_by_process"])
    assert report["failed_processes"] == []
    assert "per process (2 processes" in captured.out


FAKE_BENCHMARK = """
import json, sys
from pathlib import Path
argv = sys.argv[1:]
last = lambda option: argv[len(argv) - 1 - argv[::-1].index(option) + 1]  # argparse takes the last value
out = Path(last("--json"))
count = Path(last("--count"))
n = int(count.read_text()) if count.exists() else 0
count.write_text(str(n + 1))
rows = [{"model": "m", "argv": argv}]
if n == 1:  # the second process: one row written, then it dies
    out.write_text(json.dumps({"device": "fake", "results": rows}))
    sys.exit(3)
if n == 2:  # the third: cut short while writing
    out.write_text('{"device": "fak')
    sys.exit(0)
out.write_text(json.dumps({"device": "fake", "results": rows}))
"""


def test_processes_that_fail_are_counted_and_their_rows_kept(tmp_path, capsys):
    script = tmp_path / "fake_benchmark.py"
    script.write_text(FAKE_BENCHMARK)
    out = tmp_path / "joined.json"
    argv = ["--count", str(tmp_path / "count"), "--proc", "4", "--json", "ignored.json", "--processes=4"]
    report = bench_common.run_in_processes(script, argv, 4, out, lambda rows: {"rows": len(rows)})
    assert report["processes"] == 3  # the first, the second (its row) and the fourth
    assert report["failed_processes"] == [1, 2]
    assert [r["process"] for r in report["results"]] == [0, 1, 3]
    assert report["rows"] == 3 and report["device"] == "fake"
    child_argv = report["results"][0]["argv"]
    assert child_argv[: len(argv)] == argv  # the caller's arguments, abbreviations included...
    assert child_argv[len(argv) : len(argv) + 3] == ["--processes", "1", "--json"]  # ...then these, which win
    assert child_argv[-1] != "ignored.json" and len(child_argv) == len(argv) + 4
    assert json.loads(out.read_text()) == report
    assert "error: process 2 exited with status 3" in capsys.readouterr().err
