"""The pictures: written, of the size their layout gives, and refused clearly without matplotlib."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from dcls_audio.plots import PlotUnavailable, write_per_class_ap_chart, write_timelines
from dcls_audio.plots.per_class import per_class_ap_figure
from dcls_audio.plots.timeline import TimelineData, time_edges

from dcls_testing import png_size

NAMES = [f"class {i}" for i in range(200)]


def test_per_class_chart_columns_and_size(tmp_path):
    ap = np.linspace(0.05, 0.95, 200)
    ap[[3, 50]] = np.nan  # not scored: left out
    path = write_per_class_ap_chart(tmp_path / "ap.png", ap, NAMES, "test")
    # 198 classes: 3 columns of at most 90 rows; 3 x 5.5 in wide, (1.0 + 90 x 0.18 + 0.8) in high, 100 dpi
    assert png_size(path) == (1650, 1800)
    figure = per_class_ap_figure(ap, NAMES, "test")
    labels = [t.get_text() for ax in figure.axes for t in ax.get_yticklabels()]
    assert len(labels) == 198 and "class 3" not in labels and "class 50" not in labels
    assert labels[0] == "class 199" and labels[-1] == "class 0"  # best first
    assert "mAP 0.5" in figure._suptitle.get_text() and "2 classes without AP left out" in figure._suptitle.get_text()


def test_per_class_chart_needs_one_name_per_class(tmp_path):
    with pytest.raises(ValueError, match="3 AP values for 2 class names"):
        write_per_class_ap_chart(tmp_path / "ap.png", [0.1, 0.2, 0.3], ["a", "b"])


def test_time_edges_span_the_recording():
    spans = np.array([[0.0, 10.0], [5.0, 15.0], [10.0, 20.0], [12.0, 22.0]])
    np.testing.assert_allclose(time_edges(spans), [0.0, 7.5, 12.5, 16.0, 22.0])


def test_timelines_one_panel_per_file(tmp_path):
    rng = np.random.default_rng(0)
    files = [
        TimelineData("long.wav", rng.random((23, 12)), np.stack([np.arange(23) * 5.0, np.arange(23) * 5.0 + 10], 1)),
        TimelineData("short.wav", rng.random((1, 12)), np.array([[0.0, 3.0]])),
    ]
    path = write_timelines(tmp_path / "t.png", files, [f"c{i}" for i in range(12)], top=4)
    # 12 in wide; two panels of (1.2 + 4 x 0.3) in at 100 dpi
    assert png_size(path) == (1200, 480)


def test_without_matplotlib_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as when it is not installed
    with pytest.raises(PlotUnavailable, match=r"needs matplotlib: pip install 'dcls-audio\[plot\]'"):
        write_per_class_ap_chart(tmp_path / "ap.png", [0.5], ["a"])
    assert not (tmp_path / "ap.png").exists()
