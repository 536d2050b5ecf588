"""Training configuration: typed sections, YAML files, dotted overrides, validation.

A config is a :class:`TrainConfig` of sections (``model``, ``data``, ``augment``, ``optim``,
``ema``, ``trainer``, ``run``). A YAML file sets any subset of the fields; ``--section.key
value`` overrides set single fields (values are parsed as YAML: ``3``, ``1.0e-3``, ``null``,
``[1, 1, 3, 1]``). Unknown keys and values of the wrong type raise :class:`ConfigError`
naming the key, before any work starts.

This module imports nothing heavy (no torch) so that the command line can list the keys fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

import yaml

from ..errors import UsageError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "CONFIG_DIR",
    "ConfigError",
    "TrainConfig",
    "check_machine",
    "config_keys",
    "config_names",
    "dump_config",
    "load_config",
    "resolve_config_path",
]

#: the recipes shipped as package data (``dcls_audio/training/configs/*.yaml``), read through importlib.resources
CONFIG_DIR = importlib.resources.files(__package__) / "configs"
DEFAULT_CONFIG = "demo"


class ConfigError(UsageError):
    """A config file or override is invalid; the message names the key."""


def _f(default: Any, help: str) -> Any:
    """A dataclass field with a help text (lists/dicts get a factory)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    name: str = _f("convnext_dcls_audio_tiny", "backbone name (see dcls_audio.models.list_models())")
    num_classes: Optional[int] = _f(None, "output classes; null: the class count of the data")
    drop_path_rate: float = _f(0.4, "stochastic depth rate")
    layer_scale_init_value: Optional[float] = _f(1.0e-6, "layer scale init; null: model default")
    kernel_count: Optional[int] = _f(None, "DCLS elements per kernel; null: model default (26)")
    dilated_kernel_size: Optional[int] = _f(None, "DCLS dilated kernel size; null: default (23)")
    version: Optional[str] = _f(None, "DCLS interpolation (v0, v1, max, gauss); null: default")
    depths: Optional[list[int]] = _f(None, "blocks per stage; null: the named model's")
    dims: Optional[list[int]] = _f(None, "channels per stage; null: the named model's")
    init_checkpoint: Optional[str] = _f(
        None,
        "fine-tune from this checkpoint (ours, upstream .pth or state_dict); a new head "
        "is made when its class count differs",
    )
    init_checkpoint_ema: bool = _f(False, "take the EMA weights of init_checkpoint")
    freeze_positions: bool = _f(False, "keep the DCLS positions (P, SIG) fixed")
    clamp_positions: bool = _f(False, "clamp DCLS positions to the kernel after each step")
    channels_last: bool = _f(False, "channels_last memory format for the backbone")
    compile: bool = _f(False, "torch.compile the backbone")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = _f(
        "default", "torch.compile mode, with model.compile: true (reduce-overhead: CUDA graphs)"
    )


@dataclass
class DataConfig:
    train_files: list[str] = _f([], "training HDF5 files; empty: the built-in demo data")
    val_files: list[str] = _f([], "validation HDF5 files; empty: the demo eval file")
    class_csv: Optional[str] = _f(None, "class list CSV (index, mid, display_name); null: AudioSet")
    batch_size: int = _f(64, "clips per device and step")
    num_workers: Optional[int] = _f(
        None, "loader workers per device; null: chosen from the node's CPU cores and devices"
    )
    pin_memory: Optional[bool] = _f(None, "pin host memory of batches; null: on CUDA")
    persistent_workers: Optional[bool] = _f(None, "keep workers alive between epochs; null: when there are workers")
    prefetch_factor: Optional[int] = _f(None, "batches each worker loads ahead; null: 4, or 2 with 8+ workers")
    sampler: Literal["uniform", "balanced"] = _f("uniform", "training sampler")
    samples_per_epoch: Optional[int] = _f(None, "clips drawn per epoch (all ranks); null: the train set size")
    balance_prior: float = _f(0.0, "balanced sampler: clip weight = sum over labels of 1/(count + prior)")


