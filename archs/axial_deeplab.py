"""Axial-DeepLab: Panoptic-DeepLab on an Axial-ResNet, without ASPP; the XL width.

Wang et al., "Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation", ECCV 2020
(arXiv:2003.07853); Cheng et al., "Panoptic-DeepLab", CVPR 2020 (arXiv:1911.10194) for the
decoders and heads. Reference code: https://github.com/csrhddlam/axial-deeplab (axial blocks) and
https://github.com/google-research/deeplab2 (the authors' TensorFlow implementation). No official
Axial-DeepLab-XL checkpoint is public.

The Axial-ResNet backbone (`archs.backbones.axial_resnet`) at output stride 16, axial attention of
span 65 in every stage (DeepLab2's ``memory_flange=32``); a 1x1 conv-BN-ReLU projection to 256 in
place of ASPP (DeepLab2's ``aspp_use_only_1x1_proj_conv``); Panoptic-DeepLab's semantic decoder
(at strides 8 and 4: upsample, concatenate a 1x1 projection of the backbone stage, fuse by a 5x5
depthwise-separable conv) and head: logits at stride 4, ``ceil(H / 4) x ceil(W / 4)``.

``instance_branch=True`` adds the class-agnostic instance decoder with its centre and offset heads:
part of the panoptic model whose size and cost the paper reports, not of the semantic
segmentation the benchmark runs; the forward pass then returns ``(semantic, center, offset)``.
XL is the width multiplier 2 of Axial-ResNet-L, stem included. Counts: docs/models/axial-deeplab.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from archs.backbones.axial_resnet import MAX_DISTANCE, AxialResNet
from archs.base import register
from archs.cards import card

__all__ = ["AxialDeepLab", "PanopticDecoder", "axial_deeplab_xl"]


def _dw_separable(in_channels: int, out_channels: int, kernel_size: int = 5) -> nn.Sequential:
    """Depthwise KxK + BN + ReLU, pointwise 1x1 + BN + ReLU."""
    return nn.Sequential(
        Conv2dNormActivation(in_channels, in_channels, kernel_size, groups=in_channels),
        Conv2dNormActivation(in_channels, out_channels, 1),
    )


def _up(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PanopticDecoder(nn.Module):
    """Panoptic-DeepLab decoder: 1x1 projection of the stride-16 features, two fusion steps.

    Args:
        in_channels: channels of the stride-16 features.
        low_level_channels: channels of the stride-8 and stride-4 backbone features.
        projection_channels: their 1x1 projections (64, 32 semantic; 32, 16 instance).
        channels: decoder width (256 semantic, 128 instance).
    """

    def __init__(
        self,
        in_channels: int,
        low_level_channels: Sequence[int],
        projection_channels: Sequence[int],
        channels: int,
        aspp_channels: int = 256,
    ) -> None:
        super().__init__()
        self.aspp = Conv2dNormActivation(in_channels, aspp_channels, 1)
        self.project = nn.ModuleList(
            Conv2dNormActivation(c, p, 1) for c, p in zip(low_level_channels, projection_channels, strict=True)
        )
        fuse_in = [aspp_channels + projection_channels[0], channels + projection_channels[1]]
        self.fuse = nn.ModuleList(_dw_separable(c, channels) for c in fuse_in)

    def forward(self, x: Tensor, low_level: Sequence[Tensor]) -> Tensor:
        x = self.aspp(x)
        for feat, project, fuse in zip(low_level, self.project, self.fuse, strict=True):
            x = fuse(torch.cat([_up(x, feat.shape[-2:]), project(feat)], dim=1))
        return x


class AxialDeepLab(nn.Module):
    """Axial-ResNet backbone + Panoptic-DeepLab semantic decoder and head (no ASPP).

    Args:
        num_classes: output classes.
        width_multiplier: Axial-ResNet width (2 for XL, 1 for L, 0.75 for M, 0.5 for S).
        span: axial-attention window of every layer (odd), or None for global attention.
        max_distance: relative distances the embedding tables cover.
        instance_branch: add the instance decoder and its centre/offset heads.
        stem_multiplier: stem width multiplier; None: ``width_multiplier``.
    """

    def __init__(
        self,
        num_classes: int,
        width_multiplier: float = 2.0,
        span: int | None = 65,
        max_distance: int = MAX_DISTANCE,
        instance_branch: bool = False,
        stem_multiplier: float | None = None,
    ) -> None:
        super().__init__()
        self.backbone = AxialResNet(
            width_multiplier, span=span, max_distance=max_distance, output_stride=16, stem_multiplier=stem_multiplier
        )
        c4, c8, _, c16 = self.backbone.out_channels
        self.semantic_decoder = PanopticDecoder(c16, (c8, c4), (64, 32), 256)
        self.semantic_head = nn.Sequential(_dw_separable(256, 256), nn.Conv2d(256, num_classes, 1))
        self.instance_decoder = None
        if instance_branch:
            self.instance_decoder = PanopticDecoder(c16, (c8, c4), (32, 16), 128)
            self.center_head = nn.Sequential(_dw_separable(128, 32), nn.Conv2d(32, 1, 1))
            self.offset_head = nn.Sequential(_dw_separable(128, 32), nn.Conv2d(32, 2, 1))

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        s4, s8, _, s16 = self.backbone(x)
        semantic = self.semantic_head(self.semantic_decoder(s16, (s8, s4)))
        if self.instance_decoder is None:
            return semantic
        instance = self.instance_decoder(s16, (s8, s4))
        return semantic, self.center_head(instance), self.offset_head(instance)


@register(card("axial-deeplab-xl"))
def axial_deeplab_xl(*, num_classes: int, instance_branch: bool = False) -> nn.Module:
    """Axial-DeepLab-XL: Axial-ResNet (width x2, axial attention of span 65) + Panoptic-DeepLab semantic path.

    Args:
        instance_branch: add the panoptic instance decoder and heads (for the published count).
    """
    return AxialDeepLab(num_classes, 2.0, instance_branch=instance_branch)
