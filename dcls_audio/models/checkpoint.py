"""Read, check, convert and write backbone checkpoints.

Four kinds of files load into the same model:

- a released DCLS-Audio ``.pth``: ``{"model": state_dict, "model_ema"?: ..., "optimizer",
  "epoch", "scaler", "args": argparse.Namespace}`` with upstream key names;
- our Lightning ``.ckpt``: ``{"state_dict": {"net.<key>": ..., "ema_net.<key>": ...},
  "hyper_parameters": {"model_name": ..., "num_classes": ..., "model_kwargs": {...}}, ...}``;
- a plain state_dict (our keys or upstream keys, optionally ``module.``-prefixed);
- a ``.safetensors`` file (:mod:`.safetensors_io`; read as a Lightning checkpoint).

Files are read with ``torch.load(weights_only=True)`` and an explicit allow-list
(:data:`SAFE_GLOBALS`); anything else in the pickle is refused unless the caller passes
``allow_pickle=True``, which runs the full unpickler and so can execute code from the file:
only for files from a trusted source.

Every key must be used and every tensor of the model filled, else
:class:`CheckpointMismatchError` lists the missing / unexpected / mis-shaped keys and, when
the keys belong to another registered model, names it.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..outputs import atomic_output
from .dclsify import tied_state_keys
from .layout import UpstreamLayout
from .registry import MODEL_SPECS, build_model, get_spec, list_models
from .released import RELEASED_CHECKPOINTS, checkpoint_dirs, fetch_released, verify_released
from .safetensors_io import is_safetensors, read_safetensors

__all__ = [
    "CheckpointContents",
    "CheckpointError",
    "CheckpointMismatchError",
    "SAFE_GLOBALS",
    "UnsafeCheckpointError",
    "build_loaded_model",
    "extract_state_dict",
    "infer_model_name",
    "layout_of",
    "load_checkpoint",
    "load_state_dict_checked",
    "read_checkpoint",
    "resolve_checkpoint_path",
    "save_upstream_checkpoint",
    "shorten_keys",
    "to_model_state_dict",
    "to_upstream_state_dict",
]

#: Globals a checkpoint may reference besides tensors and plain containers.
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)

_NET_PREFIXES = ("net.", "model.", "backbone.")
_EMA_PREFIXES = ("ema_net.", "model_ema.", "ema_model.", "ema.")
_WRAPPER_BUFFERS = ("n_averaged",)  # torch.optim.swa_utils.AveragedModel
_SHOW = 12  # keys listed per category in error messages
_SHOW_SIZES = 6


class CheckpointError(UsageError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


class UnsafeCheckpointError(CheckpointError):
    """The file needs objects outside the allow-list to be unpickled."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's keys or shapes do not fit the model."""

    def __init__(
        self,
        message: str,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        suggested_model: str | None,
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        self.suggested_model = suggested_model


@dataclass
class CheckpointContents:
    """The backbone weights found in a checkpoint file and what it says about the model."""

    state_dict: dict[str, Tensor]
    kind: str  # "upstream" | "lightning" | "state_dict"
    model_name: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = "<state_dict>"


# ----------------------------------------------------------------------------- reading
def resolve_checkpoint_path(path_or_name: str | PathLike, download: bool = True, progress: bool = True) -> Path:
    """A checkpoint file: ``path_or_name`` itself, or ``<name>.pth`` (``.safetensors``,
    ``.ckpt``) in a checkpoints folder.

    Folders searched: $DCLS_AUDIO_CHECKPOINTS, ./checkpoints, <repo>/checkpoints, the download
    cache. A released model's file found there is checked against its checksum; one found
    nowhere is downloaded into the cache (``download``; progress bar on stderr with
    ``progress``) and verified (:func:`~dcls_audio.models.released.fetch_released`).
    Raises FileNotFoundError, or :class:`~dcls_audio.models.download.DownloadError` (an
    OSError) when the download or the check fails.
    """
    path = Path(path_or_name).expanduser()
    if path.is_file():
        return path
    name = str(path_or_name)
    if os.sep not in name and "/" not in name:
        candidates = [name] if path.suffix else [f"{name}.pth", f"{name}.safetensors", f"{name}.ckpt", name]
        for folder in checkpoint_dirs():
            for candidate in candidates:
                if (folder / candidate).is_file():
                    if candidate == f"{name}.pth" and name in RELEASED_CHECKPOINTS:
                        verify_released(name, folder / candidate)
                    return folder / candidate
        if download and name in RELEASED_CHECKPOINTS:
            return fetch_released(name, progress=progress)
    where = ", ".join(str(d) for d in checkpoint_dirs())
    hint = ""
    if name in RELEASED_CHECKPOINTS:
        hint = f" Download it from {RELEASED_CHECKPOINTS[name]} into one of: {where}."
    elif name in MODEL_SPECS:
        hint = (
            f" No file was released for {name} (the paper's links for this baseline point to the"
            " DCLS model); see checkpoints/README.md."
        )
    raise FileNotFoundError(f"checkpoint '{name}' not found (as a file, or as <name>.pth in {where}).{hint}")


#: What a file that is no checkpoint begins with, for the error message.
_KNOWN_MAGIC = (
    (b"RIFF", "a WAV file"),
    (b"fLaC", "a FLAC file"),
    (b"OggS", "an Ogg file"),
    (b"ID3", "an MP3 file"),
    (b"\x89HDF", "an HDF5 file"),
)
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # the PROTO opcode that opens every pickle of protocol >= 2 (torch.save's)


def _not_a_checkpoint(path: Path, head: bytes) -> CheckpointError:
    what = next((name for magic, name in _KNOWN_MAGIC if head.startswith(magic)), None)
    if what is None:
        printable = head[:8].decode("latin-1")
        what = "text" if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head[:64]) else repr(printable)
        what = f"it begins with {what}" if what != "text" else "a text file"
    return CheckpointError(f"{path}: not a checkpoint (neither a PyTorch zip archive nor a pickle; {what})")


