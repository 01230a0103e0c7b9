"""SETR: segmentation with a plain ViT-Large encoder and three decoders (naive, PUP, MLA).

Zheng et al., "Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective with
Transformers", CVPR 2021 (arXiv:2012.15840). Official repository: https://github.com/fudan-zvg/SETR
(MIT). The configurations are mmsegmentation's ``configs/setr/setr_vit-l_{naive,pup,mla}_*``
(https://github.com/open-mmlab/mmsegmentation, Apache-2.0), whose ADE20K and Cityscapes
checkpoints the converters load:

- encoder: ViT-L/16 (`archs.backbones.vit`), positional embeddings interpolated to the input's
  token grid (bilinear);
- **naive**: LN on the last block's tokens, 1x1 conv 1024->256 + BN + ReLU, x4 bilinear, 1x1
  classifier (logits at stride 4);
- **PUP** (progressive upsampling): LN, four times {3x3 conv + BN + ReLU (256 channels), x2
  bilinear}, 1x1 classifier (logits at stride 1);
- **MLA** (multi-level aggregation): blocks 6, 12, 18 and 24 (no class token through the blocks),
  each LN + 1x1 conv to 256; top-down running sums; 3x3 conv each; then per level two 3x3 convs to
  128 and x4 bilinear; concatenation (512) and a 1x1 classifier (logits at stride 4).

Training-only auxiliary heads (``aux_head=True``): naive and PUP have three more upsampling heads
on blocks 10, 15 and 20 (two convs each, 1x1 for naive, 3x3 for PUP); MLA has a 1x1 classifier on
each aggregated level. The published results slide windows over the test images (``evaluation``).
Figures and sources: docs/models/setr.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from archs.backbones.vit import vit_large_patch16
from archs.base import register
from archs.cards import card
from archs.convert.mmseg import convert_mmseg_setr

__all__ = ["MLANeck", "SETR", "SETRMLAHead", "SETRUpHead", "setr_mla_vit_l", "setr_naive_vit_l", "setr_pup_vit_l"]

DECODERS = ("naive", "pup", "mla")


# mmseg's setr_vit-l_*_ade20k-512x512.py and *_cityscapes-768x768.py test configs.
def _layer_norm_2d(norm: nn.Module, x: Tensor) -> Tensor:
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _upsample(x: Tensor, scale: int) -> Tensor:
    return F.interpolate(x, size=(x.shape[-2] * scale, x.shape[-1] * scale), mode="bilinear", align_corners=False)


class SETRUpHead(nn.Module):
    """LN on the tokens, then ``num_convs`` times {conv + BN + ReLU, bilinear x``up_scale``}, classifier.

    Args:
        in_channels: token width.
        num_classes: output classes.
        channels: width of the convolutions.
        num_convs: conv + upsample steps (naive 1, PUP 4).
        kernel_size: 1 (naive) or 3 (PUP).
        up_scale: upsampling factor per step (naive 4, PUP 2).
    """

    def __init__(
        self, in_channels: int, num_classes: int, channels: int, num_convs: int, kernel_size: int, up_scale: int
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_channels, eps=1e-6)
        self.up_convs = nn.ModuleList(
            nn.Sequential(Conv2dNormActivation(in_channels if i == 0 else channels, channels, kernel_size))
            for i in range(num_convs)
        )
        self.up_scale = up_scale
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = _layer_norm_2d(self.norm, x)
        for up_conv in self.up_convs:
            x = _upsample(up_conv(x), self.up_scale)
        return self.conv_seg(x)


class MLANeck(nn.Module):
    """SETR's multi-level feature aggregation: LN + 1x1 projection per level, top-down sums, 3x3 convs.

    Args:
        in_channels: token width of every level.
        channels: output width of every level.
        num_levels: number of encoder levels.
    """

    def __init__(self, in_channels: int, channels: int = 256, num_levels: int = 4) -> None:
        super().__init__()
        self.norm = nn.ModuleList(nn.LayerNorm(in_channels, eps=1e-6) for _ in range(num_levels))
        self.channel_proj = nn.ModuleList(Conv2dNormActivation(in_channels, channels, 1) for _ in range(num_levels))
        self.feat_extract = nn.ModuleList(Conv2dNormActivation(channels, channels, 3) for _ in range(num_levels))

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        projected = [
            proj(_layer_norm_2d(norm, x)) for x, norm, proj in zip(xs, self.norm, self.channel_proj, strict=True)
        ]
        outs, running = [], None
        for feat, conv in zip(reversed(projected), self.feat_extract, strict=True):  # deepest level first
            running = feat if running is None else running + feat
            outs.append(conv(running))
        return outs


class SETRMLAHead(nn.Module):
    """Per level two 3x3 conv + BN + ReLU and x``up_scale`` bilinear; concatenation; classifier.

    Args:
        in_channels: width of each aggregated level.
        num_classes: output classes.
        mla_channels: width per level after the convolutions.
        num_levels: number of levels.
        up_scale: upsampling factor.
    """

    def __init__(
        self, in_channels: int, num_classes: int, mla_channels: int = 128, num_levels: int = 4, up_scale: int = 4
    ) -> None:
        super().__init__()
        self.up_convs = nn.ModuleList(
            nn.Sequential(
                Conv2dNormActivation(in_channels, mla_channels, 3), Conv2dNormActivation(mla_channels, mla_channels, 3)
            )
            for _ in range(num_levels)
        )
        self.up_scale = up_scale
        self.conv_seg = nn.Conv2d(num_levels * mla_channels, num_classes, 1)

    def forward(self, xs: Sequence[Tensor]) -> Tensor:
        return self.conv_seg(
            torch.cat([_upsample(conv(x), self.up_scale) for x, conv in zip(xs, self.up_convs, strict=True)], 1)
        )


class _Classifier(nn.Module):
    """A 1x1 classifier (SETR-MLA's auxiliary heads), under mmseg's key ``conv_seg``."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv_seg = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_seg(x)


class SETR(nn.Module):
    """ViT-L/16 encoder with a SETR decoder.

    Args:
        num_classes: output classes.
        decoder: ``naive``, ``pup`` or ``mla``.
        img_size: training size that sets the positional-embedding grid (512 for the ADE20K
            configurations, 768 for Cityscapes; a checkpoint's grid is adopted when loaded).
        aux_head: add the training-only auxiliary heads (three for naive and PUP, four for MLA); in
            ``train()`` mode the forward pass then returns ``(logits, [aux logits])``.
    """

    def __init__(self, num_classes: int, decoder: str = "pup", img_size: int = 512, aux_head: bool = False) -> None:
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be 'naive', 'pup' or 'mla', got {decoder!r}")
        self.decoder = decoder
        self.neck: MLANeck | None = None
        self.decode_head: nn.Module
        aux: list[nn.Module]
        if decoder == "mla":
            self.backbone = vit_large_patch16(
                img_size=img_size, out_indices=(5, 11, 17, 23), with_cls_token=False, patch_bias=False
            )
            self.neck = MLANeck(1024, 256)
            self.decode_head = SETRMLAHead(256, num_classes, 128)
            aux = [_Classifier(256, num_classes) for _ in range(4)]
        else:
            self.backbone = vit_large_patch16(img_size=img_size, out_indices=(9, 14, 19, 23), patch_bias=False)
            kernel, convs, scale = (1, 1, 4) if decoder == "naive" else (3, 4, 2)
            self.decode_head = SETRUpHead(1024, num_classes, 256, convs, kernel, scale)
            aux = [SETRUpHead(1024, num_classes, 256, 2, kernel, 4) for _ in range(3)]
        self.aux_heads = nn.ModuleList(aux) if aux_head else None

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, list[Tensor]]:
        feats = self.backbone(x)
        if self.neck is not None:
            feats = self.neck(feats)
            logits = self.decode_head(feats)
        else:
            logits = self.decode_head(feats[-1])
        if self.training and self.aux_heads is not None:
            return logits, [head(f) for head, f in zip(self.aux_heads, feats, strict=False)]
        return logits


