"""Training throughput: the real ``dcls-audio train`` step against the bare model step, in one run.

For each model and each compile mode (``eager`` or a ``torch.compile`` mode) it measures:

- bare: the backbone alone on a log-mel batch already on the device (BCE, AdamW fused on CUDA,
  autocast as ``--precision``, no Lightning, no data loading);
- loop: the project's training step as ``dcls-audio train`` runs it: the real DataModule (HDF5
  reader, sampler, loader workers chosen as by default) on a generated AudioSet-format HDF5 file,
  the real LightningModule (front end, augmentations, mixup, BCE, optimizer and schedule, the
  non-finite guard) through ``lightning.Trainer``;

and prints samples/s of both and their ratio (loop / bare). ``--front-ends`` runs the eager loop
once per front-end path, ``--repeats N`` every variant N times in turn (medians printed),
``--processes N`` all of it in N fresh processes in turn (each variant's ratio by process and the
lowest printed: the eager loop's host time varies between processes). It also
times what the augmentations and mixup add to the front end per step of ``--batch-size`` clips
(host draws included), per path, and the reference ops alone. After
``--warmup`` untimed steps, ``--steps`` steps are timed with the device synchronised at both
ends. Prints a table and writes JSON (default: benchmarks/results/bench_train_loop_vs_bare.json).

    python benchmarks/bench_train.py                                  # both ConvNeXt-T, eager + compiled
    python benchmarks/bench_train.py --modes eager reduce-overhead --steps 100
    python benchmarks/bench_train.py --modes eager --front-ends reference fused --repeats 3
    python benchmarks/bench_train.py --modes eager --repeats 2 --processes 3
    python benchmarks/bench_train.py --smoke                          # tiny CPU check
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import sys
import tempfile
import time
from pathlib import Path

import h5py
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import env_var, format_by_process, fresh, is_kernel, main_in_processes, ratios_by_process, sync  # noqa: E402

from dcls_audio.data import AudioSetDataModule  # noqa: E402
from dcls_audio.data.hdf5_dataset import create_layout  # noqa: E402
from dcls_audio.features import LogMelFrontEnd  # noqa: E402
from dcls_audio.features.augment import (  # noqa: E402
    apply_erase,
    apply_mixup,
    apply_time_warp,
    draws_to,
    sample_front_end,
    sample_mixup_draws,
)
from dcls_audio.features.logmel_passes import DEFAULT_FRONT_END, FRONT_END_ENV_VAR  # noqa: E402
from dcls_audio.models import create_model  # noqa: E402
from dcls_audio.training.config import TrainConfig  # noqa: E402
from dcls_audio.training.loggers import build_loggers  # noqa: E402
from dcls_audio.training.module import AudioTaggingModule  # noqa: E402
from dcls_audio.training.optim import build_optimizer  # noqa: E402
from dcls_audio.training.run import AtomicCheckpointIO, StopOnSignal  # noqa: E402
from dcls_audio.training.run import _callbacks as run_callbacks  # noqa: E402
from dcls_audio.training.run_dir import LAST_CHECKPOINT  # noqa: E402
from dcls_core.conv import autotune  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TINY = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))
NUM_CLASSES = 527


def make_hdf5(path: Path, clips: int, clip_samples: int, block: int = 256) -> None:
    """An AudioSet-format file of random int16 clips and ~1% multi-hot targets."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        names, waves, targets = create_layout(h5, clips, NUM_CLASSES, clip_samples)
        for start in range(0, clips, block):
            stop = min(start + block, clips)
            waves[start:stop] = rng.integers(-3000, 3000, size=(stop - start, clip_samples), dtype=np.int16)
        names[:] = [f"Y{i:010d}".encode() for i in range(clips)]
        targets[:] = rng.random((clips, NUM_CLASSES)) < 0.01


def _model_kwargs(name: str, args: argparse.Namespace) -> dict:
    kwargs = {"drop_path_rate": 0.1, **(TINY if args.smoke else {})}
    if "dcls" in name and args.smoke:
        kwargs.update(kernel_count=4, dilated_kernel_size=5)
    return kwargs


def _autocast(device: torch.device, precision: str):
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


