"""The ``dcls-audio`` command line: ``dcls-audio train | eval | infer | ...``."""

from __future__ import annotations

import argparse
import os
import sys

from .errors import UsageError

__all__ = ["EXIT_BROKEN_PIPE", "build_parser", "main"]

#: ONNX opsets ``export`` accepts: every registered model exports from 14 (the legacy exporter
#: writes scaled_dot_product_attention, in FastViT, from 14) up to the exporter's newest (20).
MIN_ONNX_OPSET, MAX_ONNX_OPSET = 14, 20


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only where there is a default to show: not on required options,
    flags, or options whose default is None (their help says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.required
            or action.default in (None, False, argparse.SUPPRESS)
            or "%(default)" in text
            or action.nargs == 0  # flags (store_true / store_false / --x/--no-x): the help says it
            or isinstance(action, argparse.BooleanOptionalAction)
        ):
            return text
        return super()._get_help_string(action)


def _add_checkpoint_args(parser: argparse.ArgumentParser, required: bool, labels_help: str) -> None:
    """The checkpoint arguments shared by infer, export and eval."""
    parser.add_argument(
        "-c",
        "--checkpoint",
        required=required,
        metavar="C",
        help="upstream .pth, our Lightning .ckpt, a .safetensors file or a state_dict, or a model name: "
        "<name>.pth in checkpoints/, a released model downloaded on first use (dcls-audio models lists them)",
    )
    parser.add_argument(
        "-m",
        "--model",
        dest="model_name",
        metavar="NAME",
        help="model name, needed only when the checkpoint does not tell",
    )
    parser.add_argument("--use-ema", action="store_true", help="use the checkpoint's EMA weights")
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read checkpoints that need the full unpickler (can run code from the file: trusted files only)",
    )
    parser.add_argument("--labels", dest="class_csv", metavar="CSV", help=labels_help)


def _top_k(value: str) -> int | None:
    """``--top-k``: a count >= 1, or ``all`` (None: every class)."""
    if value.strip().lower() == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or 'all', got {value!r}") from None


