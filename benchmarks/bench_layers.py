"""Forward+backward time and peak memory of DCLS layers: ``dcls`` 0.1.1, our reference, our
fast paths, and plain depthwise convolutions, on the ConvNeXt-T audio stage shapes and the
1-D / 3-D / dense cases.

    python benchmarks/bench_layers.py --out bench.json                 # everything
    python benchmarks/bench_layers.py --cases stages --dtypes fp32     # a part

Each row: median ms of one forward + backward (gradients of the input and every parameter,
``torch.autograd.grad``; CUDA events through ``triton.testing.do_bench``) and the peak MiB
allocated above the inputs during one such step. ``bf16`` runs under ``torch.autocast``.
Rows of the fast path say which convolution the dispatcher chose; unless ``--no-variants``,
rows with the other fast convolutions forced follow (``fast-fft``, ``fast-direct``,
``fast-refconstruct``, ``fast-unfused``, FFT chunk counts). Runs on CPU too (slowly, with
wall-clock times; use ``--cases`` to keep it short).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import env_var  # noqa: E402

import dcls_core  # noqa: E402
from dcls_core import dispatch  # noqa: E402

logging.getLogger().setLevel(logging.ERROR)  # dcls 0.1.1's Dcls2d logs on every call

STAGES = [(96, 64, 62), (192, 32, 31), (384, 16, 15), (768, 8, 7)]  # ConvNeXt-T audio, batch 64
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


# -- measurement ---------------------------------------------------------------------------
def _median_ms(fn: Callable[[], None], device: torch.device, warmup_ms: float, rep_ms: float) -> float:
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    fn()
    times = []
    budget = time.perf_counter() + rep_ms / 1e3
    while time.perf_counter() < budget or len(times) < 3:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _peak_mib(fn: Callable[[], None], device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def fwd_bwd_step(
    module: nn.Module, x: torch.Tensor, dtype: Optional[torch.dtype], grad: Optional[torch.Tensor] = None
) -> Callable[[], None]:
    """One forward + backward of ``module`` on ``x`` (input and parameter gradients), with the
    output gradient ``grad`` (default: random, contiguous)."""
    params = [p for p in module.parameters() if p.requires_grad]
    device_type = x.device.type
    if grad is None:
        with torch.no_grad(), torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out_shape = module(x).shape
        grad = torch.randn(out_shape, device=x.device, dtype=dtype or x.dtype)

    def step() -> None:
        with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = module(x)
        torch.autograd.grad(out, [x, *params], grad.to(out.dtype))

    return step


def measure(
    step: Callable[[], None],
    device: torch.device,
    context: Callable = contextlib.nullcontext,
    warmup_ms: float = 25,
    rep_ms: float = 150,
) -> dict:
    with context():
        step()  # compile / plan
        if device.type == "cuda":
            torch.cuda.synchronize()
        peak = _peak_mib(step, device)
        ms = _median_ms(step, device, warmup_ms, rep_ms)
    return {"ms": round(ms, 4), "peak_mib": None if peak is None else round(peak, 1)}


def _chosen_conv(module: nn.Module, x: torch.Tensor, dtype) -> str:
    plain = module.learned_dims == module.conv_dims and not module.dense_dims
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        if plain and dispatch.select_fused(
            x,
            module.weight,
            module.P,
            module.SIG,
            module.dilated_kernel_size,
            module.stride,
            module.padding,
            module.padding_mode,
            module.version,
        ):
            return "fused triton+fft"
        kernel = module.construct_kernel()
        name, _ = dispatch.select_conv(x, kernel, module.stride, module.padding, module.groups, module.padding_mode)
    construct, _ = dispatch.select_construct(
        module.weight, module.P, module.SIG, module.dilated_kernel_size, module.version
    )
    return f"{construct}+{name}"


def _direct_applies(module: nn.Module, x: torch.Tensor) -> bool:
    from dcls_core.conv import direct

    with torch.no_grad():
        shape = module.construct_kernel().shape
    return direct.supports(x, shape, module.stride, module.groups)


# -- cases ---------------------------------------------------------------------------------
def _reference_package():
    try:
        import DCLS.construct.modules as ref  # type: ignore
    except Exception:  # pragma: no cover - optional
        return None
    return ref


def _pair(name: str, cin: int, cout: int, kwargs: dict, device: torch.device, seed: int = 0):
    """``(ours, theirs)`` with equal parameters; ``theirs`` is None without ``dcls``."""
    ref = _reference_package()
    torch.manual_seed(seed)
    ours = getattr(dcls_core, name)(cin, cout, **kwargs).to(device)
    with torch.no_grad():
        ours.weight.normal_(0, 0.02)
    theirs = None
    if ref is not None and hasattr(ref, name):
        extra = {"use_implicit_gemm": False} if name == "Dcls2d" else {}
        theirs = getattr(ref, name)(cin, cout, **kwargs, **extra).to(device)
        theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


@contextlib.contextmanager
def _fft_on(chunks: int):
    """The FFT convolution, whatever the dispatcher would choose, with the batch in ``chunks``."""
    from dcls_core.conv.fft import conv as fft_conv

    saved = fft_conv.FORCE_CHUNKS
    fft_conv.FORCE_CHUNKS = chunks
    try:
        with dispatch.forced(conv="fft"):
            yield
    finally:
        fft_conv.FORCE_CHUNKS = saved


def _layer_rows(
    case: str,
    name: str,
    cin: int,
    cout: int,
    kwargs: dict,
    x_shape: tuple,
    device,
    dtypes,
    variants: bool,
    extra_rows=None,
    fft_chunk_variants: bool = False,
) -> list[dict]:
    rows = []
    ours, theirs = _pair(name, cin, cout, kwargs, device)
    x = torch.randn(x_shape, device=device, requires_grad=True)
    for dname in dtypes:
        dtype = DTYPES[dname]
        base = {"case": case, "dtype": dname}

        def add(
            impl: str, module: nn.Module, context=contextlib.nullcontext, note: str = "", dtype=dtype, base=base
        ) -> None:
            try:
                r = measure(fwd_bwd_step(module, x, dtype), device, context)
            except Exception as exc:  # keep the run going; the row says what broke
                r = {"ms": None, "peak_mib": None, "error": f"{type(exc).__name__}: {exc}"[:300]}
            rows.append({**base, "impl": impl, "note": note, **r})
            _print_row(rows[-1])

        if theirs is not None:
            add("dcls-0.1.1", theirs)
        add("ours-reference", ours, lambda: env_var("DCLS_IMPL", "reference"))
        add("ours-fast", ours, lambda: env_var("DCLS_IMPL", None), note=_chosen_conv(ours, x, dtype))
        if variants:
            chosen = _chosen_conv(ours, x, dtype)
            if not chosen.endswith("fft"):
                add("fast-fft", ours, lambda: dispatch.forced(conv="fft"))
            if not chosen.endswith("direct") and _direct_applies(ours, x):
                add("fast-direct", ours, lambda: dispatch.forced(conv="direct"))
            add("fast-refconstruct", ours, lambda: dispatch.forced(construct="reference"))
            if chosen.startswith("fused"):
                add("fast-unfused", ours, lambda: dispatch.forced(fused=False), note="construction and FFT apart")
            if fft_chunk_variants:
                for chunks in (1, 2, 4, 8, 16):
                    add(
                        f"fft-{chunks}-chunks", ours, lambda c=chunks: _fft_on(c), note=f"FFT, batch in {chunks} chunks"
                    )
        for impl, module in (extra_rows or {}).items():
            add(impl, module)
    return rows


def stage_cases(device, dtypes, versions, variants: bool, batch: int) -> list[dict]:
    rows = []
    for C, H, W in STAGES:
        plain = {
            "conv7x7": nn.Conv2d(C, C, 7, padding=3, groups=C).to(device),
            "conv23x23": nn.Conv2d(C, C, 23, padding=11, groups=C).to(device),
        }
        for i, version in enumerate(versions):
            kwargs = dict(kernel_count=26, dilated_kernel_size=23, padding=11, groups=C, version=version)
            rows += _layer_rows(
                f"stage C={C}@{H}x{W} {version}",
                "Dcls2d",
                C,
                C,
                kwargs,
                (batch, C, H, W),
                device,
                dtypes,
                variants,
                extra_rows=plain if i == 0 else None,
                fft_chunk_variants=i == 0,
            )
    return rows


def other_cases(device, dtypes, which: set, variants: bool) -> list[dict]:
    rows = []
    if "1d" in which:  # learnable delays: groups=1, one element per (out, in) pair, long sequences
        for K in (25, 250):
            rows += _layer_rows(
                f"Dcls1d 256->256 K={K} L=2000 N=32",
                "Dcls1d",
                256,
                256,
                dict(kernel_count=1, dilated_kernel_size=K, padding=K // 2, version="gauss"),
                (32, 256, 2000),
                device,
                dtypes,
                variants,
            )
    if "3d" in which:
        rows += _layer_rows(
            "Dcls3d 32->32 k=7 count=8 16x32x32 N=8",
            "Dcls3d",
            32,
            32,
            dict(kernel_count=8, dilated_kernel_size=7, padding=3, version="gauss"),
            (8, 32, 16, 32, 32),
            device,
            dtypes,
            variants,
        )
        rows += _layer_rows(
            "Dcls3d dw C=64 k=11 count=16 16x32x32 N=8",
            "Dcls3d",
            64,
            64,
            dict(kernel_count=16, dilated_kernel_size=11, padding=5, groups=64, version="gauss"),
            (8, 64, 16, 32, 32),
            device,
            dtypes,
            variants,
        )
    if "3_1d" in which:
        rows += _layer_rows(
            "Dcls3_1d 32->32 dense 3x3 k=23 16x32x64 N=8",
            "Dcls3_1d",
            32,
            32,
            dict(kernel_count=4, dense_kernel_size=3, dilated_kernel_size=23, padding=(1, 1, 11), version="gauss"),
            (8, 32, 16, 32, 64),
            device,
            dtypes,
            variants,
        )
    if "2dk1d" in which:
        rows += _layer_rows(
            "Dcls2dK1d dw C=96 (1,23) 64x62 N=64",
            "Dcls2dK1d",
            96,
            96,
            dict(kernel_count=8, dilated_kernel_size=23, padding=(0, 11), groups=96, flat_dim=1, version="gauss"),
            (64, 96, 64, 62),
            device,
            dtypes,
            variants,
        )
        rows += _layer_rows(
            "Dcls2dK1d 128->128 (23,1) 32x64 N=16",
            "Dcls2dK1d",
            128,
            128,
            dict(kernel_count=4, dilated_kernel_size=23, padding=(11, 0), flat_dim=0, version="v1"),
            (16, 128, 32, 64),
            device,
            dtypes,
            variants,
        )
    if "dense" in which:
        rows += _layer_rows(
            "Dcls2d dense 256->256 k=23 count=26 32x32 N=8",
            "Dcls2d",
            256,
            256,
            dict(kernel_count=26, dilated_kernel_size=23, padding=11, version="gauss"),
            (8, 256, 32, 32),
            device,
            dtypes,
            variants,
        )
        rows += construction_memory(device)
    return rows


def construction_memory(device) -> list[dict]:
    """Kernel construction alone (forward + backward) for the dense 256x256, 26-element layer."""
    rows = []
    ours, theirs = _pair(
        "Dcls2d", 256, 256, dict(kernel_count=26, dilated_kernel_size=23, padding=11, version="gauss"), device
    )
    dense_mib = 256 * 256 * 23 * 23 * 4 / 2**20

    def build_step(build):
        def step():
            k = build()
            params = [p for p in (ours.weight, ours.P, ours.SIG) if p is not None]
            torch.autograd.grad(k, params, torch.ones_like(k))

        return step

    def their_build():
        return theirs.DCK(theirs.weight, theirs.P, theirs.SIG)

    variants = {
        "ours-reference": lambda: env_var("DCLS_IMPL", "reference"),
        "ours-fast": lambda: env_var("DCLS_IMPL", None),
    }
    for impl, ctx in variants.items():
        try:
            r = measure(build_step(ours.construct_kernel), device, ctx)
        except Exception as exc:
            r = {"ms": None, "peak_mib": None, "error": f"{type(exc).__name__}: {exc}"[:300]}
        rows.append(
            {
                "case": "construct 256x256x26 -> 23x23",
                "dtype": "fp32",
                "impl": impl,
                "note": f"dense kernel {dense_mib:.1f} MiB",
                **r,
            }
        )
        _print_row(rows[-1])
    if theirs is not None:
        try:

            def step():
                k = their_build()
                torch.autograd.grad(k, [theirs.weight, theirs.P, theirs.SIG], torch.ones_like(k))

            r = measure(step, device, warmup_ms=5, rep_ms=20)
        except Exception as exc:
            r = {"ms": None, "peak_mib": None, "error": f"{type(exc).__name__}: {exc}"[:300]}
        rows.append(
            {
                "case": "construct 256x256x26 -> 23x23",
                "dtype": "fp32",
                "impl": "dcls-0.1.1",
                "note": f"dense kernel {dense_mib:.1f} MiB",
                **r,
            }
        )
        _print_row(rows[-1])
    return rows


# -- output --------------------------------------------------------------------------------
def _fmt(v, width, digits=3):
    return f"{'-' if v is None else (f'{v:.{digits}f}' if isinstance(v, float) else v):>{width}}"


_PARTIAL: dict = {"path": None, "rows": []}


def _print_row(r: dict) -> None:
    if _PARTIAL["path"] is not None:  # keep what was measured if the run is cut short
        _PARTIAL["rows"].append(r)
        _PARTIAL["path"].write_text(json.dumps({"partial": True, "rows": _PARTIAL["rows"]}, indent=1))
    err = f"  ERROR {r['error']}" if r.get("error") else ""
    print(
        f"{r['case'][:46]:<46} {r['dtype']:>5} {r['impl'][:22]:<22} {_fmt(r.get('ms'), 9)} ms "
        f"{_fmt(r.get('peak_mib'), 9, 1)} MiB  {r.get('note', '')}{err}",
        flush=True,
    )


def stage_summary(rows: list[dict]) -> list[dict]:
    """Sums over the four stage shapes per (dtype, version, impl) for every impl measured at all
    four, with the target ratios and each impl's largest stage peak."""
    stage_rows = [r for r in rows if r["case"].startswith("stage ")]
    versions = list(dict.fromkeys(r["case"].rsplit(" ", 1)[1] for r in stage_rows))
    impls = list(dict.fromkeys(r["impl"] for r in stage_rows))
    out = []
    for dname in DTYPES:
        for version in versions:
            sums: dict[str, float] = {}
            peaks: dict[str, float] = {}
            for impl in impls:  # plain convolutions are measured once, under the first version
                mine = [
                    r
                    for r in stage_rows
                    if r["dtype"] == dname
                    and r["impl"] == impl
                    and (impl.startswith("conv") or r["case"].endswith(f" {version}"))
                ]
                ms = [
                    next(
                        (
                            r["ms"]
                            for r in mine
                            if r["case"].startswith(f"stage C={C}@{H}x{W} ") and r.get("ms") is not None
                        ),
                        None,
                    )
                    for C, H, W in STAGES
                ]
                if None not in ms:
                    sums[impl] = sum(ms)
                mib = [r["peak_mib"] for r in mine if r.get("peak_mib") is not None]
                if mib and not impl.startswith("conv"):
                    peaks[impl] = max(mib)
            if "ours-fast" not in sums:
                continue
            entry = {"dtype": dname, "version": version, **{k: round(v, 3) for k, v in sums.items()}}
            if "dcls-0.1.1" in sums:
                entry["speedup_vs_0.1.1"] = round(sums["dcls-0.1.1"] / sums["ours-fast"], 2)
            if "conv7x7" in sums:
                entry["ratio_to_conv7x7"] = round(sums["ours-fast"] / sums["conv7x7"], 2)
            entry.update({f"max_peak_mib[{impl}]": v for impl, v in peaks.items()})
            out.append(entry)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument(
        "--cases", default="stages,1d,3d,3_1d,2dk1d,dense", help="comma list of: stages, 1d, 3d, 3_1d, 2dk1d, dense"
    )
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma list of: fp32, bf16")
    parser.add_argument("--versions", default="gauss,v0", help="stage versions")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--no-variants", action="store_true", help="skip the forced-FFT / reference-construction / chunking rows"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtypes = [d for d in args.dtypes.split(",") if d]
    for d in dtypes:
        if d not in DTYPES:
            parser.error(f"--dtypes: unknown dtype {d!r} (choose from {list(DTYPES)})")
    cases = set(c for c in args.cases.split(",") if c)
    unknown = cases - {"stages", "1d", "3d", "3_1d", "2dk1d", "dense"}
    if unknown:
        parser.error(f"--cases: unknown case(s) {sorted(unknown)}")
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        _PARTIAL["path"] = args.out
    print(f"# {info}")
    rows = []
    if "stages" in cases:
        rows += stage_cases(
            device, dtypes, [v for v in args.versions.split(",") if v], not args.no_variants, args.batch
        )
    rows += other_cases(device, dtypes, cases, not args.no_variants)
    summary = stage_summary(rows)
    if summary:
        print(f"\n# ConvNeXt-T stage sums (ms, fwd+bwd, batch {args.batch})")
        for s in summary:
            print("  " + ", ".join(f"{k}={v}" for k, v in s.items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"info": info, "rows": rows, "stage_sums": summary}, indent=1))
        print(f"# wrote {args.out}")


if __name__ == "__main__":
    main()
