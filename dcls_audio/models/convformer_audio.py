"""ConvFormer for spectrograms: timm's ``MetaFormer`` with ``SepConv`` mixers and the audio stem.

Matches sail-sg MetaFormer as used by DCLS-Audio: bias-free (2, 16) stem conv + bias-free
LayerNorm, SepConv (1x1 -> StarReLU -> dw 7x7 -> 1x1) token mixers, StarReLU MLPs, residual
scales on the last two stages, mean pool -> LayerNorm -> MlpHead (SquaredReLU, LayerNorm).
timm runs channels-first with 1x1 convs where upstream uses ``nn.Linear`` on channels-last
tensors: same numbers, so those weights are reshaped when converting checkpoints.
"""

from __future__ import annotations

from typing import Sequence

from timm.models.metaformer import LayerNorm2dNoBias, MetaFormer, MlpHead, SepConv
from torch import nn

from ..errors import UsageError
from .layout import UpstreamLayout, build_layout, rename_by_rules
from .stem import audio_stem_conv

__all__ = ["CONVFORMER_VARIANTS", "convformer_audio", "convformer_upstream_layout"]

CONVFORMER_VARIANTS = {
    "s18": dict(depths=(3, 3, 9, 3), dims=(64, 128, 320, 512)),
}

#: upstream's MlpHead norm is a plain nn.LayerNorm (eps 1e-5); timm's default is 1e-6.
_HEAD_NORM_EPS = 1e-5


def convformer_audio(
    depths: Sequence[int] = (3, 3, 9, 3),
    dims: Sequence[int] = (64, 128, 320, 512),
    num_classes: int = 527,
    in_chans: int = 1,
    drop_path_rate: float = 0.0,
    layer_scale_init_value: float | None = None,
    res_scale_init_values: Sequence[float | None] = (None, None, 1.0, 1.0),
    drop_rate: float = 0.0,
) -> MetaFormer:
    """ConvFormer taking (B, in_chans, 128, T) spectrograms, returning (B, num_classes) logits."""
    if len(depths) != len(dims) or len(res_scale_init_values) != len(dims):
        raise UsageError(
            f"depths {tuple(depths)}, dims {tuple(dims)} and res_scale_init_values "
            f"{tuple(res_scale_init_values)} must have the same length"
        )
    model = MetaFormer(
        in_chans=in_chans,
        num_classes=num_classes,
        depths=tuple(depths),
        dims=tuple(dims),
        token_mixers=SepConv,
        norm_layers=LayerNorm2dNoBias,
        drop_path_rate=drop_path_rate,
        drop_rate=drop_rate,
        layer_scale_init_values=layer_scale_init_value,
        res_scale_init_values=tuple(res_scale_init_values),
    )
    model.stem.conv = audio_stem_conv(dims[0], in_channels=in_chans, bias=False)
    if isinstance(model.head.fc, MlpHead):
        model.head.fc.norm.eps = _HEAD_NORM_EPS
    return model


_UPSTREAM_RULES = (
    (r"^stem\.conv\.", "downsample_layers.0.conv."),
    (r"^stem\.norm\.", "downsample_layers.0.post_norm."),
    (r"^stages\.(\d+)\.downsample\.norm\.", r"downsample_layers.\1.pre_norm."),
    (r"^stages\.(\d+)\.downsample\.conv\.", r"downsample_layers.\1.conv."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2."),
    (r"^head\.norm\.", "norm."),
    (r"^head\.fc\.", "head."),
)
# 1x1 convs here, nn.Linear upstream
_LINEAR_KEYS = r"^stages\.\d+\.blocks\.\d+\.(token_mixer\.pwconv[12]|mlp\.fc[12])\.weight$"


def convformer_upstream_layout(model: nn.Module) -> UpstreamLayout:
    """Key correspondence between this ConvFormer and the upstream checkpoint layout."""
    return build_layout(model.state_dict().keys(), lambda k: rename_by_rules(k, _UPSTREAM_RULES), _LINEAR_KEYS)
