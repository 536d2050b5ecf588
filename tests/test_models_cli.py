"""``dcls-audio models``: the registered backbones with released files and parameter counts."""
from __future__ import annotations

import json

from cli import main
from dcls_audio.models import RELEASED_CHECKPOINTS, UPSTREAM_PARAM_COUNTS, list_models


def test_models_lists_names_and_released_files(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list_models()
    by_name = {line.split()[0]: line for line in lines}
    assert RELEASED_CHECKPOINTS["convnext_dcls_audio_tiny"] in by_name["convnext_dcls_audio_tiny"]
    assert "(no released file)" in by_name["fastvit_audio_sa24"]


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == list_models()
    assert {r["model"] for r in rows if r["released"]} == set(RELEASED_CHECKPOINTS)


def test_parameter_counts_match_upstream(upstream_dir):
    from dcls_audio.models import parameter_table

    rows = parameter_table(["convnext_dcls_audio_tiny", "fastvit_audio_sa24"])
    for row in rows:
        manifest = json.loads((upstream_dir / f"{row['model']}.json").read_text())
        assert row["parameters"] == manifest["num_parameters"] == UPSTREAM_PARAM_COUNTS[row["model"]]
        assert row["match"]