@dataclass
class AugmentSection:
    front_end: bool = _f(True, "roll, speed perturbation and random erasing in training")
    mixup_alpha: float = _f(0.8, "batch mixup alpha; 0 disables mixup")
    label_smoothing: float = _f(0.1, "label smoothing of the training targets")


@dataclass
class OptimConfig:
    optimizer: str = _f("adamw", "timm optimizer name (adamw, lamb, ...)")
    lr: float = _f(4.0e-3, "peak learning rate at a total batch of lr_batch_size")
    lr_batch_size: Optional[int] = _f(
        4096,
        "total batch that lr is given for; the lr used is lr * total_batch / "
        "lr_batch_size (linear scaling); null: use lr as is",
    )
    min_lr: float = _f(1.0e-6, "final learning rate of the cosine schedule")
    weight_decay: float = _f(0.05, "weight decay (not on biases, 1-D params, P, SIG)")
    betas: Optional[list[float]] = _f(None, "Adam-family betas; null: the optimizer default")
    eps: Optional[float] = _f(None, "Adam-family epsilon; null: the optimizer default")
    position_lr_scale: float = _f(5.0, "learning-rate factor of the DCLS positions P and SIG")
    warmup_epochs: float = _f(20.0, "linear warm-up length in epochs")
    warmup_steps: Optional[int] = _f(None, "warm-up length in optimizer steps (overrides epochs)")


@dataclass
class EmaConfig:
    enabled: bool = _f(False, "keep an exponential moving average of the weights")
    decay: float = _f(0.9999, "EMA decay per optimizer step")


@dataclass
class TrainerConfig:
    accelerator: str = _f("auto", "cpu, gpu, auto, ...")
    devices: Union[int, str, list[int]] = _f("auto", "devices per node (count, list or auto)")
    num_nodes: int = _f(1, "nodes")
    strategy: str = _f("auto", "auto, ddp, ddp_spawn, fsdp, ...")
    precision: Literal["32", "32-true", "bf16-mixed", "16-mixed", "bf16-true"] = _f("bf16-mixed", "numeric precision")
    max_epochs: int = _f(60, "epochs")
    max_steps: int = _f(-1, "stop after this many optimizer steps (-1: no limit)")
    accumulate_grad_batches: int = _f(1, "batches per optimizer step")
    gradient_clip_val: Optional[float] = _f(None, "gradient clipping threshold; null: off")
    gradient_clip_algorithm: Literal["norm", "value"] = _f("norm", "clip by norm or value")
    log_every_n_steps: int = _f(50, "logging interval in steps")
    val_check_interval: Optional[Union[int, float]] = _f(
        None, "validate every fraction (float) of an epoch or every n batches (int)"
    )
    check_val_every_n_epoch: Optional[int] = _f(1, "validate every n epochs")
    limit_train_batches: Optional[Union[int, float]] = _f(None, "fraction (float) or count (int) of train batches")
    limit_val_batches: Optional[Union[int, float]] = _f(None, "fraction (float) or count (int) of val batches")
    num_sanity_val_steps: int = _f(0, "validation batches run before training")
    fast_dev_run: Union[bool, int] = _f(False, "run n (true: 1) batches of train/val as a test")
    deterministic: bool = _f(False, "deterministic algorithms")
    logger: list[Literal["tensorboard", "csv", "wandb", "mlflow"]] = _f(
        ["tensorboard", "csv"], "experiment loggers, several at once (e.g. tensorboard,wandb; wandb/mlflow: extras)"
    )
    enable_progress_bar: bool = _f(True, "show a progress bar")
    progress_bar_refresh_rate: int = _f(
        10, "update the progress bar every n batches (each update waits for the device to report the loss)"
    )


