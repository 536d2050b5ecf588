"""Does Opus storage change what a model learns? The demo recipe trained on PCM and on Opus clips.

Converts the demo train and eval files (``data/demo``) with ``pack --from`` to ``--codec``
(default opus), trains the demo recipe (``dcls-audio train``, the default config) once on each
format with the same seed, then evaluates both final checkpoints (``last.ckpt``) on both eval
files with ``dcls-audio eval``. Prints the 2 x 2 table of mAP (trained on / evaluated on) and the
differences, and writes them as JSON (--out). Takes about 2 x 6 minutes on 2 CPU cores.

    .venv/bin/python benchmarks/compare_codec_training.py --out runs/codec_compare/result.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dcls_audio.data.demo import ensure_demo_data  # noqa: E402
from dcls_audio.data.pack import pack_panns  # noqa: E402


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "dcls_audio", *args], cwd=ROOT, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec", default="opus", choices=("flac", "opus"))
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "codec_compare"))
    parser.add_argument("--epochs", type=int, default=None, help="override the demo recipe's epochs")
    parser.add_argument("-j", "--workers", type=int, default=2, help="processes for the conversion")
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    train_pcm, eval_pcm = ensure_demo_data()
    files = {"pcm": (train_pcm, eval_pcm)}
    converted = []
    for source in (train_pcm, eval_pcm):
        out = work / f"{source.stem}_{args.codec}.h5"
        if not out.exists():
            pack_panns(source, out, args.codec, num_workers=args.workers, progress=False)
        converted.append(out)
    files[args.codec] = tuple(converted)
    sizes = {fmt: Path(pair[0]).stat().st_size + Path(pair[1]).stat().st_size for fmt, pair in files.items()}

    checkpoints = {}
    for fmt, (train, val) in files.items():
        run = work / "runs" / f"train_{fmt}" / "version_0" / "checkpoints" / "last.ckpt"
        if not run.exists():
            extra = ["--trainer.max_epochs", str(args.epochs)] if args.epochs else []
            _cli(
                "train",
                "--data.train_files",
                f"[{train}]",
                "--data.val_files",
                f"[{val}]",
                "--run.output_dir",
                str(work / "runs"),
                "--run.name",
                f"train_{fmt}",
                *extra,
            )
        checkpoints[fmt] = run

    table = {}
    for trained, ckpt in checkpoints.items():
        for evaluated, (_, val) in files.items():
            out = work / "eval" / f"{trained}_on_{evaluated}"
            _cli("eval", "-c", str(ckpt), "-d", str(val), "-o", str(out), "--overwrite", "--num-workers", "1")
            table[f"{trained}_on_{evaluated}"] = json.loads((out / "metrics.json").read_text())["mAP"]
    codec = args.codec
    result = {
        "codec": codec,
        "bytes": sizes,
        "mAP": table,
        "diff_trained_and_evaluated": table[f"{codec}_on_{codec}"] - table["pcm_on_pcm"],
        "diff_pcm_model_on_codec_eval": table[f"pcm_on_{codec}"] - table["pcm_on_pcm"],
    }
    print(f"{'trained on':>10} | {'eval pcm':>9} | {'eval ' + codec:>9}")
    for trained in checkpoints:
        print(f"{trained:>10} | {table[f'{trained}_on_pcm']:>9.4f} | {table[f'{trained}_on_{codec}']:>9.4f}")
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
