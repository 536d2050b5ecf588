"""Parameter counts of the registered models, next to the upstream ones."""

from __future__ import annotations

from typing import Any

from torch import nn

from .registry import build_model, list_models

__all__ = [
    "PAPER_TABLE_MILLIONS",
    "UPSTREAM_PARAM_COUNTS",
    "count_parameters",
    "format_parameter_table",
    "parameter_table",
]

#: ``sum(p.numel() for p in model.parameters())`` of the upstream DCLS-Audio models with 527
#: classes (shared P/SIG counted once), from the upstream layouts.
UPSTREAM_PARAM_COUNTS: dict[str, int] = {
    "convnext_audio_tiny": 28_223_855,
    "convnext_dcls_audio_tiny": 28_221_263,
    "fastvit_audio_sa24": 21_064_015,
    "fastvit_dcls_audio_sa24": 21_016_655,
    "convformer_audio_s18": 25_797_847,
    "convformer_dcls_audio_s18": 25_781_207,
}

#: "# Parameters" column of the paper's README (millions). These are the counts with a
#: 1000-class head (as the ImageNet models), which ``params_1000`` reproduces.
PAPER_TABLE_MILLIONS: dict[str, float] = {
    "convnext_audio_tiny": 28.6,
    "convnext_dcls_audio_tiny": 28.6,
    "fastvit_audio_sa24": 21.5,
    "fastvit_dcls_audio_sa24": 21.5,
    "convformer_audio_s18": 26.8,
    "convformer_dcls_audio_s18": 26.8,
}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements, each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def parameter_table(names: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per model (default: all): our count, upstream's, and the 1000-class count.

    Keys: ``model``, ``parameters``, ``upstream``, ``match``, ``params_1000``, ``paper_millions``.
    """
    rows = []
    for name in names or list_models():
        count = count_parameters(build_model(name))
        upstream = UPSTREAM_PARAM_COUNTS.get(name)
        rows.append(
            {
                "model": name,
                "parameters": count,
                "upstream": upstream,
                "match": count == upstream,
                "params_1000": count_parameters(build_model(name, num_classes=1000)),
                "paper_millions": PAPER_TABLE_MILLIONS.get(name),
            }
        )
    return rows


def format_parameter_table(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`parameter_table` as a fixed-width text table."""
    header = f"{'model':<28} {'ours':>12} {'upstream':>12} {'same':>5} {'ours@1000 cls':>14} {'paper':>6}"
    lines = [header, "-" * len(header)]
    for r in rows:
        upstream = f"{r['upstream']:,}" if r["upstream"] is not None else "-"
        paper = f"{r['paper_millions']}M" if r["paper_millions"] is not None else "-"
        lines.append(
            f"{r['model']:<28} {r['parameters']:>12,} {upstream:>12} {'yes' if r['match'] else 'NO':>5} "
            f"{r['params_1000'] / 1e6:>13.2f}M {paper:>6}"
        )
    return "\n".join(lines)