def _check_pickle_stream(stream: Any, path: Path, member: str) -> None:
    """Walk the opcodes of one pickle; CheckpointError('corrupt checkpoint') if it is not a
    well-formed pickle. Runs no code: ``pickletools`` only decodes the opcodes."""
    import pickletools
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # string opcodes with odd escapes warn while decoding
            stopped = _walk(pickletools.genops(stream))
    except Exception as err:  # genops raises ValueError, EOFError, struct.error, ... on bad bytes
        raise CheckpointError(f"{path}: corrupt checkpoint ({member} is not a valid pickle: {err})") from None
    if not stopped:
        raise CheckpointError(f"{path}: corrupt checkpoint ({member} ends before its pickle does)")


def _walk(ops: Any) -> bool:
    """Consume pickle opcodes up to STOP; whether STOP was reached."""
    for opcode, _arg, _pos in ops:
        if opcode.name == "STOP":
            return True
    return False


def _check_container(path: Path) -> bool:
    """Check the file is a PyTorch checkpoint container before ``torch.load`` sees it.

    A zip archive must be complete, hold a ``data.pkl`` and pass every CRC (torch's reader does
    not check them: flipped bits in tensor data would load as wrong weights); its ``data.pkl``
    and a legacy file's first pickle must be well-formed pickles. Returns whether the file is a
    zip archive. Raises CheckpointError ("not a checkpoint" / "corrupt checkpoint").
    """
    import zipfile

    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            if head.startswith(_ZIP_MAGIC):
                try:
                    with zipfile.ZipFile(fh) as archive:
                        names = archive.namelist()
                        pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
                        if not pickles:
                            raise CheckpointError(f"{path}: not a checkpoint (a zip archive without data.pkl)")
                        bad = archive.testzip()
                        if bad is not None:
                            raise CheckpointError(f"{path}: corrupt checkpoint (CRC mismatch in {bad})")
                        with archive.open(pickles[0]) as member:
                            _check_pickle_stream(member, path, pickles[0])
                except CheckpointError:
                    raise
                except (
                    zipfile.BadZipFile,
                    zipfile.LargeZipFile,
                    EOFError,
                    ValueError,
                    KeyError,
                    NotImplementedError,
                    OverflowError,
                    IndexError,
                ) as err:
                    raise CheckpointError(f"{path}: corrupt checkpoint (broken zip archive: {err})") from None
                return True
            if not head or head[0] != _PICKLE_PROTO:
                raise _not_a_checkpoint(path, head)
            fh.seek(0)
            _check_pickle_stream(fh, path, "the file")
            return False
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read checkpoint: {err.strerror or err}") from None