# ----------------------------------------------------------------------------- bare step
def bare_step(name: str, mode: str, args: argparse.Namespace, device: torch.device) -> dict:
    """The backbone alone: log-mel batch on the device, BCE, AdamW (fused on CUDA)."""
    fresh(device)
    torch.manual_seed(0)
    net = create_model(name, num_classes=NUM_CLASSES, **_model_kwargs(name, args)).to(device).train()
    opt = build_optimizer(net, "adamw", 1e-4, 0.05, 5.0, fused=device.type == "cuda")
    frames = args.clip_samples // 320 + 1
    spec = torch.randn(args.batch_size, 1, 128, frames, device=device)
    target = (torch.rand(args.batch_size, NUM_CLASSES, device=device) < 0.01).float()
    forward = net if mode == "eager" else torch.compile(net, mode=mode)

    def step() -> None:
        if mode in ("reduce-overhead", "max-autotune"):
            torch.compiler.cudagraph_mark_step_begin()
        with _autocast(device, args.precision):
            logits = forward(spec)
        F.binary_cross_entropy_with_logits(logits.float(), target).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup - args.profile_steps):
        step()
    if args.profile_steps:  # the last warm-up steps, as the loop's
        profile = _python_profiled if args.profiler == "python" else _profiled
        profile(step, args.profile_steps, device, f"bare {name} {mode}")
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "samples_per_s": args.steps * args.batch_size / seconds,
        "step_ms": 1000 * seconds / args.steps,
        "conv_paths": autotune.state_dict(),
    }


def _profiled(step, steps: int, device: torch.device, label: str) -> None:
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    sync(device)
    with torch.profiler.profile(activities=acts) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        wall_ms = 1000 * (time.perf_counter() - start) / steps
    print_profile(prof, steps, wall_ms, label)


def print_python_profile(prof: cProfile.Profile, steps: int, wall_ms: float, label: str, top: int = 25) -> None:
    """Prints the main thread's Python functions with the most own time per step (cProfile's
    overhead included): where host time goes that the operator profile files under no operator."""
    print(f"== {label}: python functions by own time, ms per step ({wall_ms:.1f} ms wall per step, profiled)")
    stats = pstats.Stats(prof)
    # (file, line, name) -> (primitive calls, calls, own time, total time, callers)
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:top]
    for (file, line, function), (_, calls, own, total, _) in rows:
        where = f"{Path(file).name}:{line}({function})" if line else function
        print(f"   {1000 * own / steps:7.2f} own {1000 * total / steps:8.2f} total {calls // steps:6d}x  {where[:90]}")


def _python_profiled(step, steps: int, device: torch.device, label: str) -> None:
    sync(device)
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    for _ in range(steps):
        step()
    sync(device)
    prof.disable()
    print_python_profile(prof, steps, 1000 * (time.perf_counter() - start) / steps, label)