@dataclass
class RunConfig:
    output_dir: str = _f("runs", "where run directories are made")
    name: str = _f("run", "run name: runs go to output_dir/name/version_N")
    seed: int = _f(0, "global random seed")
    auto_resume: bool = _f(True, "continue the newest unfinished run of this name")
    checkpoint_every_n_steps: int = _f(1000, "also write last.ckpt every n steps (0: epochs only)")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentSection = field(default_factory=AugmentSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


def _sections() -> dict[str, type]:
    """Section name -> its dataclass."""
    return typing.get_type_hints(TrainConfig)


def config_keys() -> dict[str, tuple[str, str]]:
    """Every dotted key -> (type name, help text), in declaration order."""
    keys = {}
    for section, cls in _sections().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            keys[f"{section}.{f.name}"] = (_type_name(hints[f.name]), f.metadata.get("help", ""))
    return keys


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp``; return it (ints widened to float, str to float)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        # Exact kinds first: typing caches unions regardless of member order, so ``int | float``
        # may come back as (float, int) and would turn 5 batches into 5.0 (a fraction).
        exact_first = {type(None): 0, bool: 1, int: 2}
        for option in sorted(typing.get_args(tp), key=lambda o: exact_first.get(o, 3)):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
    elif origin is Literal:
        choices = typing.get_args(tp)
        text = str(value)
        for choice in choices:
            if text == str(choice):
                return choice
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
    elif origin is list:
        (item_type,) = typing.get_args(tp)
        if item_type is str and isinstance(value, str):
            value = [value]  # one path for a list of paths
        elif typing.get_origin(item_type) is Literal and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]  # "tensorboard,wandb"
        if isinstance(value, (list, tuple)):
            return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _unknown(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _field_type(key: str) -> Any:
    """The declared type of a dotted key; ConfigError if there is no such key."""
    section, _, name = key.partition(".")
    sections = _sections()
    if section not in sections:
        raise _unknown(key, list(config_keys()))
    hints = typing.get_type_hints(sections[section])
    if name not in hints:
        raise _unknown(key, list(config_keys()))
    return hints[name]


def _set(cfg: TrainConfig, key: str, value: Any) -> None:
    section, name = key.split(".", 1)
    setattr(getattr(cfg, section), name, _coerce(value, _field_type(key), key))


def _parse_override(key: str, text: Any) -> Any:
    """Command-line text -> value of the key's type: YAML first, the plain text second."""
    tp = _field_type(key)
    if not isinstance(text, str):
        return _coerce(text, tp, key)
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        parsed = text
    try:
        return _coerce(parsed, tp, key)
    except ConfigError:
        try:
            return _coerce(text, tp, key)
        except ConfigError:
            pass
        raise


def config_names() -> list[str]:
    """Names of the shipped recipes (``demo``, ``convnext_dcls_audio_tiny``, ...), sorted."""
    return sorted(entry.name[: -len(".yaml")] for entry in CONFIG_DIR.iterdir() if entry.name.endswith(".yaml"))


def resolve_config_path(config: str | Path | None) -> Path | Traversable:
    """A config path, or a bare name of a shipped recipe (``demo`` -> ``dcls_audio/training/configs/demo.yaml``).

    Raises:
        ConfigError: neither a file nor a shipped name; the message lists the names.
    """
    if config is None:
        config = DEFAULT_CONFIG
    path = Path(config)
    if path.is_file():
        return path
    if path.suffix == "" and str(config) in config_names():
        return CONFIG_DIR / f"{config}.yaml"
    raise ConfigError(f"config file '{config}' not found (a path, or a shipped name: {', '.join(config_names())})")


def _resolve_base(base: object, child: Path | Traversable) -> Path | Traversable:
    """A recipe's ``base:``: a shipped recipe name, or a path relative to the recipe's folder."""
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{child}: 'base' must be a recipe name or a YAML path, got {base!r}")
    if Path(base).suffix == "" and base in config_names():
        return CONFIG_DIR / f"{base}.yaml"
    path = Path(base)
    if not path.is_absolute() and isinstance(child, Path):
        path = child.parent / path
    if not path.is_file():
        raise ConfigError(
            f"{child}: base recipe '{base}' not found (a path, or a shipped name: {', '.join(config_names())})"
        )
    return path


def _read_recipe(path: Path | Traversable, chain: tuple[str, ...] = ()) -> dict[str, dict[str, tuple[Any, str]]]:
    """``{section: {key: (value, file that set it)}}`` of a recipe and its ``base:`` chain
    (the recipe's own values win over its base's, key by key)."""
    if str(path) in chain:
        raise ConfigError(f"recipe base cycle: {' -> '.join((*chain, str(path)))}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    merged: dict[str, dict[str, tuple[Any, str]]] = {}
    if "base" in raw:
        merged = _read_recipe(_resolve_base(raw.pop("base"), path), (*chain, str(path)))
    for section, values in raw.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: section '{section}' must be a mapping of keys")
        for name, value in values.items():
            merged.setdefault(section, {})[name] = (value, str(path))
    return merged


def load_config(config: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- recipe (a path or a shipped name; None: demo; its ``base:`` recipes first)
    <- dotted overrides.

    A recipe may start with ``base: NAME`` (a shipped recipe, or a YAML path relative to the
    recipe) and then sets only what differs from it.

    Args:
        config: YAML path or config name.
        overrides: ``{"trainer.max_epochs": "3", ...}``; strings are parsed as YAML.
    Raises:
        ConfigError: unreadable file, unknown key or wrong type (the message names it and the
            file that set it).
    """
    cfg = TrainConfig()
    for section, values in _read_recipe(resolve_config_path(config)).items():
        for name, (value, origin) in values.items():
            try:
                _set(cfg, f"{section}.{name}", value)
            except ConfigError as err:
                raise ConfigError(f"{origin}: {err}") from None
    for key, text in (overrides or {}).items():
        _set(cfg, key, _parse_override(key, text))
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    """Cross-field and range checks (non-finite floats first: they pass no comparison)."""
    _check_finite(cfg)
    checks = [
        (cfg.data.batch_size >= 1, "data.batch_size must be >= 1"),
        (cfg.data.num_workers is None or cfg.data.num_workers >= 0, "data.num_workers must be >= 0"),
        (cfg.data.prefetch_factor is None or cfg.data.prefetch_factor >= 1, "data.prefetch_factor must be >= 1"),
        (cfg.data.balance_prior >= 0, "data.balance_prior must be >= 0"),
        (cfg.optim.lr > 0, "optim.lr must be > 0"),
        (0 <= cfg.optim.min_lr <= cfg.optim.lr, "optim.min_lr must be in [0, optim.lr]"),
        (cfg.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (cfg.optim.betas is None or len(cfg.optim.betas) == 2, "optim.betas must have two values"),
        (cfg.optim.lr_batch_size is None or cfg.optim.lr_batch_size > 0, "optim.lr_batch_size must be > 0 or null"),
        (cfg.optim.warmup_epochs >= 0, "optim.warmup_epochs must be >= 0"),
        (cfg.optim.warmup_steps is None or cfg.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0 or null"),
        (cfg.augment.mixup_alpha >= 0, "augment.mixup_alpha must be >= 0"),
        (0 <= cfg.augment.label_smoothing < 1, "augment.label_smoothing must be in [0, 1)"),
        (0 < cfg.ema.decay < 1, "ema.decay must be in (0, 1)"),
        (cfg.trainer.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches must be >= 1"),
        (cfg.trainer.progress_bar_refresh_rate >= 1, "trainer.progress_bar_refresh_rate must be >= 1"),
        (len(cfg.trainer.logger) >= 1, "trainer.logger needs at least one logger (the learning rate is logged)"),
        (
            cfg.trainer.max_epochs >= 1 or cfg.trainer.max_steps > 0,
            "trainer.max_epochs must be >= 1 (or set trainer.max_steps)",
        ),
        (cfg.run.checkpoint_every_n_steps >= 0, "run.checkpoint_every_n_steps must be >= 0"),
        (
            len(cfg.data.train_files) > 0 or len(cfg.data.val_files) == 0,
            "data.val_files given without data.train_files (both empty: demo data)",
        ),
        (cfg.model.num_classes is None or cfg.model.num_classes >= 1, "model.num_classes must be >= 1 or null"),
        (
            cfg.model.compile or cfg.model.compile_mode == "default",
            f"model.compile_mode {cfg.model.compile_mode} needs model.compile: true",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    _check_ranges(cfg)
    _check_run_name(cfg.run.name)


def _check_finite(cfg: TrainConfig) -> None:
    """Every float field (and float list entry) must be a finite number: YAML's .nan/.inf and
    ``inf`` on the command line are floats the trainer would only fail on later."""
    import math

    for section, values in cfg.to_dict().items():
        for name, value in values.items():
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, float) and not math.isfinite(item):
                    raise ConfigError(f"{section}.{name}: must be a finite number, got {item}")


def _devices_ok(devices: Any) -> bool:
    """The trainer's ``devices``: ``auto``, -1 (all), a count >= 1, or a non-empty list of
    distinct indices >= 0 (also as text: ``"0,1"``)."""
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices == -1 or devices >= 1
    if isinstance(devices, list):
        return bool(devices) and all(d >= 0 for d in devices) and len(set(devices)) == len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            return True
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if "," in text:
            return bool(parts) and all(p.isdigit() for p in parts)
        return text == "-1" or (text.isdigit() and int(text) >= 1)
    return False


def _limit_ok(value: Any, allow_zero: bool) -> bool:
    """``limit_*_batches``: a count (int) or a fraction (float in [0, 1])."""
    if value is None:
        return True
    if isinstance(value, int):
        return value >= (0 if allow_zero else 1)
    return (0.0 <= value <= 1.0) if allow_zero else (0.0 < value <= 1.0)


#: accelerator names the trainer takes
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "xla", "hpu")


def _check_ranges(cfg: TrainConfig) -> None:
    """Values the model builder or the trainer would refuse later, refused now with the key."""
    m, t = cfg.model, cfg.trainer
    checks = [
        (
            m.depths is None or (len(m.depths) > 0 and all(d >= 1 for d in m.depths)),
            f"model.depths: every stage needs >= 1 block, got {m.depths}",
        ),
        (
            m.dims is None or (len(m.dims) > 0 and all(d >= 1 for d in m.dims)),
            f"model.dims: every stage needs >= 1 channel, got {m.dims}",
        ),
        (
            m.depths is None or m.dims is None or len(m.depths) == len(m.dims),
            f"model.depths ({m.depths}) and model.dims ({m.dims}) must have one entry per stage",
        ),
        (m.kernel_count is None or m.kernel_count >= 1, f"model.kernel_count must be >= 1, got {m.kernel_count}"),
        (
            m.dilated_kernel_size is None or m.dilated_kernel_size >= 1,
            f"model.dilated_kernel_size must be >= 1, got {m.dilated_kernel_size}",
        ),
        (0 <= m.drop_path_rate < 1, f"model.drop_path_rate must be in [0, 1), got {m.drop_path_rate}"),
        (
            m.layer_scale_init_value is None or m.layer_scale_init_value > 0,
            f"model.layer_scale_init_value must be > 0 or null, got {m.layer_scale_init_value}",
        ),
        (
            cfg.data.samples_per_epoch is None or cfg.data.samples_per_epoch >= 1,
            f"data.samples_per_epoch must be >= 1 or null, got {cfg.data.samples_per_epoch}",
        ),
        (cfg.optim.eps is None or cfg.optim.eps > 0, f"optim.eps must be > 0 or null, got {cfg.optim.eps}"),
        (
            cfg.optim.betas is None or all(0 <= b < 1 for b in cfg.optim.betas),
            f"optim.betas must be in [0, 1), got {cfg.optim.betas}",
        ),
        (cfg.optim.position_lr_scale >= 0, f"optim.position_lr_scale must be >= 0, got {cfg.optim.position_lr_scale}"),
        (
            t.accelerator.lower() in ACCELERATORS,
            f"trainer.accelerator: {t.accelerator!r} is not one of {', '.join(ACCELERATORS)}",
        ),
        (
            _devices_ok(t.devices),
            f"trainer.devices: expected auto, -1 (all), a count >= 1 or a list of indices, got {t.devices!r}",
        ),
        (t.num_nodes >= 1, f"trainer.num_nodes must be >= 1, got {t.num_nodes}"),
        (t.max_steps >= -1, f"trainer.max_steps must be -1 (no limit) or >= 0, got {t.max_steps}"),
        (t.log_every_n_steps >= 1, f"trainer.log_every_n_steps must be >= 1, got {t.log_every_n_steps}"),
        (
            _limit_ok(t.limit_train_batches, allow_zero=False),
            f"trainer.limit_train_batches: expected a count >= 1 or a fraction in (0, 1], got {t.limit_train_batches}",
        ),
        (
            _limit_ok(t.limit_val_batches, allow_zero=True),
            f"trainer.limit_val_batches: expected a count >= 0 or a fraction in [0, 1], got {t.limit_val_batches}",
        ),
        (
            t.val_check_interval is None or t.val_check_interval > 0,
            f"trainer.val_check_interval must be > 0 or null, got {t.val_check_interval}",
        ),
        (
            not isinstance(t.val_check_interval, float) or t.val_check_interval <= 1.0,
            f"trainer.val_check_interval: a fraction must be in (0, 1], got {t.val_check_interval}",
        ),
        (
            t.check_val_every_n_epoch is None or t.check_val_every_n_epoch >= 1,
            f"trainer.check_val_every_n_epoch must be >= 1 or null, got {t.check_val_every_n_epoch}",
        ),
        (t.num_sanity_val_steps >= -1, f"trainer.num_sanity_val_steps must be >= -1, got {t.num_sanity_val_steps}"),
        (
            t.fast_dev_run is True or t.fast_dev_run is False or t.fast_dev_run >= 0,
            f"trainer.fast_dev_run must be true, false or a count >= 0, got {t.fast_dev_run}",
        ),
        (
            t.gradient_clip_val is None or t.gradient_clip_val > 0,
            f"trainer.gradient_clip_val must be > 0 or null, got {t.gradient_clip_val}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _check_run_name(name: str) -> None:
    """``run.name`` is one folder name inside ``run.output_dir``: not empty, not ``.``/``..``,
    no path separator, not absolute (a run can never land outside its output folder)."""
    import os
    import posixpath

    bad = (
        not name.strip()
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or (os.altsep is not None and os.altsep in name)
        or posixpath.isabs(name)
        or "\0" in name
    )
    if bad:
        raise ConfigError(
            f"run.name: {name!r} must be a single folder name (no '/', '\\', '..' or absolute path): "
            "runs go to run.output_dir/run.name"
        )


def check_machine(cfg: TrainConfig) -> None:
    """Checks against this machine, made before training (not when a config is only printed):
    a GPU accelerator needs a CUDA device, and a device count or list must fit the ones present.

    Raises:
        ConfigError: naming ``trainer.accelerator`` or ``trainer.devices``.
    """
    accelerator = cfg.trainer.accelerator.lower()
    if accelerator not in ("gpu", "cuda"):
        return
    import torch  # only here: listing keys and printing configs stay fast

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(
            f"trainer.accelerator {cfg.trainer.accelerator}: no CUDA GPU is available on this machine (use cpu or auto)"
        )
    devices = cfg.trainer.devices
    if isinstance(devices, str) and devices.strip() not in ("auto", "-1"):
        parts = [p.strip() for p in devices.split(",") if p.strip()]
        devices = [int(p) for p in parts] if "," in devices else int(devices)
    if isinstance(devices, int) and devices > count:
        raise ConfigError(f"trainer.devices {devices}: only {count} CUDA GPU(s) on this machine")
    if isinstance(devices, list) and max(devices) >= count:
        raise ConfigError(f"trainer.devices {devices}: GPU indices go from 0 to {count - 1} on this machine")


class _ConfigDumper(yaml.SafeDumper):
    """Block style for sections, flow style for lists."""


_ConfigDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML (loadable again with :func:`load_config`)."""
    return yaml.dump(cfg.to_dict(), Dumper=_ConfigDumper, sort_keys=False, default_flow_style=False)
