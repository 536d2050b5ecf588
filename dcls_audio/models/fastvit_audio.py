"""FastViT for spectrograms: timm's ``FastVit`` with the audio stem.

Upstream DCLS-Audio replaces the whole MobileOne convolutional stem by one bias-free
(2, 16) patch convolution (no norm, no activation); everything else is Apple's FastViT,
which timm reproduces (RepMixer stages, RepCPE + attention stage, SE ``conv_exp`` head).
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

from timm.models.fastvit import FastVit, RepConditionalPosEnc
from torch import nn

from ..errors import UsageError
from .layout import UpstreamLayout, build_layout, rename_by_rules
from .stem import audio_stem_conv

__all__ = ["FASTVIT_VARIANTS", "fastvit_audio", "fastvit_upstream_layout", "reparameterize_fastvit"]

FASTVIT_VARIANTS = {
    "sa24": dict(
        depths=(4, 4, 12, 4),
        dims=(64, 128, 256, 512),
        token_mixers=("repmixer", "repmixer", "repmixer", "attention"),
        pos_emb_stages=(3,),
    ),
}


def fastvit_audio(
    depths: Sequence[int] = (4, 4, 12, 4),
    dims: Sequence[int] = (64, 128, 256, 512),
    token_mixers: Sequence[str] = ("repmixer", "repmixer", "repmixer", "attention"),
    pos_emb_stages: Sequence[int] = (3,),
    mlp_ratio: float = 4.0,
    num_classes: int = 527,
    in_chans: int = 1,
    drop_path_rate: float = 0.0,
    layer_scale_init_value: float | None = 1e-5,
    drop_rate: float = 0.0,
) -> FastVit:
    """FastViT taking (B, in_chans, 128, T) spectrograms, returning (B, num_classes) logits.

    ``pos_emb_stages``: stages that start with a 7x7 conditional positional encoding (RepCPE).
    Attention stages need ``dim % 32 == 0`` (head_dim 32).
    """
    n = len(depths)
    if not (len(dims) == len(token_mixers) == n):
        raise UsageError(
            f"depths {tuple(depths)}, dims {tuple(dims)} and token_mixers {tuple(token_mixers)} "
            "must have the same length"
        )
    for i, mixer in enumerate(token_mixers):
        if mixer == "attention" and dims[i] % 32:
            raise UsageError(f"dims[{i}]={dims[i]} must be a multiple of 32 for an attention stage")
    for i in range(1, n):
        if dims[i] % dims[i - 1]:
            raise UsageError(
                f"dims[{i}]={dims[i]} must be a multiple of dims[{i - 1}]={dims[i - 1]} "
                "(the downsampling conv has groups=dims[i-1])"
            )
    pos_embs = tuple(
        partial(RepConditionalPosEnc, spatial_shape=(7, 7)) if i in pos_emb_stages else None for i in range(n)
    )
    model = FastVit(
        in_chans=in_chans,
        layers=tuple(depths),
        embed_dims=tuple(dims),
        mlp_ratios=(mlp_ratio,) * n,
        token_mixers=tuple(token_mixers),
        pos_embs=pos_embs,
        num_classes=num_classes,
        drop_path_rate=drop_path_rate,
        drop_rate=drop_rate,
        layer_scale_init_value=layer_scale_init_value,
    )
    model.stem = audio_stem_conv(dims[0], in_channels=in_chans, bias=False)
    return model


def reparameterize_fastvit(model: nn.Module) -> nn.Module:
    """Fold the train-time branches (MobileOne, RepMixer, RepCPE, large-kernel) in place.

    timm's ``reparameterize()`` of each block, walked top-down. A RepCPE whose 7x7 conv is a
    DCLS layer keeps its form (no dense weight to add the identity to) unless the DCLS layers
    were first folded into plain convs (``fold_dcls``), in which case its identity is folded
    into the dense (e.g. 23x23) kernel. ConvFFN's DCLS layers are untouched. Returns ``model``.
    """

    def walk(module: nn.Module) -> None:
        for child in module.children():
            foldable = hasattr(child, "reparameterize")
            if isinstance(child, RepConditionalPosEnc):
                pos_enc = getattr(child, "pos_enc", None)
                foldable = type(pos_enc) is nn.Conv2d
                if foldable:
                    child.spatial_shape = tuple(pos_enc.kernel_size)
            if foldable:
                child.reparameterize()
            walk(child)

    walk(model)
    return model


_SEGMENTS = {
    "conv_kxk": "rbr_conv",
    "conv_scale": "rbr_scale",
    "identity": "rbr_skip",
    "large_conv": "lkb_origin",
    "mlp": "convffn",
    "final_conv": "conv_exp",
    "pos_emb": "",
    "pos_enc": "pe",
}


def _rename_segments(rest: str) -> str:
    parts = rest.split(".")
    out = []
    for i, part in enumerate(parts):
        if i > 0 and parts[i - 1] == "se" and part in ("fc1", "fc2"):
            part = {"fc1": "reduce", "fc2": "expand"}[part]
        elif part == "gamma" and i > 0 and parts[i - 1].startswith("layer_scale"):
            continue  # LayerScale2d(.gamma) is a bare nn.Parameter upstream
        else:
            part = _SEGMENTS.get(part, part)
        if part:
            out.append(part)
    return ".".join(out)


def fastvit_upstream_layout(model: FastVit) -> UpstreamLayout:
    """Key correspondence with upstream's flat ``network`` list (stage blocks, PatchEmbed, RepCPE)."""
    rules = [(r"^stem\.", "patch_embed."), (r"^head\.fc\.", "head.")]
    index = 0
    for s, stage in enumerate(model.stages):
        if not isinstance(stage.downsample, nn.Identity):
            rules.append((rf"^stages\.{s}\.downsample\.", f"network.{index}."))
            index += 1
        if not isinstance(stage.pos_emb, nn.Identity):
            rules.append((rf"^stages\.{s}\.pos_emb\.", f"network.{index}.pos_emb."))
            index += 1
        rules.append((rf"^stages\.{s}\.blocks\.", f"network.{index}."))
        index += 1
    rules.append((r"^final_conv\.", "final_conv."))

    def rename(key: str) -> str:
        return _rename_segments(rename_by_rules(key, rules))

    return build_layout(model.state_dict().keys(), rename)
