"""One rank of a two-process CPU (gloo) training run under torchrun, for ``test_ddp_stop.py``.

Run as ``torchrun --nproc-per-node 2 ddp_harness.py WORKDIR TRAIN_H5 VAL_H5 NAME [FAULT_RANK [STEP]]``.
Each rank appends to ``WORKDIR/<NAME>/rank<R>.jsonl`` one line per (re)start, one per trained
batch (global step and clip indices), the count of ``torch.distributed.broadcast`` calls made
between the start and the end of training batches, the batch count of each validation (not the
sanity check), and how the run ended. With ``FAULT_RANK`` that rank sends itself SIGTERM inside
training step ``STEP`` (default 6; after its backward, before the update).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from resume_harness import overrides  # noqa: E402

from dcls_audio.training.config import load_config  # noqa: E402
from dcls_audio.training.run import train  # noqa: E402


class Record(L.Callback):
    """Per-rank log of trained batches and of device broadcasts inside training batches."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.in_batch = False
        self.broadcasts = 0
        real = dist.broadcast

        def counted(*args, **kwargs):
            if self.in_batch:
                self.broadcasts += 1
            return real(*args, **kwargs)

        dist.broadcast = counted

    def write(self, item: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(item) + "\n")

    def on_train_start(self, trainer, pl_module) -> None:
        self.write({"start": trainer.global_step})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.in_batch = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.write({"step": trainer.global_step, "epoch": trainer.current_epoch, "index": batch["index"].tolist()})

    def on_train_end(self, trainer, pl_module) -> None:
        self.in_batch = False

    def on_validation_start(self, trainer, pl_module) -> None:
        self.val_batches = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.val_batches += 1

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.write({"validation": trainer.current_epoch, "batches": self.val_batches})


class Fault(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.step - 1:
            signal.raise_signal(signal.SIGTERM)


def main(argv: list[str]) -> int:
    workdir, train_h5, val_h5, name, *fault = argv
    workdir = Path(workdir)
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    out = workdir / name
    out.mkdir(parents=True, exist_ok=True)
    record = Record(out / f"rank{rank}.jsonl")
    callbacks: list[L.Callback] = [record]
    if fault and int(fault[0]) == rank:
        callbacks.append(Fault(int(fault[1]) if len(fault) > 1 else 6))
    values = overrides(workdir, train_h5, val_h5, name)
    values.update({"trainer.devices": "2", "trainer.strategy": "ddp", "data.batch_size": "1"})
    result = train(load_config("demo", values), callbacks=callbacks)
    record.write(
        {
            "interrupted": result.interrupted,
            "step": result.global_step,
            "run_dir": str(result.run_dir),
            "broadcasts_in_batches": record.broadcasts,
            "agent_store": os.environ.get("TORCHELASTIC_USE_AGENT_STORE"),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
