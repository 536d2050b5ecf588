"""Where a training step's time goes: front end, backbone forward+backward, optimizer step.

Runs the project's LightningModule pieces by hand on one GPU batch (no Trainer, no loader),
times each phase with CUDA events and prints the top CUDA kernels of a profiled step.

    python benchmarks/profile_train_step.py --model convnext_dcls_audio_tiny --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcls_audio.training.module import AudioTaggingModule  # noqa: E402


def _time(fn, iters: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["convnext_dcls_audio_tiny", "convnext_audio_tiny"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--json", default="profile_train_step.json")
    args = parser.parse_args()
    results = []
    for name in args.models:
        module = (
            AudioTaggingModule(name, 527, model_kwargs={"drop_path_rate": 0.1}, channels_last=args.channels_last)
            .cuda()
            .train()
        )
        opt = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=True)
        wave = (torch.randn(args.batch_size, 320000, device="cuda") * 3000).to(torch.int16)
        target = (torch.rand(args.batch_size, 527, device="cuda") < 0.01).float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            spec = module._spectrogram(wave)

        def front(module=module, wave=wave):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                module._spectrogram(wave)

        def fwd_bwd(module=module, opt=opt, spec=spec, target=target):
            opt.zero_grad(set_to_none=True)  # as a training step: backward writes fresh gradients
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(module.net(spec.detach()), target)
            loss.backward()

        def step(opt=opt):
            opt.step()
            opt.zero_grad(set_to_none=False)

        row = {"model": name, "front_end_ms": _time(front, args.iters), "fwd_bwd_ms": _time(fwd_bwd, args.iters)}
        fwd_bwd()
        row["optimizer_ms"] = _time(step, args.iters)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            fwd_bwd()
            torch.cuda.synchronize()
        print(f"== {name}: top CUDA kernels of one forward+backward")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=70))
        results.append(row)
        print(json.dumps(row))
        del module, opt
        torch.cuda.empty_cache()
    Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
