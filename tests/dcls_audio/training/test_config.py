"""Training configs: YAML files, dotted overrides, validation, the CLI's --print_config."""

from __future__ import annotations

import pytest
import yaml

from dcls_audio import cli
from dcls_audio.training.config import ConfigError, TrainConfig, config_keys, config_names, dump_config, load_config

MODEL_CONFIGS = [
    "convnext_audio_tiny",
    "convnext_dcls_audio_tiny",
    "fastvit_audio_sa24",
    "fastvit_dcls_audio_sa24",
    "convformer_audio_s18",
    "convformer_dcls_audio_s18",
]


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_model_configs_hold_the_paper_recipe(name):
    cfg = load_config(name)
    assert cfg.model.name == name and cfg.run.name == name
    assert (cfg.optim.lr, cfg.optim.lr_batch_size, cfg.optim.min_lr) == (4e-3, 4096, 1e-6)
    assert (cfg.optim.weight_decay, cfg.optim.warmup_epochs, cfg.optim.position_lr_scale) == (0.05, 20, 5)
    assert (cfg.trainer.max_epochs, cfg.trainer.precision) == (60, "bf16-mixed")
    assert (cfg.augment.mixup_alpha, cfg.augment.label_smoothing) == (0.8, 0.1)
    assert cfg.model.drop_path_rate == 0.4
    assert cfg.optim.optimizer == ("lamb" if name.startswith("convformer") else "adamw")
    if name.startswith("convnext"):
        assert cfg.model.layer_scale_init_value == 1e-6


def test_every_yaml_in_configs_loads():
    names = config_names()
    assert set(MODEL_CONFIGS) | {"demo"} <= set(names)
    for name in names:
        load_config(name)


def test_default_is_the_demo_config():
    cfg = load_config()
    assert cfg.run.name == "demo" and cfg.data.train_files == []
    assert "dcls" in cfg.model.name


def test_overrides_are_parsed_as_the_field_type():
    cfg = load_config(
        "demo",
        {
            "trainer.max_epochs": "3",
            "optim.lr": "1e-3",
            "model.depths": "[1, 1, 2, 1]",
            "trainer.precision": "32",
            "trainer.devices": "[0, 1]",
            "run.name": "007",
            "trainer.limit_train_batches": "5",
            "trainer.limit_val_batches": "0.5",
            "data.train_files": "a.h5",
            "model.num_classes": "null",
            "ema.enabled": "true",
        },
    )
    assert cfg.trainer.max_epochs == 3 and cfg.optim.lr == 1e-3
    assert cfg.model.depths == [1, 1, 2, 1] and cfg.trainer.precision == "32"
    assert cfg.trainer.devices == [0, 1] and cfg.run.name == "007"
    assert cfg.trainer.limit_train_batches == 5 and isinstance(cfg.trainer.limit_train_batches, int)
    assert cfg.trainer.limit_val_batches == 0.5
    assert cfg.data.train_files == ["a.h5"] and cfg.model.num_classes is None and cfg.ema.enabled


def test_compile_mode_reaches_the_module():
    from dcls_audio.training.run import build_module

    cfg = load_config("demo", {"model.compile": "true", "model.compile_mode": "reduce-overhead"})
    module = build_module(cfg, 3, ["a", "b", "c"], ["/m/a", "/m/b", "/m/c"], 1e-3)
    assert module.hparams.compile and module.hparams.compile_mode == "reduce-overhead"
    assert module.net._compiled_call_impl is not None  # nn.Module.compile() took it (compiles lazily)
    plain = build_module(load_config("demo"), 3, ["a", "b", "c"], ["/m/a", "/m/b", "/m/c"], 1e-3)
    assert plain.net._compiled_call_impl is None and plain.hparams.compile_mode == "default"


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("trainer.max_epoch", "3", "unknown config key 'trainer.max_epoch' (did you mean 'trainer.max_epochs'?)"),
        ("trainer.max_epochs", "three", "trainer.max_epochs: expected int"),
        ("data.sampler", "random", "data.sampler: 'random' is not one of uniform, balanced"),
        ("model.depths", "[1, x]", "model.depths"),
        ("ema.enabled", "3", "ema.enabled: expected bool"),
        ("model.compile_mode", "fast", "model.compile_mode: 'fast' is not one of default, reduce-overhead"),
        ("model.compile_mode", "reduce-overhead", "model.compile_mode reduce-overhead needs model.compile: true"),
        ("optim.min_lr", "1.0", "optim.min_lr must be in [0, optim.lr]"),
        ("data.balance_prior", "-1", "data.balance_prior must be >= 0"),
        ("nosection.key", "1", "unknown config key 'nosection.key'"),
    ],
)
def test_bad_overrides_name_the_key(key, value, message):
    with pytest.raises(ConfigError) as info:
        load_config("demo", {key: value})
    assert message in str(info.value)