def read_checkpoint(path: str | PathLike, allow_pickle: bool = False) -> Any:
    """``torch.load`` on the CPU with ``weights_only=True`` and :data:`SAFE_GLOBALS`; a
    ``.safetensors`` file is read by :func:`~dcls_audio.models.safetensors_io.read_safetensors`.

    ``allow_pickle=True`` uses the full unpickler: it can run code embedded in the file.
    The file is checked first (:func:`_check_container`): a file that is not a checkpoint or
    is damaged raises :class:`CheckpointError` ("not a checkpoint" / "corrupt checkpoint"),
    and only a well-formed pickle that asks for objects outside the allow-list raises
    :class:`UnsafeCheckpointError` (the one error that mentions ``--allow-pickle``). No other
    exception type leaves this function for a bad file.
    """
    path = Path(path)
    try:
        safetensors = is_safetensors(path)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read checkpoint: {err.strerror or err}") from None
    if safetensors:  # tensors and JSON only: nothing to unpickle
        try:
            return read_safetensors(path)
        except ValueError as err:
            raise CheckpointError(f"{path}: corrupt checkpoint ({err})") from None
    _check_container(path)
    try:
        if allow_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if allow_pickle or not _refused_global(str(err)):
            raise CheckpointError(f"{path}: corrupt checkpoint ({reason})") from None
        raise UnsafeCheckpointError(
            f"{path}: refused to load: the file holds Python objects outside the allow-list "
            f"({reason}). Unpickling them can run arbitrary code; pass allow_pickle=True "
            "(CLI: --allow-pickle) only for a file from a source you trust."
        ) from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read checkpoint: {err.strerror or err}") from err
    except MemoryError:
        raise CheckpointError(f"{path}: corrupt checkpoint (asks for more memory than there is)") from None
    except Exception as err:  # torch's readers raise RuntimeError, EOFError, KeyError, struct.error, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{path}: corrupt checkpoint ({type(err).__name__}: {first[:200]})") from None


#: Texts of torch's weights-only unpickler for an object it will not build (as opposed to bad bytes).
_REFUSAL_MARKERS = (
    "Unsupported global",
    "GLOBAL",
    "add_safe_globals",
    "allowlist",
    "allowed global",
    "Trying to call reduce",
    "Can only",
    "not an allowed",
)


def _refused_global(message: str) -> bool:
    return any(marker in message for marker in _REFUSAL_MARKERS)


