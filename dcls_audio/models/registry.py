"""The six DCLS-Audio backbones under their upstream names, and one entry point to build them.

>>> model = create_model("convnext_dcls_audio_tiny")                     # 527 classes, (B, 1, 128, 1001)
>>> tiny = create_model("convnext_dcls_audio_tiny", depths=(1, 1, 1, 1), dims=(16, 32, 64, 128),
...                     kernel_count=8, dilated_kernel_size=9)           # a CPU-sized variant
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import nn

from ..errors import UsageError
from .convformer_audio import CONVFORMER_VARIANTS, convformer_audio, convformer_upstream_layout
from .convnext_audio import CONVNEXT_VARIANTS, convnext_audio, convnext_upstream_layout
from .dclsify import dclsify
from .fastvit_audio import FASTVIT_VARIANTS, fastvit_audio, fastvit_upstream_layout
from .layout import UpstreamLayout
from .released import RELEASED_CHECKPOINTS

__all__ = ["DCLS_DEFAULTS", "MODEL_SPECS", "ModelSpec", "build_model", "describe_models", "get_spec", "list_models"]

#: DCLS settings of the released models (Dcls2d gauss, 26 elements in a 23x23 kernel).
DCLS_DEFAULTS: Mapping[str, Any] = {"kernel_count": 26, "dilated_kernel_size": 23, "version": "gauss"}
_DCLS_OPTIONS = ("kernel_count", "dilated_kernel_size", "version", "share_positions")


@dataclass(frozen=True)
class ModelSpec:
    """One registered backbone: family builder + variant arguments (+ DCLS conversion)."""

    name: str
    family: str
    build: Callable[..., nn.Module]
    arch: Mapping[str, Any]
    layout: Callable[[nn.Module], UpstreamLayout]
    dcls: bool = False
    only_kernel_size: int | None = None  # DCLS: convert only k x k depthwise convs
    description: str = field(default="", compare=False)

    def build_kwargs(self) -> list[str]:
        """Names of the architecture arguments ``create_model`` accepts for this model."""
        return list(inspect.signature(self.build).parameters)


def _specs() -> dict[str, ModelSpec]:
    families = (
        ("convnext", "tiny", convnext_audio, CONVNEXT_VARIANTS, convnext_upstream_layout, None, "ConvNeXt-T"),
        ("fastvit", "sa24", fastvit_audio, FASTVIT_VARIANTS, fastvit_upstream_layout, 7, "FastViT-SA24"),
        (
            "convformer",
            "s18",
            convformer_audio,
            CONVFORMER_VARIANTS,
            convformer_upstream_layout,
            None,
            "ConvFormer-S18",
        ),
    )
    specs = {}
    for family, size, build, variants, layout, kernel, title in families:
        for dcls in (False, True):
            name = f"{family}_{'dcls_' if dcls else ''}audio_{size}"
            what = "DCLS-Gauss 23x23 / 26" if dcls else "depthwise 7x7"
            specs[name] = ModelSpec(
                name=name,
                family=family,
                build=build,
                arch=dict(variants[size]),
                layout=layout,
                dcls=dcls,
                only_kernel_size=kernel if dcls else None,
                description=f"{title}, {what}",
            )
    return specs


MODEL_SPECS: Mapping[str, ModelSpec] = _specs()


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the registered models, optionally filtered by a glob ``pattern`` (``"*dcls*"``)."""
    names = list(MODEL_SPECS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; ValueError listing the known names otherwise."""
    try:
        return MODEL_SPECS[name]
    except (KeyError, TypeError):
        raise UsageError(f"unknown model {name!r}; known models: {', '.join(MODEL_SPECS)}") from None


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build model ``name`` with fresh weights (eval/train mode untouched).

    kwargs: ``num_classes`` (527), ``drop_path_rate`` (0), ``layer_scale_init_value``
    (family default), ``drop_rate``, architecture overrides (``depths``, ``dims``, ...; see
    ``get_spec(name).build_kwargs()``) and for DCLS models ``kernel_count`` (26),
    ``dilated_kernel_size`` (23), ``version`` ("gauss"), ``share_positions`` (True).
    Input (B, 1, 128, T); output logits (B, num_classes). The model carries ``model_name`` and
    ``model_kwargs`` (what checkpoints store to rebuild it).
    """
    spec = get_spec(name)
    dcls_kwargs = {k: kwargs.pop(k) for k in _DCLS_OPTIONS if k in kwargs}
    if dcls_kwargs and not spec.dcls:
        raise UsageError(f"{name} has no DCLS layers; {', '.join(dcls_kwargs)} only apply to the *_dcls_* models")
    allowed = spec.build_kwargs()
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        accepted = allowed + (list(_DCLS_OPTIONS) if spec.dcls else [])
        raise UsageError(f"create_model({name!r}): unknown argument(s) {unknown}; accepted: {accepted}")
    model = spec.build(**{**spec.arch, **kwargs})
    if spec.dcls:
        dclsify(model, **{**DCLS_DEFAULTS, **dcls_kwargs}, only_kernel_size=spec.only_kernel_size)
    model.model_name = name
    model.model_kwargs = {**kwargs, **dcls_kwargs}
    return model


def describe_models() -> list[dict[str, Any]]:
    """One row per model: ``model``, ``description``, ``dcls``, ``released`` (URL or None)."""
    return [
        {"model": n, "description": s.description, "dcls": s.dcls, "released": RELEASED_CHECKPOINTS.get(n)}
        for n, s in MODEL_SPECS.items()
    ]