def test_bad_yaml_file_names_the_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  name: convnext_audio_tiny\n  drop_rate_path: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'model\.drop_rate_path'"):
        load_config(path)
    path.write_text("trainer:\n  max_epochs: [1]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: trainer\.max_epochs: expected int"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_dump_round_trips(tmp_path):
    cfg = load_config("convnext_dcls_audio_tiny", {"model.depths": "[1, 1, 1, 1]", "optim.betas": "[0.9, 0.99]"})
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    assert set(yaml.safe_load(dump_config(TrainConfig()))) == {k.split(".")[0] for k in config_keys()}


def test_cli_print_config_applies_overrides(capsys):
    assert (
        cli.main(
            [
                "train",
                "--config",
                "convnext_audio_tiny",
                "--print_config",
                "--trainer.max_epochs",
                "3",
                "--model.name=convnext_dcls_audio_tiny",
            ]
        )
        == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["max_epochs"] == 3
    assert printed["model"]["name"] == "convnext_dcls_audio_tiny"


def test_cli_rejects_bad_keys_and_values_before_any_work(capsys):
    assert cli.main(["train", "--trainer.max_epochs", "x"]) == 2
    assert "trainer.max_epochs: expected int, got 'x'" in capsys.readouterr().err
    assert cli.main(["train", "--trainer.max_epoch", "3"]) == 2  # no prefix matching either
    err = capsys.readouterr().err
    assert err == (
        "dcls-audio train: error: unknown config key --trainer.max_epoch (did you mean --trainer.max_epochs?)\n"
    )
    assert cli.main(["train", "--nosuch.thing=3"]) == 2
    assert "unknown config key --nosuch.thing (dcls-audio train --help lists the keys)" in capsys.readouterr().err
    assert cli.main(["train", "--data.sampler", "balanced", "--print_config"]) == 0  # choices as the help shows them
    assert yaml.safe_load(capsys.readouterr().out)["data"]["sampler"] == "balanced"
    assert cli.main(["train", "--config", "nope"]) == 2
    assert "config file 'nope' not found" in capsys.readouterr().err


def test_model_recipes_say_only_what_differs_from_their_base():
    from dcls_audio.training.config import CONFIG_DIR

    for name in ("convnext_dcls_audio_tiny", "fastvit_audio_sa24", "convformer_dcls_audio_s18"):
        text = (CONFIG_DIR / f"{name}.yaml").read_text()
        assert "base: audioset" in text
        assert len([line for line in text.splitlines() if line and not line.startswith("#")]) <= 9
    base = load_config("audioset")
    assert base.data.batch_size == 128 and base.optim.position_lr_scale == 5.0


def test_a_recipe_overrides_its_base_key_by_key(tmp_path):
    (tmp_path / "parent.yaml").write_text("base: convnext_dcls_audio_tiny\noptim:\n  lr: 1.0e-3\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\noptim:\n  min_lr: 2.0e-6\nrun:\n  name: child\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.optim.lr == 1e-3 and cfg.optim.min_lr == 2e-6 and cfg.run.name == "child"
    assert cfg.model.name == "convnext_dcls_audio_tiny" and cfg.data.batch_size == 128  # from audioset


def test_recipe_base_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: nosuchrecipe\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: base recipe 'nosuchrecipe' not found"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: audioset\noptim:\n  lr_typo: 1\n")
    with pytest.raises(ConfigError, match=r"d\.yaml: .*lr_typo"):
        load_config(tmp_path / "d.yaml")
