"""Parameter counts of the registered models, next to the upstream ones."""
from __future__ import annotations

from torch import nn

#: ``sum(p.numel() for p in model.parameters())`` of the upstream DCLS-Audio models
#: (shared P/SIG counted once), from the upstream layouts.
UPSTREAM_PARAM_COUNTS: dict[str, int] = {
    "convnext_audio_tiny": 28_223_855,
    "convnext_dcls_audio_tiny": 28_221_263,
    "fastvit_audio_sa24": 21_064_015,
    "fastvit_dcls_audio_sa24": 21_016_655,
    "convformer_audio_s18": 25_797_847,
    "convformer_dcls_audio_s18": 25_781_207,
}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements, each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def parameter_table(names: list[str] | None = None) -> list[dict[str, object]]:
    """Rows ``{model, parameters, upstream, match}`` for the given (default: all) models."""
    from .registry import create_model, list_models

    rows = []
    for name in names or list_models():
        count = count_parameters(create_model(name))
        upstream = UPSTREAM_PARAM_COUNTS.get(name)
        rows.append({"model": name, "parameters": count, "upstream": upstream, "match": count == upstream})
    return rows
