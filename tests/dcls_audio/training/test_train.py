"""Training runs on tiny HDF5 data on the CPU: every config, run directory, resume, faults."""

from __future__ import annotations

import csv
import signal
from pathlib import Path

import h5py
import lightning as L
import numpy as np
import pytest
import torch

from dcls_audio import cli
from dcls_audio.models import load_checkpoint
from dcls_audio.training.config import load_config
from dcls_audio.training.optim import cosine_with_warmup
from dcls_audio.training.run import TrainingStopped, resolve_run_dir, train
from dcls_core.conv import autotune

CONFIGS = [
    "demo",
    "convnext_audio_tiny",
    "convnext_dcls_audio_tiny",
    "fastvit_audio_sa24",
    "fastvit_dcls_audio_sa24",
    "convformer_audio_s18",
    "convformer_dcls_audio_s18",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, tone_h5) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("h5")
    train_labels = [[i % 3] for i in range(8)]
    val_labels = [[0], [1], [2], [0, 1], [2]]  # 5 clips
    return tone_h5(root / "train.h5", train_labels), tone_h5(root / "val.h5", val_labels, seed=1)


#: the non-parametrised runs use a tiny DCLS ConvNeXt (whatever the demo config's model is)
TINY_DCLS_CONVNEXT = {
    "model.name": "convnext_dcls_audio_tiny",
    "model.kernel_count": "4",
    "model.dilated_kernel_size": "5",
}


def tiny_overrides(name: str, tiny_data, output_dir: Path) -> dict[str, str]:
    train_h5, val_h5 = tiny_data
    out = {
        "model.depths": "[1, 1, 1, 1]",
        "model.dims": "[8, 16, 32, 64]",
        "model.drop_path_rate": "0.1",
        "data.train_files": str(train_h5),
        "data.val_files": str(val_h5),
        "data.batch_size": "2",
        "data.num_workers": "0",
        "data.pin_memory": "false",
        "trainer.accelerator": "cpu",
        "trainer.devices": "1",
        "trainer.precision": "32",
        "trainer.enable_progress_bar": "false",
        "run.output_dir": str(output_dir),
        "trainer.log_every_n_steps": "1",
    }
    if "dcls" in load_config(name).model.name:
        out.update({"model.kernel_count": "4", "model.dilated_kernel_size": "5"})
    return out


@pytest.mark.parametrize("name", CONFIGS)
def test_fast_dev_run_of_every_config_through_the_cli(name, tiny_data, tmp_path, capsys):
    args = ["train", "--config", name, "--trainer.fast_dev_run", "1"]
    for key, value in tiny_overrides(name, tiny_data, tmp_path).items():
        args += [f"--{key}", value]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert f"Model {load_config(name).model.name}" in out and "Training done" in out


class _RaiseSignalAt(L.Callback):
    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            signal.raise_signal(self.signum)


