"""Host operations of one DCLS layer step on the GPU code paths, counted on any machine.

An eager DCLS model on a fast GPU waits for the host: every tensor operation the layer issues
(views and allocations included) and every Triton launch costs host time on each step. This
counts them for one depthwise 23x23 layer (26 elements, ``gauss``), forward and backward,
per convolution path, with the fused construction:

- on CUDA: the real run;
- on the CPU (``--device cpu``): the same code paths, with the Triton programs run by Triton's
  interpreter in a child process (``TRITON_INTERPRET=1``) and the paths' CUDA checks lifted;
  the counts are those of a CUDA run (the programs' own work is not counted either way).

Operations are counted at the dispatcher (``TorchDispatchMode``: what reaches a kernel, autograd's
gradient accumulation included), launches by program name. Prints a table, writes JSON.

    python benchmarks/count_layer_ops.py --device cpu --json count_layer_ops.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("direct", "matrix", "fft")
# (channels, height, width) of the ConvNeXt-T stage each path serves
SHAPES = {"direct": (8, 32, 31), "matrix": (8, 16, 15), "fft": (8, 32, 31)}


def _emulate_cuda_paths() -> None:
    """Let the CUDA-only paths run on CPU tensors (their programs under the interpreter)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import triton_interpreter  # noqa: F401 - adapts the interpreter to this numpy

    from dcls_core import dispatch
    from dcls_core.construction import fused
    from dcls_core.conv import direct, fft
    from dcls_core.conv.direct import conv as direct_conv
    from dcls_core.conv.fft import conv as fft_conv
    from dcls_core.conv.fft import passes

    def direct_supports(input, kernel_shape, stride, groups):
        k = kernel_shape
        return len(k) == 4 and k[1] == 1 and k[0] == groups == input.shape[-3] and all(s == 1 for s in stride)

    direct.supports = direct_conv.supports = direct_supports
    fft.supports = fft_conv.supports = lambda *args: True
    passes._triton_ok = lambda t: not passes.FORCE_TORCH
    dispatch.select_construct = lambda *args: ("triton", fused.construct_kernel_fused)


def count(path: str, device: str) -> dict:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    import dcls_core
    from dcls_core import dispatch

    launches: collections.Counter = collections.Counter()
    inside = [0]
    if device == "cpu":
        import triton.runtime.interpreter as interpreter

        real_run = interpreter.InterpretedFunction.run

        def run(self, *args, **kwargs):
            launches[self.fn.__name__] += 1
            inside[0] += 1
            try:
                return real_run(self, *args, **kwargs)
            finally:
                inside[0] -= 1

        interpreter.InterpretedFunction.run = run
    else:
        from triton.runtime.jit import JITFunction

        real_run = JITFunction.run

        def run(self, *args, **kwargs):
            launches[self.fn.__name__] += 1
            return real_run(self, *args, **kwargs)

        JITFunction.run = run

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: collections.Counter = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not inside[0]:  # not the interpreter's own tensor work
                self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    c, h, w = SHAPES[path]
    layer = dcls_core.Dcls2d(c, c, kernel_count=26, dilated_kernel_size=23, padding=11, groups=c).to(device)
    x = torch.randn(2, c, h, w, device=device).to(memory_format=torch.channels_last).requires_grad_()
    row: dict = {"path": path, "input": [2, c, h, w]}
    with dispatch.forced(construct="triton", conv=path):
        layer(x).sum().backward()  # compiles the programs
        for phase in ("forward", "backward"):
            launches.clear()
            with Ops() as mode:
                if phase == "forward":
                    y = layer(x)
                else:
                    y.backward(torch.ones_like(y))
            row[phase] = {"ops": sum(mode.ops.values()), "launches": sum(launches.values()), "by_op": dict(mode.ops)}
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--json", default=None, help="output JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.device == "cpu" and not args.child:  # the interpreter must be on before Triton loads
        env = dict(os.environ, TRITON_INTERPRET="1")
        cmd = [sys.executable, __file__, "--child", "--device", "cpu", "--paths", *args.paths]
        cmd += ["--json", args.json] if args.json else []
        sys.exit(subprocess.run(cmd, env=env).returncode)
    if args.device == "cpu":
        _emulate_cuda_paths()
    rows = [count(path, args.device) for path in args.paths]
    print(f"{'path':8} {'input':>16} {'fwd ops':>8} {'fwd launches':>13} {'bwd ops':>8} {'bwd launches':>13}")
    for r in rows:
        f, b = r["forward"], r["backward"]
        shape = "x".join(map(str, r["input"]))
        print(f"{r['path']:8} {shape:>16} {f['ops']:8d} {f['launches']:13d} {b['ops']:8d} {b['launches']:13d}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "results": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
