"""Config values the trainer or the model builder would only refuse later are refused by
``load_config`` (and ``dcls-audio train``) first, naming the key; machine checks (a GPU
accelerator without a GPU) run before training but not for ``--print_config``."""

from __future__ import annotations

import pytest

from dcls_audio import cli
from dcls_audio.training.config import ConfigError, check_machine, load_config


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("trainer.devices", "0", "trainer.devices: expected auto, -1 (all), a count >= 1"),
        ("trainer.devices", "-2", "trainer.devices"),
        ("trainer.devices", "[]", "trainer.devices"),
        ("trainer.devices", "[0, 0]", "trainer.devices"),
        ("trainer.devices", "foo", "trainer.devices"),
        ("trainer.accelerator", "gpus", "trainer.accelerator: 'gpus' is not one of auto, cpu, gpu"),
        ("trainer.limit_train_batches", "-1", "trainer.limit_train_batches: expected a count >= 1"),
        ("trainer.limit_train_batches", "0", "trainer.limit_train_batches"),
        ("trainer.limit_train_batches", "1.5", "trainer.limit_train_batches"),
        ("trainer.limit_val_batches", "-0.5", "trainer.limit_val_batches"),
        ("trainer.num_nodes", "0", "trainer.num_nodes must be >= 1"),
        ("trainer.log_every_n_steps", "0", "trainer.log_every_n_steps"),
        ("trainer.max_steps", "-5", "trainer.max_steps"),
        ("trainer.gradient_clip_val", "-1", "trainer.gradient_clip_val"),
        ("model.dims", "[8, -16, 32, 64]", "model.dims: every stage needs >= 1 channel"),
        ("model.dims", "[0, 16, 32, 64]", "model.dims"),
        ("model.depths", "[1, 0, 1, 1]", "model.depths: every stage needs >= 1 block"),
        ("model.depths", "[]", "model.depths"),
        ("model.kernel_count", "0", "model.kernel_count must be >= 1"),
        ("model.dilated_kernel_size", "-3", "model.dilated_kernel_size"),
        ("model.drop_path_rate", "1.0", "model.drop_path_rate"),
        ("optim.lr", "inf", "optim.lr: must be a finite number, got inf"),
        ("optim.lr", ".nan", "optim.lr: must be a finite number, got nan"),
        ("optim.lr", "0", "optim.lr must be > 0"),
        ("optim.lr", "-1e-3", "optim.lr must be > 0"),
        ("optim.weight_decay", "-.inf", "optim.weight_decay"),
        ("optim.betas", "[0.9, .inf]", "optim.betas: must be a finite number"),
        ("optim.betas", "[0.9, 1.5]", "optim.betas must be in [0, 1)"),
        ("optim.eps", "0", "optim.eps must be > 0"),
        ("ema.decay", "nan", "ema.decay"),
        ("run.name", "..", "run.name: '..' must be a single folder name"),
        ("run.name", "../elsewhere", "run.name"),
        ("run.name", "/tmp/abs", "run.name"),
        ("run.name", "a/b", "run.name"),
        ("run.name", "a\\b", "run.name"),
        ("run.name", "", "run.name"),
    ],
)
def test_values_the_trainer_would_reject_are_refused_first(key, value, message):
    with pytest.raises(ConfigError) as info:
        load_config("demo", {key: value})
    assert message in str(info.value)


@pytest.mark.parametrize(
    "key, value",
    [
        ("trainer.devices", "1"),
        ("trainer.devices", "-1"),
        ("trainer.devices", "auto"),
        ("trainer.devices", "[0, 1]"),
        ("trainer.devices", "0,1"),
        ("trainer.limit_train_batches", "0.25"),
        ("trainer.limit_train_batches", "3"),
        ("trainer.limit_val_batches", "0"),
        ("run.name", "my-run_2"),
        ("run.name", "..hidden"),
        ("trainer.accelerator", "cpu"),
        ("optim.lr", "1e-3"),
    ],
)
def test_good_values_still_load(key, value):
    load_config("demo", {key: value})


def test_typed_errors_keep_their_suggestion():
    with pytest.raises(ConfigError, match=r"did you mean 'trainer\.devices'"):
        load_config("demo", {"trainer.device": "1"})


def test_gpu_accelerator_without_a_gpu_is_refused_before_training(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for accelerator in ("gpu", "cuda"):
        cfg = load_config("demo", {"trainer.accelerator": accelerator})  # printing it is fine
        with pytest.raises(ConfigError, match=rf"trainer.accelerator {accelerator}: no CUDA GPU"):
            check_machine(cfg)
        assert cli.main(["train", "--trainer.accelerator", accelerator, "--run.output_dir", "/nonexistent/x"]) == 2
        assert f"trainer.accelerator {accelerator}: no CUDA GPU" in capsys.readouterr().err
    assert cli.main(["train", "--trainer.accelerator", "gpu", "--print_config"]) == 0
    check_machine(load_config("demo", {"trainer.accelerator": "cpu"}))


def test_more_gpus_than_present_are_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="trainer.devices 4: only 2 CUDA GPU"):
        check_machine(load_config("demo", {"trainer.accelerator": "gpu", "trainer.devices": "4"}))
    with pytest.raises(ConfigError, match=r"trainer.devices \[0, 2\]: GPU indices go from 0 to 1"):
        check_machine(load_config("demo", {"trainer.accelerator": "gpu", "trainer.devices": "[0, 2]"}))
    check_machine(load_config("demo", {"trainer.accelerator": "gpu", "trainer.devices": "2"}))


def test_cli_train_names_the_key(capsys):
    assert cli.main(["train", "--trainer.devices", "0"]) == 2
    assert "trainer.devices" in capsys.readouterr().err
    assert cli.main(["train", "--optim.lr", "inf"]) == 2
    assert "optim.lr: must be a finite number" in capsys.readouterr().err
    assert cli.main(["train", "--run.name", "../../etc"]) == 2
    assert "run.name" in capsys.readouterr().err