def _strip_wrapper(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a ``module.`` prefix carried by every key (DDP, EMA wrappers) and wrapper buffers."""
    keys = [k for k in state_dict if k not in _WRAPPER_BUFFERS]
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module.") :]: state_dict[k] for k in keys}
    return dict(state_dict)


def _tensors_only(state_dict: Mapping[str, Any], source: str, what: str) -> dict[str, Tensor]:
    bad = [k for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{source}: {what} holds non-tensor values under: {', '.join(bad[:_SHOW])}")
    return dict(state_dict)


def _submodule_state(state_dict: Mapping[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any] | None:
    for prefix in prefixes:
        sub = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if sub:
            return _strip_wrapper(sub)
    return None


def _registered(name: Any) -> str | None:
    return name if isinstance(name, str) and name in MODEL_SPECS else None


def extract_state_dict(obj: Any, use_ema: bool = False, source: str = "<checkpoint>") -> CheckpointContents:
    """Find the backbone state_dict (EMA one if ``use_ema``) in a loaded checkpoint object."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source}: expected a dict (upstream .pth, Lightning .ckpt or state_dict), got {type(obj).__name__}"
        )
    top = ", ".join(map(str, list(obj)[:_SHOW]))
    if isinstance(obj.get("model"), Mapping):
        key = "model_ema" if use_ema else "model"
        if not isinstance(obj.get(key), Mapping):
            raise CheckpointError(f"{source}: no EMA weights ('model_ema') in this checkpoint; top-level keys: {top}")
        args = obj.get("args")
        args = vars(args) if isinstance(args, argparse.Namespace) else (args if isinstance(args, Mapping) else {})
        kwargs = {"num_classes": args["nb_classes"]} if isinstance(args.get("nb_classes"), int) else {}
        state = _tensors_only(_strip_wrapper(obj[key]), source, f"'{key}'")
        return CheckpointContents(state, "upstream", _registered(args.get("model")), kwargs, source)
    if isinstance(obj.get("state_dict"), Mapping):
        prefixes = _EMA_PREFIXES if use_ema else _NET_PREFIXES
        state = _submodule_state(obj["state_dict"], prefixes)
        if state is None:
            if use_ema:
                raise CheckpointError(
                    f"{source}: no EMA weights in 'state_dict' (looked for keys starting with {', '.join(prefixes)})"
                )
            state = _strip_wrapper(obj["state_dict"])
        hparams = obj.get("hyper_parameters") or {}
        name = hparams.get("model_name", hparams.get("model")) if isinstance(hparams, Mapping) else None
        kwargs = dict(hparams.get("model_kwargs") or {}) if isinstance(hparams, Mapping) else {}
        if isinstance(hparams, Mapping) and isinstance(hparams.get("num_classes"), int):
            kwargs.setdefault("num_classes", hparams["num_classes"])
        state = _tensors_only(state, source, "'state_dict'")
        return CheckpointContents(state, "lightning", _registered(name), kwargs, source)
    if obj and all(isinstance(v, Tensor) for k, v in obj.items() if k not in _WRAPPER_BUFFERS):
        if use_ema:
            raise CheckpointError(f"{source}: a plain state_dict holds no separate EMA weights")
        return CheckpointContents(_strip_wrapper(obj), "state_dict", source=source)
    raise CheckpointError(
        f"{source}: unrecognised checkpoint layout (expected 'model', 'state_dict' or a state_dict); "
        f"top-level keys: {top}"
    )


# ----------------------------------------------------------------------------- recognising
# Keys that only one family has, in our (timm) naming and in the upstream naming.
_FAMILY_MARKERS = (
    ("fastvit", r"(^|\.)(patch_embed\.weight|network\.\d+\.|conv_exp\.|final_conv\.)"),
    ("convformer", r"(^|\.)(downsample_layers\.0\.post_norm\.|stem\.norm\.weight$|token_mixer\.pwconv1\.)"),
    ("convnext", r"(^|\.)(downsample_layers\.0\.0\.weight$|stem\.0\.weight$|pwconv1\.|conv_dw\.)"),
)


def infer_model_name(state_dict: Mapping[str, Any]) -> str | None:
    """Which registered model a state_dict (either key naming) belongs to, or None.

    Decided by family-specific keys and the presence of DCLS positions (``*.P``); the size
    (tiny / sa24 / s18) is the one registered per family.
    """
    keys = list(state_dict)
    dcls = any(k.endswith((".P", ".SIG")) for k in keys)
    for family, marker in _FAMILY_MARKERS:
        if any(re.search(marker, k) for k in keys):
            for name, spec in MODEL_SPECS.items():
                if spec.family == family and spec.dcls == dcls:
                    return name
    return None