def _add_infer_parser(subparsers) -> None:
    """``dcls-audio infer``: tag audio files with a checkpoint (see dcls_audio.tagging_app)."""
    parser = subparsers.add_parser(
        "infer",
        help="tag audio files (any format, sample rate, length) with a checkpoint",
        usage="dcls-audio infer [-h] [options] (--checkpoint C | CHECKPOINT) INPUT [INPUT ...]",
        description=(
            "Tag audio files with the top-k AudioSet classes. Each file is decoded "
            "(wav, flac, ogg, opus, mp3, aiff through libsndfile; m4a, aac, mp4, webm, mkv, wma and other FFmpeg "
            "formats through PyAV), "
            "mixed down to mono and resampled to 32 kHz, then cut into 10 s windows (a shorter file is "
            "zero-padded; the last window ends with the file); file scores are the max (or mean) over windows. "
            "A file that cannot be read gives one error line and a non-zero exit code; the others are still tagged. "
            "Folders and patterns pick up files with these extensions; other files are skipped with a note. "
            "Long files are decoded and tagged window by window in bounded memory."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="audio files, folders (searched recursively) and glob patterns; "
        "without --checkpoint the first argument is the checkpoint",
    )
    _add_checkpoint_args(
        parser,
        required=False,
        labels_help="class CSV (index,mid,display_name); default: names stored in the checkpoint, "
        "else the AudioSet classes",
    )
    parser.add_argument(
        "--hop", dest="hop_s", type=float, default=5.0, metavar="SECONDS", help="step between 10 s window starts"
    )
    parser.add_argument(
        "--aggregate", choices=("max", "mean"), default="max", help="how window scores make the file score"
    )
    parser.add_argument(
        "-k",
        "--top-k",
        type=_top_k,
        default=5,
        metavar="K",
        help="classes listed per file and window; 'all': every class score",
    )
    parser.add_argument(
        "-f", "--format", dest="fmt", choices=("table", "json", "csv"), default="table", help="output format"
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the output here instead of stdout (written whole or not at all; never over an input)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace FILE if it exists (never when it is an input)"
    )
    parser.add_argument(
        "--windows", dest="show_windows", action="store_true", help="table format: also one line per window"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="classifier precision (bf16/fp16 on CUDA only; the front end stays fp32)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="windows per batch (across files)")
    parser.add_argument(
        "--num-workers", type=int, default=None, help="decoding processes (default: 0 on CPU, up to 4 on CUDA)"
    )
    parser.add_argument(
        "--fold",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fold DCLS layers into dense convolutions (same scores); default: on CPU only, "
        "CUDA keeps the faster DCLS depthwise kernel",
    )
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format (GPU)")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: for several files on a terminal)",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw each file's top classes over time (window scores as a heat map; the first 20 files) into this PNG; "
        "needs matplotlib (pip install 'dcls-audio[plot]')",
    )
    parser.add_argument("--plot-classes", type=int, default=10, metavar="N", help="classes drawn per file by --plot")

    def run(args: argparse.Namespace) -> int:
        from .inference.app import run_infer

        checkpoint, inputs = args.checkpoint, list(args.inputs)
        if checkpoint is None:
            if len(inputs) < 2:
                parser.error("give a checkpoint (--checkpoint C, or as the first argument) and at least one INPUT")
            checkpoint, inputs = inputs[0], inputs[1:]
        return run_infer(
            checkpoint,
            inputs,
            model_name=args.model_name,
            use_ema=args.use_ema,
            allow_pickle=args.allow_pickle,
            class_csv=args.class_csv,
            hop_s=args.hop_s,
            aggregate=args.aggregate,
            top_k=args.top_k,
            fmt=args.fmt,
            output=args.output,
            show_windows=args.show_windows,
            device=args.device,
            precision=args.precision,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            fold=args.fold,
            channels_last=args.channels_last,
            progress=args.progress,
            overwrite=args.overwrite,
            plot=args.plot,
            plot_classes=args.plot_classes,
        )

    parser.set_defaults(func=run)


def _add_export_parser(subparsers) -> None:
    """``dcls-audio export``: a checkpoint to ONNX or TorchScript (see dcls_audio.export)."""
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX or TorchScript (DCLS layers folded), or its weights to safetensors",
        description=(
            "Export a checkpoint with its DCLS layers folded into dense convolutions. With the front end "
            "the model takes (B, 320000) float32 waveforms at 32 kHz, without it (B, 1, 128, 1001) log-mels; "
            "it returns (B, C) sigmoid scores (or logits). ONNX computes the STFT as a convolution with a DFT "
            "basis. The exported file is checked against PyTorch on a probe batch."
        ),
        formatter_class=_HelpFormatter,
    )
    _add_checkpoint_args(parser, required=True, labels_help="class CSV stored as the exported model's labels")
    parser.add_argument(
        "-f",
        "--format",
        dest="fmt",
        choices=("onnx", "torchscript", "safetensors"),
        required=True,
        help="onnx / torchscript: a runnable graph (DCLS folded); safetensors: the weights (loadable with -c)",
    )
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write")
    frontend = parser.add_mutually_exclusive_group()
    frontend.add_argument(
        "--with-frontend",
        dest="with_frontend",
        action="store_true",
        default=True,
        help="include the log-mel front end: waveform input",
    )
    frontend.add_argument(
        "--no-frontend", dest="with_frontend", action="store_false", help="leave the front end out: log-mel input"
    )
    parser.add_argument("--logits", action="store_true", help="output logits instead of sigmoid scores")
    parser.add_argument(
        "--opset",
        type=int,
        default=17,
        help=f"ONNX opset ({MIN_ONNX_OPSET} to {MAX_ONNX_OPSET}: every model exports from "
        f"{MIN_ONNX_OPSET}; FastViT's attention needs it)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace FILE if it exists (never when it is the checkpoint)"
    )
    parser.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare the exported model with PyTorch on a probe batch (max |diff| <= 1e-4)",
    )

    def run(args: argparse.Namespace) -> int:
        if args.fmt == "onnx" and not MIN_ONNX_OPSET <= args.opset <= MAX_ONNX_OPSET:
            parser.error(
                f"argument --opset: {args.opset} is outside {MIN_ONNX_OPSET}..{MAX_ONNX_OPSET}, the opsets "
                "the exporter writes for these models"
            )
        from .export.exporter import run_export

        return run_export(
            args.checkpoint,
            args.output,
            args.fmt,
            model_name=args.model_name,
            with_frontend=args.with_frontend,
            logits=args.logits,
            use_ema=args.use_ema,
            allow_pickle=args.allow_pickle,
            class_csv=args.class_csv,
            opset=args.opset,
            check=args.check,
            overwrite=args.overwrite,
        )

    parser.set_defaults(func=run)


