"""What keeps the host from waiting for the device in a training step: the lagged non-finite
guard, the never-waiting loss copies and progress bar, and the side-stream batch copy."""

from __future__ import annotations

import collections
import csv
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from dcls_audio.training.module import AudioTaggingModule
from dcls_audio.training.progress import LOSS_KEY, TrainProgressBar
from dcls_audio.training.step_guard import HostCopies, NonFiniteGuard
from dcls_audio.training.transfer import SideStreamCopier

TINY = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
cuda = pytest.mark.cuda


# ----------------------------------------------------------------------------- guard and copies
@pytest.mark.parametrize("lag", [1, 2, 3])
def test_the_guard_is_read_lag_steps_later_and_stays_sticky(lag):
    guard = NonFiniteGuard(lag=lag)
    losses = [0.5, 0.4, float("inf"), 0.3, 0.2, 0.1, 0.1]
    seen, flags = [], []
    for step, loss in enumerate(losses):
        known = guard.poll()
        seen.append(None if known is None else known.step)
        flags.append(float(guard.update(torch.tensor(loss), step)))
        guard.publish()
    first_known = 2 + lag  # step 2's state is read at step 2 + lag
    assert seen == [None] * first_known + [2] * (len(losses) - first_known)
    assert flags == [0.0, 0.0] + [1.0] * (len(losses) - 2)
    now = guard.poll(now=True)
    assert (now.step, now.here, now.loss) == (2, True, math.inf)


def test_lowering_the_guard_lag_reads_the_newest_due_copy():
    guard = NonFiniteGuard(lag=3)
    for step, loss in enumerate([0.1, float("nan"), 0.2]):
        assert guard.poll() is None
        guard.update(torch.tensor(loss), step)
        guard.publish()
    guard.lag = 1  # three copies pending: the one of step 2 is due, and it knows of step 1
    known = guard.poll()
    assert known is not None and known.step == 1
    with pytest.raises(ValueError, match="lag must be an integer >= 0"):
        guard.lag = -1
    with pytest.raises(ValueError, match="lag"):
        NonFiniteGuard(lag=1.5)


def test_host_copies_give_the_newest_finished_value_and_keep_a_bounded_queue():
    copies = HostCopies(keep=2)
    assert copies.latest() is None
    for value in (1.0, 2.0, 3.0):
        copies.push(torch.tensor(value))
    assert float(copies.latest()) == 3.0
    source = torch.tensor(4.0)
    copies.push(source)
    source.fill_(5.0)  # a copy, not a view: later changes of the device value do not show
    assert float(copies.latest()) == 4.0
    copies.clear()
    assert copies.latest() is None
    with pytest.raises(ValueError, match="keep must be >= 1"):
        HostCopies(keep=0)


def _warm_pinned_cache(nbytes: int, count: int = 4) -> None:
    """Leave ``count`` freed pinned blocks in torch's host-memory cache, as a running training
    loop has them: allocating a new pinned block (cudaHostAlloc) waits for the device."""
    blocks = [torch.empty(nbytes, dtype=torch.uint8, pin_memory=True) for _ in range(count)]
    del blocks


@cuda
def test_host_copies_on_cuda_never_wait_for_the_device():
    copies = HostCopies()
    copies.push(torch.tensor(1.0, device="cuda"))
    value = torch.tensor(2.0, device="cuda")  # made before the sleep: this H2D copy would wait
    _warm_pinned_cache(8)
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # the device is busy for a while (~0.1 s)
    copies.push(value)
    assert float(copies.latest()) == 1.0  # the second copy is queued behind the sleep
    torch.cuda.synchronize()
    assert float(copies.latest()) == 2.0


# ----------------------------------------------------------------------------- loss in the progress bar
def _fit_tiny(callbacks, steps=3, module_class=AudioTaggingModule, **trainer_kwargs):
    torch.manual_seed(0)
    module = module_class("convnext_audio_tiny", 5, model_kwargs=dict(TINY), front_end_augment=False, mixup_alpha=0.0)
    module.front_end.clip_samples = 64000
    data = [{"waveform": (torch.randn(64000) * 3000).to(torch.int16), "target": torch.eye(5)[i % 5]} for i in range(8)]
    trainer = L.Trainer(
        **{
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": steps,
            "logger": False,
            "enable_checkpointing": False,
            "enable_model_summary": False,
            "callbacks": callbacks,
            **trainer_kwargs,
        }
    )
    trainer.fit(module, DataLoader(data, batch_size=2))
    return trainer, module


class _Losses(L.Callback):
    def __init__(self) -> None:
        self.logged: list[float] = []
        self.bar: list[dict] = []
        self.pbar_metrics: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.logged.append(float(outputs["loss"]))
        bar = next(c for c in trainer.callbacks if isinstance(c, TrainProgressBar))
        self.bar.append(bar.get_metrics(trainer, pl_module))
        self.pbar_metrics.append(dict(trainer.progress_bar_metrics))


def test_the_loss_is_not_a_per_step_progress_bar_metric_and_the_bar_shows_a_recent_one():
    losses = _Losses()
    trainer, module = _fit_tiny([TrainProgressBar(), losses], log_every_n_steps=1)
    assert all("train/loss" not in m for m in losses.pbar_metrics)  # nothing converted every step
    # on the CPU every copy is finished at once: the bar shows this step's loss
    assert [float(b[LOSS_KEY]) for b in losses.bar] == pytest.approx(losses.logged, rel=1e-3)
    assert module.recent_loss == pytest.approx(losses.logged[-1], rel=1e-6)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(losses.logged[-1], rel=1e-6)


