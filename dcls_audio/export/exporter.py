"""Export a tagging model to ONNX or TorchScript, with DCLS layers folded into dense convs.

The exported graph maps either waveforms ``(B, 320000)`` float32 at 32 kHz (front end
included) or normalised log-mels ``(B, 1, 128, 1001)`` (front end left out) to ``(B, C)``
sigmoid probabilities (or logits). The batch dimension is dynamic.

Front end: TorchScript traces the project's :class:`~dcls_audio.data.LogMelFrontEnd`
itself (``torch.stft``); ONNX cannot export a complex STFT, so the ONNX graph uses
:class:`~dcls_audio.features.onnx_logmel.ConvLogMel`, the same computation with the STFT written
as a convolution with a DFT basis. Both files carry a JSON description (model name, input,
output, class labels): ONNX in ``metadata_props["dcls_audio"]``, TorchScript as the extra
file ``dcls_audio.json``.
"""

from __future__ import annotations

import copy
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TextIO

import torch
from torch import nn

from ..data import CLIP_SAMPLES, SAMPLE_RATE
from ..errors import UsageError
from ..features import LogMelFrontEnd
from ..features.onnx_logmel import ConvLogMel
from ..models import dcls_layers, fold_dcls
from ..models.safetensors_io import save_safetensors
from ..outputs import atomic_output, check_output_path

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_FORMATS",
    "GRAPH_FORMATS",
    "ExportReport",
    "ExportedTagger",
    "LOGMEL_SHAPE",
    "METADATA_KEY",
    "ONNX_EXTRA_MODULES",
    "build_exported_tagger",
    "example_input",
    "export_metadata",
    "export_model",
    "missing_module_message",
    "read_metadata",
    "reference_scores",
    "run_export",
    "run_exported",
]

EXPORT_FORMATS = ("onnx", "torchscript", "safetensors")
GRAPH_FORMATS = ("onnx", "torchscript")  # a runnable graph; safetensors holds the weights only
METADATA_KEY = "dcls_audio"
LOGMEL_SHAPE = (1, 128, 1001)
DEFAULT_OPSET = 17
ONNX_EXTRA_MODULES = ("onnx", "onnxruntime")  # what pip install 'dcls-audio[onnx]' brings


class ExportedTagger(nn.Module):
    """``frontend`` (optional) -> ``model`` -> sigmoid (unless ``logits``): the exported graph."""

    def __init__(self, model: nn.Module, frontend: nn.Module | None = None, logits: bool = False) -> None:
        super().__init__()
        self.frontend = frontend
        self.model = model
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frontend is not None:
            x = self.frontend(x)
        out = self.model(x)
        return out if self.logits else torch.sigmoid(out)


def build_exported_tagger(
    model: nn.Module, fmt: str, with_frontend: bool = True, logits: bool = False
) -> ExportedTagger:
    """A folded, eval-mode, CPU fp32 copy of ``model`` wrapped with the front end ``fmt`` needs."""
    if fmt not in GRAPH_FORMATS:
        raise UsageError(f"export format must be one of {GRAPH_FORMATS}, got {fmt!r}")
    model = copy.deepcopy(model).eval().float().cpu()
    fold_dcls(model)
    frontend = None
    if with_frontend:
        frontend = LogMelFrontEnd(augment=False).eval()
        if fmt == "onnx":
            frontend = ConvLogMel(frontend)
    return ExportedTagger(model, frontend, logits).eval()