# ----------------------------------------------------------------------------- loop step
class StepTimer(L.Callback):
    """Times optimizer steps ``warmup`` .. ``warmup + steps`` and then stops the run."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.seconds = float("nan")
        self.peak_bytes = 0
        self._t0: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self._t0 is None:
            sync(pl_module.device)
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup + self.steps and self._t0 is not None:
            sync(pl_module.device)
            self.seconds = time.perf_counter() - self._t0
            if pl_module.device.type == "cuda":
                self.peak_bytes = torch.cuda.max_memory_allocated(pl_module.device)
            trainer.should_stop = True


class StepTimeline(L.Callback):
    """Where the timed steps' time goes, from host clocks and CUDA events (light enough to leave
    the timing alone): per step, the host's time between the previous step's end and this step's
    start (the batch: loader, copy, Lightning), in the step, and of that waiting for the
    non-finite guard's copy (the host is ahead of the device then); on CUDA also the device's time
    from the step's start to its end and from its end to the next step's start. Medians in ms."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.first, self.last = warmup, warmup + steps
        self.rows: list[dict] = []
        self._guard_ms = 0.0
        self._start = self._end_host = None
        self._events: list[tuple] = []

    def on_train_start(self, trainer, pl_module) -> None:
        guard = pl_module._guard
        poll = guard.poll

        def timed_poll(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return poll(*args, **kwargs)
            finally:
                self._guard_ms += 1000 * (time.perf_counter() - t0)

        guard.poll = timed_poll

    def _timed(self, trainer) -> bool:
        return self.first <= trainer.global_step < self.last

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._timed(trainer):
            return
        now = time.perf_counter()
        event = None
        if pl_module.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        between = 1000 * (now - self._end_host) if self._end_host is not None else float("nan")
        self._start = (now, event, between)
        self._guard_ms = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is None:
            return
        now = time.perf_counter()
        start, start_event, between = self._start
        end_event = None
        if start_event is not None:
            end_event = torch.cuda.Event(enable_timing=True)
            end_event.record()
        self.rows.append({"between_ms": between, "step_ms": 1000 * (now - start), "guard_wait_ms": self._guard_ms})
        self._events.append((start_event, end_event))
        self._end_host, self._start = now, None

    def summary(self) -> dict:
        """Medians and maxima over the timed steps (device columns on CUDA only)."""
        if not self.rows:
            return {}
        if self._events and self._events[0][0] is not None:
            self._events[-1][1].synchronize()
            for i, (start, end) in enumerate(self._events):
                self.rows[i]["device_step_ms"] = start.elapsed_time(end)
                if i + 1 < len(self._events):
                    self.rows[i + 1]["device_between_ms"] = end.elapsed_time(self._events[i + 1][0])
        out = {}
        for k in sorted({k for r in self.rows for k in r}):
            values = [r.get(k, np.nan) for r in self.rows]
            name = k if k.startswith("device") else f"host_{k}"
            out[name] = float(np.nanmedian(values))
            out[name.replace("_ms", "_max_ms")] = float(np.nanmax(values))  # stalls the median hides
        return out


SYNC_KEYS = (
    "aten::item",
    "aten::_local_scalar_dense",
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "Memcpy DtoH",
)


def print_profile(prof, steps: int, wall_ms: float, label: str) -> dict[str, int]:
    """Prints a profile's top host operators, whether the device's kernels fill the wall time, the top
    kernels per step, and returns the host syncs (name -> count) of the ``steps`` profiled steps."""
    events = prof.key_averages()
    print(f"== {label}: top host operators of {steps} steps")
    print(events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))
    device_events = [e for e in events if is_kernel(e)]
    if device_events:  # is the step bound by the device's work or by the host?
        kernel_ms = sum(e.self_device_time_total for e in device_events) / 1000 / steps
        print(
            f"== {label}: device kernels {kernel_ms:.1f} ms of {wall_ms:.1f} ms wall per step "
            f"({100 * kernel_ms / wall_ms:.0f} % busy); top kernels, ms per step:"
        )
        for e in sorted(device_events, key=lambda e: -e.self_device_time_total)[:20]:
            ms = e.self_device_time_total / 1000 / steps
            print(f"   {ms:7.2f}  {e.count // steps:4d}x  {e.key[:90]}")
    syncs = {e.key: e.count for e in events if any(k in e.key for k in SYNC_KEYS)}
    print(f"== {label}: host syncs in {steps} profiled steps: {syncs}")
    return syncs


class StepProfiler(L.Callback):
    """Profiles ``steps`` training steps from step ``start``; prints the top host and device
    operators and the host syncs (``aten::item``, ``aten::_local_scalar_dense``, synchronisations),
    or with ``python`` the main thread's Python functions by own time (cProfile)."""

    def __init__(self, start: int, steps: int, python: bool = False) -> None:
        self.start, self.steps, self.python = start, steps, python
        self.prof = None
        self.syncs: dict[str, int] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.start and self.prof is None:
            sync(pl_module.device)
            if self.python:
                self.prof = cProfile.Profile()
                self.prof.enable()
            else:
                acts = [torch.profiler.ProfilerActivity.CPU]
                if pl_module.device.type == "cuda":
                    acts.append(torch.profiler.ProfilerActivity.CUDA)
                self.prof = torch.profiler.profile(activities=acts)
                self.prof.__enter__()
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.prof is not None and trainer.global_step == self.start + self.steps:
            sync(pl_module.device)
            wall_ms = 1000 * (time.perf_counter() - self.started) / self.steps
            if self.python:
                self.prof.disable()
                print_python_profile(self.prof, self.steps, wall_ms, "loop")
            else:
                self.prof.__exit__(None, None, None)
                self.syncs = print_profile(self.prof, self.steps, wall_ms, "loop")
            self.prof = None