def _add_pack_parser(subparsers) -> None:
    """``dcls-audio pack``: audio folder + AudioSet segments CSV -> PANNs HDF5 (see dcls_audio.data.pack)."""
    parser = subparsers.add_parser(
        "pack",
        help="pack a folder of audio files and a segments CSV into a training HDF5 file",
        description=(
            "Pack audio files (wav, flac, ogg, mp3, m4a, aac, mp4, webm, ...; only their first 10 s are decoded) "
            "into the PANNs HDF5 layout used for training: each file is "
            "mixed down to mono, resampled to 32 kHz, padded/cut to 10 s and stored as int16. Labels come from a "
            'CSV in AudioSet segments format (YTID, start_seconds, end_seconds, "mid,mid"; # starts a comment); '
            "a file matches a YTID when its name is <YTID>, Y<YTID>, or either followed by _<start>[_<end>]. "
            "Unreadable files and files without labels are listed and skipped; a read error of the system "
            "(too many open files, a disk error) is tried again and, if it lasts, stops the pack. --codec "
            "flac|opus stores each clip's encoded bytes instead (readers detect the codec from the file); --from "
            "converts an existing "
            "PANNs file; --shards writes litdata shards. Clips are encoded in parts by -j processes: a run stopped "
            "part-way continues where it stopped when started again; one pack at a time writes an OUTPUT (a "
            "lock file next to it). The output is written under a temporary name and renamed when complete."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("audio_dir", metavar="AUDIO_DIR", nargs="?", help="folder searched recursively for audio files")
    parser.add_argument("labels_csv", metavar="LABELS_CSV", nargs="?", help="AudioSet segments CSV")
    parser.add_argument("output", metavar="OUTPUT", help="HDF5 file to write (with --shards: a folder)")
    parser.add_argument(
        "--class-csv",
        metavar="CSV",
        help="class list (index,mid,display_name) giving the target columns; default: AudioSet's 527",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("-j", "--workers", type=int, default=0, help="encoding processes (0: encode in this process)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    parser.add_argument(
        "--codec",
        choices=("pcm", "flac", "opus"),
        default="pcm",
        help="how clips are stored: pcm = int16 (the PANNs layout), flac = lossless bytes, "
        "opus = lossy Ogg Opus bytes at --bitrate (about 1/7.6 of pcm's size at the default)",
    )
    # equal to clip_codecs.OPUS_BITRATE (tested); a literal keeps torch out of building the parser
    parser.add_argument("--bitrate", type=int, default=72000, help="Opus bit rate in bit/s (mono, VBR)")
    parser.add_argument(
        "--from",
        dest="from_panns",
        metavar="PANNS.h5",
        help="convert this PANNs-layout HDF5 file (give OUTPUT only, no AUDIO_DIR or LABELS_CSV)",
    )
    parser.add_argument(
        "--shards",
        action="store_true",
        help="write OUTPUT as a folder of litdata shards (for streaming; --data.*_files takes the folder)",
    )

    def run(args: argparse.Namespace) -> int:
        from .data.pack import run_pack

        if args.from_panns is not None and args.audio_dir is not None:
            parser.error("--from converts a PANNs file: give OUTPUT only, not AUDIO_DIR and LABELS_CSV")
        if args.from_panns is None and args.labels_csv is None:
            parser.error("give AUDIO_DIR LABELS_CSV OUTPUT, or --from PANNS.h5 OUTPUT")
        if args.workers < 0:
            parser.error(f"-j/--workers must be >= 0, got {args.workers}")
        return run_pack(
            args.audio_dir,
            args.labels_csv,
            args.output,
            class_csv=args.class_csv,
            overwrite=args.overwrite,
            num_workers=args.workers,
            progress=args.progress,
            codec=args.codec,
            bitrate=args.bitrate,
            shards=args.shards,
            from_panns=args.from_panns,
        )

    parser.set_defaults(func=run)


def _add_models_parser(subparsers) -> None:
    """``dcls-audio models``: the registered backbones, released files and parameter counts."""
    parser = subparsers.add_parser(
        "models",
        help="list the backbones (names for --model), their released checkpoints and parameter counts",
        description=(
            "List the six backbones under their upstream DCLS-Audio names with the released checkpoint of each. "
            "With --params each model is built and its parameter count (shared DCLS positions counted once) is "
            "shown next to the upstream count and the count with a 1000-class head (the paper's table)."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--params", action="store_true", help="build each model and count its parameters")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def run(args: argparse.Namespace) -> int:
        import json

        from .models import describe_models, format_parameter_table, parameter_table
        from .models.released import cache_dir, local_released_file

        rows = parameter_table() if args.params else describe_models()
        if not args.params:
            for row in rows:
                local = local_released_file(row["model"]) if row["released"] else None
                row["local"] = str(local) if local else None
        if args.json:
            print(json.dumps(rows, indent=2))
        elif args.params:
            print(format_parameter_table(rows))
        else:
            table = [("model", "description", "local file", "released file")]
            for row in rows:
                local = row["local"] or ("not downloaded" if row["released"] else "-")
                table.append((row["model"], row["description"], local, row["released"] or "(no released file)"))
            widths = [max(len(r[i]) for r in table) for i in range(3)]
            for r in table:
                print("  ".join(f"{cell:<{w}}" for cell, w in zip(r, widths)) + "  " + r[3])
            print(f"Released files are downloaded on first use (-c NAME) into {cache_dir()} ($DCLS_AUDIO_CHECKPOINTS)")
        return 0

    parser.set_defaults(func=run)


def _config_metavar(type_name: str) -> str:
    """How a config field's value is shown in ``train --help``: choices as they are typed
    (``{uniform,balanced}``), plain types in capitals (``INT``), unions as ``VALUE``."""
    if "{" in type_name:
        return type_name.replace("list[", "").rstrip("]") + ",..." if type_name.startswith("list[") else type_name
    return type_name.upper() if " " not in type_name else "VALUE"


def _add_train_parser(subparsers) -> None:
    """``dcls-audio train``: train a backbone from a YAML config (see dcls_audio.training)."""
    from .training.config import DEFAULT_CONFIG, config_keys, config_names

    parser = subparsers.add_parser(
        "train",
        help="train a backbone (default: a small DCLS model on the built-in demo data)",
        usage="dcls-audio train [-h] [--config YAML] [--resume CKPT] [--print_config] [--section.key VALUE ...]",
        description=(
            f"Train from a YAML config (a path, or a shipped name: {', '.join(config_names())}; "
            f"default: {DEFAULT_CONFIG}). Every config field can be set on the command line as --section.key VALUE "
            "(values are YAML: 3, 1.0e-3, null, [1, 1, 3, 1]). Runs go to <run.output_dir>/<run.name>/version_N with "
            "checkpoints (last.ckpt, best by val/mAP), TensorBoard and CSV logs; starting again continues the newest "
            "unfinished run. Ctrl-C or SIGTERM stops after the current step and saves last.ckpt. Multi-GPU: "
            "--trainer.devices 4 --trainer.strategy ddp."
        ),
        allow_abbrev=False,
    )
    parser.add_argument("-c", "--config", metavar="YAML", help="config file or shipped config name")
    parser.add_argument("--resume", metavar="CKPT", help="continue from this checkpoint")
    parser.add_argument(
        "--print_config",
        "--print-config",
        dest="print_config",
        action="store_true",
        help="print the resolved config (YAML) and exit",
    )
    fields = parser.add_argument_group("config fields")
    for key, (type_name, help_text) in config_keys().items():
        fields.add_argument(
            f"--{key}",
            dest=key,
            metavar=_config_metavar(type_name),
            default=argparse.SUPPRESS,
            help=help_text if "{" in type_name else f"{help_text} [{type_name}]",  # choices show in the metavar
        )

    def run(args: argparse.Namespace) -> int:
        from .training.config import ConfigError, check_machine, dump_config, load_config

        overrides = {k: v for k, v in vars(args).items() if "." in k}
        try:
            cfg = load_config(args.config, overrides)
        except ConfigError as err:
            print(f"dcls-audio train: error: {err}", file=sys.stderr)
            return 2
        if args.print_config:
            print(dump_config(cfg), end="")
            return 0
        try:
            check_machine(cfg)
            from .training.loggers import check_logger_packages

            check_logger_packages(cfg.trainer.logger)
        except ConfigError as err:
            print(f"dcls-audio train: error: {err}", file=sys.stderr)
            return 2
        from .training.run import TrainingStopped, print_summary, train

        try:
            result = train(cfg, resume=args.resume)
        except TrainingStopped as err:
            print(f"dcls-audio train: {err}", file=sys.stderr)
            return 1
        except (UsageError, OSError) as err:  # config, data, checkpoint or output-directory problems
            print(f"dcls-audio train: error: {err}", file=sys.stderr)
            return 2
        print_summary(result)
        return 130 if result.interrupted else 0

    parser.set_defaults(func=run)


def _devices(value: str) -> int | list[int] | str:
    """``--devices``: a count (``2``, ``-1`` for all), device indices (``0,1``) or ``auto``, as
    the trainer's ``devices`` takes them."""
    value = value.strip()
    if value == "auto":
        return value
    if "," in value:
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if parts and all(p.isdigit() for p in parts):
            return [int(p) for p in parts]
    elif value == "-1" or (value.isdigit() and int(value) >= 1):
        return int(value)
    raise argparse.ArgumentTypeError(f"expected a device count (-1: all), indices like 0,1 or auto, got {value!r}")


def _add_eval_parser(subparsers) -> None:
    """``dcls-audio eval``: AudioSet metrics of a checkpoint on HDF5 files (see dcls_audio.evaluation)."""
    parser = subparsers.add_parser(
        "eval",
        help="mAP, mAUC and d-prime of a checkpoint on AudioSet-format HDF5 files",
        description=(
            "Score every clip of the HDF5 file(s) with a checkpoint (ours, a released upstream .pth or a "
            "state_dict) and print mAP, mAUC, d-prime and the numbers of clips and scored classes (classes "
            "without positive or negative clips are left out of the means and counted). With --output-dir, "
            "writes metrics.json, per_class.csv, predictions.npz and the per-class AP chart per_class_ap.png "
            "(with matplotlib) there. Exact on any number of devices."
        ),
        formatter_class=_HelpFormatter,
    )
    _add_checkpoint_args(parser, required=True, labels_help="class CSV (index,mid,display_name); default: AudioSet's")
    parser.add_argument("-d", "--data", required=True, nargs="+", metavar="F.h5", help="HDF5 file(s) to score")
    parser.add_argument(
        "-o",
        "--output-dir",
        metavar="D",
        help="write metrics.json, per_class.csv, predictions.npz, per_class_ap.png into this folder (other "
        "files there are left alone; these are replaced together, and only with --overwrite)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace metrics.json, per_class.csv, predictions.npz and per_class_ap.png in D if they exist",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="clips per device and batch")
    parser.add_argument("--num-workers", type=int, default=2, help="data loader workers per device")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu, auto")
    parser.add_argument("--devices", default=1, type=_devices, help="device count, list (0,1) or auto")
    parser.add_argument("--strategy", default="auto", help="auto, ddp, ...")
    parser.add_argument(
        "--precision", default="32", choices=("32", "bf16-mixed", "16-mixed"), help="numeric precision of the backbone"
    )

    def run(args: argparse.Namespace) -> int:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        from .evaluation.evaluate import NonFiniteScoresError, evaluate, format_metrics

        try:
            result, out, is_main = evaluate(
                args.checkpoint,
                args.data,
                args.output_dir,
                model_name=args.model_name,
                use_ema=args.use_ema,
                allow_pickle=args.allow_pickle,
                class_csv=args.class_csv,
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                accelerator=args.accelerator,
                devices=args.devices,
                strategy=args.strategy,
                precision=args.precision,
                overwrite=args.overwrite,
                note=lambda text: print(f"dcls-audio eval: note: {text}", file=sys.stderr),
            )
        except NonFiniteScoresError as err:  # the run happened, its result is unusable
            print(f"dcls-audio eval: error: {err}", file=sys.stderr)
            return 1
        except (UsageError, OSError) as err:  # checkpoint, data or output-directory problems
            print(f"dcls-audio eval: error: {err}", file=sys.stderr)
            return 2
        except (ImportError, MisconfigurationException) as err:  # an accelerator or strategy this machine lacks
            print(f"dcls-audio eval: error: --accelerator/--strategy: {err}", file=sys.stderr)
            return 2
        if is_main:
            print(format_metrics(result))
            if out is not None:
                from .evaluation.evaluate import CHART_FILE, OUTPUT_FILES, chart_available

                names = [n for n in OUTPUT_FILES if n != CHART_FILE or chart_available()]
                print("Wrote " + ", ".join(str(out / n) for n in names))
                if not chart_available():
                    from .plots import PLOT_EXTRA_HINT

                    print(
                        f"dcls-audio eval: note: no {CHART_FILE} without matplotlib: {PLOT_EXTRA_HINT}", file=sys.stderr
                    )
        return 0

    parser.set_defaults(func=run)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dcls-audio")
    except PackageNotFoundError:  # a checkout that was never installed
        return "(not installed)"


def _unknown_config_key(argv: list[str]) -> str | None:
    """``train``'s error line for the first ``--section.key`` on ``argv`` that is no config
    field (with a did-you-mean), or None. argparse would print only its usage line."""
    from .training.config import config_keys

    keys = config_keys()
    for arg in argv:
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            continue
        key = arg[2:].split("=", 1)[0]
        if key in keys:
            continue
        import difflib

        close = difflib.get_close_matches(key, list(keys), n=1, cutoff=0.6)
        hint = f" (did you mean --{close[0]}?)" if close else " (dcls-audio train --help lists the keys)"
        return f"dcls-audio train: error: unknown config key --{key}{hint}"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcls-audio",
        description="Audio tagging with Dilated Convolution with Learnable Spacings (DCLS).",
    )
    parser.add_argument("--version", action="version", version=f"dcls-audio {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_infer_parser(subparsers)
    _add_export_parser(subparsers)
    _add_pack_parser(subparsers)
    _add_models_parser(subparsers)
    _add_train_parser(subparsers)
    _add_eval_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code.

    A closed output pipe (``dcls-audio ... | head -1``) ends the command quietly with 141
    (128 + SIGPIPE, as a shell reports a command killed by it); Ctrl-C that reaches here
    (a command's own handling aside, e.g. training's first Ctrl-C) ends it with one line
    and 130, without a traceback.
    """
    command = "dcls-audio"
    try:
        args_list = sys.argv[1:] if argv is None else list(argv)
        if args_list[:1] == ["train"]:
            problem = _unknown_config_key(args_list[1:])
            if problem:
                print(problem, file=sys.stderr)
                return 2
        parser = build_parser()
        args = parser.parse_args(args_list)  # --help prints here
        if args.command is None:
            parser.print_help()
            code = 0
        else:
            command = f"dcls-audio {args.command}"
            if args.command in ("train", "eval"):
                from .console import quiet_lightning

                quiet_lightning()
            code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(f"\n{command}: interrupted", file=sys.stderr)
        return 130


EXIT_BROKEN_PIPE = 141


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush of the buffered output
    raises nothing (Python's documented way to handle SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real stdout (captured): nothing to flush
        pass


if __name__ == "__main__":
    sys.exit(main())