def example_input(with_frontend: bool, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A probe batch: noise waveforms (B, 320000) or log-mels (B, 1, 128, 1001)."""
    g = torch.Generator().manual_seed(seed)
    if with_frontend:
        return 0.1 * torch.randn(batch, CLIP_SAMPLES, generator=g)
    return torch.randn(batch, *LOGMEL_SHAPE, generator=g)


def export_metadata(
    model_name: str | None, with_frontend: bool, logits: bool, labels: Sequence[str] | None, fmt: str
) -> dict[str, Any]:
    """The JSON description stored in the exported file."""
    if with_frontend:
        inp = {
            "name": "waveform",
            "shape": ["batch", CLIP_SAMPLES],
            "dtype": "float32",
            "sample_rate": SAMPLE_RATE,
            "description": "mono waveform in [-1, 1] at 32 kHz, 10 s",
        }
    else:
        inp = {
            "name": "logmel",
            "shape": ["batch", *LOGMEL_SHAPE],
            "dtype": "float32",
            "description": "normalised log-mel (LogMelFrontEnd output)",
        }
    out = {
        "name": "logits" if logits else "scores",
        "shape": ["batch", len(labels) if labels else None],
        "description": "logits" if logits else "sigmoid probabilities",
    }
    return {"model": model_name, "format": fmt, "input": inp, "output": out, "labels": list(labels or [])}


def _export_onnx(module: ExportedTagger, example: torch.Tensor, path: Path, meta: dict[str, Any], opset: int) -> None:
    in_name, out_name = meta["input"]["name"], meta["output"]["name"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and constant-folding notes
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[in_name],
            output_names=[out_name],
            dynamic_axes={in_name: {0: "batch"}, out_name: {0: "batch"}},
        )
    try:
        import onnx
    except ImportError:  # the file is complete; only the metadata is left out
        warnings.warn(
            "onnx is not installed: the exported file carries no metadata (pip install 'dcls-audio[onnx]')",
            stacklevel=2,
        )
        return
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.save(proto, str(path))


def _export_torchscript(module: ExportedTagger, example: torch.Tensor, path: Path, meta: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (example,), check_trace=False)
        traced = torch.jit.freeze(traced.eval())
        torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(meta)})


def _load_torchscript(path: str | Path, extra_files: dict[str, Any] | None = None) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what this format is
        return torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files or {})


@dataclass
class ExportReport:
    """Where the model went and how far its scores are from PyTorch's on a probe batch
    (``max_abs_diff`` is None when the check was not run)."""

    path: Path
    format: str
    with_frontend: bool
    folded_layers: int
    max_abs_diff: float | None = None
    check_skipped: str | None = None


def run_exported(path: str | Path, fmt: str, x: torch.Tensor) -> torch.Tensor:
    """Run an exported file on ``x`` (onnxruntime for ONNX, torch.jit for TorchScript)."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    module = _load_torchscript(path)
    with torch.inference_mode():
        return module(x)


def reference_scores(model: nn.Module, x: torch.Tensor, with_frontend: bool, logits: bool = False) -> torch.Tensor:
    """What PyTorch gives for ``x``: LogMelFrontEnd (if waveforms) + ``model`` (unfolded), CPU fp32."""
    model = copy.deepcopy(model).eval().float().cpu()
    with torch.inference_mode():
        if with_frontend:
            x = LogMelFrontEnd(augment=False).eval()(x)
        out = model(x)
    return out if logits else out.sigmoid()


def export_model(
    model: nn.Module,
    output: str | Path,
    fmt: str,
    with_frontend: bool = True,
    logits: bool = False,
    labels: Sequence[str] | None = None,
    model_name: str | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
) -> ExportReport:
    """Export ``model`` (log-mel -> logits) to ``output`` in ``fmt`` (onnx, torchscript).

    DCLS layers are folded into dense convolutions in a copy (``model`` is left as it is).
    With ``check``, the exported file is run on a probe batch of noise and compared with
    PyTorch (:func:`reference_scores`); the largest absolute difference is reported.
    """
    output = Path(output)
    if not output.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {output.parent}")
    module = build_exported_tagger(model, fmt, with_frontend, logits)
    meta = export_metadata(model_name or getattr(model, "model_name", None), with_frontend, logits, labels, fmt)
    example = example_input(with_frontend)
    with atomic_output(output) as tmp:  # an interrupted export leaves no half-written file
        if fmt == "onnx":
            _export_onnx(module, example, tmp, meta, opset)
        else:
            _export_torchscript(module, example, tmp, meta)
    report = ExportReport(output, fmt, with_frontend, folded_layers=len(list(dcls_layers(model))))
    if check:
        probe = example_input(with_frontend, batch=3, seed=1)  # another batch size than traced
        try:
            got = run_exported(output, fmt, probe)
        except ImportError as exc:
            report.check_skipped = f"{exc.name or exc} is not installed"
            return report
        want = reference_scores(model, probe, with_frontend, logits)
        report.max_abs_diff = float((got.float() - want).abs().max())
    return report


def read_metadata(path: str | Path, fmt: str) -> dict[str, Any]:
    """The JSON description stored in an exported file."""
    if fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props[METADATA_KEY])
    extra = {f"{METADATA_KEY}.json": ""}
    _load_torchscript(path, extra)
    return json.loads(extra[f"{METADATA_KEY}.json"])


def missing_module_message(exc: ImportError, fmt: str) -> str:
    """The error line for a failed import: the onnx extra's install hint when one of its modules
    is missing, else the import error itself (it names the module)."""
    root = (exc.name or "").split(".")[0]
    if root in ONNX_EXTRA_MODULES:
        return f"{fmt} export needs {root}: pip install 'dcls-audio[onnx]'"
    return str(exc) or f"cannot import {exc.name or 'a required module'}"


def run_export(
    checkpoint: str,
    output: str,
    fmt: str,
    model_name: str | None = None,
    with_frontend: bool = True,
    logits: bool = False,
    use_ema: bool = False,
    allow_pickle: bool = False,
    class_csv: str | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    tolerance: float = 1e-4,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    overwrite: bool = False,
) -> int:
    """What ``dcls-audio export`` does; returns the exit code (0 ok, 1 check failed, 2 setup error).

    ``output`` follows :mod:`dcls_audio.outputs`' rule: never the checkpoint or the class
    CSV, an existing file only with ``overwrite``, written atomically.
    """
    from ..inference.loader import load_tagging_model
    from ..models import resolve_checkpoint_path

    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        if fmt not in EXPORT_FORMATS:
            raise UsageError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
        if not Path(output).parent.is_dir():
            raise FileNotFoundError(f"--output: folder {Path(output).parent} does not exist")
        try:
            checkpoint_file: Path | None = resolve_checkpoint_path(checkpoint)
        except FileNotFoundError:  # the loader reports it, naming the checkpoint
            checkpoint_file = None
        inputs = [checkpoint_file or checkpoint, class_csv]
        if checkpoint_file is not None:  # before any work
            check_output_path(output, inputs, overwrite=overwrite, what="--output")
        loaded = load_tagging_model(
            checkpoint, model_name, use_ema=use_ema, allow_pickle=allow_pickle, class_csv=class_csv
        )
        if checkpoint_file is None:
            check_output_path(output, inputs, overwrite=overwrite, what="--output")
        if fmt == "safetensors":
            path, tied = save_safetensors(loaded.model, output, loaded.labels)
            print(
                f"wrote {path}: {loaded.model_name} weights ({len(loaded.labels)} classes, DCLS layers kept, "
                f"{tied} shared P/SIG keys stored once); load it with -c {path}",
                file=stdout,
            )
            return 0
        report = export_model(
            loaded.model,
            output,
            fmt,
            with_frontend=with_frontend,
            logits=logits,
            labels=loaded.labels,
            model_name=loaded.model_name,
            opset=opset,
            check=check,
        )
    except (UsageError, OSError) as exc:
        print(f"dcls-audio export: error: {exc}", file=stderr)
        return 2
    except ImportError as exc:
        print(f"dcls-audio export: error: {missing_module_message(exc, fmt)}", file=stderr)
        return 2
    what = "waveform (B, 320000) at 32 kHz" if with_frontend else "log-mel (B, 1, 128, 1001)"
    print(
        f"exported {loaded.model_name} ({report.folded_layers} DCLS layers folded) to {report.path} "
        f"[{fmt}]: {what} -> {'logits' if logits else 'scores'} (B, {len(loaded.labels)})",
        file=stdout,
    )
    if report.check_skipped:
        print(f"check skipped: {report.check_skipped}", file=stdout)
    elif report.max_abs_diff is not None:
        ok = report.max_abs_diff <= tolerance
        print(
            f"check against PyTorch: max |difference| = {report.max_abs_diff:.2e} "
            f"({'ok' if ok else 'FAILED'}, tolerance {tolerance:g})",
            file=stdout,
        )
        if not ok:
            print(
                f"dcls-audio export: error: {report.path} differs from PyTorch by more than {tolerance:g}", file=stderr
            )
            return 1
    return 0
