"""``dcls-audio models``: the registered backbones with released files and parameter counts."""

from __future__ import annotations

import json

import pytest

from cli import main
from dcls_audio.models import RELEASED_CHECKPOINTS, UPSTREAM_PARAM_COUNTS, list_models

pytestmark = pytest.mark.usefixtures("single_thread")


def test_models_lists_names_and_released_files(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ["model", "description"]
    lines = lines[1:-1]  # the header, then the rows, then a note on downloads
    assert [line.split()[0] for line in lines] == list_models()
    by_name = {line.split()[0]: line for line in lines}
    assert RELEASED_CHECKPOINTS["convnext_dcls_audio_tiny"] in by_name["convnext_dcls_audio_tiny"]
    assert "(no released file)" in by_name["fastvit_audio_sa24"]


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == list_models()
    assert {r["model"] for r in rows if r["released"]} == set(RELEASED_CHECKPOINTS)
    assert all("local" in r for r in rows)


def test_parameter_table_against_upstream(upstream_dir):
    from dcls_audio.models import format_parameter_table, parameter_table

    rows = parameter_table(["fastvit_dcls_audio_sa24"])
    manifest = json.loads((upstream_dir / "fastvit_dcls_audio_sa24.json").read_text())
    assert rows[0]["parameters"] == manifest["num_parameters"] == UPSTREAM_PARAM_COUNTS["fastvit_dcls_audio_sa24"]
    assert rows[0]["match"]
    assert round(rows[0]["params_1000"] / 1e6, 1) == rows[0]["paper_millions"] == 21.5  # 1000-class head
    table = format_parameter_table(rows)
    assert "fastvit_dcls_audio_sa24" in table and "21,016,655" in table and "yes" in table
