"""The audio stem shared by all backbones: a patchifying convolution over the mel spectrogram."""

from __future__ import annotations

from timm.layers import trunc_normal_
from torch import nn

__all__ = ["AUDIO_PATCH", "audio_stem_conv"]

#: Patch of the spectrogram seen by one stem output: 2 mel bins x 16 frames.
AUDIO_PATCH = (2, 16)


def audio_stem_conv(out_channels: int, in_channels: int = 1, bias: bool = True) -> nn.Conv2d:
    """Conv2d(in, out, kernel=(2, 16), stride=(2, 16)) replacing an image stem.

    (B, 1, 128, 1001) -> (B, out_channels, 64, 62). Weight ~ trunc_normal(std=0.02), bias 0.
    """
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=AUDIO_PATCH, stride=AUDIO_PATCH, bias=bias)
    trunc_normal_(conv.weight, std=0.02)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv
