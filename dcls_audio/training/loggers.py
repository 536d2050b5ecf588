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
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from .config import ConfigError

__all__ = ["LOGGER_EXTRAS", "LOGGER_NAMES", "build_loggers", "check_logger_packages"]

LOGGER_NAMES = ("tensorboard", "csv", "wandb", "mlflow")
#: logger -> (module it needs, the pip extra that brings it)
LOGGER_EXTRAS = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}


def check_logger_packages(names: Sequence[str]) -> None:
    """ConfigError naming ``trainer.logger`` and the extra to install for a logger whose
    package is missing (checked before any training work)."""
    for name in names:
        if name not in LOGGER_NAMES:
            raise ConfigError(f"trainer.logger: {name!r} is not one of {', '.join(LOGGER_NAMES)}")
        module, extra = LOGGER_EXTRAS.get(name, (None, None))
        if module is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(f"trainer.logger {name} needs {module}: pip install 'dcls-audio[{extra}]'")


def build_loggers(names: Sequence[str], run_dir: Path, run_name: str) -> list[Logger]:
    """The loggers ``names`` (in that order, duplicates once) for the run directory ``run_dir``
    (``<output_dir>/<run_name>/version_N``); see the module docstring for where each writes."""
    check_logger_packages(names)
    loggers: list[Logger] = []
    for name in dict.fromkeys(names):
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(save_dir=run_dir, name="tensorboard", version=""))
        elif name == "csv":
            loggers.append(CSVLogger(save_dir=run_dir, name="csv"))  # csv/version_K: one file per (re)start
        elif name == "wandb":
            loggers.append(
                WandbLogger(
                    project=os.environ.get("WANDB_PROJECT") or "dcls-audio",
                    name=f"{run_name}/{run_dir.name}",
                    save_dir=str(run_dir),
                )
            )
        elif name == "mlflow":
            uri = os.environ.get("MLFLOW_TRACKING_URI")
            if not uri:  # the local file store, which MLflow 3 uses only when told (no database needed)
                uri = (run_dir.parent / "mlruns").resolve().as_uri()
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            loggers.append(MLFlowLogger(experiment_name=run_name, run_name=run_dir.name, tracking_uri=uri))
    return loggers
