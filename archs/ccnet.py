"""CCNet: criss-cross attention, applied twice so that every pixel sees the whole image.

Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019 / TPAMI 2020
(arXiv:1811.11721). Official repository: https://github.com/speedinghzl/CCNet (MIT). The
configuration of the comparison table's row is mmsegmentation's ``configs/ccnet/ccnet_r101-d8_*``
(https://github.com/open-mmlab/mmsegmentation, Apache-2.0) with mmcv's ``CrissCrossAttention``:

- ResNetV1c-101 dilated to output stride 8 (`archs.backbones.resnet`);
- 3x3 conv 2048->512 + BN + ReLU; criss-cross attention applied R = 2 times (shared weights);
  3x3 conv 512->512 + BN + ReLU; the backbone output concatenated back and fused by a 3x3 conv
  (2560->512) + BN + ReLU; Dropout2d(0.1) and a 1x1 classifier; logits at stride 8;
- criss-cross attention: query/key 1x1 convs C -> C/8, value 1x1 conv C -> C (with bias). Pixel
  u = (h, w) attends over its column {(i, w)} and its row {(h, j)} with one softmax over the
  H + W - 1 distinct positions (the column term at i = h is masked, it is counted in the row):
  A_u = softmax([q_u . k_(i,w)]_i + [q_u . k_(h,j)]_j), out_u = gamma * sum A_u v + x_u, where
  gamma is a learned scalar initialised to 0.

The attention is plain PyTorch (batched matrix products over the columns and over the rows), so it
runs on any device and captures into a CUDA graph. Training adds mmseg's auxiliary FCN head on
stage 3 (``aux_head=True``); the published 68.9 M counts it. Figures: docs/models/ccnet.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from archs.backbones.resnet import resnet101_v1c
from archs.base import register
from archs.cards import card
from archs.common import SegmentationModel, conv_bn_relu, mmseg_model
from archs.convert.mmseg import convert_mmseg_ccnet

__all__ = ["CCHead", "CrissCrossAttention", "ccnet_r101"]


class CrissCrossAttention(nn.Module):
    """Criss-cross attention over each pixel's row and column, with a residual scaled by ``gamma``.

    Args:
        channels: input and output channels; queries and keys have ``channels // reduction``.
        reduction: query/key channel reduction (8).
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(channels, channels // reduction, 1)
        self.key_conv = nn.Conv2d(channels, channels // reduction, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        h = x.shape[-2]
        # Channels-last views: (N, H, W, C).
        q = self.query_conv(x).permute(0, 2, 3, 1)
        k = self.key_conv(x).permute(0, 2, 3, 1)
        v = self.value_conv(x).permute(0, 2, 3, 1)
        q_cols, k_cols, v_cols = (t.transpose(1, 2) for t in (q, k, v))  # (N, W, H, C)
        energy_cols = torch.matmul(q_cols, k_cols.transpose(-1, -2))  # (N, W, H, H): [n, w, h, i]
        diagonal = torch.eye(h, dtype=torch.bool, device=x.device)
        energy_cols = energy_cols.masked_fill(diagonal, float("-inf")).transpose(1, 2)  # (N, H, W, H)
        energy_rows = torch.matmul(q, k.transpose(-1, -2))  # (N, H, W, W): [n, h, w, j]
        attn = torch.cat([energy_cols, energy_rows], dim=-1).softmax(dim=-1)
        attn_cols, attn_rows = attn[..., :h], attn[..., h:]
        out = torch.matmul(attn_cols.transpose(1, 2), v_cols).transpose(1, 2)  # (N, H, W, C)
        out = out + torch.matmul(attn_rows, v)
        return self.gamma * out.permute(0, 3, 1, 2) + x


class CCHead(nn.Module):
    """mmseg's ``CCHead``: conv, criss-cross attention x ``recurrence``, conv, concat + fuse, classifier.

    Args:
        in_channels: channels of the last backbone stage.
        num_classes: output classes.
        channels: head width.
        recurrence: applications of the (shared) criss-cross attention.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512, recurrence: int = 2) -> None:
        super().__init__()
        self.convs = nn.Sequential(conv_bn_relu(in_channels, channels, 3), conv_bn_relu(channels, channels, 3))
        self.cca = CrissCrossAttention(channels)
        self.recurrence = recurrence
        self.conv_cat = conv_bn_relu(in_channels + channels, channels, 3)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = features[-1]
        out = self.convs[0](x)
        for _ in range(self.recurrence):
            out = self.cca(out)
        out = self.conv_cat(torch.cat([x, self.convs[1](out)], dim=1))
        return self.classifier(self.dropout(out))


@register(card("ccnet-r101", converter=convert_mmseg_ccnet))
def ccnet_r101(*, num_classes: int, aux_head: bool = False) -> SegmentationModel:
    """CCNet on ResNetV1c-101 (OS8), mmseg's ``ccnet_r101-d8``."""
    backbone = resnet101_v1c()
    return mmseg_model(backbone, CCHead(backbone.out_channels[-1], num_classes), num_classes, aux_head)