@register(card("setr-pup-vit-l", converter=convert_mmseg_setr))
def setr_pup_vit_l(*, num_classes: int, img_size: int = 512, aux_head: bool = False) -> SETR:
    """SETR-PUP with ViT-L/16 (mmseg ``setr_vit-l_pup``): four {3x3 conv, x2 bilinear} steps to full resolution.

    Args:
        img_size: positional-embedding grid size (512: ADE20K configuration, 768: Cityscapes).
    """
    return SETR(num_classes, "pup", img_size, aux_head)


@register(card("setr-naive-vit-l", converter=convert_mmseg_setr))
def setr_naive_vit_l(*, num_classes: int, img_size: int = 512, aux_head: bool = False) -> SETR:
    """SETR-Naive with ViT-L/16 (mmseg ``setr_vit-l_naive``): a 1x1 conv on the last block, x4 bilinear.

    Args:
        img_size: positional-embedding grid size (512: ADE20K configuration, 768: Cityscapes).
    """
    return SETR(num_classes, "naive", img_size, aux_head)


@register(card("setr-mla-vit-l", converter=convert_mmseg_setr))
def setr_mla_vit_l(*, num_classes: int, img_size: int = 512, aux_head: bool = False) -> SETR:
    """SETR-MLA with ViT-L/16 (mmseg ``setr_vit-l_mla``): blocks 6, 12, 18, 24 aggregated top-down.

    Args:
        img_size: positional-embedding grid size (512: ADE20K configuration, 768: Cityscapes).
    """
    return SETR(num_classes, "mla", img_size, aux_head)
