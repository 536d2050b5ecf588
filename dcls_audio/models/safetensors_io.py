"""A backbone's weights as a ``.safetensors`` file, and reading such a file back.

Written by :func:`save_safetensors`: our key names, each shared tensor once (the DCLS
positions ``P``/``SIG`` are one tensor per stage under every layer's key; plain
``safetensors.torch.save_file`` refuses such ties), and a JSON description in the header's
metadata under ``"dcls_audio"``::

    {"model_name": ..., "num_classes": ..., "model_kwargs": {...},
     "class_names": [...] or null, "tied": {"<dropped key>": "<key kept in the file>", ...}}

:func:`read_safetensors` restores the dropped keys as the very tensor of the key they share
(so the tie survives) and returns the dict a Lightning checkpoint would hold
(``state_dict`` under ``net.``, ``hyper_parameters``), which every checkpoint reader of the
project understands.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ..errors import UsageError
from ..outputs import atomic_output

__all__ = ["METADATA_KEY", "SAFETENSORS_SUFFIX", "is_safetensors", "read_safetensors", "save_safetensors"]

METADATA_KEY = "dcls_audio"
SAFETENSORS_SUFFIX = ".safetensors"
_HEADER_LIMIT = 100 << 20  # safetensors' own bound on the JSON header


def is_safetensors(path: str | PathLike, head: bytes | None = None) -> bool:
    """Whether a file is a safetensors file: its name, or its first bytes (an 8-byte
    little-endian header length, then a JSON object)."""
    if Path(path).suffix == SAFETENSORS_SUFFIX:
        return True
    if head is None:
        with open(path, "rb") as fh:
            head = fh.read(9)
    return len(head) >= 9 and 2 <= int.from_bytes(head[:8], "little") <= _HEADER_LIMIT and head[8:9] == b"{"


def save_safetensors(
    model: nn.Module, path: str | PathLike, class_names: Sequence[str] | None = None
) -> tuple[Path, int]:
    """Write ``model``'s weights (CPU, contiguous, each shared tensor once) and its description
    to ``path`` atomically. Returns ``(path, number of dropped tied keys)``."""
    from safetensors.torch import save_file

    kept: dict[int, str] = {}
    tensors, tied = {}, {}
    for key, value in model.state_dict(keep_vars=True).items():
        first = kept.setdefault(id(value), key)
        if first != key:
            tied[key] = first
        else:
            tensors[key] = value.detach().cpu().contiguous()
    meta = {
        "model_name": getattr(model, "model_name", None),
        "num_classes": getattr(model, "num_classes", None),
        "model_kwargs": getattr(model, "model_kwargs", {}),
        "class_names": list(class_names) if class_names is not None else None,
        "tied": tied,
    }
    path = Path(path)
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", METADATA_KEY: json.dumps(meta)})
    return path, len(tied)


def read_safetensors(path: str | PathLike) -> dict[str, Any]:
    """A ``.safetensors`` file as ``{"state_dict": {"net.<key>": tensor}, "hyper_parameters":
    {...}}``; tied keys share one tensor. A file without our description (written by another
    tool) gives its tensors with empty ``hyper_parameters``. Raises ValueError for a damaged
    file (the caller names the file)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta_text = (handle.metadata() or {}).get(METADATA_KEY)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, RuntimeError) as err:
        raise UsageError(f"not a readable safetensors file ({err})") from None
    meta: dict[str, Any] = {}
    if meta_text:
        try:
            meta = json.loads(meta_text)
        except json.JSONDecodeError as err:
            raise UsageError(f"its '{METADATA_KEY}' metadata is not JSON ({err})") from None
    for key, first in (meta.get("tied") or {}).items():
        if first not in tensors:
            raise UsageError(f"'{key}' is tied to '{first}', which the file does not hold")
        tensors[key] = tensors[first]
    hparams = {
        k: meta[k] for k in ("model_name", "num_classes", "model_kwargs", "class_names") if meta.get(k) is not None
    }
    return {"state_dict": {f"net.{key}": value for key, value in tensors.items()}, "hyper_parameters": hparams}