def run_extras(run_dir: Path) -> dict:
    """The Trainer arguments ``dcls-audio train`` adds to the step with the default config (no
    validation set): its checkpoint, learning-rate, progress-bar and stop callbacks, its loggers
    (TensorBoard and CSV, every ``trainer.log_every_n_steps`` steps) and checkpoint writer."""
    cfg = TrainConfig()
    ckpt_dir = run_dir / "checkpoints"
    callbacks, _ = run_callbacks(cfg, ckpt_dir, has_val=False)
    return dict(
        logger=build_loggers(cfg.trainer.logger, run_dir, "bench"),
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        enable_checkpointing=True,
        enable_progress_bar=cfg.trainer.enable_progress_bar,
        callbacks=[*callbacks, StopOnSignal(ckpt_dir / LAST_CHECKPOINT)],
        plugins=[AtomicCheckpointIO()],
    )


def loop_step(name: str, mode: str, h5: Path, args: argparse.Namespace, device: torch.device, pin: str) -> dict:
    """The real training step: DataModule on ``h5`` -> LightningModule -> lightning.Trainer.

    ``pin``: "loader" (the DataLoader's pin-memory thread, the default) or "main" (no loader
    pinning: the module's batch copier pins on the main thread)."""
    fresh(device)
    torch.manual_seed(0)
    dm = AudioSetDataModule(
        train_files=h5,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        pin_memory=None if pin == "loader" else False,
        seed=0,
        clip_samples=args.clip_samples,
    )
    module = AudioTaggingModule(
        name,
        NUM_CLASSES,
        model_kwargs=_model_kwargs(name, args),
        lr=1e-3,
        warmup_steps=10,
        compile=mode != "eager",
        compile_mode="default" if mode == "eager" else mode,
    )
    if args.smoke:  # a shorter clip: the front end's length follows the file
        module.front_end.clip_samples = args.clip_samples
    timer = StepTimer(args.warmup, args.steps)
    timeline = StepTimeline(args.warmup, args.steps)
    profiler = None
    if args.profile_steps:
        profiler = StepProfiler(args.warmup - args.profile_steps, args.profile_steps, python=args.profiler == "python")
    ours = [timer, timeline, *([profiler] if profiler else [])]
    if args.callbacks == "run":  # what dcls-audio train adds, with the default settings
        extras = run_extras(h5.parent / f"run_{name}_{mode}_{pin}")
    else:
        extras = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[])
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision=args.precision,
        max_steps=args.warmup + args.steps + 1,
        max_epochs=-1,
        enable_model_summary=False,
        limit_val_batches=0,
        **{**extras, "callbacks": [*extras["callbacks"], *ours]},
    )
    trainer.fit(module, datamodule=dm)
    settings = dm.loader_settings()
    row = {
        "samples_per_s": args.steps * args.batch_size / timer.seconds,
        "step_ms": 1000 * timer.seconds / args.steps,
        "peak_memory_gib": timer.peak_bytes / 2**30,
        "num_workers": settings.num_workers,
        "prefetch_factor": settings.prefetch_factor,
        "pin_memory": settings.pin_memory,
        "timeline_ms": timeline.summary(),
        "conv_paths": autotune.state_dict(),
    }
    if profiler is not None:
        row["profiled_syncs"] = profiler.syncs
    dm.teardown()
    return row


# ----------------------------------------------------------------------------- augmentations
def front_end_path(front_end: str):
    """``DCLS_AUDIO_FRONT_END`` set to ``front_end`` for the block (the front end reads it per call)."""
    return env_var(FRONT_END_ENV_VAR, front_end)


def default_front_end() -> str:
    """The path the front end takes here: ``DCLS_AUDIO_FRONT_END`` if set, else the product's default."""
    return os.environ.get(FRONT_END_ENV_VAR, "").strip().lower() or DEFAULT_FRONT_END


