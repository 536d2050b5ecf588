"""The experiment loggers of a run (``trainer.logger``): Lightning's own, several at once.

- ``tensorboard``: ``<run>/tensorboard/`` (one event folder per run, resumes append);
- ``csv``: ``<run>/csv/version_K/metrics.csv`` (one per start or resume);
- ``wandb``: Weights & Biases (extra ``wandb``), project ``$WANDB_PROJECT`` or ``dcls-audio``,
  run ``<run.name>/version_N``, files under ``<run>/wandb/``; ``WANDB_MODE=offline`` logs
  without an account (``wandb sync`` uploads later);
- ``mlflow``: MLflow (extra ``mlflow``, the ``mlflow-skinny`` client), experiment ``<run.name>``,
  run ``version_N``, tracking store ``$MLFLOW_TRACKING_URI`` or the local folder
  ``<run.output_dir>/<run.name>/mlruns`` (MLflow 3 keeps file stores in maintenance mode: this
  sets ``MLFLOW_ALLOW_FILE_STORE=true`` for the run; a server or database is named by
  ``$MLFLOW_TRACKING_URI``; view the folder with ``mlflow ui --backend-store-uri file://...``).

A resumed run goes on logging into the W&B and MLflow runs it started: rank 0 records their ids in
``<run>/logger_runs.json`` (:data:`LOGGER_RUNS_FILE`) and a resume reads them back, as long as the
W&B project and the MLflow tracking store are the same as when they were recorded (else a new run).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import string
from pathlib import Path
from typing import Sequence

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ..outputs import atomic_output
from .config import ConfigError

__all__ = [
    "LOGGER_EXTRAS",
    "LOGGER_NAMES",
    "LOGGER_RUNS_FILE",
    "build_loggers",
    "check_logger_packages",
    "finish_loggers",
]

LOGGER_NAMES = ("tensorboard", "csv", "wandb", "mlflow")
#: logger -> (module it needs, the pip extra that brings it)
LOGGER_EXTRAS = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
#: the W&B and MLflow run ids of a run directory, so that a resume logs into the same runs
LOGGER_RUNS_FILE = "logger_runs.json"


def check_logger_packages(names: Sequence[str]) -> None:
    """ConfigError naming ``trainer.logger`` and the extra to install for a logger whose
    package is missing (checked before any training work)."""
    for name in names:
        if name not in LOGGER_NAMES:
            raise ConfigError(f"trainer.logger: {name!r} is not one of {', '.join(LOGGER_NAMES)}")
        module, extra = LOGGER_EXTRAS.get(name, (None, None))
        if module is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(f"trainer.logger {name} needs {module}: pip install 'dcls-audio[{extra}]'")


def _recorded_runs(run_dir: Path) -> dict:
    """``{logger: {...}}`` from the run's :data:`LOGGER_RUNS_FILE`; empty if there is none or it
    cannot be read (the loggers then start new runs)."""
    try:
        recorded = json.loads((run_dir / LOGGER_RUNS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _same_place(entry: object, **where: str) -> str | None:
    """The ``id`` of a recorded run if it was recorded for the same ``where`` (project, store)."""
    if isinstance(entry, dict) and all(entry.get(k) == v for k, v in where.items()):
        run_id = entry.get("id")
        return run_id if isinstance(run_id, str) and run_id else None
    return None


def _new_wandb_id() -> str:
    """A W&B run id like W&B's own: 8 lowercase letters and digits."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _mlflow_logger(experiment: str, run_name: str, uri: str, run_id: str | None) -> MLFlowLogger:
    """An MLflow logger that continues the run ``run_id``, or starts a new one where that run is
    gone from the store or deleted. On rank 0 the run exists once this returns (its id is recorded)."""
    logger = MLFlowLogger(experiment_name=experiment, run_name=run_name, tracking_uri=uri, run_id=run_id)
    if run_id is None or rank_zero_only.rank != 0:
        return logger
    from mlflow.exceptions import MlflowException

    try:
        alive = logger.experiment.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:  # gone from the store
        alive = False
    if not alive:  # deleted since it was recorded: a new run
        logger = MLFlowLogger(experiment_name=experiment, run_name=run_name, tracking_uri=uri)
    return logger


def build_loggers(names: Sequence[str], run_dir: Path, run_name: str) -> list[Logger]:
    """The loggers ``names`` (in that order, duplicates once) for the run directory ``run_dir``
    (``<output_dir>/<run_name>/version_N``); see the module docstring for where each writes and
    how a resume finds its W&B and MLflow runs (rank 0 records them here)."""
    check_logger_packages(names)
    recorded = _recorded_runs(run_dir)
    runs: dict[str, dict[str, str]] = {}
    loggers: list[Logger] = []
    for name in dict.fromkeys(names):
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(save_dir=run_dir, name="tensorboard", version=""))
        elif name == "csv":
            loggers.append(CSVLogger(save_dir=run_dir, name="csv"))  # csv/version_K: one file per (re)start
        elif name == "wandb":
            project = os.environ.get("WANDB_PROJECT") or "dcls-audio"
            run_id = _same_place(recorded.get("wandb"), project=project) or _new_wandb_id()
            runs["wandb"] = {"project": project, "id": run_id}
            loggers.append(
                WandbLogger(
                    project=project,
                    name=f"{run_name}/{run_dir.name}",
                    save_dir=str(run_dir),
                    id=run_id,
                    resume="allow",
                )
            )
        elif name == "mlflow":
            uri = os.environ.get("MLFLOW_TRACKING_URI")
            if not uri:  # the local file store, which MLflow 3 uses only when told (no database needed)
                uri = (run_dir.parent / "mlruns").resolve().as_uri()
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            logger = _mlflow_logger(run_name, run_dir.name, uri, _same_place(recorded.get("mlflow"), tracking_uri=uri))
            if rank_zero_only.rank == 0:
                runs["mlflow"] = {"tracking_uri": uri, "id": logger.run_id}
            loggers.append(logger)
    if runs and rank_zero_only.rank == 0 and runs != {k: recorded.get(k) for k in runs}:
        with atomic_output(run_dir / LOGGER_RUNS_FILE) as tmp:
            tmp.write_text(json.dumps({**recorded, **runs}, indent=1) + "\n")
    return loggers


def finish_loggers(loggers: Sequence[Logger]) -> None:
    """End the W&B runs these loggers started in this process (a later ``train()`` in the same
    process, e.g. a resume, would otherwise log into them; W&B ends them itself at exit)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            if wandb.run is not None and wandb.run.id == logger.version:
                wandb.run.finish()