# ----------------------------------------------------------------------------- converting
def layout_of(model: nn.Module) -> UpstreamLayout:
    """The upstream key layout of a model built by ``create_model``."""
    name = getattr(model, "model_name", None)
    if name is None:
        raise CheckpointError(
            f"{type(model).__name__} was not built by dcls_audio.models.create_model; "
            "its upstream key layout is unknown"
        )
    return get_spec(name).layout(model)


def shorten_keys(keys: list[str]) -> str:
    """The first few state-dict keys, comma-separated, and how many more there are."""
    more = f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def to_model_state_dict(
    model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "<state_dict>"
) -> dict[str, Tensor]:
    """``state_dict`` (our or upstream key names) as our keys and shapes, checked against ``model``.

    Raises CheckpointMismatchError unless every key is used, every model tensor is filled
    and every shape fits; CheckpointError when tied keys disagree.
    """
    target = model.state_dict()
    layout = layout_of(model)
    from_upstream = layout.from_upstream_names
    state = _strip_wrapper(state_dict)
    upstream = len(set(state) & set(from_upstream)) > len(set(state) & set(target))
    if upstream:
        converted = {
            from_upstream[k]: layout.from_upstream_tensor(from_upstream[k], v)
            for k, v in state.items()
            if k in from_upstream
        }
        unexpected = [k for k in state if k not in from_upstream]
    else:
        converted = {k: v for k, v in state.items() if k in target}
        unexpected = [k for k in state if k not in target]
    shown = layout.names.get if upstream else (lambda k: k)
    missing = [shown(k) for k in target if k not in converted]
    mismatched = [
        (shown(k), tuple(v.shape), tuple(target[k].shape))
        for k, v in converted.items()
        if tuple(v.shape) != tuple(target[k].shape)
    ]
    name = getattr(model, "model_name", type(model).__name__)
    if missing or unexpected or mismatched:
        suggested = infer_model_name(state)
        lines = [f"{source}: checkpoint does not fit {name} ({'upstream' if upstream else 'our'} key names)"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {shorten_keys(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {shorten_keys(unexpected)}")
        for key, have, want in mismatched[:_SHOW_SIZES]:
            lines.append(f"  size mismatch for {key}: checkpoint {have}, model {want}")
        if len(mismatched) > _SHOW_SIZES:
            lines.append(f"  ... and {len(mismatched) - _SHOW_SIZES} more size mismatches")
        if suggested and suggested != name:
            lines.append(
                f"  The keys are those of a {suggested} checkpoint: "
                f"create_model('{suggested}', checkpoint_path=...) or pass --model {suggested}."
            )
        elif suggested == name:
            lines.append(
                f"  The keys are of the {name} family but another configuration "
                "(depths, dims, num_classes or DCLS settings): pass the same options the checkpoint was trained with."
            )
        raise CheckpointMismatchError("\n".join(lines), missing, unexpected, mismatched, suggested)
    for key, value in converted.items():
        if value.is_floating_point() or value.is_complex():
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise CheckpointError(
                    f"{source}: corrupt weights: '{shown(key)}' holds {bad} NaN/inf value(s) of {value.numel()} "
                    "(the first non-finite tensor in the checkpoint); refusing to load them"
                )
    for keys in tied_state_keys(model):
        first = converted[keys[0]]
        for key in keys[1:]:
            if converted[key] is not first and not torch.equal(converted[key], first):
                raise CheckpointError(
                    f"{source}: '{shown(key)}' and '{shown(keys[0])}' hold different values but are one shared "
                    f"tensor in {name} (DCLS positions shared by the layers of a stage); build the model "
                    "with share_positions=False to load untied positions"
                )
    return converted


def load_state_dict_checked(
    model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "<state_dict>"
) -> nn.Module:
    """Load ``state_dict`` (our or upstream key names) into ``model`` strictly; returns ``model``."""
    model.load_state_dict(to_model_state_dict(model, state_dict, source), strict=True)
    return model


def load_checkpoint(
    model_or_name: nn.Module | str | None,
    path: str | PathLike,
    use_ema: bool = False,
    allow_pickle: bool = False,
    **model_kwargs: Any,
) -> nn.Module:
    """Load a checkpoint file into a model, or build the model first.

    ``model_or_name``: a model from ``create_model``, a registered name, or None to take the
    name from the checkpoint (upstream ``args.model``, Lightning ``hyper_parameters``, else
    :func:`infer_model_name`). ``path``: a file or a model name whose ``<name>.pth`` sits in a
    checkpoints folder. ``use_ema``: load the EMA weights (``model_ema`` / ``ema_net.``).
    ``allow_pickle``: read with the full unpickler (can execute code from the file; only for
    trusted files); by default only tensors, containers and :data:`SAFE_GLOBALS` are accepted.
    ``model_kwargs`` go to ``create_model`` when the model is built here.
    """
    file = resolve_checkpoint_path(path)
    contents = extract_state_dict(read_checkpoint(file, allow_pickle=allow_pickle), use_ema=use_ema, source=str(file))
    if isinstance(model_or_name, nn.Module):
        if model_kwargs:
            raise ValueError(f"load_checkpoint: {sorted(model_kwargs)} only apply when the model is built by name")
        return load_state_dict_checked(model_or_name, contents.state_dict, str(file))
    return build_loaded_model(contents, model_or_name, str(file), **model_kwargs)


def build_loaded_model(contents: CheckpointContents, name: str | None, source: str, **model_kwargs: Any) -> nn.Module:
    """The model ``contents`` hold, built and loaded (its ``model_name`` says which it is).

    The name is ``name``, else the one the checkpoint saved, else :func:`infer_model_name`;
    the checkpoint's saved constructor arguments apply when they are for that name, and
    ``model_kwargs`` override them.
    """
    name = name or contents.model_name or infer_model_name(contents.state_dict)
    if name is None:
        raise CheckpointError(
            f"{source}: cannot tell which model this checkpoint is for; name it (the model name "
            f"argument, or --model on the command line), one of: {', '.join(list_models())}"
        )
    saved = contents.model_kwargs if contents.model_name in (None, name) else {}
    model = build_model(name, **{**saved, **model_kwargs})
    return load_state_dict_checked(model, contents.state_dict, source)


# ----------------------------------------------------------------------------- writing
def to_upstream_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's state_dict with upstream key names and shapes, on the CPU.

    Shared tensors (tied ``P``/``SIG``) appear under every key as one tensor, as upstream.
    """
    layout = layout_of(model)
    cpu: dict[int, Tensor] = {}
    out = {}
    for key, value in model.state_dict(keep_vars=True).items():
        tensor = cpu.setdefault(id(value), value.detach().cpu())
        out[layout.names[key]] = layout.to_upstream_tensor(key, tensor)
    return out


def save_upstream_checkpoint(
    model: nn.Module,
    path: str | PathLike,
    model_ema: nn.Module | None = None,
    optimizer: Mapping[str, Any] | None = None,
    epoch: int | None = None,
    scaler: Mapping[str, Any] | None = None,
    args: argparse.Namespace | Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (and ``model_ema``) as a DCLS-Audio ``.pth`` that upstream code loads.

    ``args`` becomes the checkpoint's ``argparse.Namespace`` (``model`` and ``nb_classes`` are
    filled in). ``optimizer``/``scaler`` are state dicts stored as given. Returns the path.
    """
    checkpoint: dict[str, Any] = {"model": to_upstream_state_dict(model)}
    fields = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args or {})
    fields.setdefault("model", model.model_name)
    fields.setdefault("nb_classes", getattr(model, "num_classes", None))
    if model_ema is not None:
        checkpoint["model_ema"] = to_upstream_state_dict(model_ema)
    if optimizer is not None:
        checkpoint["optimizer"] = optimizer
    if epoch is not None:
        checkpoint["epoch"] = epoch
    if scaler is not None:
        checkpoint["scaler"] = scaler
    checkpoint["args"] = argparse.Namespace(**fields)
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save(checkpoint, tmp)
    return path