class _LogsEveryStep(AudioTaggingModule):
    """The loss logged on every step, as Lightning's examples do (the reference)."""

    def _writes_step_logs(self) -> bool:
        return True


def _csv_losses(tmp_path, module_class, accumulate: int, steps: int, every: int) -> tuple[list, int]:
    """(step, train/loss) rows of a CSV logger's file, and the number of ``self.log`` calls."""
    calls = collections.Counter()

    class Counted(module_class):
        def log(self, name, *args, **kwargs):
            calls[name] += 1
            return super().log(name, *args, **kwargs)

    logger = CSVLogger(tmp_path / module_class.__name__, name="", version=0)
    trainer_kwargs = dict(logger=logger, log_every_n_steps=every, accumulate_grad_batches=accumulate)
    _fit_tiny([], steps=steps, module_class=Counted, **trainer_kwargs)
    with open(logger.log_dir + "/metrics.csv") as f:
        rows = [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]
    return rows, calls["train/loss"]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_loss_is_logged_only_on_the_steps_the_loggers_write_with_the_same_rows(tmp_path, accumulate):
    steps, every = 7, 3
    reference, reference_calls = _csv_losses(tmp_path, _LogsEveryStep, accumulate, steps, every)
    rows, calls = _csv_losses(tmp_path, AudioTaggingModule, accumulate, steps, every)
    assert [s for s, _ in reference] == [2, 5]  # Lightning's rule: every 3rd optimizer step
    assert [s for s, _ in rows] == [2, 5]
    assert [loss for _, loss in rows] == pytest.approx([loss for _, loss in reference], rel=1e-6)
    assert reference_calls == steps * accumulate  # one call per batch
    assert calls == 2 * accumulate  # only the batches of the steps written


def test_without_a_trainer_the_loss_is_always_logged():
    module = AudioTaggingModule("convnext_audio_tiny", 5, model_kwargs=dict(TINY))
    assert module._writes_step_logs() is True


# ----------------------------------------------------------------------------- per-batch seeding
def test_steps_seed_their_generators_without_torch_manual_seed(monkeypatch):
    """torch.manual_seed seeds every backend and records the caller's stack for the ones not
    initialised: a host cost each step. The steps seed the generators they draw from instead."""
    calls: list = []
    real = torch.manual_seed
    monkeypatch.setattr(torch, "manual_seed", lambda seed: (calls.append(seed), real(seed))[1])
    _fit_tiny([])
    assert calls == [0]  # _fit_tiny's own


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_seeding_a_step_draws_what_torch_manual_seed_would(device):
    from dcls_audio.training.module import _seed_global_generators

    _seed_global_generators(1234, torch.device(device))
    got = (torch.rand(5), torch.rand(5, device=device))
    torch.manual_seed(1234)
    want = (torch.rand(5), torch.rand(5, device=device))
    assert all(torch.equal(g, w) for g, w in zip(got, want))


# ----------------------------------------------------------------------------- side-stream batch copy
Pair = collections.namedtuple("Pair", "a b")


def _batch():
    return {
        "waveform": (torch.randn(4, 40000) * 3000).to(torch.int16),  # pageable: the copier pins it
        "target": torch.rand(4, 5),
        "names": ["a", "b", "c", "d"],
        "nested": [Pair(torch.arange(3), 7), (torch.ones(2),)],
    }


def _assert_same(moved, batch, device):
    assert moved["names"] == batch["names"]
    for got, want in (
        (moved["waveform"], batch["waveform"]),
        (moved["target"], batch["target"]),
        (moved["nested"][0].a, batch["nested"][0].a),
        (moved["nested"][1][0], batch["nested"][1][0]),
    ):
        assert got.device.type == torch.device(device).type and got.dtype == want.dtype
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)
    assert isinstance(moved["nested"][0], Pair) and moved["nested"][0].b == 7
    assert isinstance(moved["nested"][1], tuple)


def test_the_copier_walks_the_batch_on_the_cpu():
    batch = _batch()
    _assert_same(SideStreamCopier()(batch, "cpu"), batch, "cpu")


@cuda
def test_the_copier_overlaps_the_busy_compute_stream_and_orders_the_step_after_it():
    batch = _batch()
    copier = SideStreamCopier()
    for tensor in (batch["waveform"], batch["target"], batch["nested"][0].a, batch["nested"][1][0]):
        _warm_pinned_cache(tensor.nbytes)  # the copier pins each of them
    # one copy first, as the loop's earlier steps: the side stream's device memory then comes from
    # the caching allocator (a first cudaMalloc may wait for the device)
    del_me = copier(_batch(), torch.device("cuda"))
    torch.cuda.synchronize()
    del del_me
    for tensor in (batch["waveform"], batch["target"], batch["nested"][0].a, batch["nested"][1][0]):
        _warm_pinned_cache(tensor.nbytes)
    torch.cuda._sleep(200_000_000)  # compute stream busy
    moved = copier(batch, torch.device("cuda"))
    side = copier._streams[torch.device("cuda", torch.cuda.current_device())]
    side.synchronize()  # the copy ran on the side stream, not behind the sleep
    assert not torch.cuda.current_stream().query()  # the compute stream still sleeps
    doubled = moved["target"] * 2  # queued after the copy on the compute stream
    torch.testing.assert_close(doubled.cpu(), batch["target"] * 2)
    _assert_same(moved, batch, "cuda")