class _RecordStart(L.Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        self.start_step = trainer.global_step


class _RecordBatches(L.Callback):
    """(epoch, batch index, clip indices) of every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, list[int]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append((trainer.current_epoch, batch_idx, batch["index"].tolist()))


@pytest.mark.parametrize("workers", [0, 1])
def test_a_run_resumed_mid_epoch_sees_the_clips_an_uninterrupted_run_sees(tiny_data, tmp_path, workers):
    """Resuming inside an epoch continues its clip order where the checkpoint left it: no clip
    of that epoch is seen twice and none is skipped (also with loader workers, which read the
    sampler as soon as the loader's iterator exists)."""
    overrides = {
        **tiny_overrides("demo", tiny_data, tmp_path),
        **TINY_DCLS_CONVNEXT,
        "trainer.max_epochs": "2",
        "run.checkpoint_every_n_steps": "0",
        "data.num_workers": str(workers),
    }
    whole = _RecordBatches()
    train(load_config("demo", {**overrides, "run.name": "whole"}), callbacks=[whole])
    assert len(whole.seen) == 8 and whole.seen[0][2] != whole.seen[4][2]
    cfg = load_config("demo", {**overrides, "run.name": "parts"})
    before, after = _RecordBatches(), _RecordBatches()
    first = train(cfg, callbacks=[_RaiseSignalAt(3, signal.SIGINT), before])  # stops after batch 3 of epoch 0
    assert first.interrupted and len(before.seen) == 3
    second = train(cfg, callbacks=[after])
    assert second.global_step == 8
    assert before.seen + after.seen == whole.seen
    # a crash in step 4 after the every-2-steps checkpoint of step 2: step 3's batch is redone
    cfg = load_config("demo", {**overrides, "run.name": "crash", "run.checkpoint_every_n_steps": "2"})
    before, after = _RecordBatches(), _RecordBatches()
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, callbacks=[before, _CrashAt(3)])
    train(cfg, callbacks=[after])
    assert before.seen[:2] + after.seen == whole.seen


class _CrashAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_interrupted_run_resumes_at_the_same_step(tiny_data, tmp_path):
    overrides = {
        **tiny_overrides("demo", tiny_data, tmp_path),
        **TINY_DCLS_CONVNEXT,
        "trainer.max_epochs": "2",
        "run.checkpoint_every_n_steps": "0",
        "optim.warmup_steps": "2",
        "optim.lr": "1e-3",
        "optim.min_lr": "1e-5",
        "ema.enabled": "true",
        "ema.decay": "0.5",
    }
    cfg = load_config("demo", overrides)
    autotune.clear()
    autotune.load_state_dict({"cpu|a measured call": "fft"})  # as if measured in this run
    try:
        _interrupt_and_resume(cfg)
    finally:
        autotune.clear()


def _interrupt_and_resume(cfg) -> None:
    first = train(cfg, callbacks=[_RaiseSignalAt(3, signal.SIGINT)])  # Ctrl-C in step 4 of 8
    assert first.interrupted and first.global_step == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    saved = torch.load(first.last_checkpoint, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 3
    assert saved["dcls_core_conv_choices"] == {"cpu|a measured call": "fft"}

    autotune.clear()  # a new process: the resumed run takes the paths the first one measured
    recorder = _RecordStart()
    second = train(cfg, callbacks=[recorder])  # auto-resume from the run directory
    assert autotune.state_dict() == {"cpu|a measured call": "fft"}
    autotune.clear()
    assert second.run_dir == first.run_dir and recorder.start_step == 3
    assert not second.interrupted and second.global_step == 8
    run = second.run_dir
    assert (run / "finished").is_file() and (run / "config.yaml").is_file()
    assert load_config(run / "config.yaml") == cfg
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in names and any(n.startswith("best-epoch") for n in names)
    assert any(n.startswith("best-ema-epoch") for n in names)
    assert second.best_checkpoint is not None and second.best_checkpoint.is_file()

    rows = [r for f in sorted((run / "csv").glob("version_*/metrics.csv")) for r in _read_csv(f)]
    val = [r for r in rows if r.get("val/mAP")]
    assert val and all(r["val/mAP_ema"] for r in val) and all(r["val/mAUC"] and r["val/d_prime"] for r in val)
    assert all(float(r["val/num_classes_scored"]) == 3 for r in val)
    assert any(r.get("train/loss") for r in rows)
    lrs = {
        int(r["step"]): (float(r["lr-AdamW/decay"]), float(r["lr-AdamW/positions"]))
        for r in rows
        if r.get("lr-AdamW/decay")
    }
    assert set(lrs) >= {0, 4, 7}
    for step, (lr, lr_positions) in lrs.items():
        assert lr == pytest.approx(cosine_with_warmup(step, 8, 2, 1e-3, 1e-5), rel=1e-5)
        assert lr_positions == pytest.approx(5 * lr, rel=1e-6)

    # the checkpoint is self-describing and loads safely, with separate EMA weights
    ckpt = torch.load(second.best_checkpoint, map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["model_name"] == "convnext_dcls_audio_tiny" and hp["num_classes"] == 527
    assert len(hp["class_names"]) == len(hp["class_mids"]) == 527 and hp["class_names"][0] == "Speech"
    net = load_checkpoint(None, second.best_checkpoint)
    ema = load_checkpoint(None, second.best_checkpoint, use_ema=True)
    w = ckpt["state_dict"]["net.stem.0.weight"]
    torch.testing.assert_close(net.stem[0].weight, w)
    torch.testing.assert_close(ema.stem[0].weight, ckpt["state_dict"]["ema_net.stem.0.weight"])
    assert not torch.equal(ema.stem[0].weight, w)

    third = train(cfg)  # the run finished: a new version starts
    assert third.run_dir.name == "version_1" and third.global_step == 8


class _PoisonAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.net.stem[0].weight.fill_(float("nan"))


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path):
    overrides = {
        **tiny_overrides("demo", tiny_data, tmp_path),
        **TINY_DCLS_CONVNEXT,
        "run.checkpoint_every_n_steps": "1",
    }
    with pytest.raises(TrainingStopped) as info:
        train(load_config("demo", overrides), callbacks=[_PoisonAt(2)])
    message = str(info.value)
    assert "at step 2" in message and "last.ckpt" in message
    last = next(tmp_path.glob("demo/version_0/checkpoints/last.ckpt"))
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    assert not (last.parent.parent / "finished").exists()


class _OtherRankNanAt(L.Callback):
    """From ``step`` on, the all-rank reduction of the non-finite flag reports another rank's."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            pl_module._guard.reduce = torch.ones_like


def test_a_nan_loss_on_another_rank_stops_this_rank_too(tiny_data, tmp_path):
    overrides = {**tiny_overrides("demo", tiny_data, tmp_path), **TINY_DCLS_CONVNEXT}
    with pytest.raises(TrainingStopped, match="non-finite on another rank at step 2"):
        train(load_config("demo", overrides), callbacks=[_OtherRankNanAt(2)])


class _CheckClamp(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        with torch.no_grad():
            for m in pl_module.net.modules():
                if hasattr(m, "P"):
                    m.P.fill_(50.0)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        layers = [m for m in pl_module.net.modules() if hasattr(m, "P")]
        self.max_abs = max(m.P.abs().max().item() for m in layers)
        self.limit = max(max(m.position_limits()) for m in layers)


def test_positions_are_clamped_after_each_step(tiny_data, tmp_path):
    overrides = {
        **tiny_overrides("demo", tiny_data, tmp_path),
        **TINY_DCLS_CONVNEXT,
        "model.clamp_positions": "true",
        "trainer.max_steps": "2",
    }
    check = _CheckClamp()
    train(load_config("demo", overrides), callbacks=[check])
    assert check.limit == 5 // 2 and check.max_abs == pytest.approx(check.limit)


def test_bad_inputs_fail_before_any_work(tiny_data, tmp_path, capsys):
    base = tiny_overrides("demo", tiny_data, tmp_path / "runs")

    def run(**changes) -> int:
        args = ["train"]
        for key, value in {**base, **changes}.items():
            args += [f"--{key}", value]
        return cli.main(args)

    assert run(**{"data.train_files": str(tmp_path / "missing.h5")}) == 2
    assert "missing.h5" in capsys.readouterr().err
    broken = tmp_path / "broken.h5"
    with h5py.File(broken, "w") as h5:
        h5["audio_name"] = np.array([b"a"], dtype="S20")
        h5["target"] = np.zeros((1, 527), bool)
    assert run(**{"data.train_files": str(broken)}) == 2
    err = capsys.readouterr().err
    assert "broken.h5" in err and "waveform" in err
    assert not (tmp_path / "runs").exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert run(**{"run.output_dir": str(blocker / "runs")}) == 2
    assert "cannot write" in capsys.readouterr().err
    assert run(**{"model.num_classes": "10"}) == 2
    assert "model.num_classes is 10 but the data has 527 classes" in capsys.readouterr().err


class _InfGradientAt(L.Callback):
    """Makes one gradient inf right after the backward of step ``step`` (before the GradScaler
    unscales and checks the gradients) and records, per batch, whether the step changed the
    network's parameters and the loss scale before and after it."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.changed: dict[int, bool] = {}
        self.scales: dict[int, tuple[float, float]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._params = [p.detach().clone() for p in pl_module.net.parameters()]
        self._scale = trainer.precision_plugin.scaler.get_scale()

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step:
            grad = next(p.grad for p in pl_module.net.parameters() if p.grad is not None)
            grad.fill_(float("inf"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        params = list(pl_module.net.parameters())
        self.changed[batch_idx] = any(not torch.equal(a, b) for a, b in zip(self._params, params))
        self.scales[batch_idx] = (self._scale, trainer.precision_plugin.scaler.get_scale())


@pytest.mark.cuda
def test_fp16_loss_scaling_skips_a_non_finite_step(tiny_data, tmp_path):
    overrides = {
        **tiny_overrides("demo", tiny_data, tmp_path),
        "trainer.accelerator": "gpu",
        "trainer.precision": "16-mixed",
        "trainer.max_steps": "3",
    }
    poison = _InfGradientAt(1)
    result = train(load_config("demo", overrides), callbacks=[poison])
    assert not result.interrupted and sorted(poison.changed) == [0, 1, 2]
    before, after = poison.scales[1]
    assert not poison.changed[1] and after == before / 2  # the inf step: skipped, the scale halved
    assert poison.scales[2][0] == after
    for i in (0, 2):  # the others stepped (unless fp16 overflowed by itself: then skipped the same way)
        assert poison.changed[i] == (poison.scales[i][1] == poison.scales[i][0]), i
    taken = sum(poison.changed.values())
    assert taken >= 1
    saved = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    # Lightning counts skipped steps in global_step; the optimizer's own count leaves them out
    steps = {float(s["step"]) for s in saved["optimizer_states"][0]["state"].values()}
    assert steps == {float(taken)} and result.global_step == 3


def test_run_directory_choice(tmp_path):
    root = tmp_path / "runs"
    run_dir, ckpt = resolve_run_dir(root, "exp", auto_resume=True, resume=None)
    assert run_dir == root / "exp" / "version_0" and ckpt is None
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("")
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(b"")
    assert resolve_run_dir(root, "exp", True, None) == (run_dir, last)  # unfinished: continue it
    assert resolve_run_dir(root, "exp", False, None) == (root / "exp" / "version_1", None)
    (run_dir / "finished").write_text("")
    assert resolve_run_dir(root, "exp", True, None) == (root / "exp" / "version_1", None)
    # an explicit checkpoint continues in its own run directory when it is that run's last.ckpt;
    # under another run name or output folder it starts a new version there (never writing over it)
    assert resolve_run_dir(root, "exp", True, last) == (run_dir, last)
    assert resolve_run_dir(tmp_path / "elsewhere", "other", True, last) == (
        tmp_path / "elsewhere" / "other" / "version_0",
        last,
    )
    foreign = tmp_path / "weights.ckpt"
    foreign.write_bytes(b"")
    assert resolve_run_dir(root, "exp", True, foreign) == (root / "exp" / "version_1", foreign)
    with pytest.raises(FileNotFoundError, match="--resume"):
        resolve_run_dir(root, "exp", True, tmp_path / "missing.ckpt")


class _SigtermInValidation(L.Callback):
    def on_validation_batch_end(self, trainer, *args) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == 0 and args[-1] == 0:
            signal.raise_signal(signal.SIGTERM)


def test_sigterm_during_validation_finishes_the_validation_then_saves(tiny_data, tmp_path):
    overrides = {
        **tiny_overrides("demo", tiny_data, tmp_path),
        **TINY_DCLS_CONVNEXT,
        "trainer.max_epochs": "3",
        "data.batch_size": "2",
    }
    result = train(load_config("demo", overrides), callbacks=[_SigtermInValidation()])
    assert result.interrupted and result.global_step == 4  # the end of epoch 0
    saved = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 4
    rows = [r for f in (result.run_dir / "csv").glob("version_*/metrics.csv") for r in _read_csv(f)]
    val = [r for r in rows if r.get("val/mAP")]
    assert len(val) == 1 and float(val[0]["val/num_classes_scored"]) == 3  # all 5 clips scored


def test_resuming_a_run_of_another_network_is_refused(tiny_data, tmp_path, capsys):
    overrides = {**tiny_overrides("demo", tiny_data, tmp_path), **TINY_DCLS_CONVNEXT, "trainer.max_steps": "1"}
    first = train(load_config("demo", overrides))
    args = ["train", "--resume", str(first.last_checkpoint)]
    for key, value in {
        **overrides,
        "model.name": "convnext_audio_tiny",
        "model.kernel_count": "null",
        "model.dilated_kernel_size": "null",
    }.items():
        args += [f"--{key}", value]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err
    assert "unexpected keys (8): net.stages.0.blocks.0.conv_dw.P" in err  # DCLS positions
    assert "net.stages.0.blocks.0.conv_dw.weight (8, 1, 4) vs (8, 1, 7, 7)" in err


def test_refused_resume_lists_missing_unexpected_and_reshaped_keys(tmp_path):
    from dcls_audio.training.config import ConfigError
    from dcls_audio.training.run import _check_resumable, build_module

    cfg = load_config("demo", {"model.depths": "[1, 1, 1, 1]", "model.dims": "[8, 16, 32, 64]"})
    module = build_module(cfg, 5, [f"c{i}" for i in range(5)], [f"/m/{i}" for i in range(5)], 1e-3)
    state = dict(module.state_dict())
    missing = next(iter(state))
    del state[missing]
    state["net.extra.weight"] = torch.zeros(2)
    state["net.head.fc.weight"] = torch.zeros(7, state["net.head.fc.weight"].shape[1])
    extras = {f"net.more.{i}": torch.zeros(1) for i in range(20)}  # shortened in the message
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {**state, **extras}, "hyper_parameters": {"model_name": "other_net"}}, path)
    with pytest.raises(ConfigError) as info:
        _check_resumable(path, module)
    message = str(info.value)
    assert "it holds other_net" in message and f"missing keys (1): {missing}" in message
    assert "unexpected keys (21): net.extra.weight, net.more.0" in message and "(9 more)" in message
    assert f"net.head.fc.weight (7, {state['net.head.fc.weight'].shape[1]}) vs (5, " in message


def test_stop_signal_reaches_lightnings_handler_once_per_process(tmp_path):
    """A process can get SIGTERM twice (a launcher's and the user's); Lightning's handler, which
    starts the stop (and signals the processes its launcher started), must run once. (Several
    ranks agree on a stop instead: test_ddp_stop.py.)"""
    from types import SimpleNamespace

    from dcls_audio.training.run import StopOnSignal

    calls = []
    trainer = SimpleNamespace(validating=False, world_size=1)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        stopper = StopOnSignal(tmp_path / "last.ckpt")
        stopper.on_train_start(trainer, None)  # wraps the handler installed above
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)
        assert calls == [signal.SIGTERM]
        stopper.teardown(trainer, None, "fit")

        calls.clear()  # the same in a new fit, with the first signal during validation
        stopper.on_train_start(SimpleNamespace(validating=True, world_size=1), None)
        signal.raise_signal(signal.SIGTERM)
        assert calls == []
        stopper.on_validation_end(trainer, None)
        signal.raise_signal(signal.SIGTERM)
        stopper.on_validation_end(trainer, None)
        assert calls == [signal.SIGTERM]
        stopper.teardown(trainer, None, "fit")
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_balanced_sampler_settings_reach_the_train_sampler(tiny_data):
    from dcls_audio.data import BalancedSampler
    from dcls_audio.training.run import build_datamodule

    train_h5, val_h5 = tiny_data
    cfg = load_config(
        "demo",
        overrides={
            "data.train_files": f"[{train_h5}]",
            "data.val_files": f"[{val_h5}]",
            "data.sampler": "balanced",
            "data.samples_per_epoch": "20",
            "data.balance_prior": "2.0",
        },
    )
    dm, _ = build_datamodule(cfg)
    dm.setup("fit")
    sampler = dm.train_sampler()
    assert isinstance(sampler, BalancedSampler)
    assert len(list(iter(sampler))) == 20
    # labels 0, 1, 2 occur 3, 3, 2 times: with prior 2 a class-2 clip weighs 1/(2+2), the others 1/(3+2)
    p = sampler.probabilities
    assert p.shape == (8,) and p[2] == p[5] and p[0] == p[1]
    assert np.isclose(p[2] / p[0], (1 / 4) / (1 / 5))


def test_progress_bar_reads_the_loss_every_n_batches(tmp_path):
    """The bar reads the logged loss (a device sync) only when it refreshes."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    from dcls_audio.training.run import _callbacks

    cfg = load_config("demo", {"trainer.progress_bar_refresh_rate": "25"})
    bars = [c for c in _callbacks(cfg, tmp_path, has_val=False)[0] if isinstance(c, TQDMProgressBar)]
    assert len(bars) == 1 and bars[0].refresh_rate == 25
    cfg = load_config("demo", {"trainer.enable_progress_bar": "false"})
    assert not any(isinstance(c, TQDMProgressBar) for c in _callbacks(cfg, tmp_path, has_val=False)[0])


def test_rows_with_an_empty_audio_name_are_counted_in_what_train_prints(tmp_path, capsys):
    from conftest import tone_clips

    from dcls_audio.data.hdf5_dataset import write_hdf5
    from dcls_audio.training.run import build_datamodule

    waves, targets = tone_clips([[0], [1], [2], [0], [1]])
    train_h5 = write_hdf5(tmp_path / "train.h5", ["a", "", "b", "", "c"], waves, targets)
    val_h5 = write_hdf5(tmp_path / "val.h5", ["v0", "v1", ""], waves[:3], targets[:3])
    cfg = load_config("demo", {"data.train_files": str(train_h5), "data.val_files": str(val_h5)})
    dm, _ = build_datamodule(cfg)
    out = capsys.readouterr().out
    assert f"data.train_files: {train_h5}: 2 row(s) with an empty audio_name" in out and "3 used" in out
    assert f"data.val_files: {val_h5}: 1 row(s) with an empty audio_name" in out and "2 used" in out
    assert len(dm.datasets["train"]) == 3
