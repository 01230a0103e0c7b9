"""OCRNet: object-contextual representations on HRNetV2-W48.

Yuan, Chen & Wang, "Object-Contextual Representations for Semantic Segmentation", ECCV 2020
(arXiv:1909.11065). Official repository: https://github.com/HRNet/HRNet-Semantic-Segmentation
(branch HRNet-OCR, MIT). The configuration of the comparison table's row is mmsegmentation's
``configs/ocrnet/ocrnet_hr48_4xb4-160k_ade20k-512x512.py`` /
``ocrnet_hr48_4xb2-160k_cityscapes-512x1024.py`` (https://github.com/open-mmlab/mmsegmentation,
Apache-2.0), whose heads and checkpoints this module reproduces:

- the four HRNetV2 branches are upsampled to stride 4 and concatenated (720 channels);
- soft object regions: 1x1 conv 720->720 + BN + ReLU, then a 1x1 classifier (mmseg's stage-1
  ``FCNHead``; it is trained with an auxiliary loss but its logits drive the OCR module, so it is
  part of the inference network);
- 3x3 conv 720->512 + BN + ReLU (pixel representations);
- spatial gather: the region logits, soft-maxed over the pixels, pool the pixel representations
  into one 512-d descriptor per class;
- object attention: pixels (query, two 1x1 conv+BN+ReLU to 256) attend over the class
  descriptors (key: two 1x1 conv+BN+ReLU; value: one), scaled by 256^-0.5, output 1x1 256->512,
  concatenated with the pixel representations and fused by a 1x1 conv 1024->512;
- a 1x1 classifier. Logits at stride 4. Figures: docs/models/ocrnet.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archs.backbones.hrnet import HRNet
from archs.base import register
from archs.cards import card
from archs.common import conv_bn_relu
from archs.convert.mmseg import convert_mmseg_ocrnet

__all__ = ["OCRHead", "OCRNet", "ocrnet_hr48"]


class OCRHead(nn.Module):
    """Soft object regions, spatial gather and object attention on concatenated HRNet features.

    Args:
        in_channels: channels of the concatenated backbone features (720 for W48).
        num_classes: output classes.
        channels: width of the pixel representations (512).
        ocr_channels: width of the key/query/value projections (256).
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512, ocr_channels: int = 256) -> None:
        super().__init__()
        self.region = nn.Sequential(conv_bn_relu(in_channels, in_channels, 1), nn.Conv2d(in_channels, num_classes, 1))
        self.bottleneck = conv_bn_relu(in_channels, channels, 3)
        self.query_project = nn.Sequential(
            conv_bn_relu(channels, ocr_channels, 1), conv_bn_relu(ocr_channels, ocr_channels, 1)
        )
        self.key_project = nn.Sequential(
            conv_bn_relu(channels, ocr_channels, 1), conv_bn_relu(ocr_channels, ocr_channels, 1)
        )
        self.value_project = conv_bn_relu(channels, ocr_channels, 1)
        self.out_project = conv_bn_relu(ocr_channels, channels, 1)
        self.fuse = conv_bn_relu(2 * channels, channels, 1)
        self.classifier: nn.Module = nn.Conv2d(channels, num_classes, 1)  # HMSA applies it apart

    def forward(self, x: Tensor) -> Tensor:
        regions = self.region(x)
        feats = self.bottleneck(x)
        n, c, h, w = feats.shape
        # Spatial gather: per class, the softmax-over-pixels weighted mean of the representations.
        probs = regions.flatten(2).softmax(dim=2)  # (N, K, HW)
        context = torch.bmm(probs, feats.flatten(2).transpose(1, 2))  # (N, K, C)
        context = context.transpose(1, 2).unsqueeze(3)  # (N, C, K, 1): class descriptors as a 1-wide map
        query = self.query_project(feats).flatten(2).transpose(1, 2).unsqueeze(1)  # (N, 1, HW, C')
        key = self.key_project(context).flatten(2).transpose(1, 2).unsqueeze(1)  # (N, 1, K, C')
        value = self.value_project(context).flatten(2).transpose(1, 2).unsqueeze(1)
        attended = F.scaled_dot_product_attention(query, key, value)  # scale C'^-0.5, as mmseg's matmul_norm
        attended = attended.squeeze(1).transpose(1, 2).reshape(n, -1, h, w)
        obj = self.out_project(attended)
        return self.classifier(self.fuse(torch.cat([obj, feats], dim=1)))


class OCRNet(nn.Module):
    """HRNetV2 backbone + OCR head; logits at stride 4.

    Args:
        num_classes: output classes.
        width: HRNetV2 width (48 for the comparison table's row).
        channels: OCR pixel-representation width.
        ocr_channels: OCR key/query/value width.
    """

    def __init__(self, num_classes: int, width: int = 48, channels: int = 512, ocr_channels: int = 256) -> None:
        super().__init__()
        self.backbone = HRNet(width)
        self.decode_head = OCRHead(sum(self.backbone.out_channels), num_classes, channels, ocr_channels)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)
        size = feats[0].shape[-2:]
        up = [feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats[1:]]
        return self.decode_head(torch.cat(up, dim=1))


@register(card("ocrnet-hr48", converter=convert_mmseg_ocrnet))
def ocrnet_hr48(*, num_classes: int) -> nn.Module:
    """OCRNet with HRNetV2-W48 (mmseg ``ocrnet_hr48`` configuration)."""
    return OCRNet(num_classes, width=48)