def _ms_per_call(fn, reps: int, device: torch.device) -> float:
    for _ in range(3):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return 1000 * (time.perf_counter() - start) / reps


def augment_ms(args: argparse.Namespace, device: torch.device, front_end: str) -> dict:
    """What the augmentations and mixup add to a step of ``--batch-size`` int16 clips, in ms.

    ``in_front_end``: the front end in training mode with this step's draws (host draws and their
    copy included) plus mixup, less the front end in eval mode (no augmentation), both on the
    ``front_end`` path. ``ops_alone``: the draws and the op-by-op augmentations and mixup on their
    own (the reference ops, whatever the path)."""
    front = LogMelFrontEnd(clip_samples=args.clip_samples, seed=0).to(device)
    height, width = front.power_shape()
    batch = args.batch_size
    wave = torch.randint(-3000, 3000, (batch, args.clip_samples), device=device, dtype=torch.int16)
    target = (torch.rand(batch, NUM_CLASSES, device=device) < 0.01).float()
    gen = torch.Generator().manual_seed(0)
    reps = max(10, args.steps)

    def plain() -> None:
        front.eval()(wave)

    def augmented() -> None:
        draws, mix = draws_to(device, front.train().sample_augmentations(batch), sample_mixup_draws(batch, 0.8, gen))
        apply_mixup(front(wave, draws), target, mix, 0.1)  # as the training step does

    power = torch.rand(batch, height, width, device=device)
    logmel = torch.randn(batch, 1, 128, width, device=device)
    floats = wave.float()

    def ops_alone() -> None:
        draws = sample_front_end(batch, args.clip_samples, True, ((0.5, 1.5), 0.5), ((height, width), 0.25), gen)
        draws = draws.to(device)
        mix = sample_mixup_draws(batch, 0.8, gen).to(device)
        apply_time_warp(floats, draws.shift, draws.speed)
        apply_erase(power, draws.erase)
        apply_mixup(logmel, target, mix, 0.1)

    with front_end_path(front_end):
        plain_ms = _ms_per_call(plain, reps, device)
        augmented_ms = _ms_per_call(augmented, reps, device)
    return {
        "front_end_ms": plain_ms,
        "in_front_end": augmented_ms - plain_ms,
        "ops_alone": _ms_per_call(ops_alone, reps, device),
    }


