"""Fault injection for ``test_resume_faults.py``: tiny CPU training runs, each in its own process,
stopped (SIGTERM) or killed (SIGKILL) by itself at a chosen point, then resumed.

Run as ``python resume_harness.py WORKDIR TRAIN_H5 VAL_H5 SCENARIO ...``. The torch and Lightning
imports are paid once: every training run is a ``fork`` of this process. Each run appends one
JSON line per trained batch (the global step after it and the clip indices of the batch) to
``WORKDIR/<scenario>/batches.jsonl`` and one line per (re)start (the step it started from).
``SCENARIO`` is ``whole`` (uninterrupted) or ``<point>-<signal>`` with ``signal`` ``term`` or
``kill`` and ``point`` one of :data:`POINTS`; a faulted run is resumed by starting the same run
again (auto-resume), as a user would; ``resumeold-kill`` is then resumed from the copy of
epoch 0's ``last.ckpt`` with ``--resume`` (a later ``last.ckpt`` exists).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import lightning as L
import torch

from dcls_audio.training.config import load_config
from dcls_audio.training.run import train

STEPS_PER_EPOCH, EPOCHS = 4, 3
#: where a run stops itself; steps count from 1 (``global_step`` after the step)
POINTS = {
    "step": "inside training step 6 (after its backward, before the update)",
    "validation": "inside epoch 1's validation (after its first batch)",
    "save": "inside the every-3-steps checkpoint save of step 6 (file written, not yet renamed)",
    "epochsave": "inside epoch 1's end-of-epoch checkpoint save (file written, not yet renamed)",
    "epochend": "right after epoch 0 ended and its checkpoint was written (epoch 1's first batch)",
    "resumeold": "in step 7; resumed from a copy of epoch 0's last.ckpt with --resume",
}


def overrides(workdir: Path, train_h5: str, val_h5: str, name: str) -> dict[str, str]:
    return {
        "model.name": "convnext_audio_tiny",
        "model.depths": "[1, 1, 1, 1]",
        "model.dims": "[8, 16, 32, 64]",
        "model.drop_path_rate": "0.2",  # drop-path, augmentations and mixup on: their draws must resume too
        "model.kernel_count": "null",
        "model.dilated_kernel_size": "null",
        "augment.front_end": "true",
        "augment.mixup_alpha": "0.8",
        "data.train_files": train_h5,
        "data.val_files": val_h5,
        "data.batch_size": "2",
        "data.num_workers": "0",
        "data.pin_memory": "false",
        "trainer.accelerator": "cpu",
        "trainer.devices": "1",
        "trainer.precision": "32",
        "trainer.enable_progress_bar": "false",
        "trainer.max_epochs": str(EPOCHS),
        "trainer.num_sanity_val_steps": "0",
        "trainer.log_every_n_steps": "1",
        "run.output_dir": str(workdir / "runs"),
        "run.name": name,
        "run.checkpoint_every_n_steps": "3",
    }


def _die(signum: int) -> None:
    if signum == signal.SIGKILL:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    signal.raise_signal(signum)


class Record(L.Callback):
    """Appends the step and clip indices of every trained batch to ``log``."""

    def __init__(self, log: Path) -> None:
        self.path = log

    def _write(self, item: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(item) + "\n")

    def on_train_start(self, trainer, pl_module) -> None:
        self._write({"start": trainer.global_step, "epoch": trainer.current_epoch})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._write({"step": trainer.global_step, "epoch": trainer.current_epoch, "index": batch["index"].tolist()})


class Fault(L.Callback):
    """Stops or kills this process at ``point`` (see :data:`POINTS`)."""

    def __init__(self, point: str, signum: int) -> None:
        self.point, self.signum = point, signum
        self.fired = False

    def _fire(self) -> None:
        if not self.fired:
            self.fired = True
            _die(self.signum)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.point == "step" and trainer.global_step == 5:
            self._fire()
        if self.point == "resumeold" and trainer.global_step == 6:
            self._fire()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.point == "validation" and trainer.current_epoch == 1 and batch_idx == 0:
            self._fire()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.point == "epochend" and trainer.current_epoch == 1 and batch_idx == 0:
            self._fire()
        if self.point == "resumeold" and trainer.current_epoch == 1 and batch_idx == 0:
            ckpt_dir = Path(trainer.checkpoint_callback.dirpath)
            shutil.copyfile(ckpt_dir / "last.ckpt", ckpt_dir / "epoch0.ckpt")

    def install_save_hook(self, trainer_ref: list) -> None:
        """Fires inside ``os.replace`` of a checkpoint's temporary file (written, not yet renamed)."""
        real = os.replace

        def replace(src, dst, *args, **kwargs):
            trainer = trainer_ref[0] if trainer_ref else None
            if str(dst).endswith("last.ckpt") and trainer is not None:
                step, epoch = trainer.global_step, trainer.current_epoch
                at_step = self.point == "save" and step == 6
                at_epoch_end = self.point == "epochsave" and epoch == 1 and step == 2 * STEPS_PER_EPOCH
                if at_step or at_epoch_end:
                    if self.signum == signal.SIGKILL:
                        self._fire()
                    elif not self.fired:
                        self.fired = True
                        signal.raise_signal(signal.SIGTERM)  # handled after the save
            return real(src, dst, *args, **kwargs)

        os.replace = replace


class _Grab(L.Callback):
    def __init__(self, ref: list) -> None:
        self.ref = ref

    def setup(self, trainer, pl_module, stage) -> None:
        self.ref.append(trainer)


def _run(workdir: Path, train_h5: str, val_h5: str, name: str, fault: Fault | None, resume: str | None) -> int:
    """One training run in a forked child; returns its exit status (negative: killed by a signal)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            torch.set_num_threads(1)
            out = workdir / name
            out.mkdir(parents=True, exist_ok=True)
            callbacks: list[L.Callback] = [Record(out / "batches.jsonl")]
            if fault is not None:
                ref: list = []
                fault.install_save_hook(ref)
                callbacks += [_Grab(ref), fault]
            cfg = load_config("demo", overrides(workdir, train_h5, val_h5, name))
            result = train(cfg, resume=resume, callbacks=callbacks)
            with (out / "results.jsonl").open("a") as fh:
                fh.write(json.dumps({"interrupted": result.interrupted, "step": result.global_step}) + "\n")
            code = 0
        except BaseException as err:  # noqa: BLE001 - reported to the parent through the exit status
            print(f"{name}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def scenario(workdir: Path, train_h5: str, val_h5: str, name: str) -> dict:
    if name == "whole":
        return {"codes": [_run(workdir, train_h5, val_h5, name, None, None)]}
    point, how = name.rsplit("-", 1)
    signum = {"term": signal.SIGTERM, "kill": signal.SIGKILL}[how]
    codes = [_run(workdir, train_h5, val_h5, name, Fault(point, signum), None)]
    resume = None
    if point == "resumeold":
        # the user kept a copy of epoch 0's last.ckpt; the run went on and was killed in epoch 1
        ckpt_dir = workdir / "runs" / name / "version_0" / "checkpoints"
        resume = str(ckpt_dir / "epoch0.ckpt")
    codes.append(_run(workdir, train_h5, val_h5, name, None, resume))
    return {"codes": codes}


def main(argv: list[str]) -> int:
    workdir, train_h5, val_h5, *names = argv
    workdir = Path(workdir)
    report = {name: scenario(workdir, train_h5, val_h5, name) for name in names}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main(sys.argv[1:]))
