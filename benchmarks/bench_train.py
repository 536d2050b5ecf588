"""Training throughput: samples/s and peak memory of real training steps.

Each model is trained by the project's own LightningModule and a Lightning Trainer, exactly as
``dcls-audio train`` does (GPU log-mel front end with its augmentations, batch mixup, BCE,
AdamW with the recipe's parameter groups and schedule), on synthetic AudioSet-format batches
(int16 waveforms of 320000 samples, 527-class multi-hot targets) held in host memory.
After ``--warmup`` steps the next ``--steps`` optimizer steps are timed (device synchronised
at both ends). Prints a table and writes JSON.

    python benchmarks/bench_train.py                                     # DCLS and 7x7 ConvNeXt-T
    python benchmarks/bench_train.py --channels-last --compile --steps 300
    python benchmarks/bench_train.py --device cpu --batch-size 2 --steps 3 --warmup 1 --tiny
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcls_audio.lit_module import AudioTaggingModule  # noqa: E402

TINY = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))


class SyntheticClips(Dataset):
    """``length`` items drawn from a pool of random int16 clips with random multi-hot targets."""

    def __init__(self, length: int, pool: int = 128, num_classes: int = 527, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.waveform = (torch.randn(pool, 320000, generator=g) * 3000).to(torch.int16)
        self.target = (torch.rand(pool, num_classes, generator=g) < 0.01).float()
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k = i % len(self.waveform)
        return {"waveform": self.waveform[k], "target": self.target[k], "index": torch.tensor(i)}


class StepTimer(L.Callback):
    """Times optimizer steps ``warmup`` .. ``warmup + steps``; the peak memory is that of the
    whole run (with ``reduce-overhead`` the CUDA graphs' memory pool is allocated during the
    warm-up steps and stays allocated)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.seconds = float("nan")
        self.peak_bytes = 0

    def _sync(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and not hasattr(self, "_t0"):
            self._sync(pl_module.device)
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup + self.steps:
            self._sync(pl_module.device)
            self.seconds = time.perf_counter() - self._t0
            if pl_module.device.type == "cuda":
                self.peak_bytes = torch.cuda.max_memory_allocated(pl_module.device)
            trainer.should_stop = True


class StepProfiler(L.Callback):
    """Profiles ``steps`` training steps from step ``start`` with ``torch.profiler`` and prints
    the operators with the most host time, the most device time, and the host syncs."""

    def __init__(self, start: int, steps: int) -> None:
        self.start, self.steps = start, steps
        self.prof = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.start and self.prof is None:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if pl_module.device.type == "cuda":
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=acts)
            self.prof.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.prof is not None and trainer.global_step == self.start + self.steps:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize()
            self.prof.__exit__(None, None, None)
            events = self.prof.key_averages()
            print(f"== profile of {self.steps} steps: top host time")
            print(events.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60))
            if pl_module.device.type == "cuda":
                print(f"== top device time")
                print(events.table(sort_by="self_device_time_total", row_limit=20, max_name_column_width=60))
            syncs = {e.key: e.count for e in events if "Synchronize" in e.key or "DtoH" in e.key or e.key == "aten::item"}
            print(f"== host syncs and device-to-host copies: {syncs}")
            self.prof = None


def run_one(name: str, args: argparse.Namespace) -> dict:
    if args.device == "cuda":  # each model's peak is its own
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    kwargs = {"drop_path_rate": 0.1, **(TINY if args.tiny else {})}
    if "dcls" in name and args.tiny:
        kwargs.update(kernel_count=8, dilated_kernel_size=9)
    torch.manual_seed(0)
    module = AudioTaggingModule(
        name, 527, model_kwargs=kwargs, lr=1e-3, warmup_steps=10, ema_decay=0.9999 if args.ema else None,
        channels_last=args.channels_last, compile=args.compile, compile_mode=args.compile_mode,
    )
    if args.no_loss_check:  # what the per-step host check of the loss costs
        module.on_before_optimizer_step = lambda optimizer: module._step_losses.clear()
    total = args.warmup + args.steps
    loader = DataLoader(SyntheticClips(total * args.batch_size), batch_size=args.batch_size,
                        num_workers=args.num_workers, pin_memory=args.device != "cpu", drop_last=True)
    timer = StepTimer(args.warmup, args.steps)
    profiler = [StepProfiler(args.warmup - args.profile_steps, args.profile_steps)] if args.profile_steps else []
    callbacks = [timer, *profiler]
    trainer = L.Trainer(
        accelerator=args.device, devices=1, precision=args.precision, max_steps=total + 1,
        logger=False, enable_checkpointing=False, enable_progress_bar=args.progress_bar, enable_model_summary=False,
        limit_val_batches=0, callbacks=callbacks,
    )
    trainer.fit(module, train_dataloaders=loader)
    samples_per_s = args.steps * args.batch_size / timer.seconds
    return {
        "model": name, "precision": args.precision, "batch_size": args.batch_size,
        "channels_last": args.channels_last, "compile": args.compile,
        "compile_mode": args.compile_mode, "ema": args.ema, "loss_check": not args.no_loss_check,
        "progress_bar": args.progress_bar,
        "timed_steps": args.steps, "seconds": timer.seconds, "samples_per_s": samples_per_s,
        "step_ms": 1000 * timer.seconds / args.steps, "peak_memory_gib": timer.peak_bytes / 2**30,
        "parameters": sum(p.numel() for p in module.net.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["convnext_dcls_audio_tiny", "convnext_audio_tiny"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--precision", default="bf16-mixed", choices=("32", "bf16-mixed", "16-mixed"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", default="default",
                        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                        help="torch.compile mode (implies --compile unless default)")
    parser.add_argument("--no-loss-check", action="store_true",
                        help="skip the per-step non-finite loss check (measures what it costs)")
    parser.add_argument("--progress-bar", action="store_true", help="show Lightning's progress bar, as training does")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="profile the last this many warm-up steps (before the timed ones) and print "
                        "the top host and device operators")
    parser.add_argument("--ema", action="store_true", help="also update an EMA copy each step")
    parser.add_argument("--tiny", action="store_true", help="tiny architecture (a CPU smoke run)")
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--json", default="bench_train.json", help="where to write the results")
    args = parser.parse_args()
    args.compile = args.compile or args.compile_mode != "default"
    if args.profile_steps > args.warmup:
        parser.error("--profile-steps must not exceed --warmup (the profiled steps are warm-up steps)")
    if args.device == "cpu" and args.precision == "16-mixed":
        parser.error("16-mixed needs CUDA")
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:  # the JSON is rewritten after every model: a run cut short keeps what it measured
        rows.append(run_one(name, args))
        out.write_text(json.dumps({"device": device, "torch": torch.__version__, "results": rows}, indent=2) + "\n")
    header = f"{'model':<28} {'precision':<11} {'batch':>5} {'cl':>3} {'cmp':>4} {'samples/s':>10} {'step ms':>8} {'peak GiB':>9}"
    print(f"device: {device}, torch {torch.__version__}")
    print(header)
    for r in rows:
        print(f"{r['model']:<28} {r['precision']:<11} {r['batch_size']:>5} {'y' if r['channels_last'] else 'n':>3} "
              f"{'y' if r['compile'] else 'n':>4} {r['samples_per_s']:>10.1f} {r['step_ms']:>8.1f} "
              f"{r['peak_memory_gib']:>9.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