def medians(rows: list[dict]) -> list[dict]:
    """Per (model, mode, pin, front end): the median bare and loop samples/s of its runs, the
    ratio of those medians and the lowest and highest single-run ratio."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["mode"], r["pin"], r["front_end"]), []).append(r)
    out = []
    for (model, mode, pin, path), runs in groups.items():
        bare = float(np.median([r["bare_samples_per_s"] for r in runs]))
        loop = float(np.median([r["loop_samples_per_s"] for r in runs]))
        ratios = [r["ratio"] for r in runs]
        out.append(
            {
                "model": model,
                "mode": mode,
                "pin": pin,
                "front_end": path,
                "runs": len(runs),
                "bare_samples_per_s": bare,
                "loop_samples_per_s": loop,
                "ratio": loop / bare,
                "ratio_low": min(ratios),
                "ratio_high": max(ratios),
            }
        )
    return out


def by_process(rows: list[dict]) -> list[dict]:
    """Per (model, mode, pin, front end): the loop / bare ratio of each process (of the medians of
    its runs) and the lowest and highest."""
    return ratios_by_process(rows, medians, ("model", "mode", "pin", "front_end"), ("ratio",))


def print_by_process(rows: list[dict], processes: int) -> None:
    print(f"loop / bare per process ({processes} processes; process:ratio, each of the medians of its runs)")
    print(f"{'model':<26} {'mode':<16} {'pin':<6} {'front end':<10} {'ratios':<32} {'lowest':>6}")
    for r in rows:
        ratios = format_by_process(r["ratio_by_process"])
        print(
            f"{r['model']:<26} {r['mode']:<16} {r['pin']:<6} {r['front_end']:<10} {ratios:<32} "
            f"{r['ratio_lowest']:>6.2f}"
        )


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["convnext_audio_tiny", "convnext_dcls_audio_tiny"])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["eager", "default"],
        help="eager and/or torch.compile modes (default, reduce-overhead, max-autotune, ...)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60, help="timed steps")
    parser.add_argument("--warmup", type=int, default=15, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--precision", default="bf16-mixed", choices=("32", "bf16-mixed", "16-mixed"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    parser.add_argument(
        "--clips", type=int, default=0, help="clips in the generated HDF5 file (default: enough for every timed run)"
    )
    parser.add_argument("--num-workers", type=int, default=None, help="loader workers (default: automatic)")
    parser.add_argument(
        "--profile-steps", type=int, default=0, help="profile this many of the last warm-up steps of each loop run"
    )
    parser.add_argument(
        "--profiler",
        default="torch",
        choices=("torch", "python"),
        help="with --profile-steps: torch.profiler (operators, kernels, host syncs) or cProfile (the main "
        "thread's Python functions by own time)",
    )
    parser.add_argument(
        "--pin",
        nargs="+",
        default=["loader"],
        choices=("loader", "main"),
        help="where batches are pinned: the loader's pin-memory thread and/or the main thread (one loop run each)",
    )
    parser.add_argument(
        "--front-ends",
        nargs="+",
        default=None,
        choices=("auto", "reference", "fused"),
        help="the front end's path (DCLS_AUDIO_FRONT_END) of the eager loop runs, one run each "
        "(default: the product's default; compiled runs trace the op-by-op chain either way)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of every bare step and loop variant, in turn (medians printed)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="run everything this many times, each in a fresh process, one after another (ratios by process printed)",
    )
    parser.add_argument(
        "--callbacks",
        default="run",
        choices=("run", "none"),
        help="run: the loop with the callbacks, loggers and checkpoint writer of dcls-audio train (default "
        "settings); none: the bare Trainer (runs before NOTES run 18 measured this)",
    )
    parser.add_argument("--tmpdir", default=None, help="where to write the HDF5 file")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny CPU check: tiny models, 2 clips per batch, 4 s clips, 2+2 steps, fp32",
    )
    parser.add_argument("--json", default=None, help="output JSON (default under benchmarks/results/)")
    args = parser.parse_args(argv)
    args.clip_samples = 320000
    if args.smoke:
        args.device, args.precision, args.batch_size = "cpu", "32", 2
        args.steps, args.warmup, args.clip_samples = 2, 2, 128000
        args.modes = [m for m in args.modes if m == "eager"] or ["eager"]
        args.num_workers = 0 if args.num_workers is None else args.num_workers
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.profile_steps > args.warmup:
        parser.error("--profile-steps must not exceed --warmup (the profiled steps are warm-up steps)")
    if args.device == "cpu" and args.precision == "16-mixed":
        parser.error("16-mixed needs CUDA")
    default_name = "bench_train_loop_vs_bare" + ("_smoke" if args.smoke else "") + ".json"
    out = Path(args.json) if args.json else RESULTS / default_name
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.processes > 1:

        def summarize(rows: list[dict]) -> dict:
            return {"medians": medians(rows), "by_process": by_process(rows)}

        def show(report: dict) -> None:
            print_by_process(report["by_process"], report["processes"])

        return main_in_processes(Path(__file__).resolve(), argv, args.processes, out, summarize, show)
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    clips = args.clips or args.batch_size * (args.warmup + args.steps + 2)

    report = {
        "device": device_name,
        "torch": torch.__version__,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "clips": clips,
        "loop_callbacks": args.callbacks,
        "results": [],
    }
    front_ends = args.front_ends or [default_front_end()]
    report["augment_mixup_ms_per_step"] = {path: augment_ms(args, device, path) for path in front_ends}
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        h5 = Path(tmp) / "bench_train.h5"
        make_hdf5(h5, clips, args.clip_samples)
        for name in args.models:
            for mode in args.modes:
                paths = front_ends if mode == "eager" else [default_front_end()]
                for repeat in range(args.repeats):
                    # the bare step and every loop variant once per repeat, in turn: a drift of the
                    # machine over the run touches all of them alike
                    bare = bare_step(name, mode, args, device)
                    for pin, path in ((pin, path) for pin in args.pin for path in paths):
                        with front_end_path(path):
                            loop = loop_step(name, mode, h5, args, device, pin)
                        row = {
                            "model": name,
                            "mode": mode,
                            "pin": pin,
                            "front_end": path,
                            "repeat": repeat,
                            "bare_samples_per_s": bare["samples_per_s"],
                            "loop_samples_per_s": loop["samples_per_s"],
                            "ratio": loop["samples_per_s"] / bare["samples_per_s"],
                            "bare_step_ms": bare["step_ms"],
                            "bare_conv_paths": bare["conv_paths"],
                            "loop_step_ms": loop["step_ms"],
                            **{k: v for k, v in loop.items() if k not in ("samples_per_s", "step_ms")},
                        }
                        report["results"].append(row)
                        report["medians"] = medians(report["results"])
                        out.write_text(json.dumps(report, indent=2) + "\n")  # a run cut short keeps what it has

    print(f"device: {device_name}, torch {torch.__version__}, {args.precision}, batch {args.batch_size}")
    for path, ms in report["augment_mixup_ms_per_step"].items():
        print(
            f"augmentations + mixup, {path} front end: {ms['in_front_end']:.2f} ms per step in the front end "
            f"(front end alone {ms['front_end_ms']:.2f} ms); reference ops alone {ms['ops_alone']:.2f} ms"
        )
    head = f"{'model':<26} {'mode':<16} {'pin':<6} {'front end':<10} {'bare/s':>9} {'loop/s':>9} {'ratio':>6}"
    print(f"{head} {'bare ms':>8} {'loop ms':>8} {'workers':>7} {'run':>4}")
    for r in report["results"]:
        print(
            f"{r['model']:<26} {r['mode']:<16} {r['pin']:<6} {r['front_end']:<10} "
            f"{r['bare_samples_per_s']:>9.1f} {r['loop_samples_per_s']:>9.1f} "
            f"{r['ratio']:>6.2f} {r['bare_step_ms']:>8.1f} {r['loop_step_ms']:>8.1f} {r['num_workers']:>7} "
            f"{r['repeat']:>4}"
        )
    print(
        "loop step timeline (medians, ms): host between steps (batch), host in the step, of which waiting for "
        "the guard's copy (host ahead); device from step start to end, and to the next step's start"
    )
    columns = f"{'between':>8} {'step':>8} {'guard':>8} {'dev step':>9} {'dev gap':>8} {'max betw':>8} {'max step':>8}"
    print(f"{'model':<26} {'mode':<16} {'front end':<10} {'run':>4} {columns}")
    for r in report["results"]:
        t = r.get("timeline_ms", {})
        cols = [t.get(k, float("nan")) for k in ("host_between_ms", "host_step_ms", "host_guard_wait_ms")]
        dev = [t.get(k, float("nan")) for k in ("device_step_ms", "device_between_ms")]
        print(
            f"{r['model']:<26} {r['mode']:<16} {r['front_end']:<10} {r['repeat']:>4} "
            + " ".join(f"{v:>8.2f}" for v in cols)
            + f" {dev[0]:>9.2f} {dev[1]:>8.2f}"
            + "".join(f" {t.get(k, float('nan')):>8.2f}" for k in ("host_between_max_ms", "host_step_max_ms"))
        )
        if r.get("conv_paths") != r.get("bare_conv_paths"):
            differ = {
                k
                for k in {**r["conv_paths"], **r["bare_conv_paths"]}
                if r["conv_paths"].get(k) != r["bare_conv_paths"].get(k)
            }
            print(f"   {len(differ)} convolution call shapes took other paths in the loop than in the bare step")
    if args.repeats > 1:
        print(f"medians of {args.repeats} runs (ratio: of the medians; spread: lowest and highest run's ratio)")
        print(f"{head} {'spread':>11}")
        for m in report["medians"]:
            print(
                f"{m['model']:<26} {m['mode']:<16} {m['pin']:<6} {m['front_end']:<10} "
                f"{m['bare_samples_per_s']:>9.1f} {m['loop_samples_per_s']:>9.1f} {m['ratio']:>6.2f} "
                f"{m['ratio_low']:>5.2f}-{m['ratio_high']:.2f}"
            )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
