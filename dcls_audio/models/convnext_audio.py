"""ConvNeXt for spectrograms: timm's ``ConvNeXt`` with the audio stem.

The graph equals the DCLS-Audio (FB ConvNeXt) one: patch stem + LayerNorm, LayerNorm + 2x2
conv downsampling, blocks dwconv 7x7 -> LayerNorm -> Linear -> GELU -> Linear -> gamma,
global average pool -> LayerNorm -> Linear head.
"""

from __future__ import annotations

from typing import Sequence

from timm.models.convnext import ConvNeXt
from torch import nn

from ..errors import UsageError
from .layout import UpstreamLayout, build_layout, rename_by_rules
from .stem import audio_stem_conv

__all__ = ["CONVNEXT_VARIANTS", "convnext_audio", "convnext_upstream_layout"]

#: Variants are data: the architecture arguments of each size.
CONVNEXT_VARIANTS = {
    "tiny": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
}


def convnext_audio(
    depths: Sequence[int] = (3, 3, 9, 3),
    dims: Sequence[int] = (96, 192, 384, 768),
    num_classes: int = 527,
    in_chans: int = 1,
    drop_path_rate: float = 0.0,
    layer_scale_init_value: float | None = 1e-6,
    drop_rate: float = 0.0,
) -> ConvNeXt:
    """ConvNeXt taking (B, in_chans, 128, T) spectrograms, returning (B, num_classes) logits."""
    if len(depths) != len(dims):
        raise UsageError(f"depths {tuple(depths)} and dims {tuple(dims)} must have the same length")
    model = ConvNeXt(
        in_chans=in_chans,
        num_classes=num_classes,
        depths=tuple(depths),
        dims=tuple(dims),
        ls_init_value=layer_scale_init_value,
        drop_path_rate=drop_path_rate,
        drop_rate=drop_rate,
    )
    model.stem[0] = audio_stem_conv(dims[0], in_channels=in_chans, bias=True)
    return model


# ours (timm) -> upstream (FB ConvNeXt as used by DCLS-Audio)
_UPSTREAM_RULES = (
    (r"^stem\.(\d+)\.", r"downsample_layers.0.\1."),
    (r"^stages\.(\d+)\.downsample\.(\d+)\.", r"downsample_layers.\1.\2."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.", r"stages.\1.\2.dwconv."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc(\d)\.", r"stages.\1.\2.pwconv\3."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.(gamma|norm\.)", r"stages.\1.\2.\3"),
    (r"^head\.norm\.", "norm."),
    (r"^head\.fc\.", "head."),
)


def convnext_upstream_layout(model: nn.Module) -> UpstreamLayout:
    """Key correspondence between this ConvNeXt and the upstream checkpoint layout."""
    return build_layout(model.state_dict().keys(), lambda k: rename_by_rules(k, _UPSTREAM_RULES))
