"""What a run reports: val/mAP after each epoch, TensorBoard figures, and every logger at once
(W&B in its offline mode, MLflow with a local file store)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from dcls_audio import cli
from dcls_audio.training.config import ConfigError, load_config
from dcls_audio.training.loggers import check_logger_packages


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, tone_h5) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("h5")
    return (
        tone_h5(root / "train.h5", [[i % 3] for i in range(8)]),
        tone_h5(root / "val.h5", [[0], [1], [2], [0, 1], [2]], seed=1),
    )


def test_logger_option_parsing():
    assert load_config(None, {"trainer.logger": "tensorboard,wandb"}).trainer.logger == ["tensorboard", "wandb"]
    assert load_config(None, {"trainer.logger": "[mlflow]"}).trainer.logger == ["mlflow"]
    assert load_config(None).trainer.logger == ["tensorboard", "csv"]
    with pytest.raises(ConfigError, match="'comet' is not one of tensorboard, csv, wandb, mlflow"):
        load_config(None, {"trainer.logger": "csv,comet"})
    with pytest.raises(ConfigError, match="at least one logger"):
        load_config(None, {"trainer.logger": "[]"})


def test_a_missing_logger_package_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"trainer.logger wandb needs wandb: pip install 'dcls-audio\[wandb\]'"):
        check_logger_packages(["csv", "wandb"])


@pytest.fixture
def offline_loggers(tmp_path, monkeypatch):
    """W&B offline with its files under ``tmp_path``, MLflow's local file store."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # W&B would otherwise take over stdout, which capsys reads
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _tiny_run(tiny_data, output_dir: Path, loggers: str, max_epochs: int) -> dict[str, str]:
    train_h5, val_h5 = tiny_data
    return {
        "model.name": "convnext_dcls_audio_tiny",
        "model.depths": "[1, 1, 1, 1]",
        "model.dims": "[8, 16, 32, 64]",
        "model.kernel_count": "4",
        "model.dilated_kernel_size": "5",
        "data.train_files": str(train_h5),
        "data.val_files": str(val_h5),
        "data.batch_size": "4",
        "data.num_workers": "0",
        "data.pin_memory": "false",
        "trainer.accelerator": "cpu",
        "trainer.devices": "1",
        "trainer.precision": "32",
        "trainer.max_epochs": str(max_epochs),
        "trainer.log_every_n_steps": "1",
        "trainer.logger": loggers,
        "run.output_dir": str(output_dir),
        "run.name": "loggers",
    }


def test_run_with_all_loggers_prints_map_and_logs_figures(tiny_data, tmp_path, offline_loggers, capsys):
    overrides = _tiny_run(tiny_data, tmp_path / "runs", "tensorboard,csv,wandb,mlflow", max_epochs=2)
    argv = ["train", "--config", "demo"] + [f"--{k}={v}" for k, v in overrides.items()]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    run_dir = tmp_path / "runs" / "loggers" / "version_0"

    # val/mAP after each epoch, as the CSV logger recorded it
    printed = re.findall(r"\bepoch (\d) \(step (\d+)\): val/mAP (\d\.\d{4}) \(best", captured.out)
    rows = list(csv.DictReader(open(next((run_dir / "csv").glob("version_*/metrics.csv")))))
    logged = [(r["epoch"], r["step"], float(r["val/mAP"])) for r in rows if r.get("val/mAP")]
    assert [e for e, _, _ in printed] == ["0", "1"] and len(logged) == 2
    for (epoch, _, m_ap), (logged_epoch, _, logged_map) in zip(printed, logged):
        assert epoch == logged_epoch and float(m_ap) == pytest.approx(logged_map, abs=5e-5)
    assert "Tip:" not in captured.out + captured.err and "LeafSpec" not in captured.err
    assert "v_num" not in captured.out and "Validation DataLoader" not in captured.out  # the bars are on stdout

    # TensorBoard: per-class AP (histogram and chart) and PR curves
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "tensors": 0}).Reload()
    tags = events.Tags()
    assert "val/per_class_AP" in tags["images"] and "val/per_class_AP" in tags["histograms"]
    assert len(events.Images("val/per_class_AP")) == 2
    pr_tags = [t for t in tags["tensors"] if t.startswith("val_pr/")]
    assert len(pr_tags) == 3  # the three classes with positive clips

    # W&B offline: a local run folder with its data file
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))

    # MLflow: the local file store holds the run and its val/mAP history
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run_dir.parent / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("loggers")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "version_0"
    history = client.get_metric_history(run.info.run_id, "val/mAP")
    assert [round(m.value, 4) for m in history] == [round(v, 4) for _, _, v in logged]


def _argv(overrides: dict[str, str], *extra: str) -> list[str]:
    return ["train", "--config", "demo", *extra] + [f"--{k}={v}" for k, v in overrides.items()]


def test_a_resumed_run_logs_into_the_same_wandb_and_mlflow_runs(tiny_data, tmp_path, offline_loggers, capsys):
    import json

    from mlflow.tracking import MlflowClient

    from dcls_audio.training.loggers import LOGGER_RUNS_FILE

    output_dir = tmp_path / "runs"
    run_dir = output_dir / "loggers" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert cli.main(_argv(_tiny_run(tiny_data, output_dir, "wandb,mlflow", max_epochs=1))) == 0
    recorded = json.loads((run_dir / LOGGER_RUNS_FILE).read_text())
    assert recorded["wandb"]["project"] == "dcls-audio"
    assert cli.main(_argv(_tiny_run(tiny_data, output_dir, "wandb,mlflow", max_epochs=2), "--resume", str(last))) == 0
    capsys.readouterr()
    assert json.loads((run_dir / LOGGER_RUNS_FILE).read_text()) == recorded

    # W&B: both offline folders (start, resume) belong to the recorded run id
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    named = re.compile(r"offline-run-\d{8}_\d{6}-" + recorded["wandb"]["id"] + r"(-\d+)?")  # -1: same second
    assert len(folders) == 2 and all(named.fullmatch(f.name) for f in folders), folders

    # MLflow: one run, with val/mAP of both epochs
    client = MlflowClient(tracking_uri=recorded["mlflow"]["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("loggers").experiment_id])
    assert run.info.run_id == recorded["mlflow"]["id"]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/mAP")]
    assert len(steps) == 2 and steps[0] < steps[1]  # epoch 0 (first start), epoch 1 (resume)

    # the MLflow run deleted from its store: the next resume starts a new one and records it
    client.delete_run(run.info.run_id)
    assert cli.main(_argv(_tiny_run(tiny_data, output_dir, "wandb,mlflow", max_epochs=3), "--resume", str(last))) == 0
    now = json.loads((run_dir / LOGGER_RUNS_FILE).read_text())
    assert now["wandb"] == recorded["wandb"] and now["mlflow"]["id"] not in (None, recorded["mlflow"]["id"])
    assert client.get_run(now["mlflow"]["id"]).info.run_name == "version_0"
